"""Faults: a run killed at any moment resumes bit-exactly; SIGTERM checkpoints and exits; NaN steps are skipped;
old checkpoints are removed only after a newer one is complete (docs/reliability.md)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import same_weights, untimed_rows, weights

from poweropd.cli import main
from poweropd.run.faults import KILL_ENV, KILL_POINTS


def _args(pair, out, *extra):
    student, teacher, prompts = pair
    return [
        "train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
        "--output-dir", str(out), "--batch-size", "4", "--max-new-tokens", "8", "--lr", "1e-3",
        "--reward", "power", "--alpha", "2", "--no-progress", *extra,
    ]  # fmt: skip


def _run(argv, env=None, timeout=300):
    cmd = [sys.executable, "-m", "poweropd.cli", *argv]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


STEPS = 6


@pytest.fixture(scope="module")
def straight(tiny_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = _run(_args(tiny_pair, out, "--max-steps", str(STEPS), "--save-every", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_killed_at_every_point_resumes_bit_exactly(tiny_pair, straight, tmp_path):
    """One run SIGKILLed five times, at step 2 while sampling, at 3 before the optimizer step, at 4 after its
    metrics row, at 5 halfway through the checkpoint and at 5 after its checkpoint (between steps), resumed with
    --resume after each: the final weights and metrics equal the uninterrupted run's."""
    out = tmp_path / "run"
    argv = _args(tiny_pair, out, "--max-steps", str(STEPS), "--save-every", "1", "--keep-last", "0")
    kills = [("sample", 2), ("update", 3), ("logged", 4), ("checkpoint", 5), ("step_end", 5)]
    assert sorted({point for point, _ in kills}) == sorted(KILL_POINTS)
    for i, (point, step) in enumerate(kills):
        killed = _run([*argv, "--resume"] if i else argv, env={KILL_ENV: f"{point}:{step}"})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        last_complete = step if point == "step_end" else step - 1
        assert max(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*")) == last_complete, point
        if point == "checkpoint":  # the half-written step-5 is a hidden temporary folder, never a checkpoint
            assert list((out / "checkpoints").glob(".step-5.*"))
            assert not (out / "checkpoints" / "step-5").exists()
    resumed = _run([*argv, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list((out / "checkpoints").glob(".step-*"))
    assert same_weights(weights(out / "final"), weights(straight / "final"))
    assert untimed_rows(out) == untimed_rows(straight)


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_says_how_to_resume_and_exits_nonzero(tiny_pair, straight, tmp_path):
    out = tmp_path / "run"
    argv = _args(tiny_pair, out, "--max-steps", str(STEPS), "--save-every", "0")
    proc = subprocess.Popen([sys.executable, "-m", "poweropd.cli", *argv], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    stopped = len(metrics.read_text().splitlines())
    assert 1 <= stopped < STEPS  # it finished the step it was in, and no more
    line = stderr.strip().splitlines()[-1]
    assert f"stopped by SIGTERM after step {stopped}" in line and "--resume" in line
    assert (out / "checkpoints" / f"step-{stopped}" / "state.json").exists()
    assert _run([*argv, "--resume"]).returncode == 0
    assert same_weights(weights(out / "final"), weights(straight / "final"))
    assert untimed_rows(out) == untimed_rows(straight)


def test_keep_last_removes_old_checkpoints_once_a_newer_one_is_complete(tiny_pair, tmp_path):
    out = tmp_path / "run"
    assert main(_args(tiny_pair, out, "--max-steps", "5", "--save-every", "1", "--keep-last", "2")) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-5"]
    rows = [json.loads(line) for line in (out / "checkpoints.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["removed"] for r in rows] == [[], [], ["step-1"], ["step-2"], ["step-3"]]
    size = sum(f.stat().st_size for f in (out / "checkpoints" / "step-5").rglob("*") if f.is_file()) / 2**20
    assert rows[-1]["size_mb"] == pytest.approx(size, abs=1e-3) and size > 0
    assert (out / "final" / "model.safetensors").exists()
    keep_all = tmp_path / "all"
    assert main(_args(tiny_pair, keep_all, "--max-steps", "3", "--save-every", "1", "--keep-last", "0")) == 0
    assert sorted(p.name for p in (keep_all / "checkpoints").iterdir()) == ["step-1", "step-2", "step-3"]


def test_a_nan_gradient_skips_the_step_and_leaves_weights_and_adamw_state(tiny_pair, tmp_path, monkeypatch):
    import poweropd.training.update as T

    real, calls = T.compute_gradients, []

    def poisoned(student, *args, **kwargs):
        result = real(student, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # step 2
            next(p for p in student.parameters() if p.grad is not None).grad.fill_(float("nan"))
        return result

    monkeypatch.setattr(T, "compute_gradients", poisoned)
    out = tmp_path / "run"
    assert main(_args(tiny_pair, out, "--max-steps", "3", "--save-every", "1", "--keep-last", "0")) == 0
    rows = untimed_rows(out)
    assert [r["train/step_skipped"] for r in rows] == [0, 1, 0]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1]
    ckpt = out / "checkpoints"
    assert same_weights(weights(ckpt / "step-2"), weights(ckpt / "step-1"))
    assert not same_weights(weights(ckpt / "step-3"), weights(ckpt / "step-2"))
    adam = [torch.load(ckpt / f"step-{s}" / "optimizer.pt", weights_only=True)["state"] for s in (1, 2)]
    assert adam[0].keys() == adam[1].keys()
    for key in adam[0]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(adam[0][key][name], adam[1][key][name])
    assert json.loads((ckpt / "step-3" / "state.json").read_text())["skipped_steps"] == 1


def test_a_nan_teacher_stops_the_run_naming_the_step_and_the_checkpoint(tiny_pair, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student, teacher, prompts = tiny_pair
    broken = tmp_path / "nan_teacher"
    model = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(broken)
    out = tmp_path / "run"
    argv = _args(
        (student, broken, prompts), out, "--max-steps", "10", "--save-every", "1", "--max-skipped-steps", "2"
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 2:" in err[0] and "2 steps in a row" in err[0]
    assert "--max-skipped-steps 2" in err[0] and str(out / "checkpoints" / "step-2") in err[0]
    assert [r["train/step_skipped"] for r in untimed_rows(out)] == [1, 1]
    before = weights(student)
    assert same_weights(weights(out / "checkpoints" / "step-2"), before)  # never updated


def test_resume_compares_settings_as_yaml_wrote_them(tiny_pair, tmp_path, monkeypatch):
    """With no setting allowed to change, resuming with the same flags is accepted: tuples (eval.benchmarks,
    run.report_to) compare equal to the lists config.yaml holds."""
    import poweropd.run.rundir as tracking

    monkeypatch.setattr(tracking, "RESUMABLE_CHANGES", {})
    out = tmp_path / "run"
    argv = _args(tiny_pair, out, "--max-steps", "1", "--save-every", "1")
    assert main(argv) == 0
    assert main([*argv, "--resume"]) == 0
    assert (
        main([*_args(tiny_pair, out, "--max-steps", "2", "--save-every", "1"), "--resume"]) == 2
    )  # a change
