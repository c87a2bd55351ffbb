"""The reward section of a run: method labels, validation and the α schedule."""

from __future__ import annotations

import pytest

from poweropd.config.sections import RewardConfig
from poweropd.errors import UserError


def test_labels_round_trip_and_bad_values_name_the_field():
    for label in ("power@10", "power@1:10", "proximal@0.5", "clip", "power@10+entropy:0.5", "full_kl"):
        assert RewardConfig.from_label(label).label == label
    cfg = RewardConfig.from_label("power@1:100+entropy:0.25")
    assert (cfg.alpha, cfg.alpha_end, cfg.select_fraction) == (1.0, 100.0, 0.25)
    for bad, field in (
        ({"name": "proximal", "alpha": 1.5}, "reward.alpha"),
        ({"name": "clip", "alpha_end": 10.0}, "reward.alpha_end"),
        ({"name": "power", "token_select": "entropy:0"}, "reward.token_select"),
        ({"name": "full_kl", "token_select": "entropy:0.5"}, "reward.token_select"),
        ({"name": "power", "token_select": "loss:0.5"}, "reward.token_select"),
    ):
        with pytest.raises(UserError, match=field):
            RewardConfig(**bad)


def test_alpha_schedule_is_geometric_by_hand():
    cfg = RewardConfig(name="power", alpha=1.0, alpha_end=100.0)
    assert cfg.hparams_at(0.0) == {"alpha": 1.0}
    assert cfg.hparams_at(0.5)["alpha"] == pytest.approx(10.0)
    assert cfg.hparams_at(1.0)["alpha"] == pytest.approx(100.0)
    assert RewardConfig(name="power", alpha=3.0).hparams_at(0.7) == {"alpha": 3.0}
