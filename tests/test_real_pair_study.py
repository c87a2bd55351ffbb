"""scripts/real_pair_study.py --quick: the whole real-pair pipeline on a few steps, from a clean cache; a second
invocation finds every stage done and only recomputes the report; bad inputs are one line and exit 2."""

import json
import subprocess
import sys
import time

import pytest
from conftest import DATA_DIR, REPO

SCRIPT = REPO / "scripts" / "real_pair_study.py"
pytestmark = pytest.mark.slow


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def test_bad_data_dir_is_one_line_and_exit_2(tmp_path):
    result = _run("--quick", "--data-dir", tmp_path / "nowhere", "--output-dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--data-dir" in result.stderr
    assert not (tmp_path / "out").exists()


def test_quick_study_runs_whole_and_resumes(tmp_path):
    out = tmp_path / "study"
    first = _run("--quick", "--output-dir", out, "--data-dir", DATA_DIR)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert list(methods) == ["log_ratio", "clip", "power@1", "power@10", "full_kl"]

    # the criterion is stated, with its thresholds, and judged on the measured reductions
    crit = results["criterion"]
    assert crit["thresholds"] == {"full_kl": 0.30, "sampled_mean": 0.10}
    sampled = [methods[m]["kl_reduction"] for m in methods if m != "full_kl"]
    assert crit["sampled_mean_reduction"] == pytest.approx(sum(sampled) / len(sampled))
    assert crit["met"] == (crit["full_kl_reduction"] >= 0.30 and crit["sampled_mean_reduction"] >= 0.10)

    # the learning rate: full_kl's lowest final validation KL over the grid
    lr = results["lr"]
    assert lr["chosen"] == min(lr["grid"], key=lambda x: lr["validation_kl_final"][f"{x:g}"])

    # per run: the reduction is 1 − KL / KL₀ on the test prompts; the curves start at the initial student
    initial = results["initial"]
    for m, row in methods.items():
        seed0 = json.loads((out / "runs" / (f"{m}-seed0" + ("" if m != "full_kl" else f"-lr{lr['chosen']:g}"))
                            / "row.json").read_text())  # fmt: skip
        assert row["per_seed"]["kl_reduction"][0] == pytest.approx(
            1 - seed0["test"]["reverse_kl"] / initial["test"]["reverse_kl"]
        )
        assert row["curves"]["eval_steps"] == [0, 1, 2]
        assert row["curves"]["reverse_kl"][0][0] == initial["validation"]["reverse_kl"]
        assert row["curves"]["reverse_kl"][0][1:] == seed0["curves"]["reverse_kl"]
        assert len(row["curves"]["grad_norm"][0]) == 2
    assert initial["teacher_test"]["reverse_kl"] == pytest.approx(0.0, abs=1e-4)  # the teacher against itself
    assert set(results["claims"]) == {"C1", "C2", "C3", "C4", "C5"}

    # the search: each candidate measured before training, the rule's pick among those below 1 nat
    search = results["search"]
    assert [c["dropped"] for c in search["candidates"]] == [[10, 14, 18, 22], [26, 27]]
    below = [c for c in search["candidates"] if c["reverse_kl"] < 1.0]
    expected = max(below, key=lambda c: (len(c["dropped"]), -c["reverse_kl"]))["dropped"] if below else None
    assert search["chosen"] == expected
    for figure in results["figures"]:
        assert (out / figure).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert report.index("Criterion") < report.index("| student |")  # the criterion is stated first

    # a second invocation trains nothing: every run's row is kept, the numbers are the same
    rows = {p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/row.json"), out / "initial.json",
                                               out / "candidates.json"]}  # fmt: skip
    assert (
        len(rows) == 8
    )  # two learning rates for full_kl, four other methods, the initial measures, the search
    started = time.perf_counter()
    second = _run("--quick", "--output-dir", out, "--data-dir", DATA_DIR)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "finished" not in second.stdout
    assert time.perf_counter() - started < 120
    assert {p: p.stat().st_mtime_ns for p in rows} == rows
    again = json.loads((out / "results.json").read_text())
    assert again["methods"] == methods and again["criterion"] == crit and again["claims"] == results["claims"]
