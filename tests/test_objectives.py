"""The objective interface, the reward records, token selection by entropy and the α schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from poweropd.config import RewardConfig
from poweropd.errors import UserError
from poweropd.fused import top_fraction
from poweropd.losses import MicroBatch, make_objective, policy_gradient_loss
from poweropd.rewards import REWARDS, Reward, log_ratio, proximal, register
from poweropd.teacher import TeacherScores

TEACHER = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.1, 0.9, 0.3]]))
STUDENT = torch.log(torch.tensor([[0.25, 0.5, 0.8], [0.9, 0.1, 0.6]]))
MASK = torch.tensor([[True, True, True], [True, True, False]])


# ---- rewards: records, proximal ------------------------------------------------------------------------


def test_proximal_by_hand():
    # r = log(α ρ + 1 − α), ρ = π_T / π_S: ρ = 2, 1/2, 1, 1/9, 9
    alpha = 0.5
    expected = torch.tensor(
        [[math.log(0.5 * 2 + 0.5), math.log(0.5 * 0.5 + 0.5), 0.0], [math.log(0.5 / 9 + 0.5), math.log(0.5 * 9 + 0.5), 0.0]]
    )  # fmt: skip
    torch.testing.assert_close(proximal(TEACHER, STUDENT, MASK, alpha=alpha), expected)
    torch.testing.assert_close(proximal(TEACHER, STUDENT, MASK, alpha=1.0), log_ratio(TEACHER, STUDENT, MASK))
    with pytest.raises(ValueError, match="alpha in"):
        proximal(TEACHER, STUDENT, MASK, alpha=1.5)


logps = st.floats(min_value=-80.0, max_value=0.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(t=logps, s=logps, alpha=st.floats(min_value=1e-3, max_value=1.0))
def test_every_record_with_bounds_stays_in_them_and_proximal_is_sign_consistent(t, s, alpha):
    teacher, student, mask = torch.tensor([[t]]), torch.tensor([[s]]), torch.ones(1, 1, dtype=torch.bool)
    for record in REWARDS.values():
        if record.bounds is None:
            continue
        hparams = RewardConfig(name=record.name, alpha=alpha).hparams
        low, high = record.bounds(hparams)
        value = record.bind(**hparams)(teacher, student, mask).item()
        assert low - 1e-5 <= value <= high + 1e-5, (record.name, hparams, value)
    r = proximal(teacher, student, mask, alpha=alpha).item()
    ratio = t - s
    assert r == 0.0 or math.copysign(1, r) == math.copysign(1, ratio) or abs(ratio) < 1e-6


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


# ---- objectives: the fused path equals the reference path -------------------------------------------------


class _NotLinear(torch.nn.Module):
    """The same projection, hidden from the fused path (which needs a plain nn.Linear)."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x)


def _micro_batch(head, hidden_BTH, **kw):
    gen = torch.Generator().manual_seed(3)
    B, T, _ = hidden_BTH.shape
    tokens_BT = torch.randint(
        0, head.out_features if hasattr(head, "out_features") else 29, (B, T), generator=gen
    )
    mask_BT = torch.rand(B, T, generator=gen) > 0.25
    teacher_BT = -torch.rand(B, T, generator=gen) * 4
    return MicroBatch(head, hidden_BTH, tokens_BT, mask_BT, float(mask_BT.sum()), TeacherScores(teacher_BT),
                      chunk_size=5, **kw)  # fmt: skip


@pytest.mark.parametrize(
    "label", ["power@2", "proximal@0.3", "log_ratio", "power@2+entropy:0.4", "clip+entropy:0.6"]
)
def test_fused_and_reference_paths_agree(label):
    torch.manual_seed(0)
    head = torch.nn.Linear(12, 29, bias=False)
    objective = make_objective(RewardConfig.from_label(label))
    results = []
    for layer in (head, _NotLinear(head)):
        hidden_BTH = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
        loss, out = objective.micro_batch_loss(_micro_batch(layer, hidden_BTH))
        grads = torch.autograd.grad(loss, (hidden_BTH, head.weight))
        results.append((loss, out, grads))
    (loss_f, out_f, grads_f), (loss_r, out_r, grads_r) = results
    torch.testing.assert_close(loss_f, loss_r)
    for key in ("student_logp", "reward"):
        torch.testing.assert_close(out_f[key], out_r[key])
    assert torch.equal(out_f["selected"], out_r["selected"])
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b)


def test_entropy_selection_keeps_the_most_uncertain_tokens_and_only_trains_on_them():
    torch.manual_seed(0)
    head = torch.nn.Linear(12, 29, bias=False)
    hidden_BTH = torch.randn(2, 9, 12, requires_grad=True)
    mb = _micro_batch(head, hidden_BTH)
    loss, out = make_objective(RewardConfig.from_label("power@1+entropy:0.5")).micro_batch_loss(mb)
    logits_BTV = head(hidden_BTH).detach()
    entropy_BT = -(F.softmax(logits_BTV, -1) * F.log_softmax(logits_BTV, -1)).sum(-1)
    valid = int(mb.mask_BT.sum())
    kept = out["selected"]
    assert int(kept.sum()) == math.ceil(0.5 * valid) and not (kept & ~mb.mask_BT).any()
    assert entropy_BT[kept].min() >= entropy_BT[mb.mask_BT & ~kept].max()  # the top half by entropy
    # the loss is the surrogate on the kept tokens, still divided by every valid token of the batch
    logp_BT = F.log_softmax(head(hidden_BTH), -1).gather(-1, mb.tokens_BT[..., None]).squeeze(-1)
    reward_BT = REWARDS["power"].bind(alpha=1.0)(mb.teacher.logp_BT, logp_BT.detach(), mb.mask_BT)
    expected, _ = policy_gradient_loss(logp_BT, reward_BT, kept, num_tokens=valid)
    torch.testing.assert_close(loss, expected)


def test_top_fraction_by_hand():
    score = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    mask = torch.tensor([True, True, True, False, True])
    assert top_fraction(score, mask, 0.5).tolist() == [False, True, True, False, False]  # ceil(0.5·4) = 2
    assert top_fraction(score, mask, 1.0).tolist() == mask.tolist()
    assert not top_fraction(score, torch.zeros(5, dtype=torch.bool), 0.5).any()


# ---- a reward of one's own: one function and one record ------------------------------------------------


def test_a_registered_toy_reward_trains(tiny_pair, tmp_path):
    """A constant reward r = 1: the surrogate is −mean log π_S, so training on it raises the log-probability
    of the student's own samples (an SFT on itself), through the whole CLI and loop."""
    import json

    from poweropd.cli import main

    def ones(teacher_logp_BT, student_logp_BT, mask_BT):
        return torch.where(mask_BT.bool(), 1.0, 0.0)

    register(Reward("ones", ones, "a test's own reward"))
    try:
        student, teacher, prompts = tiny_pair
        out = tmp_path / "run"
        args = ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(prompts),
                "--output-dir", str(out), "--reward", "ones", "--max-steps", "3", "--batch-size", "4",
                "--max-new-tokens", "6", "--lr", "3e-3", "--save-every", "0", "--no-progress"]  # fmt: skip
        assert main(args) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["reward/mean"] for r in rows] == [1.0, 1.0, 1.0]
        assert all(r["loss"] > 0 for r in rows)  # −mean log π_S of the student's own tokens
        assert rows[-1]["student_prob/mean"] > rows[0]["student_prob/mean"]
        # diagnose shows it with no code of its own
        from poweropd.diagnostics import reward_values

        values = reward_values(TEACHER, STUDENT, MASK, [1.0])
        assert torch.equal(values["ones"], MASK.float()) and {"power@1", "proximal@1", "zscore"} <= set(
            values
        )
        with pytest.raises(ValueError, match="exists already"):
            register(Reward("ones", ones, "again"))
    finally:
        REWARDS.pop("ones", None)
