"""Per-step training metrics as plain numbers: batch-wide statistics (every process's tokens) of the trained
signal and of the log ratio, position buckets, memory."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import metric_names as M

if TYPE_CHECKING:  # annotations only
    from ..collective import Collective
    from ..rollout.samplers import Rollouts


@dataclass
class UpdateResult:
    loss: float
    reward_BT: Tensor  # the trained per-token signal (for full_kl: −KL_t), detached
    log_ratio_BT: Tensor  # log π_T − log π_S of the sampled tokens, logged whatever trains
    student_logp_BT: Tensor
    mask_BT: Tensor
    selected_BT: Tensor  # the tokens that were trained on (token selection keeps a fraction)
    terms: dict[str, float] = field(default_factory=dict)
    """The objective's scalar loss terms (``loss/pg``, ``loss/full_kl``) over the whole batch."""


def token_stats(prefix: str, values_BT: Tensor, mask_BT: Tensor) -> dict[str, float]:
    """mean/std/min/max/p05/p95 of the valid tokens, as ``prefix/<stat>``."""
    from ..diagnostics import summary_stats

    stats = summary_stats(values_BT[mask_BT])
    return {name: stats[k] for k, name in M.stats(prefix).items()}


def position_rows(reward_BT: Tensor, log_ratio_BT: Tensor, mask_BT: Tensor) -> list[dict]:
    from ..diagnostics import position_stats

    rows = []
    for r, lr in zip(position_stats(reward_BT, mask_BT), position_stats(log_ratio_BT, mask_BT)):
        rows.append(
            {
                "start": r["start"],
                "stop": r["stop"],
                "count": r["count"],
                **{f"reward_{k}": r[k] for k in ("mean", "min", "max")},
                **{f"log_ratio_{k}": lr[k] for k in ("mean", "min", "max")},
            }
        )
    return rows


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def held_mb(modules, optimizer) -> float:
    """MB of weights and optimizer state this process holds between steps (of a shard: its local part)."""

    def local(t: Tensor) -> Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    tensors = {id(p): local(p) for m in modules for p in m.parameters()}
    tensors |= {
        id(v): local(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)
    }
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def step_metrics(
    result: UpdateResult, rollouts: Rollouts, comm: Collective, *, grad_norm: float, lr: float
) -> dict[str, float]:
    """Batch-wide statistics (every process's tokens) of the trained signal and of the log ratio."""
    (reward_all, _), (ratio_all, _), (logp_all, _), (mask_all, _), (selected_all, _) = (
        comm.gather_rows(t)
        for t in (result.reward_BT, result.log_ratio_BT, result.student_logp_BT, result.mask_BT.long(),
                  (result.selected_BT & result.mask_BT).long())
    )  # fmt: skip
    mask_all = mask_all.bool()
    lengths_B, _ = comm.gather_rows(rollouts.response_lengths_B.float().to(result.mask_BT.device)[:, None])
    truncated_B, _ = comm.gather_rows(rollouts.truncated_B.float().to(result.mask_BT.device)[:, None])
    probs = logp_all.exp()[mask_all]
    return logprob_diff_metrics(result, rollouts, comm) | {
        M.LOSS: result.loss,
        **result.terms,
        M.GRAD_NORM: grad_norm,
        M.LR: lr,
        **token_stats(M.REWARD, reward_all, mask_all),
        **token_stats(M.LOG_RATIO, ratio_all, mask_all),
        M.RESPONSE_LENGTH_MEAN: lengths_B.mean().item(),
        M.RESPONSE_LENGTH_MAX: lengths_B.max().item(),
        M.RESPONSE_LENGTH_SUM: lengths_B.sum().item(),
        M.TRUNCATED_FRAC: truncated_B.mean().item(),
        M.STUDENT_PROB_MEAN: probs.mean().item() if probs.numel() else float("nan"),
        M.TOKENS_VALID: int(mask_all.sum()),
        M.TOKENS_SELECTED_FRAC: float(selected_all.sum() / mask_all.sum().clamp(min=1)),
    }


def logprob_diff_metrics(result: UpdateResult, rollouts: Rollouts, comm: Collective) -> dict[str, float]:
    """``rollout/logprob_diff/{mean,max}``: |engine log-prob − trainer log-prob| of the trained tokens, for an
    engine that reports its own (vLLM); the training–inference mismatch verl and TRL users watch."""
    if rollouts.sampler_logp_BT is None:
        return {}
    engine_BT = rollouts.sampler_logp_BT.to(result.mask_BT.device)
    diff_BT = torch.where(result.mask_BT, (engine_BT - result.student_logp_BT.float()).abs(), 0.0)
    (diff_all, _), (mask_all, _) = (comm.gather_rows(t) for t in (diff_BT, result.mask_BT.long()))
    values = diff_all[mask_all.bool()]
    if not values.numel():
        return {}
    return {M.LOGPROB_DIFF_MEAN: values.mean().item(), M.LOGPROB_DIFF_MAX: values.max().item()}


def gathered_positions(result: UpdateResult, comm: Collective) -> list[dict]:
    (reward_all, _), (ratio_all, _), (mask_all, _) = (
        comm.gather_rows(t) for t in (result.reward_BT, result.log_ratio_BT, result.mask_BT.long())
    )
    return position_rows(reward_all, ratio_all, mask_all.bool())


def teacher_metrics(
    result: UpdateResult, teacher_B: list[str], names: list[str], comm: Collective
) -> dict[str, float]:
    """Per teacher of a multi-teacher run: ``teacher/NAME/{log_ratio/mean,reward/mean,tokens}`` over every process's
    rows routed to it (its log ratio against the student, the trained signal, the tokens it scored)."""
    index_B1 = torch.tensor([[names.index(n)] for n in teacher_B], device=result.mask_BT.device)
    (index_all, _), (mask_all, _), (ratio_all, _), (reward_all, _) = (
        comm.gather_rows(t) for t in (index_B1, result.mask_BT.long(), result.log_ratio_BT, result.reward_BT)
    )
    out = {}
    for k, name in enumerate(names):
        mask_BT = mask_all.bool() & (index_all[:, :1] == k)
        tokens = int(mask_BT.sum())
        nan = float("nan")
        out[M.teacher_key(name, "tokens")] = tokens
        out[M.teacher_key(name, "log_ratio/mean")] = ratio_all[mask_BT].mean().item() if tokens else nan
        out[M.teacher_key(name, "reward/mean")] = reward_all[mask_BT].float().mean().item() if tokens else nan
    return out
