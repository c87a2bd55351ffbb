"""Per-token rewards for on-policy distillation: pure functions, and one record per reward in ``REWARDS``.

Every function has the signature ``fn(teacher_logp_BT, student_logp_BT, mask_BT, **hparams) -> Tensor[B, T]``:
inputs are the log-probabilities that teacher and student give the *sampled* token at each rollout position
(any float dtype), ``mask_BT`` marks the positions that count. The result is float32 and exactly 0 where the
mask is False. Rewards are treated as constants by the loss (stop-gradient), so they are computed under the
caller's ``torch.no_grad`` or from detached inputs.

A ``Reward`` record says everything the rest of the package needs: the function, its keyword
hyperparameters (``HParam``: the config key and ``--flag`` that hold each, its default and range), whether it is per-token (the fused output-layer op may compute
it on chunks that straddle rows) or needs the whole batch, its label, its bounds and its source. Config, CLI
help, diagnostics, the demo, plots and tests read the records; adding a reward is one function and one record
(``register``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


def _masked(reward_BT: Tensor, mask_BT: Tensor) -> Tensor:
    # torch.where (not multiplication) so that a NaN or inf at a masked position cannot leak through.
    return torch.where(mask_BT.bool(), reward_BT, torch.zeros_like(reward_BT))


def _log_ratio_fp32(teacher_logp_BT: Tensor, student_logp_BT: Tensor) -> Tensor:
    return teacher_logp_BT.float() - student_logp_BT.float()


def log_ratio(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Vanilla OPD: r_t = log π_T(o_t) − log π_S(o_t), unbounded (PowerOPD paper, eq. 2)."""
    return _masked(_log_ratio_fp32(teacher_logp_BT, student_logp_BT), mask_BT)


def clip(
    teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor, *, low: float = -1.0, high: float = 1.0
) -> Tensor:
    """Post-hoc clipping: r_t = clamp(log π_T − log π_S, low, high); [−1, 1] is the paper's best setting."""
    if not low < high:
        raise ValueError(f"clip: expected low < high, got low={low}, high={high}")
    reward_BT = _log_ratio_fp32(teacher_logp_BT, student_logp_BT).clamp(min=low, max=high)
    return _masked(reward_BT, mask_BT)


def tanh(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor, *, tau: float = 1.0) -> Tensor:
    """Post-hoc squashing: r_t = tanh((log π_T − log π_S) / tau), in (−1, 1)."""
    if not tau > 0:
        raise ValueError(f"tanh: expected tau > 0, got {tau}")
    reward_BT = torch.tanh(_log_ratio_fp32(teacher_logp_BT, student_logp_BT) / tau)
    return _masked(reward_BT, mask_BT)


def zscore(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Post-hoc normalisation: r_t = (ℓ_t − mean) / max(std, eps), ℓ = log π_T − log π_S.

    Mean and *population* std are taken over the valid tokens of everything passed in: the training loop
    passes the whole batch (all micro-batches, all processes), as the paper's baseline does.
    """
    mask_BT = mask_BT.bool()
    ratio_BT = _log_ratio_fp32(teacher_logp_BT, student_logp_BT)
    valid_N = ratio_BT[mask_BT]
    if valid_N.numel() == 0:
        return torch.zeros_like(ratio_BT)
    mean = valid_N.mean()
    std = valid_N.std(correction=0)
    return _masked((ratio_BT - mean) / std.clamp(min=eps), mask_BT)


def power(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor, *, alpha: float) -> Tensor:
    """PowerOPD: r_t = π_T(o_t)^α − π_S(o_t)^α ∈ [−1, 1] (PowerOPD paper, eq. 4).

    Computed as exp(α·log p) in float32, so a log-prob of −inf gives 0 (not NaN) and bf16 inputs do not
    round the probabilities. The sign equals the sign of the log ratio for every α > 0.
    """
    if not alpha > 0:
        raise ValueError(f"power: expected alpha > 0, got {alpha}")
    reward_BT = torch.exp(alpha * teacher_logp_BT.float()) - torch.exp(alpha * student_logp_BT.float())
    return _masked(reward_BT, mask_BT)


def proximal(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor, *, alpha: float) -> Tensor:
    """Proximal-teacher reward: r_t = log(α·π_T + (1 − α)·π_S) − log π_S = log(α·ρ + 1 − α), ρ = π_T / π_S.

    The student is pulled toward the mixture of teacher and student instead of the teacher itself, a trust
    region in probability space (NeMo-RL's TROPD; "TOP-D"). α ∈ (0, 1]; α = 1 is the log ratio. Bounded below
    by log(1 − α) (π_T → 0), unbounded above only as log ρ is.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"proximal: expected alpha in (0, 1], got {alpha}")
    ratio_BT = _log_ratio_fp32(teacher_logp_BT, student_logp_BT)
    if alpha == 1:  # the log ratio itself (float32's expm1 saturates at −1 below ℓ ≈ −17)
        return _masked(ratio_BT, mask_BT)
    # log(α e^ℓ + 1 − α), in float64 (α near 1 would round to 1 in float32): log1p(α·expm1(ℓ)) is exact at
    # ℓ = 0 and reaches log(1 − α) as ℓ → −∞; for ℓ > 0 the same value is ℓ + log(α + (1 − α) e^−ℓ)
    ratio_BT = ratio_BT.double()
    below_BT = torch.log1p(alpha * torch.expm1(ratio_BT.clamp(max=0.0)))
    above_BT = ratio_BT + torch.log(alpha + (1 - alpha) * torch.exp(-ratio_BT.clamp(min=0.0)))
    return _masked(torch.where(ratio_BT > 0, above_BT, below_BT).float(), mask_BT)


def tv(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor, *, scale: float = 1.0) -> Tensor:
    """TV-OPD: r_t = c · sign(log π_T − log π_S) (TV-regulated OPD, arXiv 2609.08341, eq. 11; sign(0) = 0).

    The sign alone is a descent direction of the conditional total variation ½ Σ_a |π_T(a) − π_S(a)| (its eq. 8);
    ``scale`` = c ∈ [c_min, 1] is one global strength per step, set by ``tv_strength`` from past steps.
    """
    return _masked(torch.sign(_log_ratio_fp32(teacher_logp_BT, student_logp_BT)) * scale, mask_BT)


def tv_estimate(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Per-token unbiased estimate of the conditional TV at each position: d = [1 − π_T/π_S]_+ = −expm1(min(Δ, 0)),
    Δ = log π_T − log π_S of the sampled token (TV-OPD eq. 10), in [0, 1]; 0 where the mask is False."""
    ratio_BT = _log_ratio_fp32(teacher_logp_BT, student_logp_BT)
    return _masked(-torch.expm1(ratio_BT.clamp(max=0.0)), mask_BT)


def tv_strength(
    state: Mapping[str, float | None], estimate: float, *, alpha: float, beta: float, min_scale: float,
    eps: float = 1e-8,
) -> dict[str, float]:  # fmt: skip
    """The next step's strength c from this step's pooled TV estimate D̂ (TV-OPD eq. 11, appendix B.6).

    The first accepted step sets the EMA and freezes the reference: D̄ = D_ref = D̂; after it
    D̄ ← β·D̄ + (1 − β)·D̂. Then c = clip(((D̄ + ε) / (D_ref + ε))^α, c_min, 1): the strength falls as the
    student's TV from the teacher falls below where it started. ``state``: {"scale", "ema", "ref"}.
    """
    if state.get("ref") is None:
        ema = ref = estimate
    else:
        ema, ref = beta * state["ema"] + (1 - beta) * estimate, state["ref"]
    scale = min(max(((ema + eps) / (ref + eps)) ** alpha, min_scale), 1.0)
    return {"scale": scale, "ema": ema, "ref": ref}


@dataclass(frozen=True)
class HParam:
    """A reward's keyword hyperparameter: where a run stores it, its default and the range it accepts."""

    field: str
    """Key in a run's ``reward`` section (config.yaml) and the ``--flag`` with dashes, e.g. "clip_low"."""
    default: float
    doc: str = ""
    """What it is, for ``--help``."""
    low: float = -math.inf
    high: float = math.inf
    closed: tuple[bool, bool] = (False, False)
    """Whether ``low`` / ``high`` themselves are accepted."""

    def accepts(self, value: float) -> bool:
        above = self.low <= value if self.closed[0] else self.low < value
        return above and (value <= self.high if self.closed[1] else value < self.high)

    def expected(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return "a number"
        if self.high == math.inf:
            return f"a number {'≥' if self.closed[0] else '>'} {self.low:g}"
        if self.low == -math.inf:
            return f"a number {'≤' if self.closed[1] else '<'} {self.high:g}"
        return f"a number in {'[('[not self.closed[0]]}{self.low:g}, {self.high:g}{'])'[not self.closed[1]]}"


@dataclass(frozen=True)
class Strength:
    """A global strength that a reward carries across steps as run-level state (TV-OPD's c): the reward function
    is bound with ``scale`` = the state's current value; after every accepted optimizer step, ``update`` moves
    the state with the step's ``statistic`` pooled over every valid token of every process (Σ / count). The
    state is saved in each checkpoint and restored on --resume."""

    statistic: Callable[[Tensor, Tensor, Tensor], Tensor]
    """Per-token values ``(teacher_logp_BT, student_logp_BT, mask_BT) -> (B, T)``, 0 where the mask is False."""
    update: Callable[..., dict[str, float]]
    """``(state, pooled statistic, **hparams) -> next state``."""
    hparams: Mapping[str, HParam] = field(default_factory=dict)
    """Keyword -> ``HParam`` of ``update`` (stored and flagged like the reward's own)."""
    initial: Mapping[str, float | None] = field(default_factory=lambda: {"scale": 1.0})
    """The state before the first step (its "scale" binds the reward)."""


@dataclass(frozen=True)
class Reward:
    """One training reward and everything about it that other modules need."""

    name: str
    fn: Callable[..., Tensor]
    citation: str
    """Where the formula comes from (shown in ``--help`` and the docs)."""
    hparams: Mapping[str, HParam] = field(default_factory=dict)
    """Function keyword -> its ``HParam`` (stored field, default, range); config, flags and help read them."""
    per_token: bool = True
    """False when a token's reward depends on other tokens (batch statistics): the loop then computes the
    whole batch's rewards before the first backward pass, and never inside the fused op (its chunks straddle
    rows)."""
    rule: tuple[str, Callable[[dict], bool]] | None = None
    """A condition on several hyperparameters at once and how messages state it: ("low < high", ...)."""
    bounds: Callable[[dict], tuple[float, float]] | None = None
    """(min, max) that the reward can reach for given hyperparameters, where it claims one (property-tested)."""
    sign_consistent: bool = False
    """sign(r_t) = sign(log π_T − log π_S) wherever the log ratio is not 0, at the default hyperparameters
    (property-tested): the update raises a token the teacher prefers and lowers one it does not."""
    strength: Strength | None = None
    """A run-level strength the reward carries across steps (TV-OPD), or None."""

    @property
    def settings(self) -> dict[str, HParam]:
        """Every hyperparameter a run stores for this reward: the function's and its strength's."""
        return {**self.hparams, **(self.strength.hparams if self.strength else {})}

    def label(self, hparams: Mapping[str, float] | None = None) -> str:
        """Method id in reports: ``power@10``, ``proximal@0.5``, ``clip``."""
        if "alpha" in self.hparams and hparams is not None and "alpha" in hparams:
            return f"{self.name}@{hparams['alpha']:g}"
        return self.name

    def accepts_alpha(self, alpha: float) -> bool:
        return self.hparams.get("alpha", _ANY_ALPHA).accepts(alpha)

    def alpha_expected(self) -> str:
        return self.hparams.get("alpha", _ANY_ALPHA).expected()

    def bind(self, **hparams: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The function with its hyperparameters bound: ``fn(teacher_logp_BT, student_logp_BT, mask_BT)``."""
        return functools.partial(self.fn, **hparams) if hparams else self.fn


def register(reward: Reward) -> Reward:
    """Add a reward to the registry (a library user's own reward trains like the built-in ones)."""
    if reward.name in REWARDS or reward.name == "full_kl":
        raise ValueError(f"register: a reward named {reward.name!r} exists already")
    REWARDS[reward.name] = reward
    return reward


_ALPHA = "α of the power reward π_T^α − π_S^α (the paper sweeps 0.1 … 500) or of the proximal reward"
_ANY_ALPHA = HParam("alpha", 1.0, _ALPHA, low=0.0)

REWARDS: dict[str, Reward] = {
    "log_ratio": Reward("log_ratio", log_ratio, "vanilla OPD, PowerOPD paper eq. 2", sign_consistent=True),
    "clip": Reward("clip", clip, "post-hoc clipping, a baseline of the PowerOPD paper",
                   {"low": HParam("clip_low", -1.0, "Lower bound of the clip reward."),
                    "high": HParam("clip_high", 1.0, "Upper bound of the clip reward.")},
                   rule=("low < high", lambda h: h["low"] < h["high"]), bounds=lambda h: (h["low"], h["high"]),
                   sign_consistent=True),  # for low < 0 < high
    "tanh": Reward("tanh", tanh, "post-hoc squashing, a baseline of the PowerOPD paper",
                   {"tau": HParam("tanh_tau", 1.0, "Temperature of the tanh reward: tanh(log_ratio / tau).", low=0.0)},
                   bounds=lambda h: (-1.0, 1.0), sign_consistent=True),
    "zscore": Reward("zscore", zscore, "post-hoc batch z-score, a baseline of the PowerOPD paper", per_token=False),
    "power": Reward("power", power, "PowerOPD paper eq. 4", {"alpha": _ANY_ALPHA}, bounds=lambda h: (-1.0, 1.0),
                    sign_consistent=True),
    "proximal": Reward("proximal", proximal, "proximal-teacher OPD, as in NeMo-RL's TROPD and the TOP-D paper (issue #11)",
                       {"alpha": HParam("alpha", 1.0, _ALPHA, low=0.0, high=1.0, closed=(False, True))},
                       bounds=lambda h: (math.log1p(-h["alpha"]) if h["alpha"] < 1 else -math.inf, math.inf),
                       sign_consistent=True),
    "tv": Reward("tv", tv, "TV-regulated OPD (TV-OPD), arXiv 2609.08341 eq. 11: c · sign(log ratio), c a run-level strength",
                 bounds=lambda h: (-1.0, 1.0), sign_consistent=True,
                 strength=Strength(tv_estimate, tv_strength, {
                     "alpha": HParam("tv_alpha", 0.5, "TV-OPD: how fast the strength falls with the TV estimate (its α; "
                                     "the paper: 0.5).", low=0.0),
                     "beta": HParam("tv_beta", 0.95, "TV-OPD: EMA retention of the TV estimate.", low=0.0, high=1.0,
                                    closed=(True, False)),
                     "min_scale": HParam("tv_min_scale", 0.1, "TV-OPD: the strength's floor c_min (the paper: 0.1).",
                                         low=0.0, high=1.0, closed=(False, True)),
                 }, initial={"scale": 1.0, "ema": None, "ref": None})),
}  # fmt: skip
