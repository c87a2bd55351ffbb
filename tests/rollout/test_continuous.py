"""The continuous-batching engine (continuous.py) against the reference sampler and against softmax."""

import math

import pytest
import torch

from poweropd.rollout.continuous import ContinuousBatchingSampler, kv_bytes_per_token, size_cache
from poweropd.rollout.engines import ENGINES, make_sampler, resolve_engine
from poweropd.rollout.samplers import HFSampler, SamplingConfig

STOPS = (2, 0)
PROMPTS = [[1, 40, 41, 42, 43], [1, 50], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]]


@pytest.fixture
def student(tiny_pair):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pair[0])


def _pair(model, page_size=8, **sampling):
    config = SamplingConfig(stop_token_ids=STOPS, **sampling)
    return ContinuousBatchingSampler(model, 0, config, page_size=page_size), HFSampler(model, 0, config)


def _rows(rollouts):
    """Each row's response tokens up to and including its stop token."""
    return [ids[mask].tolist() for ids, mask in zip(rollouts.response_ids_BT, rollouts.response_mask_BT)]


def test_greedy_equals_generate_token_for_token(student):
    cb, hf = _pair(student, max_new_tokens=12, temperature=0.0)
    try:
        a, b = cb.sample(PROMPTS), hf.sample(PROMPTS)
    finally:
        cb.close()
    assert _rows(a) == _rows(b)
    assert torch.equal(a.truncated_B, b.truncated_B)
    assert torch.equal(
        a.input_ids_BL[:, : a.prompt_len], b.input_ids_BL[:, : b.prompt_len]
    )  # left-padded prompts


def test_first_and_second_tokens_follow_the_softmax(student):
    """2,000 samples of one prompt (forked after one prefill): χ² of the first tokens against softmax, and of the
    second tokens against Σ_samples softmax(· | prompt, that sample's first token)."""
    prompt = PROMPTS[0]
    cb, _ = _pair(student, max_new_tokens=2, temperature=1.0)
    torch.manual_seed(0)
    try:
        r = cb.sample([prompt], n=2000)
    finally:
        cb.close()
    ids_BT = r.response_ids_BT
    assert ids_BT.shape[0] == 2000
    with torch.no_grad():
        probs_V = student(torch.tensor([prompt])).logits[0, -1].float().softmax(-1)
        going_B = ~torch.isin(
            ids_BT[:, 0], torch.tensor(STOPS)
        )  # rows that stopped at once have no second token
        firsts_F, counts_F = ids_BT[going_B, 0].unique(return_counts=True)
        contexts_FL = torch.cat([torch.tensor([prompt]).expand(len(firsts_F), -1), firsts_F[:, None]], dim=1)
        next_FV = student(contexts_FL).logits[:, -1].float().softmax(-1)
    expected2_V = (counts_F[:, None].double() * next_FV.double()).sum(0) / counts_F.sum()
    _assert_chi2_ok(ids_BT[:, 0], probs_V)
    _assert_chi2_ok(ids_BT[going_B, 1], expected2_V)


def _assert_chi2_ok(tokens, p_V, min_expected=5.0):
    """χ² goodness of fit, rare tokens pooled into one cell; fails below p = 1e-3 (Wilson–Hilferty tail)."""
    n = len(tokens)
    counts_V = torch.bincount(tokens, minlength=p_V.numel()).double()
    expected_V = p_V.double() * n
    big = expected_V >= min_expected
    obs = torch.cat([counts_V[big], counts_V[~big].sum()[None]])
    exp = torch.cat([expected_V[big], expected_V[~big].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    dof = int(keep.sum()) - 1
    assert dof >= 5
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    assert 0.5 * math.erfc(z / math.sqrt(2)) > 1e-3, (stat, dof)


def test_chi2_check_rejects_a_wrong_distribution():
    torch.manual_seed(0)
    p_V = torch.softmax(torch.randn(50), -1)
    _assert_chi2_ok(torch.multinomial(p_V, 2000, replacement=True), p_V)
    with pytest.raises(AssertionError):
        _assert_chi2_ok(torch.multinomial(p_V, 2000, replacement=True), torch.softmax(torch.randn(50), -1))


def test_stop_tokens_end_rows_and_the_cap_truncates(student):
    """Take the token greedy decoding emits third in row 0 as the stop token: row 0 ends there, a row that never
    emits it runs to exactly max_new_tokens and is marked truncated."""
    cb, _ = _pair(student, max_new_tokens=10, temperature=0.0)
    free = cb.sample(PROMPTS)
    cb.close()
    stop = int(free.response_ids_BT[0, 2])
    never = [b for b in range(len(PROMPTS)) if stop not in free.response_ids_BT[b].tolist()]
    config = SamplingConfig(stop_token_ids=(stop,), max_new_tokens=10, temperature=0.0)
    stopping = ContinuousBatchingSampler(student, 0, config, page_size=8)
    try:
        r = stopping.sample(PROMPTS)
    finally:
        stopping.close()
    first = free.response_ids_BT[0].tolist().index(stop)
    assert r.response_lengths_B[0] == first + 1 and not r.truncated_B[0]
    assert r.response_ids_BT[0, first] == stop and r.loss_mask()[0].sum() == first
    for b in never:
        assert r.response_lengths_B[b] == 10 and r.truncated_B[b]
    assert never, "the test needs a row that never emits the stop token"


def test_a_prompt_over_two_pages_is_recomputed_after_the_weights_change(student):
    """Stale-prefix regression: the prompt fills one 8-token page and part of a second. With block sharing a kept
    engine would find that full page cached from the first call (keys and values of the old weights) and reuse it
    (it does: transformers 5.24 with allow_block_sharing=True fails this test)."""
    long_prompt = PROMPTS[2]
    assert 8 < len(long_prompt) < 16
    cb, hf = _pair(student, max_new_tokens=12, temperature=0.0)
    try:
        before = cb.sample([long_prompt])
        with torch.no_grad():
            for p in student.parameters():
                p.mul_(1.5)
        after, reference = cb.sample([long_prompt]), hf.sample([long_prompt])
    finally:
        cb.close()
    assert _rows(after) == _rows(reference) and _rows(after) != _rows(before)


def test_in_place_optimizer_steps_reach_the_next_call(student):
    """A kept engine after AdamW steps samples from the new weights (greedy equality with generate)."""
    cb, hf = _pair(student, max_new_tokens=12, temperature=0.0)
    try:
        before = cb.sample(PROMPTS)
        optimizer = torch.optim.AdamW(student.parameters(), lr=0.05)
        for _ in range(3):
            r = hf.sample(PROMPTS[:1])
            loss = -student(r.input_ids_BL).logits.log_softmax(-1)[..., 7].mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        after, reference = cb.sample(PROMPTS), hf.sample(PROMPTS)
    finally:
        cb.close()
    assert _rows(after) == _rows(reference)
    assert _rows(after) != _rows(before)


def test_same_rng_state_same_samples_and_the_engine_leaves_the_stream_alone(student):
    cb, _ = _pair(student, max_new_tokens=8, temperature=1.0)
    try:
        torch.manual_seed(5)
        a = cb.sample(PROMPTS, n=3)
        torch.manual_seed(5)
        b = cb.sample(PROMPTS, n=3)
        torch.manual_seed(6)
        c = cb.sample(PROMPTS, n=3)
    finally:
        cb.close()
    assert _rows(a) == _rows(b) and _rows(a) != _rows(c)
    # starting an engine (transformers reseeds the global RNG while building it) leaves the caller's RNG as it was
    greedy = ContinuousBatchingSampler(
        student, 0, SamplingConfig(stop_token_ids=STOPS, max_new_tokens=4, temperature=0.0)
    )
    torch.manual_seed(9)
    greedy.sample(PROMPTS)
    greedy.close()
    drawn = torch.rand(4)
    torch.manual_seed(9)
    assert torch.equal(drawn, torch.rand(4))


def test_n_samples_per_prompt_come_in_prompt_order(student):
    cb, _ = _pair(student, max_new_tokens=6, temperature=1.0)
    torch.manual_seed(0)
    try:
        r = cb.sample(PROMPTS, n=4)
    finally:
        cb.close()
    assert r.input_ids_BL.shape[0] == 12
    for i, prompt in enumerate(PROMPTS):
        for k in range(4):
            row_BP = r.input_ids_BL[4 * i + k, : r.prompt_len]
            assert row_BP[r.prompt_len - len(prompt) :].tolist() == prompt
    assert len({tuple(x) for x in _rows(r)[:4]}) > 1  # forked samples are samples, not copies


def test_bf16_engine_samples_from_a_synced_copy(student):
    config = SamplingConfig(stop_token_ids=STOPS, max_new_tokens=4, temperature=0.0)
    cb = make_sampler("continuous", student, 0, config, dtype=torch.bfloat16)
    try:
        cb.sample(PROMPTS)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.01)
        cb.sample(PROMPTS)
        engine = cb._engine_model
    finally:
        cb.close()
    assert engine is not student and next(engine.parameters()).dtype == torch.bfloat16
    assert next(student.parameters()).dtype == torch.float32
    for mine, theirs in zip(engine.parameters(), student.parameters(), strict=True):
        assert torch.equal(mine, theirs.to(torch.bfloat16))


def test_cache_is_sized_by_the_workload_and_capped_by_the_budget(student):
    cfg = student.config
    per_token = kv_bytes_per_token(cfg, torch.float32)
    # K and V, every layer, every KV head, fp32
    assert per_token == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4
    size = size_cache(cfg, torch.float32, torch.device("cpu"), tokens_wanted=1000, page_size=16)
    assert size.num_blocks == math.ceil(1000 / 16) + 1 and size.page_size == 16
    capped = size_cache(
        cfg, torch.float32, torch.device("cpu"), 10**9, page_size=16, memory_budget_bytes=per_token * 160
    )
    assert capped.num_blocks == 10


def test_a_workload_larger_than_the_cache_is_queued_not_dropped(student):
    config = SamplingConfig(stop_token_ids=STOPS, max_new_tokens=12, temperature=0.0)
    per_token = kv_bytes_per_token(student.config, torch.float32)
    small = ContinuousBatchingSampler(student, 0, config, page_size=8, memory_budget_bytes=per_token * 8 * 6)
    try:
        r = small.sample(PROMPTS * 4)  # 12 rows of up to 24 tokens in 6 pages of 8
    finally:
        small.close()
    assert small.cache_size.num_blocks == 6
    assert _rows(r) == _rows(HFSampler(student, 0, config).sample(PROMPTS * 4))


def test_engine_names_and_auto(student):
    assert set(ENGINES) == {"generate", "loop", "continuous", "vllm", "auto"}
    # head size 8: vLLM's CPU attention cannot run it (tests/test_vllm.py: auto picks vllm where it can)
    assert resolve_engine("auto", student) == "loop"
    assert resolve_engine("continuous", student) == "continuous"


# --- evaluation and diagnostics through the engine ------------------------------------------------------------


def _problems():
    from poweropd.eval.benchmarks import Problem

    return {
        "gsm8k": [Problem(f"g{i}", f"What is {i} + {i}?", [str(2 * i)]) for i in range(5)],
        "aime24": [Problem("a0", "Find 7.", ["7"]), Problem("a1", "Find 8.", ["8", "08"])],
    }


def _tiny_lm():
    from conftest import make_char_tokenizer, make_tiny_qwen3

    tokenizer = make_char_tokenizer()
    return make_tiny_qwen3(len(tokenizer), seed=3), tokenizer


def test_streamed_greedy_evaluation_equals_generate():
    from poweropd.config.sections import EvalConfig
    from poweropd.eval.harness import evaluate_model

    model, tokenizer = _tiny_lm()
    runs = {}
    for engine in ("generate", "continuous"):
        cfg = EvalConfig(
            benchmarks=("gsm8k", "aime24"), n=2, max_new_tokens=10, batch_size=3, temperature=0, engine=engine
        )
        runs[engine] = evaluate_model(model, tokenizer, _problems(), cfg, progress=False)
    assert runs["continuous"] == runs["generate"]


class _TwoRanks:
    """A Collective for rank ``rank`` of 2 whose gather returns this rank's rows and the ones recorded for the other."""

    world_size = 2

    def __init__(self, rank, other_parts):
        self.rank, self.other_parts, self.sent = rank, other_parts, []

    def gather_objects(self, obj):
        self.sent.append(obj)
        other = self.other_parts.pop(0) if self.other_parts else []
        return [obj, other] if self.rank == 0 else [other, obj]


def test_sharded_evaluation_gathers_what_one_process_computes():
    """Rank r samples problems r, r + 2, …; the gathered greedy results equal one process's."""
    from poweropd.config.sections import EvalConfig
    from poweropd.eval.harness import evaluate_model

    model, tokenizer = _tiny_lm()
    cfg = EvalConfig(
        benchmarks=("gsm8k", "aime24"), n=2, max_new_tokens=10, temperature=0, engine="continuous"
    )
    whole = evaluate_model(model, tokenizer, _problems(), cfg, progress=False)
    rank1 = _TwoRanks(1, [])
    evaluate_model(model, tokenizer, _problems(), cfg, progress=False, comm=rank1)
    assert sorted({row["id"] for part in rank1.sent for row in part}) == ["a1", "g1", "g3"]
    sharded = evaluate_model(
        model, tokenizer, _problems(), cfg, progress=False, comm=_TwoRanks(0, rank1.sent)
    )
    assert sharded == whole


def test_diagnostics_sample_through_the_engine(tiny_pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poweropd.diagnostics import sample_and_score

    student, teacher = (AutoModelForCausalLM.from_pretrained(p) for p in tiny_pair[:2])
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair[0])
    problems = ["Compute 1 + 2.", "Compute 3 + 4.", "What is 5?"]
    got = {
        engine: sample_and_score(
            student,
            teacher,
            tokenizer,
            problems,
            max_new_tokens=8,
            temperature=0.0,
            samples_per_prompt=2,
            batch_size=4,
            engine=engine,
        )  # fmt: skip
        for engine in ("generate", "continuous")
    }
    a, b = got["generate"], got["continuous"]
    assert torch.equal(a.prompt_index_B, b.prompt_index_B) and torch.equal(
        a.response_lengths_B, b.response_lengths_B
    )
    for row in range(len(problems) * 2):
        mask_a, mask_b = a.mask_BT[row], b.mask_BT[row]
        assert a.response_ids_BT[row][mask_a].tolist() == b.response_ids_BT[row][mask_b].tolist()
        assert torch.allclose(a.teacher_logp_BT[row][mask_a], b.teacher_logp_BT[row][mask_b], atol=1e-5)
        assert torch.allclose(a.student_logp_BT[row][mask_a], b.student_logp_BT[row][mask_b], atol=1e-5)
