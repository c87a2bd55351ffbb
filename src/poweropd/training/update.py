"""The update: one student forward per micro-batch, the objective's loss, gradients summed over the batch; and
the optimizer and learning-rate schedule that step on them.

``compute_gradients`` fills ``.grad`` of the student with the gradient of the batch loss. Each micro-batch's
loss is the objective's (losses.py: Σ_t … / N with N the valid tokens of the whole batch, every micro-batch
and process), so summing the micro-batches' gradients, and the processes' (``Collective.sum_gradients``, or
FSDP's reduce-scatter), gives the gradient of one big single-process batch. A reward that needs batch
statistics (``zscore``) is gathered over processes; with several micro-batches it is computed by one extra
no-grad student pass before the first backward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..collective import Collective, SingleProcess
from ..config.sections import OptimConfig
from ..models.hf import output_layer, response_hidden_states, sampled_logprobs
from ..objectives.losses import MicroBatch, Objective, TeacherScores
from ..rollout.samplers import Rollouts
from ..run.metrics import UpdateResult

PER_TOKEN_KEYS = ("student_logp", "teacher_logp", "reward", "selected")
"""The (B, T) tensors every objective returns beside its loss (losses.Objective.micro_batch_loss)."""


def compute_gradients(
    student,
    rollouts: Rollouts,
    teacher: TeacherScores,
    objective: Objective,
    *,
    micro_batch_size: int,
    include_stop_token: bool = False,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    vocab_size: int | None = None,
    comm: Collective | None = None,
    autocast_dtype: torch.dtype | None = None,
    forward: Callable | None = None,
) -> UpdateResult:
    """Fill ``.grad`` of the student with the gradient of the batch loss, summed over processes.

    ``rollouts`` and ``teacher`` hold this process's share of the batch; the loss is normalised by the valid
    tokens of the whole batch, so the result equals one big single-process batch. ``forward(fn, *args)`` runs
    ``fn(student, *args)``: a plain call, or through FSDP's root when the student is sharded (placement.py).
    """
    comm = comm or SingleProcess()
    forward = forward or (lambda fn, *args: fn(student, *args))
    device = next(student.parameters()).device
    rollouts = rollouts.to(device)
    mask_BT = rollouts.loss_mask(include_stop_token)
    if teacher.logp_BT is not None:
        teacher = TeacherScores(teacher.logp_BT.to(device), teacher.hidden_BTH, teacher.head)
    num_tokens = comm.sum(mask_BT.sum().float()).clamp(min=1).item()
    micro = [
        slice(i, min(i + micro_batch_size, mask_BT.shape[0]))
        for i in range(0, mask_BT.shape[0], micro_batch_size)
    ]
    amp = torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    objectives = [objective] * len(micro)
    if objective.needs_batch_statistics:
        reward_fn = _gathered_reward_fn(objective, comm)
        if len(micro) == 1:
            objectives = [objective.with_reward_fn(reward_fn)]
        else:  # the batch's statistics before the first backward pass: one extra no-grad student pass
            with torch.no_grad(), amp:
                logps = [
                    forward(_student_logprobs, rollouts.select(s), temperature, chunk_size) for s in micro
                ]
            rewards_BT = reward_fn(teacher.logp_BT, torch.cat(logps), mask_BT)
            objectives = [objective.with_reward_fn(_constant(rewards_BT[s])) for s in micro]

    def micro_batch_loss(model, s: slice, objective: Objective):
        mb = rollouts.select(s)
        hidden_BTH = response_hidden_states(model, mb.input_ids_BL, mb.attention_mask_BL, mb.prompt_len)
        return objective.micro_batch_loss(
            MicroBatch(output_layer(model), hidden_BTH, mb.response_ids_BT, mask_BT[s], num_tokens, teacher.select(s),
                       temperature=temperature, chunk_size=chunk_size, vocab_size=vocab_size)
        )  # fmt: skip

    loss_total, outs = 0.0, []
    for s, micro_objective in zip(micro, objectives):
        with amp:
            loss, out = forward(micro_batch_loss, s, micro_objective)
        loss.backward()
        loss_total += loss.item()
        outs.append(out)

    comm.sum_gradients([p for p in student.parameters() if p.requires_grad])
    out = {key: torch.cat([o[key] for o in outs]) for key in PER_TOKEN_KEYS}
    terms = {
        key: comm.sum(sum(o[key].float() for o in outs)).item()
        for key in sorted(outs[0])
        if key.startswith("loss/")
    }
    log_ratio_BT = torch.where(mask_BT, out["teacher_logp"] - out["student_logp"], 0.0)
    loss = comm.sum(torch.tensor(loss_total, device=device)).item()
    return UpdateResult(
        loss, out["reward"], log_ratio_BT, out["student_logp"], mask_BT, out["selected"].bool(), terms
    )


def _student_logprobs(model, rollouts: Rollouts, temperature: float, chunk_size: int) -> Tensor:
    return sampled_logprobs(model, rollouts, temperature=temperature, chunk_size=chunk_size)[0]


def _gathered_reward_fn(objective: Objective, comm: Collective) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The objective's reward over every process's tokens (batch statistics), this process's rows returned."""

    def reward(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
        (teacher_all, rows), (student_all, _), (mask_all, _) = (
            comm.gather_rows(t) for t in (teacher_logp_BT, student_logp_BT, mask_BT.long())
        )
        return objective.reward_fn(teacher_all, student_all, mask_all.bool())[rows, : mask_BT.shape[1]]

    return reward


def _constant(reward_BT: Tensor) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """A reward computed beforehand, for one micro-batch's rows."""
    return lambda *_: reward_BT


def make_optimizer(params, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one pass over the weights) on CPU and CUDA: here its step takes 0.14–0.18×
    the time of the default foreach update on a 40M-parameter student (benchmarks/optimizer_bench.py). On
    CUDA it is used for the same reason (one pass instead of several); not timed there on its own."""
    return torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=(optim.beta1, optim.beta2),
        weight_decay=optim.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )


def warmup_then_constant(warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor: linear warmup from 1/warmup at the first step (not from 0, which would waste a
    step), then constant."""
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def advance_strength(reward_cfg, state: dict, result: UpdateResult, comm: Collective) -> tuple[dict, float]:
    """A reward's run-level strength after an accepted step (TV-OPD), and the step's statistic: pooled over every
    valid token of every process (Σ values / Σ tokens: token pooling, not a mean of micro-batch or process means).
    A step without valid tokens leaves the state as it was (TV-OPD appendix B.7: a zero would bias the EMA)."""
    strength = reward_cfg.record.strength
    teacher_logp_BT = result.student_logp_BT.float() + result.log_ratio_BT
    values_BT = strength.statistic(teacher_logp_BT, result.student_logp_BT, result.mask_BT)
    total, count = comm.sum(torch.stack([values_BT.sum(), result.mask_BT.sum()]).double()).tolist()
    if count == 0:
        return state, float("nan")
    statistic = total / count
    return strength.update(state, statistic, **reward_cfg.strength_hparams), statistic
