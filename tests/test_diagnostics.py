"""diagnostics.py: statistics against numpy and hand-computed numbers, masking, position buckets, reward bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from poweropd import diagnostics as D


def test_summary_stats_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    values_N = torch.cat([torch.randn(997, generator=gen) * 3, torch.tensor([-50.0, -20.0, 7.0])])
    stats = D.summary_stats(values_N, thresholds=(-5.0, -10.0, -20.0))
    ref = values_N.double().numpy()
    assert stats["count"] == 1000
    assert stats["mean"] == pytest.approx(ref.mean(), abs=1e-12)
    assert stats["std"] == pytest.approx(ref.std(), abs=1e-12)  # population std, numpy's default
    assert stats["min"] == -50.0 and stats["max"] == pytest.approx(ref.max())
    for key, q in D.PERCENTILES.items():
        assert stats[key] == pytest.approx(np.percentile(ref, q, method="linear"), abs=1e-12), key
    assert stats["frac_below_-5"] == pytest.approx((ref < -5).mean())
    assert stats["frac_below_-20"] == pytest.approx(1 / 1000)  # −20 itself is not below −20


def test_summary_stats_by_hand_and_on_numpy_input():
    stats = D.summary_stats(np.array([4.0, 1.0, 3.0, 2.0]))
    # p05: rank 0.05 * 3 = 0.15 between 1 and 2 -> 1.15; p50: 2.5; std: sqrt(1.25)
    assert stats["p05"] == pytest.approx(1.15)
    assert stats["p50"] == pytest.approx(2.5)
    assert stats["std"] == pytest.approx(math.sqrt(1.25))
    assert (stats["min"], stats["max"], stats["count"]) == (1.0, 4.0, 4)


def test_summary_stats_of_nothing_is_null_not_nan():
    stats = D.summary_stats(torch.empty(0), thresholds=(-5.0,))
    assert stats["count"] == 0
    assert all(stats[k] is None for k in stats if k != "count")


def test_prefixed_names_metrics():
    stats = D.summary_stats(torch.tensor([1.0, 2.0, 3.0]))
    assert D.prefixed(stats, "reward") == {
        "reward/mean": 2.0,
        "reward/min": 1.0,
        "reward/max": 3.0,
        "reward/p05": pytest.approx(1.1),
        "reward/p95": pytest.approx(2.9),
    }


def test_position_buckets_double_from_eight():
    assert D.position_buckets(0) == []
    assert D.position_buckets(1) == [(0, 8)]
    assert D.position_buckets(8) == [(0, 8)]
    assert D.position_buckets(9) == [(0, 8), (8, 16)]
    assert D.position_buckets(128) == [(0, 8), (8, 16), (16, 32), (32, 64), (64, 128)]
    assert D.position_buckets(129)[-1] == (128, 256)


def test_position_stats_by_hand_and_masked_values_excluded():
    T = 20
    values_BT = torch.arange(2 * T, dtype=torch.float32).view(2, T)  # row 0: 0..19, row 1: 20..39
    mask_BT = torch.ones(2, T, dtype=torch.bool)
    mask_BT[1, 15:] = False
    values_BT[1, 15:] = -1e9  # masked: must not show up anywhere
    rows = D.position_stats(values_BT, mask_BT)
    assert [(r["start"], r["stop"]) for r in rows] == [(0, 8), (8, 16), (16, 32)]
    first, second, third = rows
    assert first == {"start": 0, "stop": 8, "count": 16, "mean": (28 + 188) / 16, "min": 0.0, "max": 27.0}
    # bucket [8, 16): row 0 has 8..15, row 1 has 28..34 (35 is masked)
    assert second["count"] == 15 and second["min"] == 8.0 and second["max"] == 34.0
    assert second["mean"] == pytest.approx((sum(range(8, 16)) + sum(range(28, 35))) / 15)
    assert third["count"] == 4 and third["min"] == 16.0 and third["max"] == 19.0


def test_early_share_and_most_negative_by_hand():
    log_ratio_BT = torch.zeros(2, 16)
    mask_BT = torch.ones(2, 16, dtype=torch.bool)
    log_ratio_BT[0, 0] = -30.0
    log_ratio_BT[1, 3] = -12.0
    log_ratio_BT[0, 10] = -6.0
    log_ratio_BT[1, 15] = -99.0
    mask_BT[1, 15] = False  # masked extreme: ignored
    share = D.early_share(log_ratio_BT, mask_BT)
    assert share["frac_tokens"] == pytest.approx(16 / 31)
    assert share["share_below_-5"] == pytest.approx(2 / 3)
    assert share["share_below_-10"] == 1.0
    assert share["share_below_-20"] == 1.0
    worst = D.most_negative(log_ratio_BT, mask_BT, k=3)
    assert [(w["row"], w["position"], w["value"]) for w in worst] == [
        (0, 0, -30.0),
        (1, 3, -12.0),
        (0, 10, -6.0),
    ]
    assert len(D.most_negative(log_ratio_BT, mask_BT[:, :1] & False, k=3)) == 0


def test_reward_table_power_bounded_where_log_ratio_is_not():
    gen = torch.Generator().manual_seed(1)
    teacher_logp_BT = -torch.rand(4, 32, generator=gen) * 60  # down to −60: the vanilla tail
    student_logp_BT = -torch.rand(4, 32, generator=gen) * 3
    mask_BT = torch.rand(4, 32, generator=gen) > 0.2
    alphas = [0.1, 1.0, 10.0, 100.0]
    table = D.reward_table(teacher_logp_BT, student_logp_BT, mask_BT, alphas)
    # every registered reward, each α where the reward accepts it (proximal: α ≤ 1)
    assert set(table) == {"log_ratio", "clip", "tanh", "zscore", "power@0.1", "power@1", "power@10", "power@100",
                          "proximal@0.1", "proximal@1", "tv"}  # fmt: skip
    assert table["tv"]["min"] == -1.0 and table["tv"]["max"] == 1.0  # sign(log ratio) at strength 1
    assert table["proximal@0.1"]["min"] >= math.log(0.9) - 1e-6  # bounded below by log(1 − α)
    assert table["proximal@1"]["min"] == pytest.approx(table["log_ratio"]["min"], abs=1e-4)
    ratio_N = (teacher_logp_BT - student_logp_BT)[mask_BT]
    assert table["log_ratio"]["count"] == int(mask_BT.sum())
    assert table["log_ratio"]["min"] == pytest.approx(float(ratio_N.min()), abs=1e-5)
    assert table["log_ratio"]["min"] < -40
    assert "frac_below_-10" in table["log_ratio"] and "frac_below_-10" not in table["power@1"]
    for a in alphas:
        stats = table[D.power_key(a)]
        assert -1.0 <= stats["min"] <= stats["max"] <= 1.0
    assert table["clip"]["min"] >= -1.0 and table["clip"]["max"] <= 1.0
    assert table["tanh"]["min"] >= -1.0 and table["tanh"]["max"] <= 1.0
    assert table["zscore"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert table["zscore"]["std"] == pytest.approx(1.0, abs=1e-4)
    wide = D.reward_table(teacher_logp_BT, student_logp_BT, mask_BT, [1.0], clip_range=(-2.0, 0.5))
    assert wide["clip"]["min"] == pytest.approx(-2.0) and wide["clip"]["max"] <= 0.5


def test_reward_surface_is_the_registry_reward():
    probs_N = np.array([0.1, 0.5, 1.0])
    surface = D.reward_surface("power", probs_N, alpha=2.0)
    assert surface[2, 0] == pytest.approx(1.0 - 0.01, abs=1e-6)  # π_T = 1, π_S = 0.1
    assert surface[0, 1] == pytest.approx(0.01 - 0.25, abs=1e-6)
    np.testing.assert_allclose(np.diag(surface), 0.0, atol=1e-7)
    log_ratio = D.reward_surface("log_ratio", probs_N)
    assert log_ratio[0, 2] == pytest.approx(math.log(0.1), abs=1e-6)


def test_histogram_counts_every_finite_value():
    h = D.histogram(torch.tensor([-1.0, 0.0, 0.5, 1.0, float("-inf")]), bins=4, value_range=(-1.0, 1.0))
    assert h["counts"] == [1, 0, 1, 2]
    assert h["edges"] == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_the_kl_baseline_appears_in_the_table_when_the_kl_is_given():
    """vOPD's reward is the log ratio + the per-position KL: its statistics are the log ratio's shifted by it."""
    gen = torch.Generator().manual_seed(2)
    teacher_logp_BT, student_logp_BT = -torch.rand(2, 8, generator=gen) * 5, -torch.rand(2, 8, generator=gen)
    mask_BT = torch.ones(2, 8, dtype=torch.bool)
    kl_BT = torch.full((2, 8), 0.25)
    table = D.reward_table(teacher_logp_BT, student_logp_BT, mask_BT, [1.0], kl_BT=kl_BT)
    assert table["log_ratio+kl"]["mean"] == pytest.approx(table["log_ratio"]["mean"] + 0.25)
    assert "log_ratio+kl" not in D.reward_table(teacher_logp_BT, student_logp_BT, mask_BT, [1.0])
