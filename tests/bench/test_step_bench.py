"""benchmarks/step_bench.py: every mode runs and reports; our paths equal the naive recipes they replace."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

BENCH = REPO / "benchmarks" / "step_bench.py"
sys.path.insert(0, str(BENCH.parent))  # benchmarks/stepbench, the measuring code the script runs
import stepbench as sb  # noqa: E402

# 3 rows × 7 positions in chunks of 4: chunks straddle rows; odd rows stop early, prompts are left-padded.
# One thread: on a busy 2-core machine, 2 OpenMP threads make these tiny steps ~20× slower.
TINY = sb.BenchConfig(
    vocab=96,
    batch=3,
    seq=7,
    prompt_len=5,
    repeats=1,
    warmup=1,
    chunk_size=4,
    student_shape="tiny",
    teacher_shape="tiny",
    threads=1,
)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # build_context sets the process-wide thread count
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("ours", "naive"), sb.PAIRS)
def test_our_path_gives_the_naive_loss_and_gradient(ours, naive):
    ctx = sb.build_context(TINY)
    assert ctx.rollouts.loss_mask().sum() < TINY.batch * TINY.seq  # some padding is masked out
    row = sb.compare_pair(ctx, ours, naive)
    assert row["loss_ours"] == pytest.approx(row["loss_naive"], rel=1e-5, abs=1e-7)
    assert "lm_head.weight" in row["grads_ours"]
    for name, grad in row["grads_ours"].items():
        torch.testing.assert_close(grad, row["grads_naive"][name], rtol=1e-4, atol=1e-7, msg=name)
    assert row["max_grad_rel_err"] < 1e-4 and row["min_grad_cosine"] > 0.9999


def test_check_reports_both_pairs_under_bf16_autocast():
    rows = sb.check(dataclasses.replace(TINY, dtype="bfloat16"))
    assert [(r["ours"], r["naive"]) for r in rows] == list(sb.PAIRS)
    for r in rows:
        # bf16 logits on both sides, float32 softmaxes: the same gradient up to bf16 rounding
        assert r["min_grad_cosine"] > 0.99, r
        assert r["loss_ours"] == pytest.approx(r["loss_naive"], rel=2e-2, abs=1e-3), r
    json.dumps(rows)


@pytest.mark.parametrize("mode", sb.MODE_NAMES)
def test_worker_reports_time_and_memory(mode):
    result = sb.run_worker(mode, TINY)
    assert {
        "time_s",
        "peak_mb",
        "score_s",
        "update_s",
        "times",
        "peaks_mb",
        "losses",
        "cpu_s",
    } <= result.keys()
    assert len(result["times"]) == TINY.repeats
    assert result["time_s"] > 0 and result["peak_mb"] >= 0
    json.dumps(result)


def test_targets_compare_ratios_with_bounds():
    modes = {
        "power_sampled": {"time_s": 1.0, "peak_mb": 10.0},
        "naive_sampled": {"time_s": 2.0, "peak_mb": 15.0},
        "full_kl_naive": {"time_s": 3.0, "peak_mb": 100.0},
        "full_kl_chunked": {"error": "worker exited with 1"},
    }
    rows = {(r["ref"], r["metric"]): r for r in sb.target_rows(modes)}
    assert rows["naive_sampled", "time_s"]["pass"] and not rows["naive_sampled", "peak_mb"]["pass"]
    assert rows["full_kl_naive", "peak_mb"]["ratio"] == pytest.approx(0.1)
    assert len(rows) == 4  # the failed mode's target is left out, not crashed on


@pytest.mark.slow
def test_cli_runs_each_mode_in_a_fresh_process(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--dry-run",
            "--threads",
            "1",
            "--modes",
            "power_sampled",
            "naive_sampled",
        ]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["config"]["vocab"] == 512
    assert set(result["modes"]) == {"power_sampled", "naive_sampled"}
    for m in result["modes"].values():
        assert {"time_s", "peak_mb", "times"} <= m.keys()
    assert "PASS" in proc.stdout or "FAIL" in proc.stdout


def test_grad_agreement_is_scale_free():
    torch.manual_seed(0)
    ref = torch.randn(1000) * 1e-7  # gradients of a random-init model under α = 1 are this small
    rel, cos = sb.grad_agreement(ref * (1 + 1e-3), ref)
    assert rel == pytest.approx(1e-3, rel=1e-3) and cos == pytest.approx(1.0, abs=1e-12)
    rel, cos = sb.grad_agreement(-ref, ref)
    assert rel == pytest.approx(2.0) and cos == pytest.approx(-1.0)
    assert sb.grad_agreement(torch.zeros(3), torch.zeros(3)) == (0.0, 1.0)


def _load_scaling():
    sys.path.insert(0, str(BENCH.parent))  # scaling.py imports step_bench from its folder
    spec = importlib.util.spec_from_file_location("scaling", BENCH.parent / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaling_slopes_are_least_squares_in_mb_per_1k_positions():
    scaling = _load_scaling()
    rows = [
        # ours flat at 50 MB; naive 0.5 MB per position → 500 MB per 1k positions
        {
            "vocab": 1000,
            "seq": t,
            "positions": t,
            "power_sampled_extra_mb": 50.0,
            "naive_sampled_extra_mb": t / 2,
        }
        for t in (128, 256, 512)
    ] + [{"vocab": 2000, "seq": 128, "positions": 128, "power_sampled_extra_mb": 1.0}]
    by_vocab = {r["vocab"]: r for r in scaling.slopes(rows)}
    assert by_vocab[1000]["power_sampled_mb_per_1k"] == pytest.approx(0.0)
    assert by_vocab[1000]["naive_sampled_mb_per_1k"] == pytest.approx(500.0)
    assert "power_sampled_mb_per_1k" not in by_vocab[2000]  # one point: no slope
    table = scaling.format_table(rows)
    assert "| 1,000 | 0 | 500 |" in table and "| 2,000 | nan | nan |" in table


def test_merge_recomputes_targets_across_runs_and_refuses_bad_input(tmp_path):
    config = {"vocab": 96}
    ours = {"config": config, "modes": {"power_sampled": {"time_s": 1.0, "peak_mb": 10.0}}}
    naive = {"config": config, "modes": {"full_kl_naive": {"time_s": 4.0, "peak_mb": 100.0}}}
    merged = sb.merge_results([ours, naive])
    assert set(merged["modes"]) == {"power_sampled", "full_kl_naive"}
    assert {(r["metric"], r["ratio"]) for r in merged["targets"]} == {("time_s", 0.25), ("peak_mb", 0.1)}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps(ours))
    paths[1].write_text(json.dumps({**naive, "config": {"vocab": 512}}))
    errors = []
    for args in (list(map(str, paths)), [str(tmp_path / "missing.json")]):  # the CLI, as a user runs it
        proc = subprocess.run([sys.executable, str(BENCH), "--merge", *args], capture_output=True, text=True)
        assert proc.returncode == 2
        errors += proc.stderr.strip().splitlines()
    assert len(errors) == 2 and "different configs" in errors[0] and "missing.json" in errors[1]
