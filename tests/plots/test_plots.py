"""The figure commands end to end: diagnose on tiny random models, plot on synthetic run dirs, prune via the CLI."""

from __future__ import annotations

import json
import math
import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from poweropd import diagnostics as D
from poweropd.cli import main
from poweropd.data import encode_prompts
from poweropd.plots.diagnose import reward_surface_figure
from poweropd.plots.runs import load_run, run_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
    chars = sorted(set(string.printable) - set(string.whitespace) | {" ", "\n"})
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
    )


def _save_tiny_lm(path, tokenizer, *, layers: int, seed: int) -> None:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tokenizer = _tiny_tokenizer()
    _save_tiny_lm(root / "teacher", tokenizer, layers=3, seed=0)
    _save_tiny_lm(root / "student", tokenizer, layers=1, seed=1)
    problems = [
        "What is 2 + 3?",
        "Tom has 4 apples and eats one. How many are left?",
        "Compute 7 * 6.",
        "1+1",
    ]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"problem": p}) + "\n" for p in problems))
    return root


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_diagnose_end_to_end(tiny_pair, tmp_path):
    out = tmp_path / "diag"
    argv = ["diagnose", "--teacher", str(tiny_pair / "teacher"), "--student", str(tiny_pair / "student")]
    argv += ["--data", str(tiny_pair / "prompts.jsonl"), "--num-prompts", "3", "--samples-per-prompt", "2"]
    argv += ["--max-new-tokens", "12", "--alphas", "0.1,1,10", "--batch-size", "4", "--output-dir", str(out)]
    assert main(argv) == 0

    summary = json.loads((out / "summary.json").read_text())
    meta, rewards = summary["meta"], summary["rewards"]
    assert meta["num_rollouts"] == 6 and meta["num_prompts"] == 3
    assert 0 < meta["num_tokens"] <= 6 * 12
    assert 1 <= meta["response_length"]["min"] <= meta["response_length"]["max"] <= 12
    # proximal takes α ∈ (0, 1] only, so --alphas 0.1,1,10 gives proximal@0.1 and proximal@1
    expected = {"log_ratio", "power@0.1", "power@1", "power@10", "clip", "tanh", "zscore"}
    assert set(rewards) == expected | {"proximal@0.1", "proximal@1", "tv", "log_ratio+kl"}
    # vOPD's baseline: the log ratio + KL ≥ 0 at every token, so its mean lies above the log ratio's
    assert rewards["log_ratio+kl"]["mean"] >= rewards["log_ratio"]["mean"]
    for stat in ("min", "max", "mean"):  # α = 1 is the log ratio itself
        assert rewards["proximal@1"][stat] == pytest.approx(rewards["log_ratio"][stat], abs=1e-6)
    assert rewards["proximal@0.1"]["min"] >= math.log(0.9) - 1e-6
    assert all(s["count"] == meta["num_tokens"] for s in rewards.values())
    for name in ("power@0.1", "power@1", "power@10", "clip", "tanh"):
        assert -1.0 <= rewards[name]["min"] <= rewards[name]["max"] <= 1.0
    log_ratio_positions = summary["positions"]["log_ratio"]
    assert log_ratio_positions[0]["start"] == 0 and log_ratio_positions[0]["stop"] == 8
    assert sum(b["count"] for b in log_ratio_positions) == meta["num_tokens"]
    assert min(b["min"] for b in log_ratio_positions if b["count"]) == pytest.approx(
        rewards["log_ratio"]["min"]
    )
    worst = summary["most_negative"]
    assert len(worst) == min(10, meta["num_tokens"])
    assert worst[0]["value"] == pytest.approx(rewards["log_ratio"]["min"])
    assert all(isinstance(w["text"], str) and 0 <= w["position"] < 12 for w in worst)
    assert sum(summary["histograms"]["log_ratio"]["counts"]) == meta["num_tokens"]
    for name in ("histogram.png", "positions.png", "surface.png"):
        assert _is_png(out / name), name
    report = (out / "report.md").read_text()
    assert f"goes down to {rewards['log_ratio']['min']:.2f}" in report


@pytest.mark.slow
def test_sample_and_score_matches_a_full_forward(tiny_pair):
    """The log-probs diagnose reports are those of a plain forward pass over prompt + response (no padding)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair / "teacher").eval()
    student = AutoModelForCausalLM.from_pretrained(tiny_pair / "student").eval()
    with torch.no_grad():  # make the student stop now and then, so rows of one batch differ in length
        eos_row = student.lm_head.weight[tokenizer.eos_token_id]
        eos_row *= 4 / eos_row.norm()
    torch.manual_seed(0)
    problems = ["What is 2 + 3?", "1+1", "Compute 7 * 6 please."]  # different lengths: left-padded prompts
    scored = D.sample_and_score(student, teacher, tokenizer, problems, max_new_tokens=10, batch_size=2)
    assert scored.prompt_index_B.tolist() == [0, 1, 2]
    assert scored.truncated_B.any() and not scored.truncated_B.all(), (
        "test premise: some rows stop, some do not"
    )
    for row, problem in enumerate(problems):
        prompt_ids = encode_prompts(tokenizer, [problem])[0]
        n = int(scored.response_lengths_B[row])
        response_ids = scored.response_ids_BT[row, :n].tolist()
        ids_1L = torch.tensor([prompt_ids + response_ids])
        for model, logp_BT in ((teacher, scored.teacher_logp_BT), (student, scored.student_logp_BT)):
            with torch.no_grad():
                logp_LV = model(ids_1L).logits[0].log_softmax(-1)
            expected_N = logp_LV[len(prompt_ids) - 1 : -1].gather(-1, torch.tensor(response_ids)[:, None])[
                :, 0
            ]
            torch.testing.assert_close(logp_BT[row, :n], expected_N, rtol=0, atol=1e-4)
        # the mask drops the final stop token (as training does) and everything after the response
        expected_mask = [True] * n
        if not scored.truncated_B[row]:
            assert response_ids[-1] == tokenizer.eos_token_id
            expected_mask[-1] = False
        assert scored.mask_BT[row].tolist() == expected_mask + [False] * (scored.mask_BT.shape[1] - n)


def _write_run(
    path,
    *,
    reward: dict | None,
    steps: int = 6,
    eval_every: int = 3,
    positions: bool = True,
    scale: float = 1.0,
):
    path.mkdir(parents=True)
    if reward is not None:
        lines = ["reward:"] + [f"  {k}: {v}" for k, v in reward.items()] + ["optim:", "  lr: 1.0e-5"]
        (path / "config.yaml").write_text("\n".join(lines) + "\n")
    rows, position_rows = [], []
    for step in range(1, steps + 1):
        row = {
            "step": step,
            "loss": 1.0 / step,
            "grad/norm": scale * 10.0 ** (-step / 3),
            "reward/mean": -0.1 * scale,
            "reward/min": -1.0 * scale,
            "reward/max": 0.5 * scale,
            "reward/p05": -0.6 * scale,
            "reward/p95": 0.3 * scale,
            "log_ratio/min": (-40.0 + step) * scale,
            "log_ratio/p05": -6.0 * scale,
            "log_ratio/p95": 1.0 * scale,
            "log_ratio/max": 3.0 * scale,
            "response_length/mean": 100.0 + step,
        }
        if step % eval_every == 0:
            row["eval/gsm8k/avg@4"] = 0.1 * step
        rows.append(row)
        buckets = [
            {
                "start": start,
                "stop": stop,
                "reward_mean": -0.1,
                "reward_min": -1.0,
                "reward_max": 0.5,
                "log_ratio_mean": -1.0,
                "log_ratio_min": -30.0 / (start + 1),
                "log_ratio_max": 2.0,
            }
            for start, stop in D.position_buckets(40)
        ]
        position_rows.append({"step": step, "buckets": buckets})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if positions:
        (path / "positions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in position_rows))


def test_plot_runs_overlaid(tmp_path, capsys):
    _write_run(tmp_path / "a", reward={"name": "power", "alpha": 10})
    _write_run(tmp_path / "b", reward={"name": "log_ratio"}, eval_every=2, positions=False, scale=2.0)
    _write_run(tmp_path / "my_run", reward=None, scale=0.5)
    assert run_label(tmp_path / "a") == "power@10"  # the method id, as the demo and --methods spell it
    assert run_label(tmp_path / "b") == "log_ratio"
    assert run_label(tmp_path / "my_run") == "my_run"
    assert len(load_run(tmp_path / "a").positions) == 6

    out = tmp_path / "figures"
    assert (
        main(
            [
                "plot",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                str(tmp_path / "my_run"),
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    written = capsys.readouterr().out.split()
    assert sorted(written) == sorted(
        str(out / n) for n in ("rewards.png", "dynamics.png", "grad_norm.png", "positions.png")
    )
    assert all(_is_png(out / n) for n in ("rewards.png", "dynamics.png", "grad_norm.png", "positions.png"))


def test_plot_run_without_eval_or_positions(tmp_path):
    _write_run(tmp_path / "r", reward={"name": "clip"}, eval_every=100, positions=False)
    out = tmp_path / "figures"
    assert main(["plot", str(tmp_path / "r"), "--output-dir", str(out)]) == 0
    assert _is_png(out / "dynamics.png") and not (out / "positions.png").exists()


def test_reward_surface_figure(tmp_path):
    assert _is_png(reward_surface_figure([1, 10, 100], tmp_path / "s.png", grid=50))


def test_plot_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "directory not found" in err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    assert main(["plot", str(tmp_path / "bad"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "metrics.jsonl:2" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_cli_round_trip(tiny_pair, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert (
        main(
            ["prune", "--model", str(tiny_pair / "teacher"), "--keep-layers", "0,2", "--output-dir", str(out)]
        )
        == 0
    )
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair / "teacher").eval()
    assert pruned.config.num_hidden_layers == 2 and len(pruned.config.layer_types) == 2
    assert (
        AutoTokenizer.from_pretrained(out).get_vocab()
        == AutoTokenizer.from_pretrained(tiny_pair / "teacher").get_vocab()
    )
    torch.testing.assert_close(
        pruned.model.layers[1].mlp.down_proj.weight, teacher.model.layers[2].mlp.down_proj.weight
    )
    from poweropd.models.prune import prune_layers

    ids_BL = torch.randint(0, teacher.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids_BL).logits, prune_layers(teacher, [0, 2])(ids_BL).logits)

    capsys.readouterr()
    fresh = out.with_name("pruned-again")
    assert (
        main(
            [
                "prune",
                "--model",
                str(tiny_pair / "teacher"),
                "--keep-layers",
                "0-3",
                "--output-dir",
                str(fresh),
            ]
        )
        == 2
    )
    assert "has 3 layers" in capsys.readouterr().err and not fresh.exists()
    # an existing model is never overwritten
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert (
        main(["prune", "--model", str(tiny_pair / "teacher"), "--keep-layers", "0", "--output-dir", str(out)])
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_diagnose_bad_inputs(tiny_pair, tmp_path, capsys):
    base = ["diagnose", "--teacher", str(tiny_pair / "teacher"), "--student", str(tiny_pair / "student")]
    base += ["--output-dir", str(tmp_path / "o")]
    assert main([*base, "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse-level: a bad α is refused before anything loads
        main([*base, "--data", str(tiny_pair / "prompts.jsonl"), "--alphas", "1,-2"])
    assert exit_info.value.code == 2
    assert "--alphas" in capsys.readouterr().err
