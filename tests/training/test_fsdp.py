"""FSDP2 (``--fsdp``, training/fsdp.py) over 2 CPU processes (gloo) through `accelerate launch`: the sharded gradient
equals the single-process gradient of the same batch; a sharded run equals the same run without FSDP, and one
killed and resumed equals one that was not. Tolerances: float32 sums in another order, |Δ| ≤ 1e-6 of the
largest gradient entry (measured: ≤ 2.4e-7 of it)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch, same_weights, untimed_rows, weights

from poweropd.cli import main
from poweropd.run.faults import KILL_ENV

WORKER = Path(__file__).parent / "_fsdp_worker.py"


@pytest.mark.slow
def test_sharded_gradients_equal_the_single_process_gradient(tmp_path):
    out = tmp_path / "report.json"
    proc = accelerate_launch(str(WORKER), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2
    for name in ("power", "zscore", "full_kl"):
        for tied in (False, True):  # Qwen3-0.6B ties its output layer to the embeddings
            row = report[f"{name}/tied={tied}"]
            assert row["params"] and row["every_param_sharded"], (name, tied)
            assert row["max_abs_grad"] > 0
            assert row["max_abs_diff"] <= 1e-6 * max(1.0, row["max_abs_grad"]), (name, tied, row)
            assert row["loss"][1] == pytest.approx(row["loss"][0], rel=1e-5, abs=1e-8), (name, tied)
            assert row["grad_norm"][1] == pytest.approx(row["grad_norm"][0], rel=1e-6), (name, tied)
    for tied in (False, True):
        # one AdamW step at lr 1e-2 from these gradients: the first step is ≈ lr · sign(g), so gradients that
        # differ by 1e-10 near zero move a weight by up to ~lr · 1e-3
        assert report[f"adamw/tied={tied}"] <= 1e-5


def _train(pair, out, *extra, env=None):
    student, teacher, prompts = pair
    return accelerate_launch(
        "-m", "poweropd.cli", "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
        "--output-dir", str(out), "--batch-size", "4", "--max-steps", "3", "--max-new-tokens", "6", "--lr", "1e-3",
        "--save-every", "1", "--keep-last", "0", "--reward", "full_kl", "--no-progress", "--device", "cpu", *extra,
        env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_sharded_run_equals_the_unsharded_run_and_resumes_after_a_kill(tiny_pair, tmp_path):
    """full_kl: the student and the teacher sharded, the teacher's output layer gathered for the fused KL;
    with gradient checkpointing, which must change memory only."""
    plain = _train(tiny_pair, tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    argv = ("--fsdp", "--gradient-checkpointing")
    sharded = _train(tiny_pair, tmp_path / "sharded", *argv)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    a, b = weights(tmp_path / "plain" / "final"), weights(tmp_path / "sharded" / "final")
    assert a.keys() == b.keys()
    moved = max((a[k] - weights(tiny_pair[0])[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # the run trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6 * moved
    for x, y in zip(untimed_rows(tmp_path / "plain"), untimed_rows(tmp_path / "sharded")):
        assert x["response_length/mean"] == y["response_length/mean"]  # the same samples
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    # --teacher-device keeps the teacher whole on its device: the same run
    whole_teacher = _train(tiny_pair, tmp_path / "whole_teacher", "--fsdp", "--teacher-device", "cpu")
    assert whole_teacher.returncode == 0, whole_teacher.stderr[-3000:]
    c = weights(tmp_path / "whole_teacher" / "final")
    assert max((a[k] - c[k]).abs().max().item() for k in a) <= 1e-6 * moved
    # held per process: the sharded student's weights and AdamW moments and the teacher halved, plus the rollout
    # copy of the whole student (shards are split by rows, so rank 0's may be a few rows larger)
    student_mb = sum(t.numel() * t.element_size() for t in weights(tiny_pair[0]).values()) / 2**20
    teacher_mb = sum(t.numel() * t.element_size() for t in weights(tiny_pair[1]).values()) / 2**20
    held = [
        json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1])["memory/held_mb"]
        for run in ("plain", "sharded")
    ]
    assert held[0] == pytest.approx(3 * student_mb + teacher_mb, rel=1e-3)
    assert held[1] == pytest.approx(3 * student_mb / 2 + teacher_mb / 2 + student_mb, rel=0.03)
    # the checkpoint is the plain Hugging Face folder; the optimizer state is keyed by parameter name
    state = torch.load(tmp_path / "sharded" / "checkpoints" / "step-3" / "optimizer.pt", weights_only=True)
    assert "module.model.embed_tokens.weight" in state["state"]

    killed_dir = tmp_path / "killed"
    killed = _train(tiny_pair, killed_dir, *argv, env={KILL_ENV: "update:2"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (killed_dir / "checkpoints").glob("step-*")) == ["step-1"]
    resumed = _train(tiny_pair, killed_dir, *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same_weights(weights(killed_dir / "final"), b)
    assert untimed_rows(killed_dir) == untimed_rows(tmp_path / "sharded")


def test_held_memory_counts_weights_and_adamw_state_once():
    from conftest import make_tiny_qwen3

    from poweropd.config.sections import OptimConfig
    from poweropd.run.metrics import held_mb
    from poweropd.training.update import make_optimizer

    model = make_tiny_qwen3(64, hidden=32)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    optimizer = make_optimizer(params, OptimConfig(), torch.device("cpu"))
    assert held_mb([model, model], optimizer) * 2**20 == 4 * n  # float32 weights, counted once
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    # + AdamW's two float32 moments per weight and one float32 step count per tensor
    assert held_mb([model], optimizer) * 2**20 == 4 * n + 2 * 4 * n + 4 * len(params)


def test_fsdp_needs_two_processes_and_no_lora(tiny_pair, tmp_path, capsys):
    student, teacher, prompts = tiny_pair
    base = ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts), "--max-steps",
            "1", "--no-progress", "--device", "cpu", "--fsdp"]  # fmt: skip
    assert main([*base, "--output-dir", str(tmp_path / "one")]) == 2
    assert "--fsdp: expected 2 or more processes" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()  # refused before anything is written
    assert main([*base, "--output-dir", str(tmp_path / "lora"), "--lora-rank", "4"]) == 2
    assert "model.lora_rank (--lora-rank) with --fsdp: expected 0" in capsys.readouterr().err
