"""`poweropd demo`: verdicts with effects and errors on hand-made numbers, and the quick demo end to end."""

import json
import math
import re

import pytest

from poweropd.demo.experiment import DEFAULT_METHODS, PAPER_ALPHAS, DemoConfig, method_config
from poweropd.demo.report import best_power, claims, criterion, paired, report
from poweropd.errors import UserError


def _method(reward, alpha=None, acc=(0.5, 0.5, 0.5), length=(30.0, 30.0, 30.0), grad=(1.0, 1.0, 1.0),
            rmin=-1.0, rmax=1.0, val=None):  # fmt: skip
    mean = sum(acc) / len(acc)
    return {
        "reward": reward, "alpha": alpha, "seeds": len(acc), "avg@n": mean, "avg@n_std": 0.0,
        "pass@n": min(1.0, mean + 0.2), "mean_length": sum(length) / len(length),
        "grad_norm_max": sum(grad) / len(grad), "reward_min": rmin, "reward_max": rmax, "log_ratio_min": -20.0,
        "validation_final": mean if val is None else val,
        "per_seed": {"avg@n": list(acc), "mean_length": list(length), "grad_norm_max": list(grad)},
    }  # fmt: skip


def _results(methods, *, early=0.2, below=0.8, n_below=100, lr_stats=None):
    lr_stats = lr_stats or {"min": -30.0, "p01": -12.0, "p50": -0.2, "p99": 1.5, "max": 3.0}
    return {
        "config": {"test_problems": 300, "n": 8, "seeds": 3},
        "student_init": {"avg@n": 0.30},
        "methods": methods,
        "reward_distributions": {
            "stats": {"log_ratio": lr_stats, "power@1": {"min": -0.9, "max": 0.5}},
            "early_share": {"frac_tokens": early, "share_below_-5": below},
            "below_counts": {"-5": n_below},
            "tokens": 1000,
        },
    }


def test_paired_difference_and_its_error_by_hand():
    effect, se = paired([0.50, 0.52, 0.54], [0.49, 0.53, 0.52])  # d = 0.01, -0.01, 0.02
    assert effect == pytest.approx(0.02 / 3)
    assert se == pytest.approx(math.sqrt(((0.01 - 0.02 / 3) ** 2 + (-0.01 - 0.02 / 3) ** 2 + (0.02 - 0.02 / 3) ** 2) / 2) / math.sqrt(3))  # fmt: skip
    assert paired([0.5], [0.4])[1] is None


def test_claims_hold_on_numbers_that_show_them():
    methods = {
        "log_ratio": _method("log_ratio", acc=(0.40, 0.42, 0.41), grad=(50.0, 40.0, 60.0), rmin=-30),
        "clip": _method("clip", acc=(0.45, 0.47, 0.46)),
        "power@0.1": _method("power", 0.1, acc=(0.50, 0.52, 0.51), length=(33.0, 33.5, 32.5)),
        "power@1": _method(
            "power", 1.0, acc=(0.60, 0.63, 0.62), length=(30.0, 30.5, 29.5), grad=(1.0, 1.2, 0.8)
        ),
        "power@10": _method("power", 10.0, acc=(0.55, 0.56, 0.57), length=(27.0, 27.5, 26.5)),
        "full_kl": _method("full_kl", acc=(0.62, 0.61, 0.63)),
    }
    c = claims(_results(methods))
    assert {k: v["verdict"] for k, v in c.items()} == {k: "holds" for k in ("C1", "C2", "C3", "C4", "C5")}
    assert best_power(methods) == "power@1"
    # C2: 80% of the tail in 20% of the tokens: effect 0.6, binomial error sqrt(0.8·0.2/100) = 0.04
    assert c["C2"]["effect"] == pytest.approx(0.6) and c["C2"]["se"] == pytest.approx(0.04)
    # C5: exactly −3 tokens per decade of α
    assert c["C5"]["effect"] == pytest.approx(3.0)
    assert "slope -3.00 ± " in c["C5"]["numbers"]
    # C3: peak 50 vs 1 on average, per-seed log ratios log10(50), log10(40/1.2), log10(60/0.8)
    ratios = [math.log10(50 / 1.0), math.log10(40 / 1.2), math.log10(60 / 0.8)]
    assert c["C3"]["effect"] == pytest.approx(sum(ratios) / 3 - math.log10(4))


def test_claims_say_when_they_do_not_hold():
    methods = {
        "log_ratio": _method("log_ratio", acc=(0.80, 0.82, 0.81), grad=(1.0, 1.1, 0.9)),
        "power@1": _method(
            "power", 1.0, acc=(0.40, 0.42, 0.41), length=(20.0, 20.5, 19.5), grad=(0.9, 1.0, 0.8)
        ),
        "power@10": _method("power", 10.0, acc=(0.30, 0.31, 0.32), length=(30.0, 30.5, 29.5), rmin=-1.5),
        "full_kl": _method("full_kl", acc=(0.90, 0.91, 0.92)),
    }
    flat = {"min": -2.0, "p01": -1.5, "p50": 0.0, "p99": 1.4, "max": 2.0}
    c = claims(_results(methods, early=0.5, below=0.1, lr_stats=flat))
    assert {k: v["verdict"] for k, v in c.items()} == {
        k: "does not hold" for k in ("C1", "C2", "C3", "C4", "C5")
    }


def test_small_or_noisy_effects_are_inconclusive():
    methods = {
        "log_ratio": _method("log_ratio", acc=(0.49, 0.53, 0.52), grad=(2.0, 9.0, 1.0)),
        "power@1": _method("power", 1.0, acc=(0.50, 0.52, 0.54), length=(30.0, 30.2, 30.1)),
        # 0.4 tokens shorter, with a tiny error: significant but too small to call a length effect
        "power@10": _method("power", 10.0, acc=(0.40, 0.41, 0.42), length=(29.6, 29.8, 29.7)),
        "full_kl": _method("full_kl", acc=(0.50, 0.51, 0.52)),
    }
    c = claims(_results(methods, below=0.24, n_below=50))
    assert c["C4"]["verdict"] == "inconclusive"
    assert "vs log_ratio +0.007 ± 0.009" in c["C4"]["numbers"]  # paired, worked out in the test above
    assert c["C5"]["verdict"] == "inconclusive" and "-0.4 tokens over the range" in c["C5"]["numbers"]
    assert c["C2"]["verdict"] == "inconclusive"  # 0.04 ± 0.06
    assert c["C3"]["verdict"] == "inconclusive"  # one seed of three barely above the others


def test_criterion_by_hand():
    methods = {
        "log_ratio": _method("log_ratio", acc=(0.33, 0.34, 0.35)),
        "power@1": _method("power", 1.0, acc=(0.36, 0.37, 0.38)),
        "full_kl": _method("full_kl", acc=(0.50, 0.51, 0.52)),
    }
    out = criterion(_results(methods))
    assert out["full_kl_gain"] == pytest.approx(0.21) and out["sampled_mean_gain"] == pytest.approx(0.055)
    assert out["met"]
    methods["full_kl"] = _method("full_kl", acc=(0.49, 0.50, 0.48))
    assert not criterion(_results(methods))["met"]


def test_demo_config_validates_methods_and_presets():
    for bad in ("poweer@1", "power@seven", "clip+entropy:2"):
        with pytest.raises(UserError, match=f"--methods {re.escape(bad)}"):
            DemoConfig(methods=(bad,))
    with pytest.raises(UserError, match="--rollout-engine sglang"):
        DemoConfig(rollout_engine="sglang")
    assert {"log_ratio", "clip", "tanh", "zscore", "full_kl"} <= set(DEFAULT_METHODS)
    assert sum(m.startswith("power@") for m in DEFAULT_METHODS) == 3 and DemoConfig().seeds >= 3
    assert {method_config(m).alpha for m in DemoConfig.full().methods if m.startswith("power")} == set(
        PAPER_ALPHAS
    )
    # any reward record, α schedule or token selection is a method id
    assert DemoConfig(methods=("proximal@0.5", "power@1:10", "power@10+entropy:0.5")).seeds == 3
    with pytest.raises(UserError, match="--methods proximal@2"):
        DemoConfig(methods=("proximal@2",))
    assert set(DemoConfig.quick().methods) == {"log_ratio", "power@1", "full_kl"}


@pytest.mark.slow
def test_quick_demo_from_an_empty_cache(tmp_path, monkeypatch):
    """The README's `poweropd demo --quick` from an empty cache: the shipped models, the learning criterion
    (with the margin the testbed was chosen for), every figure, and a report that is the function of results."""
    from poweropd.cli import main

    cache = tmp_path / "cache"
    monkeypatch.setenv("POWEROPD_CACHE", str(cache))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["shipped"] and not any(cache.rglob("*.safetensors"))  # nothing was trained
    assert results["teacher"]["avg@n"] >= 0.95
    assert results["student_init"]["avg@n"] < results["teacher"]["avg@n"] - 0.3
    assert set(results["methods"]) == set(DemoConfig.quick().methods)
    for method, row in results["methods"].items():
        assert row["seeds"] == 3 and len(row["per_seed"]["avg@n"]) == 3
        assert 0 <= row["avg@n"] <= row["pass@n"] <= 1
        if row["reward"] == "power":
            assert -1 <= row["reward_min"] <= row["reward_max"] <= 1
        assert len(row["curves"]["length"][0]) == DemoConfig.quick().steps
        for seed in range(3):
            assert (out / "runs" / f"{method}-seed{seed}" / "metrics.jsonl").exists()
    assert results["criterion"]["met"], results["criterion"]
    assert set(results["claims"]) == {"C1", "C2", "C3", "C4"}  # C5 needs two α
    text = (out / "report.md").read_text()
    assert "## Claims of the paper" in text and "| teacher |" in text and "**met**" in text
    for figure in results["figures"]:
        assert (out / figure).stat().st_size > 10_000
    assert report(results) == text
