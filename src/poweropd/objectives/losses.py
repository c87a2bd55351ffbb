"""Training objectives behind one interface: sampled-token rewards (the REINFORCE surrogate) and the
full-vocabulary reverse KL.

An ``Objective`` turns one micro-batch (``MicroBatch``: the student's hidden states and output layer, the
sampled tokens, what the teacher's scorer gave) into ``(loss, metrics)``; the update (update.py) only sums
those losses' gradients. Sampled-token rewards live in ``rewards.REWARDS``; every other objective (the
full-vocabulary KL) in ``OBJECTIVES`` here. Where a fused output-layer op exists (``fused.py``) the objective chooses it here, next to the
reference path it replaces (``logprobs.chunked_token_logprobs`` and the plain losses below); tests check that
both give the same loss and gradients. Aggregation is a token mean over the *whole* batch: ``num_tokens`` counts
the valid tokens of every micro-batch and process, so gradient accumulation and data parallelism give the
gradient of one big batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .fused import fused_policy_gradient_loss, fused_reverse_kl_loss, reverse_kl_values, top_fraction
from .logprobs import DEFAULT_CHUNK_SIZE, OutputLayer, chunked_token_logprobs, is_plain_linear
from .rewards import REWARDS


def policy_gradient_loss(
    student_logp_BT: Tensor, reward_BT: Tensor, mask_BT: Tensor, *, num_tokens: int | float
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = −Σ_t sg[r_t] · log π_S(o_t | c_t) / N  (PowerOPD paper, eq. 1; no ratio, no KL, no baseline).

    Its gradient is −Σ_t r_t ∇log π_S(o_t) / N, the on-policy REINFORCE estimate of the reward's gradient.
    """
    mask_BT = mask_BT.bool()
    weighted_BT = torch.where(mask_BT, reward_BT.detach().float() * student_logp_BT.float(), 0.0)
    loss = -weighted_BT.sum() / num_tokens
    return loss, {"loss/pg": loss.detach()}


def reverse_kl_per_token(student_logits_BTV: Tensor, teacher_logits_BTV: Tensor) -> Tensor:
    """Exact KL(π_S ‖ π_T) = Σ_v π_S(v)(log π_S(v) − log π_T(v)) at every position, float32, shape (B, T).

    Materialises two float32 log-softmaxes over B×T×V: the reference that the chunked version is tested
    against, and the naive recipe that benchmarks/step_bench.py measures.
    """
    student_logp_BTV = F.log_softmax(student_logits_BTV.float(), dim=-1)
    teacher_logp_BTV = F.log_softmax(teacher_logits_BTV.float(), dim=-1)
    return (student_logp_BTV.exp() * (student_logp_BTV - teacher_logp_BTV)).sum(-1)


def _chunk_reverse_kl(
    student_output_layer: OutputLayer,
    teacher_output_layer: OutputLayer,
    student_hidden_NH: Tensor,
    teacher_hidden_NH: Tensor,
    tokens_N: Tensor,
    vocab_size: int,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    student_logits_NV = student_output_layer(student_hidden_NH)[:, :vocab_size].float() / temperature
    with torch.no_grad():
        teacher_logits_NV = teacher_output_layer(teacher_hidden_NH)[:, :vocab_size].float() / temperature
        teacher_logp_NV = F.log_softmax(teacher_logits_NV.to(student_logits_NV.device), dim=-1)
    student_logp_NV = F.log_softmax(student_logits_NV, dim=-1)
    kl_N = (student_logp_NV.exp() * (student_logp_NV - teacher_logp_NV)).sum(-1)
    with torch.no_grad():
        sampled_logp_N = student_logp_NV.gather(-1, tokens_N.unsqueeze(-1)).squeeze(-1)
        teacher_sampled_logp_N = teacher_logp_NV.gather(-1, tokens_N.unsqueeze(-1)).squeeze(-1)
    return kl_N, sampled_logp_N, teacher_sampled_logp_N


def chunked_reverse_kl(
    student_output_layer: OutputLayer,
    teacher_output_layer: OutputLayer,
    student_hidden_BTH: Tensor,
    teacher_hidden_BTH: Tensor,
    tokens_BT: Tensor,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact per-token reverse KL from hidden states, ``chunk_size`` positions at a time, float32 (B, T).

    Equal to ``reverse_kl_per_token`` on the two models' logits restricted to the first ``vocab_size``
    entries (the shared tokenizer range; Qwen3 pads its embedding beyond it). Under checkpointing, so the
    backward pass recomputes one chunk of logits at a time. Also returns the student's and the teacher's
    (renormalised) log-probs of the sampled token, detached, for the log-ratio diagnostics that every run
    logs: (kl_BT, student_logp_BT, teacher_logp_BT).
    """
    B, T, _ = student_hidden_BTH.shape
    s_hidden_NH = student_hidden_BTH.reshape(B * T, -1)
    t_hidden_NH = teacher_hidden_BTH.reshape(B * T, -1)
    tokens_N = tokens_BT.reshape(B * T)
    kls, logps, teacher_logps = [], [], []
    for start in range(0, B * T, chunk_size):
        stop = start + chunk_size
        args = (
            student_output_layer,
            teacher_output_layer,
            s_hidden_NH[start:stop],
            t_hidden_NH[start:stop],
            tokens_N[start:stop],
            vocab_size,
            temperature,
        )
        if torch.is_grad_enabled():
            kl_N, logp_N, teacher_logp_N = checkpoint(_chunk_reverse_kl, *args, use_reentrant=False)
        else:
            kl_N, logp_N, teacher_logp_N = _chunk_reverse_kl(*args)
        kls.append(kl_N)
        logps.append(logp_N)
        teacher_logps.append(teacher_logp_N)
    return tuple(torch.cat(parts).view(B, T) for parts in (kls, logps, teacher_logps))


@torch.no_grad()
def reverse_kl_without_grad(student_output_layer: OutputLayer, teacher_output_layer: OutputLayer,
                            student_hidden_BTH: Tensor, teacher_hidden_BTH: Tensor, tokens_BT: Tensor, **kwargs):  # fmt: skip
    """``chunked_reverse_kl``'s (kl_BT, student_logp_BT, teacher_logp_BT) without a gradient: the in-place pass
    of ``fused.reverse_kl_values`` for bias-free linear output layers, the chunked reference otherwise."""
    plain = is_plain_linear(student_output_layer) and is_plain_linear(teacher_output_layer)
    kl = reverse_kl_values if plain else chunked_reverse_kl
    return kl(student_output_layer, teacher_output_layer, student_hidden_BTH, teacher_hidden_BTH, tokens_BT, **kwargs)


def full_kl_loss(
    kl_BT: Tensor, mask_BT: Tensor, *, num_tokens: int | float
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = Σ_t KL_t / N over valid tokens: full-vocabulary OPD, differentiated exactly (no sampling noise)."""
    loss = torch.where(mask_BT.bool(), kl_BT, 0.0).sum() / num_tokens
    return loss, {"loss/full_kl": loss.detach()}


# ---- the interface -------------------------------------------------------------------------------------


@dataclass
class TeacherScores:
    """What the teacher gives the objective for a batch of rollouts."""

    logp_BT: Tensor | None
    """log π_T of each sampled response token, float32 (None: not asked for)."""
    hidden_BTH: Tensor | None = None
    """Final hidden states, kept for full-vocabulary objectives (``keep_hidden``)."""
    head: OutputLayer | None = None
    """The teacher's output layer, with ``hidden_BTH``: the objective computes log π_T over the vocabulary."""
    temperature: float | None = None
    """The temperature of the teacher's distribution (``--teacher-temperature``) when it differs from the
    rollout's; None: the rollout's. ``logp_BT`` is at it already; with ``hidden_BTH`` the objective applies it."""

    def select(self, rows: slice) -> TeacherScores:
        """The scores of some rows (a micro-batch), on the same devices."""
        logp, hidden = self.logp_BT, self.hidden_BTH
        return TeacherScores(
            None if logp is None else logp[rows], None if hidden is None else hidden[rows], self.head, self.temperature
        )

    def hidden_at(self, temperature: float) -> Tensor:
        """The hidden states to put through ``head`` at the rollout ``temperature`` so that the logits come out at
        the teacher's: the output layer is linear without bias (every HF causal LM; checked), so
        h·Wᵀ / T_teacher = (h · T_rollout / T_teacher)·Wᵀ / T_rollout, exactly, at no cost in the fused ops."""
        if self.temperature is None or self.temperature == temperature:
            return self.hidden_BTH
        if not is_plain_linear(self.head):
            raise ValueError("a teacher temperature of its own needs a bias-free linear output layer")
        return self.hidden_BTH * (temperature / self.temperature)


@dataclass
class MicroBatch:
    """What every objective gets for one micro-batch; (B, T) tensors on the student's device."""

    head: OutputLayer
    """The student's output layer."""
    hidden_BTH: Tensor
    """The student's final hidden states at the positions that predict ``tokens_BT`` (with grad)."""
    tokens_BT: Tensor
    mask_BT: Tensor
    """Positions that enter the loss."""
    num_tokens: float
    """Valid tokens of the whole batch (every micro-batch and process): the loss is Σ / num_tokens."""
    teacher: TeacherScores
    """What the teacher's scorer returned for these rows: each objective reads what it asked for
    (``needs_teacher_hidden``): log π_T of the sampled tokens, or the hidden states with the output layer."""
    temperature: float = 1.0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    vocab_size: int | None = None
    """The tokenizer's range of the output layers (full-vocabulary objectives)."""


class Objective(Protocol):
    name: str
    needs_teacher_hidden: bool
    """The teacher scorer keeps its final hidden states and output layer (and skips its log-probs)."""
    needs_batch_statistics: bool
    """A token's reward depends on the whole batch: the update gathers it over processes, or computes it before
    the first backward pass, and hands it in through ``with_reward_fn``."""

    def micro_batch_loss(self, mb: MicroBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, metrics): metrics holds detached (B, T) tensors "student_logp", "teacher_logp", "reward"
        (the per-token training signal; −KL for full_kl) and "selected" (the tokens that were trained on), and
        scalar (0-d) loss terms named ``loss/<term>`` (Σ / N: summed over micro-batches and processes, logged)."""
        ...


@dataclass(frozen=True)
class SampledTokenObjective:
    """L = −Σ_t sg[r_t] · log π_S(o_t) / N for a reward of the registry (PowerOPD paper, eq. 1)."""

    name: str
    reward_fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    per_token: bool = True
    select_fraction: float | None = None
    """Train on the top fraction of each micro-batch's valid tokens by student entropy (None: all)."""
    baseline: str | None = None
    """``kl``: vOPD's control variate, r_t + KL_t(π_S‖π_T) (detached; ``vopd_rewards``)."""

    @property
    def needs_teacher_hidden(self) -> bool:
        return self.baseline is not None  # the KL needs the teacher's whole distribution

    @property
    def needs_batch_statistics(self) -> bool:
        return not self.per_token

    def with_reward_fn(self, reward_fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> SampledTokenObjective:
        """The same objective with the reward as the update computes it over the whole batch (gathered across
        processes, or computed before the first backward pass)."""
        return replace(self, reward_fn=reward_fn)

    def micro_batch_loss(self, mb: MicroBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.baseline == "kl":
            return self._with_kl_baseline(mb)
        teacher_logp_BT = mb.teacher.logp_BT
        if teacher_logp_BT is None:
            raise ValueError(
                f"{self.name}: needs the teacher's log-probs of the sampled tokens (logprobs=True)"
            )
        if self.per_token and is_plain_linear(mb.head):
            # fast path: the output layer and the surrogate in one op (three vocabulary matmuls per position)
            loss, metrics = fused_policy_gradient_loss(
                mb.head, mb.hidden_BTH, mb.tokens_BT, teacher_logp_BT, mb.mask_BT, self.reward_fn,
                num_tokens=mb.num_tokens, temperature=mb.temperature, chunk_size=mb.chunk_size,
                select_fraction=self.select_fraction,
            )  # fmt: skip
            return loss, {**metrics, "teacher_logp": teacher_logp_BT, "loss/pg": loss.detach()}
        # reference path: log-probs (and entropy) from the checkpointed chunked output layer, then equation 1
        logp_BT, entropy_BT = chunked_token_logprobs(
            mb.head, mb.hidden_BTH, mb.tokens_BT, temperature=mb.temperature, chunk_size=mb.chunk_size,
            with_entropy=self.select_fraction is not None,
        )  # fmt: skip
        reward_BT = self.reward_fn(teacher_logp_BT, logp_BT.detach(), mb.mask_BT)
        selected_BT = mb.mask_BT.bool()
        if self.select_fraction is not None:
            flat = top_fraction(entropy_BT.reshape(-1), selected_BT.reshape(-1), self.select_fraction)
            selected_BT = flat.view_as(selected_BT)
        loss, terms = policy_gradient_loss(logp_BT, reward_BT, selected_BT, num_tokens=mb.num_tokens)
        metrics = {"student_logp": logp_BT.detach(), "reward": reward_BT.detach(), "selected": selected_BT}
        return loss, {**metrics, "teacher_logp": teacher_logp_BT, **terms}


    def _with_kl_baseline(self, mb: MicroBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """vOPD: the reward plus the exact per-position KL(π_S‖π_T), all detached, computed by a no-grad pass of
        both output layers over the tokenizer's range; the surrogate then runs through the fused op with the
        reward given (its chunks straddle rows, so the reward is handed in as the op's per-token input)."""
        teacher = mb.teacher
        if teacher.hidden_BTH is None or teacher.head is None:
            raise ValueError(f"{self.name}+{self.baseline}: needs the teacher's hidden states and output layer")
        kl_BT, student_logp_BT, teacher_logp_BT = reverse_kl_without_grad(
            mb.head, teacher.head, mb.hidden_BTH.detach(), teacher.hidden_at(mb.temperature), mb.tokens_BT,
            vocab_size=mb.vocab_size, temperature=mb.temperature, chunk_size=mb.chunk_size,
        )  # fmt: skip
        with torch.no_grad():
            reward_BT = vopd_rewards(self.reward_fn, teacher_logp_BT, student_logp_BT, kl_BT, mb.mask_BT)
        if is_plain_linear(mb.head):
            loss, metrics = fused_policy_gradient_loss(
                mb.head, mb.hidden_BTH, mb.tokens_BT, reward_BT, mb.mask_BT, _given_reward, num_tokens=mb.num_tokens,
                temperature=mb.temperature, chunk_size=mb.chunk_size, select_fraction=self.select_fraction,
            )  # fmt: skip
        else:
            logp_BT, _ = chunked_token_logprobs(mb.head, mb.hidden_BTH, mb.tokens_BT, temperature=mb.temperature,
                                                chunk_size=mb.chunk_size)  # fmt: skip
            loss, _ = policy_gradient_loss(logp_BT, reward_BT, mb.mask_BT, num_tokens=mb.num_tokens)
            metrics = {"student_logp": logp_BT.detach(), "reward": reward_BT, "selected": mb.mask_BT.bool()}
        # the logged log ratio is the reward's own (both over the tokenizer's range, as full_kl's)
        return loss, {**metrics, "student_logp": student_logp_BT, "teacher_logp": teacher_logp_BT,
                      "loss/pg": loss.detach()}  # fmt: skip


def vopd_rewards(reward_fn, teacher_logp_BT: Tensor, student_logp_BT: Tensor, kl_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """r_t + KL_t(π_S‖π_T): vOPD's control variate ("KL for a KL", arXiv 2605.07865): the value of a position is
    E_{o~π_S}[log π_T(o) − log π_S(o)] = −KL_t, so adding KL_t leaves the log-ratio reward's expectation unchanged
    and lowers its variance (tests/objectives/test_rewards.py samples it)."""
    return torch.where(mask_BT.bool(), reward_fn(teacher_logp_BT, student_logp_BT, mask_BT) + kl_BT.float(), 0.0)


def _given_reward(reward_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """The fused op's reward when it is computed beforehand: handed in where the op takes log π_T."""
    return torch.where(mask_BT.bool(), reward_BT.float(), 0.0)


@dataclass(frozen=True)
class FullKLObjective:
    """L = Σ_t KL_t(π_S ‖ π_T) / N, the exact reverse KL at every rollout position (no sampling noise)."""

    name: str
    needs_teacher_hidden: bool = True
    needs_batch_statistics: bool = False

    def micro_batch_loss(self, mb: MicroBatch) -> tuple[Tensor, dict[str, Tensor]]:
        teacher = mb.teacher
        if teacher.hidden_BTH is None or teacher.head is None:
            raise ValueError(
                f"{self.name}: needs the teacher's hidden states and output layer (keep_hidden=True)"
            )
        args = (mb.head, teacher.head, mb.hidden_BTH, teacher.hidden_at(mb.temperature), mb.tokens_BT)
        kwargs = {"vocab_size": mb.vocab_size, "temperature": mb.temperature, "chunk_size": mb.chunk_size}
        if is_plain_linear(mb.head) and is_plain_linear(teacher.head):
            # fast path: both output layers and the KL's gradient in one op
            loss, out = fused_reverse_kl_loss(*args, mb.mask_BT, num_tokens=mb.num_tokens, **kwargs)
        else:
            kl_BT, logp_BT, teacher_logp_BT = chunked_reverse_kl(*args, **kwargs)
            loss, _ = full_kl_loss(kl_BT, mb.mask_BT, num_tokens=mb.num_tokens)
            out = {"kl": kl_BT, "student_logp": logp_BT, "teacher_logp": teacher_logp_BT}
        mask_BT = mb.mask_BT.bool()
        reward_BT = torch.where(mask_BT, -out["kl"].detach(), 0.0)
        return loss, {"student_logp": out["student_logp"], "teacher_logp": out["teacher_logp"],
                      "reward": reward_BT, "selected": mask_BT, "loss/full_kl": loss.detach()}  # fmt: skip


OBJECTIVES: dict[str, Callable[[str], Objective]] = {
    "full_kl": FullKLObjective,
}
"""Objectives that are not a sampled-token reward, by method name (each built from its name); every other
method is a reward of ``rewards.REWARDS`` trained through ``SampledTokenObjective``."""


def make_objective(reward_cfg, progress: float = 0.0, strength: Mapping[str, float | None] | None = None) -> Objective:
    """The objective of a ``config.RewardConfig``, its hyperparameters bound at ``progress`` ∈ [0, 1] of the
    run (a scheduled α moves with it) and, for a reward with a run-level strength (TV-OPD), at ``strength``
    (default: its initial state)."""
    if reward_cfg.name in OBJECTIVES:
        return OBJECTIVES[reward_cfg.name](reward_cfg.name)
    record = REWARDS[reward_cfg.name]
    hparams = reward_cfg.hparams_at(progress)
    if record.strength is not None:
        hparams["scale"] = (strength or record.strength.initial)["scale"]
    return SampledTokenObjective(
        reward_cfg.name,
        record.bind(**hparams),
        per_token=record.per_token,
        select_fraction=reward_cfg.select_fraction,
        baseline=reward_cfg.baseline,
    )


__all__ = [
    "OBJECTIVES",
    "TeacherScores",
    "FullKLObjective",
    "MicroBatch",
    "Objective",
    "SampledTokenObjective",
    "chunked_reverse_kl",
    "reverse_kl_without_grad",
    "full_kl_loss",
    "fused_policy_gradient_loss",
    "fused_reverse_kl_loss",
    "make_objective",
    "policy_gradient_loss",
    "reverse_kl_per_token",
    "vopd_rewards",
]
