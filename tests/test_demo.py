"""`poweropd demo`: the claim verdicts on hand-made numbers, and the quick demo end to end from an empty cache."""

import json

import pytest

from poweropd.demo import METHODS, DemoConfig, claims, report
from poweropd.errors import UserError


def _method(reward, alpha=None, acc=0.5, length=30.0, grad=1.0, rmin=-1.0, rmax=1.0, lrmin=-20.0):
    return {"reward": reward, "alpha": alpha, "avg@8": acc, "pass@8": min(1.0, acc + 0.2), "mean_length": length,
            "grad_norm_max": grad, "reward_min": rmin, "reward_max": rmax, "log_ratio_min": lrmin, "seeds": 1}  # fmt: skip


def _stats(lo, p01, p50, p99, hi):
    return {"min": lo, "p01": p01, "p50": p50, "p99": p99, "max": hi}


def _results(methods, *, lr_stats=None, buckets=None):
    lr_stats = lr_stats or _stats(-30.0, -12.0, -0.2, 1.5, 3.0)
    buckets = buckets or [
        {"start": 0, "stop": 8, "count": 80, "mean": -4.0, "min": -30.0, "max": 2.0},
        {"start": 8, "stop": 16, "count": 80, "mean": -1.0, "min": -9.0, "max": 3.0},
        {"start": 16, "stop": 32, "count": 50, "mean": -0.3, "min": -5.0, "max": 1.0},
    ]
    return {
        "config": {"eval_problems": 100, "n": 8, "steps": 10, "batch_size": 8, "lr": 1e-3, "seeds": 1},
        "methods": methods,
        "reward_distributions": {
            "stats": {"log_ratio": lr_stats, "power@1": _stats(-0.9, -0.8, 0.0, 0.3, 0.5)},
            "positions": {"log_ratio": buckets},
        },
    }


def test_claims_hold_on_numbers_that_show_them(tmp_path):
    methods = {
        "log_ratio": _method("log_ratio", acc=0.30, grad=50.0, rmin=-30, rmax=4),
        "clip": _method("clip", acc=0.40, grad=3.0),
        "tanh": _method("tanh", acc=0.42, grad=3.0),
        "zscore": _method("zscore", acc=0.35, grad=8.0, rmin=-6, rmax=3),
        "power@1": _method("power", 1.0, acc=0.60, length=30.0, grad=2.0),
        "power@10": _method("power", 10.0, acc=0.70, length=25.0, grad=1.5),
        "power@100": _method("power", 100.0, acc=0.65, length=20.0, grad=1.0),
        "full_kl": _method("full_kl", acc=0.68, grad=1.0),
    }
    c = claims(_results(methods), tmp_path)
    assert {k: v["verdict"] for k, v in c.items()} == {k: "holds" for k in ("C1", "C2", "C3", "C4", "C5")}
    assert "power@10 0.700" in c["C4"]["numbers"] and "ratio 0.030" in c["C3"]["numbers"]
    assert "Spearman ρ = -1.00" in c["C5"]["numbers"]


def test_claims_say_when_they_do_not_hold(tmp_path):
    methods = {
        "log_ratio": _method("log_ratio", acc=0.80, grad=1.0),
        "power@1": _method("power", 1.0, acc=0.40, length=20.0, grad=0.9),
        "power@10": _method("power", 10.0, acc=0.30, length=30.0, grad=0.9, rmin=-1.5),  # out of bounds
        "full_kl": _method("full_kl", acc=0.90),
    }
    flat = [{"start": 0, "stop": 8, "count": 10, "mean": -0.1, "min": -1.0, "max": 1.0},
            {"start": 8, "stop": 16, "count": 10, "mean": -0.5, "min": -3.0, "max": 1.0}]  # fmt: skip
    c = claims(_results(methods, lr_stats=_stats(-2.0, -1.5, 0.0, 1.4, 2.0), buckets=flat), tmp_path)
    assert {k: v["verdict"] for k, v in c.items()} == {
        k: "does not hold" for k in ("C1", "C2", "C3", "C4", "C5")
    }


def test_close_accuracies_are_inconclusive(tmp_path):
    methods = {
        "log_ratio": _method("log_ratio", acc=0.50, grad=10.0),
        "power@1": _method("power", 1.0, acc=0.51, grad=1.0),
        "full_kl": _method("full_kl", acc=0.50),
    }
    c = claims(_results(methods), tmp_path)
    assert c["C4"]["verdict"] == "inconclusive" and "±0.035" in c["C4"]["numbers"]  # 2·sqrt(.5·.5/800)


def test_demo_config_validates_methods():
    with pytest.raises(UserError, match="--methods power@7"):
        DemoConfig(methods=("power@7",))
    assert set(DemoConfig.quick().methods) <= set(METHODS)
    assert {"log_ratio", "full_kl"} <= set(DemoConfig.quick().methods)
    assert any(m.startswith("power@") for m in DemoConfig.quick().methods)


@pytest.mark.slow
def test_quick_demo_from_an_empty_cache(tmp_path, task_cache, monkeypatch):
    from poweropd.cli import main

    assert not any(task_cache.iterdir()), "the quick demo must start from an empty cache"
    monkeypatch.setenv("POWEROPD_CACHE", str(task_cache))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"]["avg@8"] >= 0.9  # the teacher solves the task; the initial student does not
    assert results["student_init"]["avg@8"] < results["teacher"]["avg@8"] - 0.3
    assert set(results["methods"]) == set(DemoConfig.quick().methods)
    for method, row in results["methods"].items():
        assert {"reward", "alpha", "avg@8", "pass@8", "mean_length", "grad_norm_max", "reward_min", "reward_max",
                "log_ratio_min", "seeds"} <= row.keys()  # fmt: skip
        assert 0 <= row["avg@8"] <= row["pass@8"] <= 1
        if row["reward"] == "power":
            assert -1 <= row["reward_min"] <= row["reward_max"] <= 1
        assert (out / "runs" / f"{method}-seed0" / "metrics.jsonl").exists()
    assert set(results["claims"]) == {"C1", "C2", "C3", "C4", "C5"} - (
        {"C5"} if len([m for m in results["methods"] if m.startswith("power")]) < 2 else set()
    )
    text = (out / "report.md").read_text()
    assert "## Claims of the paper" in text and "| teacher |" in text
    for figure in results["figures"]:
        assert (out / figure).stat().st_size > 10_000
    assert report(results) == text
