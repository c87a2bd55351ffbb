"""Everything a training run needs, built once before the loop (training/loop.py): ``setup(cfg) -> Setup``.

The order is the contract: every input (flags, data, models, teachers, the output folder, a checkpoint to
resume) is read and checked before anything is written; the run directory is created last, by ``start``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.sections import TrainConfig
from ..data import DataOrder, encode_prompts, load_problems, load_routes
from ..errors import UserError
from ..models.hf import (
    check_capacity,
    check_device,
    enable_checkpointing,
    load_causal_lm,
    load_tokenizer,
    stop_token_ids,
)
from ..models.lora import attach_lora, base_model
from ..objectives.losses import Objective, make_objective
from ..rollout import vllm_engine
from ..rollout.engines import make_sampler, resolve_engine
from ..rollout.samplers import Sampler, SamplingConfig
from ..run import metric_names as M
from ..run.faults import NonFiniteGuard
from ..run.rundir import RunDir, check_same_teachers, load_training_state
from ..teachers.scorers import RoutedScorer, Scorer, Teacher, load_teachers
from .placement import Replicated, make_placement, placement_class
from .update import make_optimizer, warmup_then_constant


@dataclass
class Setup:
    """What the loop reads: built by ``setup``, closed by ``close``."""

    cfg: TrainConfig
    accelerator: Any
    run_dir: RunDir
    tokenizer: Any
    prompt_ids: list[list[int]]
    route: list[str] | None
    """Row -> teacher name, with several teachers."""
    order: DataOrder
    student: torch.nn.Module
    placement: Replicated
    teachers: dict[str, Teacher]
    scorer: Scorer
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    guard: NonFiniteGuard
    sampler: Sampler
    evaluator: Callable | None
    start_step: int
    micro_batch_size: int
    strength: dict[str, float | None] | None = None
    """The reward's run-level strength state (TV-OPD), None for a reward without one; saved in checkpoints."""

    @property
    def comm(self):
        return self.placement.comm

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.cfg.model.dtype == "bfloat16" else None

    @property
    def identities(self) -> dict[str, str]:
        """What identifies each teacher on --resume."""
        return {name: t.identity for name, t in self.teachers.items()}

    def held(self) -> list[torch.nn.Module]:
        """The modules whose weights this process holds between steps."""
        return [*self.placement.held(), *(t.model for t in self.teachers.values() if t.model is not None)]

    def close(self) -> None:
        """Stop the engines' threads and the served teachers' clients."""
        self.sampler.close()
        for t in self.teachers.values():
            getattr(t.scorer, "close", lambda: None)()


def setup(cfg: TrainConfig, *, resume: bool = False, eval_problems: dict | None = None,
          evaluator: Callable | None = None) -> Setup:  # fmt: skip
    """Build a run: processes, data, models, teachers, placement, optimizer, sampler, evaluator, run directory.

    ``eval_problems`` ({name: [benchmarks.Problem]}) replaces the configured benchmarks for ``--eval-every``
    (the demo evaluates on its own held-out task); ``evaluator`` (student -> {metric: value}) replaces the
    benchmarks' evaluation altogether (``eval.distance.distance_evaluator``: the distance to the teacher).
    """
    from accelerate import Accelerator

    # -- processes -------------------------------------------------------------------------------------
    check_device(cfg.model.device, "--device")  # accelerate would fall back to the CPU without a word
    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    placing = placement_class(cfg.model.fsdp)
    comm = placing.collective(accelerator)
    device = accelerator.device
    run_dir = RunDir(cfg.run.output_dir, is_main=accelerator.is_main_process)
    if cfg.run.batch_size % comm.world_size:
        raise UserError(
            f"--batch-size {cfg.run.batch_size}: expected a multiple of the {comm.world_size} processes"
        )
    placing.check(comm)
    per_process_batch = cfg.run.batch_size // comm.world_size

    # -- data and the run directory (read, not written) -----------------------------------------------
    remote = {"trust_remote_code": cfg.model.trust_remote_code}
    tokenizer = load_tokenizer(cfg.model.student, what="--student", **remote)
    problems = load_problems(cfg.run.data, split=cfg.run.data_split, field=cfg.run.data_field)
    prompt_ids = encode_prompts(tokenizer, problems)
    route = load_routes(cfg, len(problems)) if cfg.model.teachers else None
    checkpoint = run_dir.open(cfg, resume=resume)  # every input is checked before anything is written

    # -- models ------------------------------------------------------------------------------------------
    student = _load_student(cfg, checkpoint, device, remote)
    objective = make_objective(cfg.reward)
    longest = max(map(len, prompt_ids)) + cfg.rollout.max_new_tokens
    teacher_device = (
        check_device(cfg.model.teacher_device, "--teacher-device") if cfg.model.teacher_device else device
    )
    needs_hidden = f"--reward-baseline {cfg.reward.baseline}" if cfg.reward.baseline else f"--reward {cfg.reward.name}"
    teachers = load_teachers(cfg.model, tokenizer, longest=longest, device=teacher_device,
                             temperature=teacher_temperature(cfg), chunk_size=cfg.run.chunk_size,
                             needs_hidden=needs_hidden if objective.needs_teacher_hidden else None,
                             temperature_flag="--teacher-temperature" if cfg.model.teacher_temperature else "--temperature")  # fmt: skip
    if checkpoint is not None:
        check_same_teachers(checkpoint, {n: t.identity for n, t in teachers.items()}, cfg.model.teacher_specs)
    if resolve_engine(cfg.rollout.engine, student) == "vllm":  # before anything is written
        vllm_engine.check_supported(
            base_model(student), device, f"--student {cfg.model.student}", cfg.rollout.vllm
        )
    for t in teachers.values():
        check_capacity(student, t.model if t.model is not None else student, tokenizer_size=len(tokenizer),
                       longest_prompt=longest - cfg.rollout.max_new_tokens, max_new_tokens=cfg.rollout.max_new_tokens,
                       names=(cfg.model.student, t.spec), data=cfg.run.data)  # fmt: skip

    # -- placement: where the weights live, how the sampler sees them -------------------------------------
    bf16 = cfg.model.dtype == "bfloat16"
    placement = make_placement(cfg.model.fsdp, student, comm, bf16=bf16,
                               teacher_has_own_device=cfg.model.teacher_device is not None)  # fmt: skip
    placement.place_teachers(teachers)  # FSDP shards the teacher too
    scorer = RoutedScorer({n: t.scorer for n, t in teachers.items()}) if route else teachers[""].scorer

    # -- optimizer, schedule, resume state -----------------------------------------------------------------
    optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], cfg.optim, device)
    warmup_steps = math.ceil(cfg.optim.warmup_ratio * cfg.run.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_constant(warmup_steps))
    start_step, state = 0, {}
    if checkpoint is not None:
        state = load_training_state(checkpoint, optimizer, scheduler, placement.load_optimizer_state())
        start_step = state["step"]
    record = cfg.reward.record
    strength = None
    if record is not None and record.strength is not None:  # TV-OPD's strength goes on where the checkpoint left it
        strength = dict(state.get("reward_strength", record.strength.initial))  # the loop binds it every step
    run_dir.start(cfg, start_step)
    guard = NonFiniteGuard(cfg.run.max_skipped_steps, state.get("skipped_steps", 0),
                           state.get("consecutive_skipped_steps", 0))  # fmt: skip

    # -- sampler and evaluator -----------------------------------------------------------------------------
    sampling = SamplingConfig(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        stop_token_ids=tuple(stop_token_ids(tokenizer)),
        vocab_size=len(tokenizer),
    )
    sampler = make_sampler(cfg.rollout.engine, placement.sampler_model(), tokenizer.pad_token_id, sampling,
                           dtype=placement.sampler_dtype, vllm=cfg.rollout.vllm)  # fmt: skip
    if not cfg.eval.every:
        evaluator = None
    elif evaluator is None:
        evaluator = make_evaluator(cfg, tokenizer, eval_problems)  # shares the engine
    return Setup(
        cfg, accelerator, run_dir, tokenizer, prompt_ids, route, DataOrder(len(prompt_ids), cfg.run.seed), student,
        placement, teachers, scorer, objective, optimizer, scheduler, guard, sampler, evaluator, start_step,
        micro_batch_size=min(cfg.run.micro_batch_size or per_process_batch, per_process_batch), strength=strength,
    )  # fmt: skip


def teacher_temperature(cfg: TrainConfig) -> float:
    """The temperature of the teacher's log-probs: --teacher-temperature, else the rollout's."""
    return cfg.model.teacher_temperature if cfg.model.teacher_temperature is not None else cfg.rollout.temperature


def _load_student(
    cfg: TrainConfig, checkpoint: Path | None, device: torch.device, remote: dict
) -> torch.nn.Module:
    """The student in float32 (bf16 runs train float32 master weights under autocast), from the checkpoint when
    resuming; a LoRA checkpoint holds the adapter, its base comes from --student."""
    lora = cfg.model.lora_rank > 0
    source = str(checkpoint) if checkpoint and not lora else cfg.model.student
    what = "--resume checkpoint" if checkpoint and not lora else "--student"
    student = load_causal_lm(source, dtype="float32", device=device, what=what, **remote)
    if lora:
        student = attach_lora(student, cfg.model, adapter_dir=checkpoint, seed=cfg.run.seed)
    student.train()
    if cfg.model.gradient_checkpointing:  # each decoder layer recomputed in the backward pass
        enable_checkpointing(student)
    return student


def make_evaluator(cfg: TrainConfig, tokenizer, problems: dict | None = None) -> Callable:
    """Returns student -> {eval/<benchmark>/avg@n, ...} on the configured benchmarks (or on ``problems``)."""
    import dataclasses

    from ..eval.benchmarks import load_benchmark, resolve_benchmarks
    from ..eval.harness import evaluate_model

    if problems is None:
        names = resolve_benchmarks(cfg.eval.benchmarks)
        problems = {b: load_benchmark(b, cfg.eval.data_dir, cfg.eval.limit) for b in names}
    # the run's seed and sampler; the problems may be the caller's own (the demo's task)
    harness = dataclasses.replace(
        cfg.eval, benchmarks=tuple(problems), seed=cfg.run.seed, engine=cfg.rollout.engine
    )

    def evaluate(student) -> dict[str, float]:
        results, _ = evaluate_model(
            student, tokenizer, problems, harness, progress=False, vllm=cfg.rollout.vllm
        )
        student.train()
        return {
            M.eval_key(b, k): v
            for b, row in results.items()
            if b != "mean"
            for k, v in row.items()
            if k != "n_problems"
        }

    return evaluate
