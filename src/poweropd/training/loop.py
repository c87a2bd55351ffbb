"""The on-policy distillation loop: sample → score → reward → update → log → save.

Everything the loop reads is built once by ``setup.setup`` (models, data, placement, optimizer, sampler,
run directory); ``train`` is the loop itself.

Per optimizer step, on each process:

1. **sample**  the student writes one rollout per prompt (a ``rollout.Sampler``, temperature 1, top-p 1,
   top-k 0, stopping at any stop token);
2. **score**   the frozen teacher gives log π_T of every sampled token (for ``full_kl`` it keeps its final
   hidden states instead: the fused KL op computes log π_T with the KL);
3. **reward**  r_t from the registry, computed from the *same* student forward that the update uses,
   detached — there is no extra student pass;
4. **update**  the objective's loss per micro-batch (``losses.Objective``: L = −Σ_t sg[r_t] · log π_S(o_t) / N
   with N the valid tokens of the whole batch, every micro-batch and process, or L = Σ_t KL_t / N for
   ``full_kl``), gradients summed over processes; clip the gradient norm; AdamW step;
5. **log**     metrics.jsonl / TensorBoard, positions.jsonl every K steps, evaluation every K steps;
6. **save**    checkpoints every K steps, the final student at the end.

Where we depart from the paper's code (EIT-NLP/PowerOPD, a fork of TRL's GOLD trainer), and why:

- The student runs once per micro-batch: rewards reuse its log-probs (the paper's code runs it three
  times). Exception: ``zscore`` with gradient accumulation needs batch-wide statistics before the first
  backward pass, so it takes one extra no-grad student pass over the batch.
- Log-probs come from the decoder's hidden states through the output layer in chunks, never from a
  B×T×V float32 log_softmax (see logprobs.py). For per-token rewards the output layer and the surrogate
  are one fused op whose gradient is built during the forward pass (fused.fused_policy_gradient_loss):
  three vocabulary-sized matmuls per position instead of four. ``full_kl`` is the exact KL, chunked and
  fused the same way (fused.fused_reverse_kl_loss): its gradient π_S ⊙ (log π_S − log π_T − KL) is built
  in the forward pass. ``losses.py`` chooses the fused op or the reference path; ``update.py`` runs it.
- ``--alpha-schedule`` moves α geometrically from A0 to A1 over the run (not in the paper, which fixes α);
  ``--token-select entropy:K`` trains on the top K of each micro-batch's tokens by student entropy.
- Later papers' signals as options (issue #26): ``--reward tv`` (TV-OPD: its strength is run-level state,
  moved after each accepted step and saved in checkpoints), ``--reward-baseline kl`` (vOPD: the log ratio plus
  the exact per-position KL, detached) and ``--teacher-temperature`` (the teacher's own temperature).
- Data parallelism all-reduces gradients explicitly (sum of per-process ``Σ/N_global`` losses) instead
  of wrapping the student in DDP, because the forward pass calls the decoder body and the output layer
  separately. ``--fsdp`` shards the student and teacher with FSDP2 instead; its reduce-scatter sums the
  same way (placement.py: where the weights live and how the sampler sees them; fsdp.py: why the
  micro-batch loss is the FSDP root's forward, and the rollout copy).
- With ``--dtype bfloat16`` the student keeps float32 master weights under bf16 autocast: at lr 5e-7 a
  pure-bf16 AdamW update would round to zero for most weights.
- The learning rate warms up linearly over ``warmup_ratio · max_steps`` steps starting from lr/warmup at
  the first step (not from 0, which would waste a step).
- Each step re-seeds the sampler from (seed, step, process), so a resumed run samples exactly what an
  uninterrupted run would, whenever it was killed (tests/test_faults.py; faults.py: signals, NaN/inf steps).
"""

from __future__ import annotations

import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..config.sections import TrainConfig
from ..objectives.losses import make_objective
from ..run import metric_names as M
from ..run.faults import Interrupted, StopOnSignal, kill_point
from ..run.metrics import (
    UpdateResult,
    gathered_positions,
    held_mb,
    peak_memory_mb,
    step_metrics,
    teacher_metrics,
)
from ..teachers.served import TeacherUnavailable
from . import fsdp, update
from .setup import Setup, setup, teacher_temperature


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + rank) % (2**63)


def train(cfg: TrainConfig, *, progress: bool = True, resume: bool = False, eval_problems: dict | None = None,
          evaluator: Callable | None = None) -> Path:  # fmt: skip
    """Run on-policy distillation as configured; returns the folder of the final student.

    ``eval_problems`` ({name: [benchmarks.Problem]}) replaces the configured benchmarks for ``--eval-every``
    (the demo evaluates on its own held-out task); ``evaluator`` (student -> {metric: value}, every
    ``--eval-every`` steps) replaces the benchmarks' evaluation (the real-pair study measures the distance to
    the teacher, ``eval.distance``).
    """
    from tqdm.auto import tqdm

    s = setup(cfg, resume=resume, eval_problems=eval_problems, evaluator=evaluator)
    comm, placement, objective = s.comm, s.placement, s.objective
    whole = objective.needs_teacher_hidden  # full_kl, vOPD: the loss computes the teacher's log-probs with the KL
    bar = tqdm(range(s.start_step + 1, cfg.run.max_steps + 1), desc=f"train {cfg.reward.label}",
               disable=not (progress and s.accelerator.is_main_process))  # fmt: skip
    stop = StopOnSignal().install()
    try:  # the engines' threads and the served teachers' clients stop on any way out
        for step in bar:
            t0 = time.perf_counter()
            torch.manual_seed(step_seed(cfg.run.seed, step, comm.rank))
            if cfg.reward.alpha_end is not None or s.strength is not None:  # this step's α, TV-OPD's strength
                objective = make_objective(cfg.reward, run_fraction(cfg, step), s.strength)

            # 1. sample --------------------------------------------------------------------------------
            batch = s.order.indices(step, cfg.run.batch_size, comm.rank, comm.world_size)
            placement.sync(s.sampler)  # the sampler's view and an engine's own copy take this step's weights
            t_synced = time.perf_counter()
            with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.amp_dtype is not None):
                rollouts = s.sampler.sample([s.prompt_ids[i] for i in batch])
            if s.route:
                rollouts.teacher_B = [s.route[i] for i in batch]
            kill_point("sample", step)
            t_sample = time.perf_counter()

            # 2. score (a served teacher that stopped answering ends the run here: nothing of the step trained)
            try:
                teacher_scores = s.scorer.score(rollouts, keep_hidden=whole, logprobs=not whole)
            except TeacherUnavailable as err:
                raise TeacherUnavailable(f"{err} at step {step}; last checkpoint {s.run_dir.latest_checkpoint()}; "
                                         "start the server again and continue with the same command and --resume") from None  # fmt: skip
            t_score = time.perf_counter()

            # 3. reward + 4. update: the objective's loss per micro-batch, gradients summed, one AdamW step
            with placement.teacher_head():
                result = update.compute_gradients(
                    s.student, rollouts, teacher_scores, objective, micro_batch_size=s.micro_batch_size,
                    include_stop_token=cfg.rollout.include_stop_token, temperature=cfg.rollout.temperature,
                    chunk_size=cfg.run.chunk_size, vocab_size=len(s.tokenizer), comm=comm,
                    autocast_dtype=s.amp_dtype, forward=placement.forward,
                )  # fmt: skip
            grad_norm = fsdp.full_tensor(
                torch.nn.utils.clip_grad_norm_(s.student.parameters(), cfg.optim.max_grad_norm)
            ).item()
            kill_point("update", step)
            # a NaN/inf step leaves the weights, AdamW state and TV-OPD's strength alone; the schedule follows the step count
            strength = {M.REWARD_STRENGTH: s.strength["scale"]} if s.strength is not None else {}
            if s.guard.check(result.loss, grad_norm):
                s.optimizer.step()
                if s.strength is not None:  # TV-OPD: the next step's strength, from this step's TV estimate
                    s.strength, strength[M.REWARD_STRENGTH_STATISTIC] = update.advance_strength(cfg.reward, s.strength, result, comm)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            t_update = time.perf_counter()

            # 5. log -----------------------------------------------------------------------------------
            times = {"sync": t_synced - t0, "sample": t_sample - t_synced, "score": t_score - t_sample,
                     "update": t_update - t_score, "step": t_update - t0}  # fmt: skip
            metrics = log_step(s, step, result, rollouts, grad_norm=grad_norm, times=times, extra=strength)
            kill_point("logged", step)
            bar.set_postfix(loss=f"{result.loss:.3g}", reward=f"{metrics[M.REWARD_MEAN]:.3g}",
                            len=f"{metrics[M.RESPONSE_LENGTH_MEAN]:.0f}")  # fmt: skip

            # 6. save (and stop on a signal or on too many non-finite steps) -------------------------
            signalled = comm.sum(torch.tensor([float(stop.signum is not None)], device=s.device)).item() > 0
            due = cfg.run.save_every and (step % cfg.run.save_every == 0 or step == cfg.run.max_steps)
            if due or signalled:
                saved = save_checkpoint(s, step)
            s.accelerator.wait_for_everyone()
            if signalled:
                raise Interrupted(stop.signum or signal.SIGTERM, step, saved)
            s.guard.raise_if_stuck(step, s.run_dir.latest_checkpoint())
            kill_point("step_end", step)
    finally:
        stop.restore()
        s.close()
    final = s.run_dir.save_final(s.student, s.tokenizer, merged=cfg.model.merge_lora,
                                 weights=placement.final_weights())  # fmt: skip
    s.run_dir.close()
    s.accelerator.wait_for_everyone()
    return final


def run_fraction(cfg: TrainConfig, step: int) -> float:
    """Where ``step`` stands in the run, 0 at the first step and 1 at the last (a scheduled α moves with it)."""
    return (step - 1) / max(1, cfg.run.max_steps - 1)


def log_step(s: Setup, step: int, result: UpdateResult, rollouts, *, grad_norm: float,
             times: dict[str, float], extra: dict[str, float]) -> dict[str, float]:  # fmt: skip
    """One row of metrics.jsonl (every process's tokens), positions.jsonl every K steps, evaluation every K
    steps; returns the row."""
    cfg, comm = s.cfg, s.comm
    metrics = step_metrics(result, rollouts, comm, grad_norm=grad_norm, lr=s.scheduler.get_last_lr()[0])
    if s.route:
        metrics.update(teacher_metrics(result, rollouts.teacher_B, list(s.teachers), comm))
    if cfg.reward.record is not None and "alpha" in cfg.reward.record.hparams:
        metrics[M.REWARD_ALPHA] = cfg.reward.hparams_at(run_fraction(cfg, step))["alpha"]
    metrics.update(extra)
    metrics[M.TEACHER_TEMPERATURE] = teacher_temperature(cfg)
    metrics.update({M.time_key(phase): times[phase] for phase in M.PHASES})
    metrics.update(
        {
            M.TOKENS_PER_S: metrics[M.RESPONSE_LENGTH_SUM] / times["step"],
            M.MEMORY_PEAK_MB: peak_memory_mb(s.device),
            M.MEMORY_HELD_MB: held_mb(s.held(), s.optimizer),
            M.SKIPPED_STEPS: s.guard.skipped,
            M.STEP_SKIPPED: int(s.guard.consecutive > 0),
        }
    )
    if step == 1 or step % cfg.run.positions_every == 0:
        s.run_dir.log_positions(step, gathered_positions(result, comm))
    if s.evaluator is not None and (step % cfg.eval.every == 0 or step == cfg.run.max_steps):
        metrics.update(s.evaluator(s.placement.sampler_model()))
    s.run_dir.log_metrics(step, metrics)
    return metrics


def save_checkpoint(s: Setup, step: int) -> Path | None:
    """A checkpoint of ``step``: the student, AdamW and schedule, the data position, the guard, the teachers."""
    cfg = s.cfg
    state = {"epoch_samples": step * cfg.run.batch_size, "seed": cfg.run.seed, "teachers": s.identities,
             **s.guard.state(), **({"reward_strength": s.strength} if s.strength is not None else {})}  # fmt: skip
    return s.run_dir.save_checkpoint(step, s.student, s.tokenizer, s.optimizer, s.scheduler, state,
                                     keep_last=cfg.run.keep_last, **s.placement.checkpoint_state(s.optimizer))  # fmt: skip
