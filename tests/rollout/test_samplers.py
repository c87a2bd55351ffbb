"""Stop tokens, response masks and left-padded sampling."""

import torch

from poweropd.models.hf import stop_token_ids
from poweropd.rollout.samplers import HFSampler, SamplingConfig, build_rollouts, left_pad, mask_after_stop

STOPS = (2, 0)  # <|im_end|> and <|endoftext|> in the test tokenizer


def test_mask_keeps_tokens_through_first_stop_of_either_kind():
    response_BT = torch.tensor([[5, 6, 2, 7, 2], [5, 0, 9, 9, 9], [5, 6, 7, 8, 9]])
    mask_BT, truncated_B = mask_after_stop(response_BT, STOPS)
    assert mask_BT.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated_B.tolist() == [False, False, True]


def test_loss_mask_drops_final_stop_token_but_truncated_rollouts_keep_all():
    prompt_mask_BP = torch.tensor([[0, 1], [1, 1], [1, 1]])
    sequences_BL = torch.tensor([[0, 4, 5, 6, 2, 7], [3, 4, 5, 0, 9, 9], [3, 4, 5, 6, 7, 8]])
    r = build_rollouts(sequences_BL, prompt_mask_BP, STOPS, pad_token_id=0)
    assert r.prompt_len == 2
    assert r.response_mask_BT.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert r.loss_mask().tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert torch.equal(r.loss_mask(include_stop_token=True), r.response_mask_BT)
    # after the stop token, ids are padding and attention is off
    assert r.input_ids_BL[0, 5].item() == 0 and r.attention_mask_BL[0].tolist() == [0, 1, 1, 1, 1, 0]
    assert r.response_lengths_B.tolist() == [3, 2, 4]


def test_left_pad():
    ids_BP, mask_BP = left_pad([[7, 8, 9], [5]], pad_id=0)
    assert ids_BP.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask_BP.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_stop_tokens_include_both_eos_kinds(tiny_pair):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    vocab = tok.get_vocab()
    assert stop_token_ids(tok) == sorted({vocab["<|im_end|>"], vocab["<|endoftext|>"]})


class _RecordingModel(torch.nn.Module):
    """Stands in for a causal LM: records generate's arguments, returns a fixed continuation."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.kwargs = None

    def generate(self, input_ids, **kwargs):
        self.kwargs = kwargs
        tail = torch.tensor([[9, 2, 0]]).expand(input_ids.shape[0], 3)
        return torch.cat([input_ids, tail], dim=1)


def test_sampler_passes_top_k_zero_and_every_stop_id_explicitly():
    model = _RecordingModel()
    sampler = HFSampler(model, pad_token_id=0, config=SamplingConfig(max_new_tokens=3, stop_token_ids=STOPS))
    r = sampler.sample([[4, 5], [6]])
    assert model.kwargs["top_k"] == 0 and model.kwargs["top_p"] == 1.0 and model.kwargs["temperature"] == 1.0
    assert model.kwargs["do_sample"] is True and model.kwargs["eos_token_id"] == [2, 0]
    assert model.kwargs["attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert r.response_mask_BT.tolist() == [[1, 1, 0], [1, 1, 0]]


def test_real_generate_matches_rescoring_with_left_padding(tiny_pair):
    """Sampling from left-padded prompts and re-scoring the rollouts agree on log-probs (position ids)."""
    from transformers import AutoModelForCausalLM

    from poweropd.models.hf import output_layer, response_hidden_states
    from poweropd.objectives.logprobs import chunked_token_logprobs, selected_logprobs_from_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0])
    torch.manual_seed(0)
    sampler = HFSampler(model, pad_token_id=0, config=SamplingConfig(max_new_tokens=6, stop_token_ids=STOPS))
    r = sampler.sample([[1, 40, 41, 42, 43], [1, 50]])
    hidden_BTH = response_hidden_states(model, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)
    logp_BT, _ = chunked_token_logprobs(output_layer(model), hidden_BTH, r.response_ids_BT)
    for i in range(2):  # reference: each row alone, unpadded
        ids = r.input_ids_BL[i][r.attention_mask_BL[i].bool()]
        n_prompt = int(r.attention_mask_BL[i, : r.prompt_len].sum())
        with torch.no_grad():
            logits = model(ids[None]).logits[0]
        ref = selected_logprobs_from_logits(logits[n_prompt - 1 : -1], ids[n_prompt:])
        n = int(r.response_mask_BT[i].sum())
        torch.testing.assert_close(logp_BT[i, :n].detach(), ref, atol=1e-5, rtol=0)


# ---- the decode-loop engine ----------------------------------------------------------------------------


def test_filter_logits_by_hand():
    from poweropd.rollout.samplers import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    inf = float("-inf")
    # nucleus 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it; 0.15 and 0.05 go
    assert filter_logits(logits, top_p=0.7).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_p=0.8).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_p=0.81).isinf().tolist() == [[False, False, False, True]]
    assert filter_logits(logits, top_p=0.1).isinf().tolist() == [[False, True, True, True]]  # at least one
    assert filter_logits(logits, top_k=2)[0, 2:].tolist() == [inf, inf]
    assert torch.equal(filter_logits(logits), logits)  # top_k=0, top_p=1: no filter


def test_filter_logits_matches_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from poweropd.rollout.samplers import filter_logits

    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    for p in (0.3, 0.9, 0.95):
        ours = filter_logits(logits, top_p=p).isinf()
        theirs = TopPLogitsWarper(p)(None, logits.clone()).isinf()
        assert torch.equal(ours, theirs)
    assert torch.equal(
        filter_logits(logits, top_k=7).isinf(), TopKLogitsWarper(7)(None, logits.clone()).isinf()
    )


def _loop_and_generate(tiny_pair, **sampling):
    from transformers import AutoModelForCausalLM

    from poweropd.rollout.samplers import DecodeLoopSampler

    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0])
    config = SamplingConfig(stop_token_ids=STOPS, **sampling)
    return DecodeLoopSampler(model, 0, config), HFSampler(model, 0, config)


def test_decode_loop_greedy_equals_generate_with_left_padding(tiny_pair):
    loop, hf = _loop_and_generate(tiny_pair, max_new_tokens=12, temperature=0.0)
    prompts = [[1, 40, 41, 42, 43], [1, 50], [1, 60, 61]]
    a, b = loop.sample(prompts), hf.sample(prompts)
    width = min(a.input_ids_BL.shape[1], b.input_ids_BL.shape[1])
    assert torch.equal(a.response_mask_BT, b.response_mask_BT[:, : a.response_mask_BT.shape[1]])
    assert torch.equal(a.input_ids_BL[:, :width], b.input_ids_BL[:, :width])


def test_decode_loop_samples_what_generate_samples_for_a_seed(tiny_pair):
    """Same logits, same multinomial calls on the same global RNG: the same tokens as ``generate``."""
    loop, hf = _loop_and_generate(tiny_pair, max_new_tokens=10, temperature=1.0, top_p=0.9)
    prompts = [[1, 40, 41, 42, 43], [1, 50]] * 8
    torch.manual_seed(3)
    a = loop.sample(prompts)
    torch.manual_seed(3)
    b = hf.sample(prompts)
    assert torch.equal(a.input_ids_BL, b.input_ids_BL[:, : a.input_ids_BL.shape[1]])
    assert torch.equal(a.truncated_B, b.truncated_B)


def test_decode_loop_stops_rows_and_truncates_at_the_cap():
    """A model that always says 'stop' on odd rows: those rows end after one token, the others run to T."""
    from poweropd.rollout.samplers import DecodeLoopSampler

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = None

        def forward(self, input_ids, attention_mask, position_ids, use_cache, **_):
            logits = torch.full((input_ids.shape[0], 1, 10), -30.0)
            logits[:, :, 7] = 0.0
            logits[1::2, :, 2] = 30.0  # odd rows: the stop token
            return type("Out", (), {"logits": logits})()

    sampler = DecodeLoopSampler(Scripted(), 0, SamplingConfig(max_new_tokens=5, stop_token_ids=STOPS))
    r = sampler.sample([[4, 5], [6], [4], [5]])
    assert r.response_lengths_B.tolist() == [5, 1, 5, 1]
    assert r.truncated_B.tolist() == [True, False, True, False]
    assert r.response_ids_BT[0].tolist() == [7] * 5 and r.response_ids_BT[1].tolist() == [2, 0, 0, 0, 0]


def test_no_engine_samples_an_output_row_beyond_the_tokenizer(tiny_pair):
    """The teacher of tiny_pair has 7 output rows beyond the tokenizer (as Qwen3 has 267); a hook lifts their
    logits by 50, so that an unrestricted sampler emits them almost always. With ``vocab_size`` no engine emits
    one, and the decode loop still samples what ``generate`` samples for a seed."""
    from conftest import make_char_tokenizer
    from transformers import AutoModelForCausalLM

    from poweropd.rollout.continuous import ContinuousBatchingSampler
    from poweropd.rollout.samplers import DecodeLoopSampler

    model = AutoModelForCausalLM.from_pretrained(tiny_pair[1])
    V = len(make_char_tokenizer())
    assert model.config.vocab_size == V + 7
    lift = torch.zeros(V + 7)
    lift[V:] = 50.0
    model.lm_head.register_forward_hook(lambda module, args, logits: logits + lift)
    prompts = [[1, 40, 41, 42, 43], [1, 50]] * 4

    def sampled(rollouts):
        return rollouts.response_ids_BT[rollouts.response_mask_BT]

    torch.manual_seed(0)
    free = sampled(
        HFSampler(model, 0, SamplingConfig(max_new_tokens=6, stop_token_ids=STOPS)).sample(prompts)
    )
    assert (free >= V).float().mean() > 0.9  # the hook works: unrestricted, the padding rows win
    config = SamplingConfig(max_new_tokens=6, stop_token_ids=STOPS, vocab_size=V)
    runs = {}
    for engine in (HFSampler, DecodeLoopSampler, ContinuousBatchingSampler):
        sampler = engine(model, 0, config)
        torch.manual_seed(1)
        runs[engine.__name__] = sampler.sample(prompts)
        sampler.close()
        assert sampled(runs[engine.__name__]).max() < V, engine.__name__
    a, b = runs["DecodeLoopSampler"].input_ids_BL, runs["HFSampler"].input_ids_BL
    assert torch.equal(a, b[:, : a.shape[1]])
