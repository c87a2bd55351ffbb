"""Per-token rewards for on-policy distillation: pure functions and the REWARDS registry.

Every function has the signature ``fn(teacher_logp_BT, student_logp_BT, mask_BT, **hparams) -> Tensor[B, T]``:
inputs are the log-probabilities that teacher and student give the *sampled* token at each rollout position
(any float dtype), ``mask_BT`` marks the positions that count. The result is float32 and exactly 0 where the
mask is False. Rewards are treated as constants by the loss (stop-gradient), so they are computed under the
caller's ``torch.no_grad`` or from detached inputs.

Hyperparameters are keyword-only and bound once, e.g. ``functools.partial(REWARDS["power"], alpha=10.0)``.
"""

from __future__ import annotations

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


REWARDS = {
    "log_ratio": log_ratio,
    "clip": clip,
    "tanh": tanh,
    "zscore": zscore,
    "power": power,
}

# Rewards whose value at a token depends on the other tokens of the batch: the loop must hand them the whole
# batch at once (see train.py).
BATCH_STATISTIC_REWARDS = frozenset({"zscore"})
