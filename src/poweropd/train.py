"""The on-policy distillation loop: sample → score → reward → update → log → save.

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
  in the forward pass. ``losses.py`` chooses the fused op or the reference path.
- ``--alpha-schedule`` moves α geometrically from A0 to A1 over the run (not in the paper, which fixes α);
  ``--token-select entropy:K`` trains on the top K of each micro-batch's tokens by student entropy.
- Data parallelism all-reduces gradients explicitly (sum of per-process ``Σ/N_global`` losses) instead
  of wrapping the student in DDP, because the forward pass calls the decoder body and the output layer
  separately. ``--fsdp`` shards the student and teacher with FSDP2 instead; its reduce-scatter sums the
  same way (sharding.py: why the micro-batch loss is the FSDP root's forward, and the rollout copy).
- With ``--dtype bfloat16`` the student keeps float32 master weights under bf16 autocast: at lr 5e-7 a
  pure-bf16 AdamW update would round to zero for most weights.
- The learning rate warms up linearly over ``warmup_ratio · max_steps`` steps starting from lr/warmup at
  the first step (not from 0, which would waste a step).
- Each step re-seeds the sampler from (seed, step, process), so a resumed run samples exactly what an
  uninterrupted run would, whenever it was killed (tests/test_faults.py; faults.py: signals, NaN/inf steps).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from . import sharding, vllm_engine
from .adapters import attach_lora, base_model
from .config import OptimConfig, TrainConfig
from .data import DataOrder, encode_prompts, load_problems, load_routes
from .distributed import AcceleratorCollective, Collective, SingleProcess
from .engines import make_sampler, resolve_engine
from .errors import UserError
from .faults import Interrupted, NonFiniteGuard, StopOnSignal, kill_point
from .logprobs import chunked_token_logprobs
from .losses import MicroBatch, Objective, make_objective
from .models import (
    check_capacity,
    check_device,
    enable_checkpointing,
    load_causal_lm,
    load_tokenizer,
    output_layer,
    response_hidden_states,
    stop_token_ids,
)
from .rollout import Rollouts, SamplingConfig
from .served import TeacherUnavailable
from .step_metrics import (
    UpdateResult,
    gathered_positions,
    held_mb,
    peak_memory_mb,
    step_metrics,
    teacher_metrics,
)
from .teacher import HFScorer, RoutedScorer, TeacherScores, load_teachers
from .tracking import RunDir, check_same_teachers, load_training_state


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


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + rank) % (2**63)


# ---------------------------------------------------------------------------------------------------
# The update: one student forward per micro-batch, the objective's loss, gradients summed over the batch
# ---------------------------------------------------------------------------------------------------
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
    teacher_output_layer: torch.nn.Module | None = None,
    vocab_size: int | None = None,
    comm: Collective | None = None,
    autocast_dtype: torch.dtype | None = None,
    forward: Callable | None = None,
) -> UpdateResult:
    """Fill ``.grad`` of the student with the gradient of the batch loss, summed over processes.

    ``rollouts`` and ``teacher`` hold this process's share of the batch; the loss is normalised by the valid
    tokens of the whole batch, so the result equals one big single-process batch. ``forward(fn, *args)`` runs
    ``fn(student, *args)``: a plain call, or through FSDP's root when the student is sharded (sharding.py).
    """
    comm = comm or SingleProcess()
    forward = forward or (lambda fn, *args: fn(student, *args))
    device = next(student.parameters()).device
    rollouts = rollouts.to(device)
    mask_BT = rollouts.loss_mask(include_stop_token)
    teacher_logp_BT = teacher.logp_BT.to(device) if teacher.logp_BT is not None else None
    num_tokens = comm.sum(mask_BT.sum().float()).clamp(min=1).item()
    micro = [
        slice(i, min(i + micro_batch_size, mask_BT.shape[0]))
        for i in range(0, mask_BT.shape[0], micro_batch_size)
    ]
    amp = torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    batch_reward_fn = _batch_reward_fn(objective, comm) if objective.needs_batch_statistics else None
    rewards_BT = None
    if batch_reward_fn is not None and len(micro) > 1:  # batch statistics before the first backward
        rewards_BT = _precomputed_rewards(forward, rollouts, micro, teacher_logp_BT, mask_BT, batch_reward_fn,
                                          temperature=temperature, chunk_size=chunk_size, amp=amp)  # fmt: skip

    def micro_batch_loss(model, s: slice):
        mb = rollouts.select(s)
        hidden_BTH = response_hidden_states(model, mb.input_ids_BL, mb.attention_mask_BL, mb.prompt_len)
        return objective.micro_batch_loss(
            MicroBatch(
                output_layer(model), hidden_BTH, mb.response_ids_BT, mask_BT[s], num_tokens,
                teacher_logp_BT=None if teacher_logp_BT is None else teacher_logp_BT[s],
                teacher_head=teacher_output_layer,
                teacher_hidden_BTH=None if teacher.hidden_BTH is None else teacher.hidden_BTH[s],
                reward_BT=None if rewards_BT is None else rewards_BT[s],
                reward_fn=batch_reward_fn, temperature=temperature, chunk_size=chunk_size, vocab_size=vocab_size,
            )
        )  # fmt: skip

    loss_total, outs = 0.0, []
    for s in micro:
        with amp:
            loss, out = forward(micro_batch_loss, s)
        loss.backward()
        loss_total += loss.item()
        outs.append(out)

    comm.sum_gradients([p for p in student.parameters() if p.requires_grad])
    out = {
        key: torch.cat([o[key] for o in outs])
        for key in ("student_logp", "teacher_logp", "reward", "selected")
    }
    log_ratio_BT = torch.where(mask_BT, out["teacher_logp"] - out["student_logp"], 0.0)
    loss = comm.sum(torch.tensor(loss_total, device=device)).item()
    return UpdateResult(
        loss, out["reward"], log_ratio_BT, out["student_logp"], mask_BT, out["selected"].bool()
    )


def _batch_reward_fn(objective: Objective, comm: Collective) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The objective's reward over every process's tokens (batch statistics), this process's rows returned."""

    def reward(teacher_logp_BT: Tensor, student_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
        (teacher_all, rows), (student_all, _), (mask_all, _) = (
            comm.gather_rows(t) for t in (teacher_logp_BT, student_logp_BT, mask_BT.long())
        )
        return objective.reward_fn(teacher_all, student_all, mask_all.bool())[rows, : mask_BT.shape[1]]

    return reward


def _precomputed_rewards(forward, rollouts, micro, teacher_logp_BT, mask_BT, reward_fn, *, temperature,
                         chunk_size, amp) -> Tensor:  # fmt: skip
    """Batch-statistic rewards with several micro-batches: one extra no-grad student pass over the batch."""

    def token_logprobs(model, s: slice) -> Tensor:
        mb = rollouts.select(s)
        hidden_BTH = response_hidden_states(model, mb.input_ids_BL, mb.attention_mask_BL, mb.prompt_len)
        return chunked_token_logprobs(output_layer(model), hidden_BTH, mb.response_ids_BT,
                                      temperature=temperature, chunk_size=chunk_size)[0]  # fmt: skip

    with torch.no_grad(), amp:
        logps = [forward(token_logprobs, s) for s in micro]
    return reward_fn(teacher_logp_BT, torch.cat(logps), mask_BT)


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
def warmup_then_constant(warmup_steps: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def train(
    cfg: TrainConfig, *, progress: bool = True, resume: bool = False, eval_problems: dict | None = None
) -> Path:
    """Run on-policy distillation as configured; returns the folder of the final student.

    ``eval_problems`` ({name: [benchmarks.Problem]}) replaces the configured benchmarks for ``--eval-every``
    (the demo evaluates on its own held-out task).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    check_device(cfg.model.device, "--device")  # accelerate would fall back to the CPU without a word
    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    fsdp = cfg.model.fsdp
    comm = (sharding.ShardedCollective if fsdp else AcceleratorCollective)(accelerator)
    device = accelerator.device
    run = RunDir(cfg.run.output_dir, is_main=accelerator.is_main_process)
    if cfg.run.batch_size % comm.world_size:
        raise UserError(
            f"--batch-size {cfg.run.batch_size}: expected a multiple of the {comm.world_size} processes"
        )
    if fsdp and comm.world_size < 2:
        raise UserError("--fsdp: expected 2 or more processes (accelerate launch --num_processes N or torchrun); "
                        "one process holds the whole model without it")  # fmt: skip
    per_process_batch = cfg.run.batch_size // comm.world_size
    micro_batch_size = min(cfg.run.micro_batch_size or per_process_batch, per_process_batch)

    # -- models and data ----------------------------------------------------------------------------
    remote = {"trust_remote_code": cfg.model.trust_remote_code}
    student_tok = load_tokenizer(cfg.model.student, what="--student", **remote)
    problems = load_problems(cfg.run.data, split=cfg.run.data_split, field=cfg.run.data_field)
    prompt_ids = encode_prompts(student_tok, problems)
    route = load_routes(cfg, len(problems)) if cfg.model.teachers else None  # row -> teacher name
    run.check(cfg, resume=resume)  # every input is checked before anything is written
    checkpoint = run.latest_checkpoint() if resume else None

    bf16 = cfg.model.dtype == "bfloat16"
    lora = cfg.model.lora_rank > 0  # a LoRA checkpoint holds the adapter: the base comes from --student
    student_source = str(checkpoint) if checkpoint and not lora else cfg.model.student
    what = "--resume checkpoint" if checkpoint and not lora else "--student"
    student = load_causal_lm(student_source, dtype="float32", device=device, what=what, **remote)
    if lora:
        student = attach_lora(student, cfg.model, adapter_dir=checkpoint, seed=cfg.run.seed)
    student.train()
    if cfg.model.gradient_checkpointing:  # each decoder layer recomputed in the backward pass
        enable_checkpointing(student)
    teacher_device = (
        check_device(cfg.model.teacher_device, "--teacher-device") if cfg.model.teacher_device else device
    )
    objective = make_objective(cfg.reward)
    full_kl = objective.needs_teacher_hidden  # its loss computes the teacher's log-probs with the KL
    longest = max(map(len, prompt_ids)) + cfg.rollout.max_new_tokens
    teachers = load_teachers(cfg.model, student_tok, longest=longest, device=teacher_device,
                             temperature=cfg.rollout.temperature, chunk_size=cfg.run.chunk_size, needs_hidden=full_kl)  # fmt: skip
    identities = {name: t.identity for name, t in teachers.items()}
    if checkpoint is not None:
        check_same_teachers(checkpoint, identities, cfg.model.teacher_specs)
    # the one in-process teacher, if that is what the run has (FSDP shards it; full_kl reads its output layer)
    teacher = teachers[""].model if "" in teachers else None
    if resolve_engine(cfg.rollout.engine, student) == "vllm":  # before anything is written
        vllm_engine.check_supported(base_model(student), device, f"--student {cfg.model.student}", cfg.rollout.vllm)
    for t in teachers.values():
        check_capacity(student, t.model if t.model is not None else student, tokenizer_size=len(student_tok),
                       longest_prompt=longest - cfg.rollout.max_new_tokens, max_new_tokens=cfg.rollout.max_new_tokens,
                       names=(cfg.model.student, t.spec), data=cfg.run.data)  # fmt: skip
    if fsdp and teacher is None:
        raise UserError("--fsdp: expected one in-process teacher (a folder or hub id); served or several teachers "
                        "are not sharded")  # fmt: skip
    # FSDP: the student sharded (generation on an unsharded copy), the teacher too unless on its own device
    sharded = sharded_teacher = rollout_copy = None
    if fsdp:
        mesh = sharding.device_mesh(device, comm.world_size)
        rollout_copy = sharding.RolloutCopy(student, torch.bfloat16 if bf16 else None)
        sharded = sharding.shard(student, mesh)
        if cfg.model.teacher_device is None:
            sharded_teacher = sharding.shard(teacher.eval().requires_grad_(False), mesh)
            teachers[""].scorer = HFScorer(teacher, temperature=cfg.rollout.temperature, chunk_size=cfg.run.chunk_size,
                                           forward=sharded_teacher.run_frozen)  # fmt: skip

    optimizer = make_optimizer([p for p in student.parameters() if p.requires_grad], cfg.optim, device)
    warmup_steps = math.ceil(cfg.optim.warmup_ratio * cfg.run.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_constant(warmup_steps))
    start_step, state = 0, {}
    if checkpoint is not None:
        state = load_training_state(checkpoint, optimizer, scheduler,
                                    sharding.load_optimizer_state(sharded) if fsdp else None)  # fmt: skip
        start_step = state["step"]
    run.create(cfg)
    run.truncate_logs(start_step)
    guard = NonFiniteGuard(cfg.run.max_skipped_steps, state.get("skipped_steps", 0),
                           state.get("consecutive_skipped_steps", 0))  # fmt: skip

    sampling = SamplingConfig(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        stop_token_ids=tuple(stop_token_ids(student_tok)),
        vocab_size=len(student_tok),
    )
    sampler = make_sampler(cfg.rollout.engine, rollout_copy.model if fsdp else base_model(student),
                           student_tok.pad_token_id, sampling, dtype=torch.bfloat16 if bf16 and not fsdp else None,
                           vllm=cfg.rollout.vllm)  # fmt: skip
    scorer = RoutedScorer({n: t.scorer for n, t in teachers.items()}) if route else teachers[""].scorer
    in_process = [t.model for t in teachers.values() if t.model is not None]
    held = [student, *in_process, *([rollout_copy.model] if fsdp else [])]  # for memory/held_mb
    # the model the sampler and the evaluator see: the student, or its unsharded copy brought up to date
    rollout_model = (lambda: rollout_copy.sync(sharded)) if fsdp else (lambda: base_model(student))
    order = DataOrder(len(prompt_ids), cfg.run.seed)
    amp_dtype = torch.bfloat16 if bf16 else None
    evaluator = _make_evaluator(cfg, student_tok, eval_problems) if cfg.eval.every else None  # shares vLLM

    bar = tqdm(
        range(start_step + 1, cfg.run.max_steps + 1),
        desc=f"train {cfg.reward.label}",
        disable=not (progress and accelerator.is_main_process),
    )
    stop = StopOnSignal().install()
    try:  # the continuous engine's thread must stop on any way out
        for step in bar:
            t0 = time.perf_counter()
            torch.manual_seed(step_seed(cfg.run.seed, step, comm.rank))
            if cfg.reward.alpha_end is not None:  # a scheduled α: the objective of this step's α
                objective = make_objective(cfg.reward, (step - 1) / max(1, cfg.run.max_steps - 1))

            # 1. sample --------------------------------------------------------------------------------
            batch = order.indices(step, cfg.run.batch_size, comm.rank, comm.world_size)
            rollout_model()  # FSDP: the rollout copy takes this step's weights
            sampler.sync_weights()  # an engine's own copy (vLLM, the continuous engine's bf16) too
            t_synced = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                rollouts = sampler.sample([prompt_ids[i] for i in batch])
            if route:
                rollouts.teacher_B = [route[i] for i in batch]
            kill_point("sample", step)
            t_sample = time.perf_counter()

            # 2. score (a served teacher that stopped answering ends the run here: nothing of the step trained)
            try:
                teacher_scores = scorer.score(rollouts, keep_hidden=full_kl, logprobs=not full_kl)
            except TeacherUnavailable as err:
                raise TeacherUnavailable(f"{err} at step {step}; last checkpoint {run.latest_checkpoint()}; start the "
                                         "server again and continue with the same command and --resume") from None  # fmt: skip
            t_score = time.perf_counter()

            # 3. reward + 4. update --------------------------------------------------------------------
            with sharded_teacher.gathered() if full_kl and sharded_teacher else contextlib.nullcontext():
                result = compute_gradients(
                    student, rollouts, teacher_scores, objective, micro_batch_size=micro_batch_size,
                    include_stop_token=cfg.rollout.include_stop_token, temperature=cfg.rollout.temperature,
                    chunk_size=cfg.run.chunk_size, teacher_output_layer=output_layer(teacher) if full_kl else None,
                    vocab_size=len(student_tok), comm=comm, autocast_dtype=amp_dtype, forward=sharded,
                )  # fmt: skip
            grad_norm = sharding.full_tensor(
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.max_grad_norm)
            )
            kill_point("update", step)
            # a NaN/inf step leaves the weights and AdamW state alone; the schedule follows the step count
            if guard.check(result.loss, grad_norm.item()):
                optimizer.step()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            t_update = time.perf_counter()

            # 5. log -----------------------------------------------------------------------------------
            metrics = step_metrics(
                result, rollouts, comm, grad_norm=grad_norm.item(), lr=scheduler.get_last_lr()[0]
            )
            if route:
                metrics.update(teacher_metrics(result, rollouts.teacher_B, list(teachers), comm))
            if cfg.reward.record is not None and "alpha" in cfg.reward.record.hparams:
                metrics["reward/alpha"] = cfg.reward.hparams_at((step - 1) / max(1, cfg.run.max_steps - 1))[
                    "alpha"
                ]
            metrics.update(
                {
                    "time/sync_s": t_synced - t0,
                    "time/sample_s": t_sample - t_synced,
                    "time/score_s": t_score - t_sample,
                    "time/update_s": t_update - t_score,
                    "time/step_s": t_update - t0,
                    "tokens_per_s": metrics["response_length/sum"] / (t_update - t0),
                    "memory/peak_mb": peak_memory_mb(device),
                    "memory/held_mb": held_mb(held, optimizer),
                    "train/skipped_steps": guard.skipped,
                    "train/step_skipped": int(guard.consecutive > 0),
                }
            )
            if step == 1 or step % cfg.run.positions_every == 0:
                run.log_positions(step, gathered_positions(result, comm))
            if evaluator is not None and (step % cfg.eval.every == 0 or step == cfg.run.max_steps):
                metrics.update(evaluator(rollout_model()))
            run.log_metrics(step, metrics)
            kill_point("logged", step)
            bar.set_postfix(
                loss=f"{result.loss:.3g}",
                reward=f"{metrics['reward/mean']:.3g}",
                len=f"{metrics['response_length/mean']:.0f}",
            )

            # 6. save (and stop on a signal or on too many non-finite steps) -------------------------
            signalled = comm.sum(torch.tensor([float(stop.signum is not None)], device=device)).item() > 0
            due = cfg.run.save_every and (step % cfg.run.save_every == 0 or step == cfg.run.max_steps)
            if due or signalled:
                state = {"epoch_samples": step * cfg.run.batch_size, "seed": cfg.run.seed, "teachers": identities,
                         **guard.state()}  # fmt: skip
                whole = dict(weights=sharding.model_state(sharded),
                             optimizer_state=sharding.optimizer_state(sharded, optimizer)) if fsdp else {}  # fmt: skip
                saved = run.save_checkpoint(step, student, student_tok, optimizer, scheduler, state,
                                            keep_last=cfg.run.keep_last, **whole)  # fmt: skip
            accelerator.wait_for_everyone()
            if signalled:
                raise Interrupted(stop.signum or signal.SIGTERM, step, saved)
            guard.raise_if_stuck(step, run.latest_checkpoint())
            kill_point("step_end", step)
    finally:
        stop.restore()
        sampler.close()
        for t in teachers.values():
            getattr(t.scorer, "close", lambda: None)()
    weights = sharding.model_state(sharded) if fsdp else None
    final = run.save_final(student, student_tok, merged=cfg.model.merge_lora, weights=weights)
    run.close()
    accelerator.wait_for_everyone()
    return final


def _make_evaluator(cfg: TrainConfig, tokenizer, problems: dict | None = None) -> Callable:
    """Returns student -> {eval/<benchmark>/avg@n, ...} on the configured benchmarks (or on ``problems``)."""
    import dataclasses

    from .benchmark_data import load_benchmark, resolve_benchmarks
    from .evaluate import evaluate_model

    if problems is None:
        names = resolve_benchmarks(cfg.eval.benchmarks)
        problems = {b: load_benchmark(b, cfg.eval.data_dir, cfg.eval.limit) for b in names}
    # the run's seed and sampler; the problems may be the caller's own (the demo's task)
    harness = dataclasses.replace(
        cfg.eval, benchmarks=tuple(problems), seed=cfg.run.seed, engine=cfg.rollout.engine
    )

    def evaluate(student) -> dict[str, float]:
        results, _ = evaluate_model(student, tokenizer, problems, harness, progress=False, vllm=cfg.rollout.vllm)
        student.train()
        return {
            f"eval/{b}/{k}": v
            for b, row in results.items()
            if b != "mean"
            for k, v in row.items()
            if k != "n_problems"
        }

    return evaluate
