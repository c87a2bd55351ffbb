"""Every reward against numbers computed by hand, and the invariants the paper relies on."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poweropd.config.sections import RewardConfig
from poweropd.errors import UserError
from poweropd.objectives.rewards import (
    REWARDS,
    Reward,
    clip,
    log_ratio,
    power,
    proximal,
    register,
    tanh,
    zscore,
)

# Two rollouts of three tokens; the last token of the second rollout is padding.
TEACHER = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.1, 0.9, 0.3]]))
STUDENT = torch.log(torch.tensor([[0.25, 0.5, 0.8], [0.9, 0.1, 0.6]]))
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_log_ratio_by_hand():
    expected = torch.tensor([[math.log(2), -math.log(2), 0.0], [math.log(1 / 9), math.log(9), 0.0]])
    torch.testing.assert_close(log_ratio(TEACHER, STUDENT, MASK), expected)


def test_clip_by_hand():
    expected = torch.tensor([[math.log(2), -math.log(2), 0.0], [-1.0, 1.0, 0.0]])
    torch.testing.assert_close(clip(TEACHER, STUDENT, MASK), expected)
    expected_narrow = torch.tensor([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]])
    torch.testing.assert_close(clip(TEACHER, STUDENT, MASK, low=-0.5, high=0.5), expected_narrow)


def test_tanh_by_hand():
    ln2, ln9 = math.log(2), math.log(9)
    expected = torch.tensor([[math.tanh(ln2), -math.tanh(ln2), 0.0], [-math.tanh(ln9), math.tanh(ln9), 0.0]])
    torch.testing.assert_close(tanh(TEACHER, STUDENT, MASK), expected)
    expected_tau2 = torch.tensor(
        [[math.tanh(ln2 / 2), -math.tanh(ln2 / 2), 0.0], [-math.tanh(ln9 / 2), math.tanh(ln9 / 2), 0.0]]
    )
    torch.testing.assert_close(tanh(TEACHER, STUDENT, MASK, tau=2.0), expected_tau2)


def test_zscore_by_hand():
    # valid log ratios: ln2, −ln2, 0, −ln9, ln9 → mean 0, population variance (2·ln²2 + 2·ln²9) / 5
    ln2, ln9 = math.log(2), math.log(9)
    std = math.sqrt((2 * ln2**2 + 2 * ln9**2) / 5)
    expected = torch.tensor([[ln2 / std, -ln2 / std, 0.0], [-ln9 / std, ln9 / std, 0.0]])
    torch.testing.assert_close(zscore(TEACHER, STUDENT, MASK), expected)


def test_zscore_ignores_padding_values():
    teacher = TEACHER.clone()
    teacher[1, 2] = -1e4  # a huge value at a masked position must not move the statistics
    torch.testing.assert_close(zscore(teacher, STUDENT, MASK), zscore(TEACHER, STUDENT, MASK))


def test_zscore_constant_ratio_is_zero_not_nan():
    logp = torch.full((2, 3), -1.0)
    out = zscore(logp, logp, MASK)
    assert torch.equal(out, torch.zeros(2, 3))


def test_power_by_hand():
    expected = torch.tensor([[0.25, -0.25, 0.0], [-0.8, 0.8, 0.0]])
    torch.testing.assert_close(power(TEACHER, STUDENT, MASK, alpha=1.0), expected)
    expected_sq = torch.tensor([[0.25 - 0.0625, 0.0625 - 0.25, 0.0], [0.01 - 0.81, 0.81 - 0.01, 0.0]])
    torch.testing.assert_close(power(TEACHER, STUDENT, MASK, alpha=2.0), expected_sq)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_power_requires_positive_alpha(alpha):
    with pytest.raises(ValueError, match="alpha > 0"):
        power(TEACHER, STUDENT, MASK, alpha=alpha)


def test_power_with_minus_inf_logprob_is_finite_and_bounded():
    teacher = torch.tensor([[-math.inf, 0.0]])
    student = torch.tensor([[0.0, -math.inf]])
    out = power(teacher, student, torch.ones(1, 2, dtype=torch.bool), alpha=0.5)
    assert torch.equal(out, torch.tensor([[-1.0, 1.0]]))


def test_power_with_bf16_inputs_is_float32_and_bounded():
    teacher = torch.tensor([[-0.001, -30.0, -1e-8]], dtype=torch.bfloat16)
    student = torch.tensor([[-30.0, -0.001, 0.0]], dtype=torch.bfloat16)
    out = power(teacher, student, torch.ones(1, 3, dtype=torch.bool), alpha=500.0)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    # bf16 holds −0.001 as −0.00099945: π^500 = exp(−0.49973) ≈ 0.60670 while (e^−30)^500 underflows to 0
    torch.testing.assert_close(out[0, :2], torch.tensor([0.60670, -0.60670]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_masked_positions_are_exactly_zero_even_for_nan_inputs(name):
    teacher = TEACHER.clone()
    teacher[1, 2] = math.nan
    hparams = {"alpha": 0.5} if "alpha" in REWARDS[name].hparams else {}
    out = REWARDS[name].bind(**hparams)(teacher, STUDENT, MASK)
    assert out.dtype == torch.float32
    assert out[1, 2].item() == 0.0 and torch.isfinite(out).all()


def test_power_alpha_to_zero_over_alpha_is_log_ratio():
    # π_T^α − π_S^α = α (log π_T − log π_S) + O(α²)
    expected = log_ratio(TEACHER, STUDENT, MASK)
    for alpha, tol in ((1e-2, 5e-2), (1e-4, 5e-4)):
        torch.testing.assert_close(
            power(TEACHER, STUDENT, MASK, alpha=alpha) / alpha, expected, atol=tol, rtol=0
        )


logps = st.floats(min_value=-60.0, max_value=0.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(t=logps, s=logps, alpha=st.floats(min_value=0.01, max_value=500.0))
def test_power_bounded_and_sign_consistent(t, s, alpha):
    teacher, student, mask = torch.tensor([[t]]), torch.tensor([[s]]), torch.ones(1, 1, dtype=torch.bool)
    r = power(teacher, student, mask, alpha=alpha).item()
    assert -1.0 <= r <= 1.0
    ratio = log_ratio(teacher, student, mask).item()
    # same sign as the log ratio wherever the power difference is representable in float32
    if r != 0.0:
        assert math.copysign(1, r) == math.copysign(1, ratio)
    else:
        assert ratio == 0.0 or alpha * max(t, s) < -80 or abs(ratio) * alpha < 1e-6


@settings(max_examples=200, deadline=None)
@given(t=logps, s=logps)
def test_bounded_baselines(t, s):
    teacher, student, mask = torch.tensor([[t]]), torch.tensor([[s]]), torch.ones(1, 1, dtype=torch.bool)
    assert -1.0 <= clip(teacher, student, mask).item() <= 1.0
    assert -1.0 <= tanh(teacher, student, mask).item() <= 1.0
    ratio = log_ratio(teacher, student, mask).item()
    for value in (clip(teacher, student, mask).item(), tanh(teacher, student, mask).item()):
        assert value == 0.0 or math.copysign(1, value) == math.copysign(1, ratio)


def test_zero_reward_when_teacher_equals_student():
    logp = torch.log(torch.rand(3, 5).clamp(min=1e-6))
    mask = torch.ones(3, 5, dtype=torch.bool)
    for name, record in REWARDS.items():
        hparams = {"alpha": 0.5} if "alpha" in record.hparams else {}
        assert torch.equal(record.bind(**hparams)(logp, logp, mask), torch.zeros(3, 5)), name


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


# ---- TV-OPD, vOPD's baseline, the sign convention (issue #26) --------------------------------------------


def test_tv_by_hand():
    from poweropd.objectives.rewards import tv

    # log ratios: ln 2, −ln 2, 0 | ln(1/9), ln 9, (padding)
    expected = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])
    torch.testing.assert_close(tv(TEACHER, STUDENT, MASK), expected)
    torch.testing.assert_close(tv(TEACHER, STUDENT, MASK, scale=0.25), 0.25 * expected)


def test_tv_estimate_by_hand():
    from poweropd.objectives.rewards import tv_estimate

    # [1 − π_T/π_S]_+ : ratios 2, 1/2, 1 | 1/9, 9 -> 0, 1/2, 0 | 8/9, 0; padding 0
    expected = torch.tensor([[0.0, 0.5, 0.0], [8 / 9, 0.0, 0.0]])
    torch.testing.assert_close(tv_estimate(TEACHER, STUDENT, MASK), expected)


def test_tv_estimate_is_unbiased_for_the_total_variation():
    """E_{a~π_S}[1 − π_T(a)/π_S(a)]_+ = ½ Σ_a |π_T(a) − π_S(a)|, summed exactly over a 4-token vocabulary."""
    from poweropd.objectives.rewards import tv_estimate

    student = torch.tensor([0.4, 0.3, 0.2, 0.1])
    teacher = torch.tensor([0.1, 0.2, 0.3, 0.4])
    per_token = tv_estimate(teacher.log()[None], student.log()[None], torch.ones(1, 4, dtype=torch.bool))[0]
    assert float((student * per_token).sum()) == pytest.approx(0.5 * float((teacher - student).abs().sum()))


def test_tv_strength_by_hand():
    """TV-OPD eq. 11: the first estimate sets the EMA and the reference (c stays 1); then
    D̄ = 0.95·D̄ + 0.05·D̂ and c = clip(((D̄ + ε)/(D_ref + ε))^α, c_min, 1)."""
    from poweropd.objectives.rewards import tv_strength

    kw = {"alpha": 0.5, "beta": 0.95, "min_scale": 0.1, "eps": 0.0}
    s1 = tv_strength({"scale": 1.0, "ema": None, "ref": None}, 0.4, **kw)
    assert s1 == {"scale": 1.0, "ema": 0.4, "ref": 0.4}
    s2 = tv_strength(s1, 0.0, **kw)
    assert s2["ema"] == pytest.approx(0.38) and s2["ref"] == 0.4
    assert s2["scale"] == pytest.approx(math.sqrt(0.38 / 0.4))
    above = tv_strength(s1, 1.0, **kw)  # TV above the reference: the strength stays at 1
    assert above["scale"] == 1.0
    floor = tv_strength({"scale": 1.0, "ema": 1e-6, "ref": 0.4}, 0.0, **kw)
    assert floor["scale"] == 0.1  # the floor c_min


def test_vopd_baseline_keeps_the_expectation_and_lowers_the_variance():
    """Tokens sampled from a known π_S at 3 positions: the log ratio's mean is −KL at each; the log ratio + KL
    averages 0 within 4 standard errors, and its variance is the log ratio's (a constant shift per position),
    so over positions with different KLs the pooled variance falls."""
    from poweropd.objectives.losses import vopd_rewards

    g = torch.Generator().manual_seed(0)
    student_PV = torch.softmax(torch.randn(3, 6, generator=g) * 2, -1)
    teacher_PV = torch.softmax(torch.randn(3, 6, generator=g) * 2, -1)
    kl_P = (student_PV * (student_PV.log() - teacher_PV.log())).sum(-1)
    n = 20_000
    tokens_PN = torch.multinomial(student_PV, n, replacement=True, generator=g)
    s_PN, t_PN = student_PV.log().gather(1, tokens_PN), teacher_PV.log().gather(1, tokens_PN)
    mask_PN = torch.ones_like(s_PN, dtype=torch.bool)
    plain_PN = REWARDS["log_ratio"].fn(t_PN, s_PN, mask_PN)
    corrected_PN = vopd_rewards(REWARDS["log_ratio"].fn, t_PN, s_PN, kl_P[:, None].expand(-1, n), mask_PN)
    se_P = corrected_PN.std(1) / math.sqrt(n)
    assert (plain_PN.mean(1) + kl_P).abs().max() < 4 * se_P.max()  # the log ratio's mean is −KL
    assert (corrected_PN.mean(1).abs() < 4 * se_P).all()  # the corrected reward's mean is 0
    assert corrected_PN.var() < plain_PN.var()  # pooled over positions: the baseline removes the means' spread
    torch.testing.assert_close(corrected_PN.var(1), plain_PN.var(1))


@pytest.mark.parametrize("name", [n for n, r in REWARDS.items() if r.sign_consistent])
@settings(max_examples=200, deadline=None)
@given(t=logps, s=logps)
def test_every_sign_consistent_reward_has_the_sign_of_the_log_ratio(name, t, s):
    """sign(r_t) = sign(log π_T − log π_S) wherever the log ratio is not 0 (a re-implementation that negates
    the reward trains away from the teacher): at each record's default hyperparameters. In float32 a reward may
    round to 0 where the log ratio is below its resolution (π^α of two probabilities that differ by 1e-38): it
    is never of the opposite sign, and exactly of the same sign from |log ratio| ≥ 1e-4."""
    record = REWARDS[name]
    t_11, s_11 = torch.tensor([[t]]), torch.tensor([[s]])  # float32, as the loop passes them
    ratio = (t_11 - s_11).item()
    defaults = {kw: hp.default for kw, hp in record.hparams.items()}
    r = record.bind(**defaults)(t_11, s_11, torch.tensor([[True]])).item()
    assert r * ratio >= 0, (name, t, s, r)
    if abs(ratio) >= 1e-4:
        assert math.copysign(1.0, r) == math.copysign(1.0, ratio) and r != 0, (name, t, s, r)


@pytest.mark.parametrize("name", [n for n, r in REWARDS.items() if r.sign_consistent])
def test_a_gradient_step_raises_the_token_the_teacher_prefers(name):
    """A toy pair over 4 tokens; the student samples token 0, which the teacher prefers (π_T 0.7 > π_S 0.25),
    and token 1, which the teacher does not (π_T 0.1 < π_S 0.25). One SGD step on L = −Σ sg[r]·log π_S raises
    π_S(0) and lowers π_S(1), for every sign-consistent reward."""
    record = REWARDS[name]
    logits_V = torch.zeros(4, requires_grad=True)  # π_S uniform: 0.25 each
    teacher_V = torch.tensor([0.7, 0.1, 0.1, 0.1]).log()
    tokens_BT = torch.tensor([[0, 1]])
    mask_BT = torch.ones(1, 2, dtype=torch.bool)
    student_logp_BT = torch.log_softmax(logits_V, -1)[tokens_BT]
    defaults = {kw: hp.default for kw, hp in record.hparams.items()}
    reward_BT = record.bind(**defaults)(teacher_V[tokens_BT], student_logp_BT.detach(), mask_BT)
    loss = -(reward_BT * student_logp_BT).sum() / 2
    loss.backward()
    with torch.no_grad():
        after_V = torch.softmax(logits_V - 0.5 * logits_V.grad, -1)
    assert after_V[0] > 0.25 > after_V[1], (name, after_V)


def test_tv_and_the_kl_baseline_are_labels_and_flags():
    assert RewardConfig.from_label("tv").label == "tv"
    assert RewardConfig.from_label("log_ratio+kl").baseline == "kl"
    assert RewardConfig.from_label("log_ratio+kl").label == "log_ratio+kl"
    with pytest.raises(UserError, match=r"reward.baseline \(--reward-baseline\): expected --reward log_ratio"):
        RewardConfig(name="power", baseline="kl")
    with pytest.raises(UserError, match=r"tv_min_scale"):
        RewardConfig(name="tv", extra={"tv_min_scale": 0.0})
