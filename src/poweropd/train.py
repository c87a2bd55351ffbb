"""The on-policy distillation loop: sample → score → reward → update → log → save.

Per optimizer step, on each process:

1. **sample**  the student writes one rollout per prompt (HF ``generate``, temperature 1, top-p 1, top-k 0,
   stopping at any stop token);
2. **score**   the frozen teacher gives log π_T of every sampled token (for ``full_kl`` it keeps its final
   hidden states instead: the fused KL op computes log π_T with the KL);
3. **reward**  r_t from the registry, computed from the *same* student forward that the update uses,
   detached — there is no extra student pass;
4. **update**  L = −Σ_t sg[r_t] · log π_S(o_t) / N with N the valid tokens of the whole batch (every
   micro-batch, every process), or L = Σ_t KL_t / N for ``full_kl``; clip the gradient norm; AdamW step;
5. **log**     metrics.jsonl / TensorBoard, positions.jsonl every K steps, evaluation every K steps;
6. **save**    checkpoints every K steps, the final student at the end.

Where we depart from the paper's code (EIT-NLP/PowerOPD, a fork of TRL's GOLD trainer), and why:

- The student runs once per micro-batch: rewards reuse its log-probs (the paper's code runs it three
  times). Exception: ``zscore`` with gradient accumulation needs batch-wide statistics before the first
  backward pass, so it takes one extra no-grad student pass over the batch.
- Log-probs come from the decoder's hidden states through the output layer in chunks, never from a
  B×T×V float32 log_softmax (see logprobs.py). For per-token rewards the output layer and the surrogate
  are one fused op whose gradient is built during the forward pass (losses.fused_policy_gradient_loss):
  three vocabulary-sized matmuls per position instead of four. ``full_kl`` is the exact KL, chunked and
  fused the same way (losses.fused_reverse_kl_loss): its gradient π_S ⊙ (log π_S − log π_T − KL) is built
  in the forward pass.
- Data parallelism all-reduces gradients explicitly (sum of per-process ``Σ/N_global`` losses) instead
  of wrapping the student in DDP, because the forward pass calls the decoder body and the output layer
  separately.
- With ``--dtype bfloat16`` the student keeps float32 master weights under bf16 autocast: at lr 5e-7 a
  pure-bf16 AdamW update would round to zero for most weights.
- The learning rate warms up linearly over ``warmup_ratio · max_steps`` steps starting from lr/warmup at
  the first step (not from 0, which would waste a step).
- Each step re-seeds the sampler from (seed, step, process), so a resumed run samples exactly what an
  uninterrupted run would.
"""

from __future__ import annotations

import functools
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from .config import OptimConfig, TrainConfig
from .data import encode_prompts, read_jsonl
from .errors import UserError
from .logprobs import chunked_token_logprobs, is_plain_linear
from .losses import (
    chunked_reverse_kl,
    full_kl_loss,
    fused_policy_gradient_loss,
    fused_reverse_kl_loss,
    policy_gradient_loss,
)
from .models import (
    check_pair,
    load_causal_lm,
    load_tokenizer,
    output_layer,
    response_hidden_states,
    stop_token_ids,
)
from .rewards import BATCH_STATISTIC_REWARDS, REWARDS
from .rollout import Rollouts, SamplingConfig, make_sampler
from .teacher import HFScorer, TeacherScores
from .tracking import RunDir, load_training_state


# ---------------------------------------------------------------------------------------------------
# Plumbing: processes, data order, the objective
# ---------------------------------------------------------------------------------------------------
class Collective(Protocol):
    """The few cross-process operations the update needs (identity on one process)."""

    world_size: int
    rank: int

    def sum(self, value: Tensor) -> Tensor: ...

    def gather_rows(self, tensor_BT: Tensor) -> tuple[Tensor, slice]: ...

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None: ...


class SingleProcess:
    world_size, rank = 1, 0

    def sum(self, value: Tensor) -> Tensor:
        return value

    def gather_rows(self, tensor_BT: Tensor) -> tuple[Tensor, slice]:
        return tensor_BT, slice(0, tensor_BT.shape[0])

    def sum_gradients(self, params) -> None:
        pass


class AcceleratorCollective:
    """Cross-process sums and gathers through ``accelerate`` (gloo on CPU, NCCL on GPU)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.world_size, self.rank = accelerator.num_processes, accelerator.process_index

    def sum(self, value: Tensor) -> Tensor:
        return self.accelerator.reduce(value.clone(), reduction="sum") if self.world_size > 1 else value

    def gather_rows(self, tensor_BT: Tensor) -> tuple[Tensor, slice]:
        """Rows of every process (padded to the longest T), and where this process's rows are."""
        if self.world_size == 1:
            return tensor_BT, slice(0, tensor_BT.shape[0])
        padded = self.accelerator.pad_across_processes(tensor_BT, dim=1)
        rows = self.accelerator.gather(torch.tensor([tensor_BT.shape[0]], device=tensor_BT.device))
        start = int(rows[: self.rank].sum())
        return self.accelerator.gather(padded), slice(start, start + tensor_BT.shape[0])

    def sum_gradients(self, params) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@dataclass(frozen=True)
class DataOrder:
    """Which prompts a step uses: a seeded permutation per epoch, indexed by the global sample count.

    Stateless: the prompts of step s depend only on (seed, s), so resuming needs nothing but the step.
    """

    num_prompts: int
    seed: int

    def indices(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
        per_process = batch_size // world_size
        first = (step - 1) * batch_size + rank * per_process
        return [self._index(g) for g in range(first, first + per_process)]

    def _index(self, sample: int) -> int:
        epoch, position = divmod(sample, self.num_prompts)
        return int(self._permutation(epoch)[position])

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few epochs' permutations, tied to this frozen object
    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(
            self.num_prompts, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        )


@dataclass(frozen=True)
class Objective:
    """What the update optimises: a registry reward (bound to its hyperparameters) or the full-vocab KL."""

    name: str
    reward_fn: Callable[..., Tensor] | None  # None: full_kl

    @property
    def needs_batch_statistics(self) -> bool:
        return self.name in BATCH_STATISTIC_REWARDS

    @classmethod
    def from_config(cls, reward_cfg) -> Objective:
        if reward_cfg.name == "full_kl":
            return cls("full_kl", None)
        return cls(reward_cfg.name, functools.partial(REWARDS[reward_cfg.name], **reward_cfg.hparams))


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
# The update: one student forward per micro-batch, rewards from it, gradients summed over the batch
# ---------------------------------------------------------------------------------------------------
@dataclass
class UpdateResult:
    loss: float
    reward_BT: Tensor  # the trained per-token signal (for full_kl: −KL_t), detached
    log_ratio_BT: Tensor  # log π_T − log π_S of the sampled tokens, logged whatever trains
    student_logp_BT: Tensor
    mask_BT: Tensor


def _student_logprobs(student, rollouts: Rollouts, *, temperature: float, chunk_size: int) -> Tensor:
    hidden_BTH = response_hidden_states(
        student, rollouts.input_ids_BL, rollouts.attention_mask_BL, rollouts.prompt_len
    )
    logp_BT, _ = chunked_token_logprobs(
        output_layer(student),
        hidden_BTH,
        rollouts.response_ids_BT,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    return logp_BT


def _batch_rewards(
    objective: Objective, teacher_logp_BT, student_logp_BT, mask_BT, comm: Collective
) -> Tensor:
    """Rewards of a whole (per-process) batch; batch-statistic rewards see every process's tokens."""
    if not objective.needs_batch_statistics:
        return objective.reward_fn(teacher_logp_BT, student_logp_BT, mask_BT)
    (teacher_all, rows), (student_all, _), (mask_all, _) = (
        comm.gather_rows(t) for t in (teacher_logp_BT, student_logp_BT, mask_BT.long())
    )
    return objective.reward_fn(teacher_all, student_all, mask_all.bool())[rows, : mask_BT.shape[1]]


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
) -> UpdateResult:
    """Fill ``.grad`` of the student with the gradient of the batch loss (summed over processes).

    ``rollouts`` and ``teacher`` hold this process's share of the batch. The loss is normalised by the
    valid tokens of the whole batch, so the result equals one big single-process batch.
    """
    comm = comm or SingleProcess()
    device = next(student.parameters()).device
    rollouts = rollouts.to(device)
    mask_BT = rollouts.loss_mask(include_stop_token)
    full_kl = objective.name == "full_kl"
    if teacher.logp_BT is None and not full_kl:
        raise ValueError(f"compute_gradients: {objective.name} needs the teacher's log-probs (logprobs=True)")
    # full_kl computes the teacher's log-probs with the KL (the scorer may skip its output layer)
    teacher_logp_BT = None if full_kl else teacher.logp_BT.to(device)
    num_tokens = comm.sum(mask_BT.sum().float()).clamp(min=1).item()
    B = mask_BT.shape[0]
    micro = [slice(i, min(i + micro_batch_size, B)) for i in range(0, B, micro_batch_size)]
    amp = torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    precomputed_reward_BT = None
    if objective.needs_batch_statistics and len(micro) > 1:
        # zscore needs batch-wide statistics before the first backward: one extra no-grad pass (see above).
        with torch.no_grad(), amp:
            logp_BT = torch.cat(
                [
                    _student_logprobs(
                        student, rollouts.select(s), temperature=temperature, chunk_size=chunk_size
                    )
                    for s in micro
                ]
            )
        precomputed_reward_BT = _batch_rewards(objective, teacher_logp_BT, logp_BT, mask_BT, comm)

    loss_total, rewards, logps, teacher_logps = 0.0, [], [], []
    for s in micro:
        mb = rollouts.select(s)
        with amp:
            if full_kl:
                hidden_BTH = response_hidden_states(
                    student, mb.input_ids_BL, mb.attention_mask_BL, mb.prompt_len
                )
                kl_args = (output_layer(student), teacher_output_layer, hidden_BTH, teacher.hidden_BTH[s])
                kl_kwargs = {"vocab_size": vocab_size, "temperature": temperature, "chunk_size": chunk_size}
                if is_plain_linear(kl_args[0]) and is_plain_linear(kl_args[1]):
                    loss, kl_BT, logp_BT, mb_teacher_logp_BT = fused_reverse_kl_loss(
                        *kl_args, mb.response_ids_BT, mask_BT[s], num_tokens=num_tokens, **kl_kwargs
                    )
                else:
                    kl_BT, logp_BT, mb_teacher_logp_BT = chunked_reverse_kl(
                        *kl_args, mb.response_ids_BT, **kl_kwargs
                    )
                    loss, _ = full_kl_loss(kl_BT, mask_BT[s], num_tokens=num_tokens)
                teacher_logps.append(mb_teacher_logp_BT)
                reward_BT = torch.where(mask_BT[s], -kl_BT.detach(), 0.0)
            elif not objective.needs_batch_statistics and is_plain_linear(output_layer(student)):
                hidden_BTH = response_hidden_states(
                    student, mb.input_ids_BL, mb.attention_mask_BL, mb.prompt_len
                )
                loss, logp_BT, reward_BT = fused_policy_gradient_loss(
                    output_layer(student),
                    hidden_BTH,
                    mb.response_ids_BT,
                    teacher_logp_BT[s],
                    mask_BT[s],
                    objective.reward_fn,
                    num_tokens=num_tokens,
                    temperature=temperature,
                    chunk_size=chunk_size,
                )
            else:
                logp_BT = _student_logprobs(student, mb, temperature=temperature, chunk_size=chunk_size)
                if precomputed_reward_BT is not None:
                    reward_BT = precomputed_reward_BT[s]
                else:
                    reward_BT = _batch_rewards(
                        objective, teacher_logp_BT[s], logp_BT.detach(), mask_BT[s], comm
                    )
                loss, _ = policy_gradient_loss(logp_BT, reward_BT, mask_BT[s], num_tokens=num_tokens)
        loss.backward()
        loss_total += loss.item()
        rewards.append(reward_BT.detach())
        logps.append(logp_BT.detach())

    comm.sum_gradients([p for p in student.parameters() if p.requires_grad])
    student_logp_BT = torch.cat(logps)
    if full_kl:
        teacher_logp_BT = torch.cat(teacher_logps)
    log_ratio_BT = torch.where(mask_BT, teacher_logp_BT - student_logp_BT, 0.0)
    loss = comm.sum(torch.tensor(loss_total, device=device)).item()
    return UpdateResult(loss, torch.cat(rewards), log_ratio_BT, student_logp_BT, mask_BT)


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------
def token_stats(prefix: str, values_BT: Tensor, mask_BT: Tensor) -> dict[str, float]:
    """mean/std/min/max/p05/p95 of the valid tokens, as ``prefix/<stat>``."""
    from .diagnostics import summary_stats

    stats = summary_stats(values_BT[mask_BT])
    return {f"{prefix}/{k}": stats[k] for k in ("mean", "std", "min", "max", "p05", "p95")}


def position_rows(reward_BT: Tensor, log_ratio_BT: Tensor, mask_BT: Tensor) -> list[dict]:
    from .diagnostics import position_stats

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

    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    comm = AcceleratorCollective(accelerator)
    device = accelerator.device
    run = RunDir(cfg.run.output_dir, is_main=accelerator.is_main_process)
    if cfg.run.batch_size % comm.world_size:
        raise UserError(
            f"--batch-size {cfg.run.batch_size}: expected a multiple of the {comm.world_size} processes"
        )
    per_process_batch = cfg.run.batch_size // comm.world_size
    micro_batch_size = min(cfg.run.micro_batch_size or per_process_batch, per_process_batch)

    # -- models and data ----------------------------------------------------------------------------
    student_tok = load_tokenizer(cfg.model.student, what="--student")
    teacher_tok = load_tokenizer(cfg.model.teacher, what="--teacher")
    check_pair(student_tok, teacher_tok, student=cfg.model.student, teacher=cfg.model.teacher)
    rows = read_jsonl(cfg.run.data)
    prompt_ids = encode_prompts(student_tok, [r["problem"] for r in rows])
    run.prepare(cfg, resume=resume)
    checkpoint = run.latest_checkpoint() if resume else None

    bf16 = cfg.model.dtype == "bfloat16"
    student_source = str(checkpoint) if checkpoint else cfg.model.student
    student = load_causal_lm(student_source, dtype="float32", device=device, what="--student")
    student.train()
    teacher_device = cfg.model.teacher_device or device
    teacher = load_causal_lm(
        cfg.model.teacher, dtype=cfg.model.dtype, device=teacher_device, what="--teacher"
    )
    _check_vocab_sizes(student, teacher, len(student_tok), cfg)

    optimizer = make_optimizer(student.parameters(), cfg.optim, device)
    warmup_steps = math.ceil(cfg.optim.warmup_ratio * cfg.run.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_constant(warmup_steps))
    start_step = 0
    if checkpoint is not None:
        start_step = load_training_state(checkpoint, optimizer, scheduler)["step"]
        run.truncate_logs(start_step)

    objective = Objective.from_config(cfg.reward)
    full_kl = objective.name == "full_kl"  # its loss computes the teacher's log-probs with the KL
    sampling = SamplingConfig(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        stop_token_ids=tuple(stop_token_ids(student_tok)),
    )
    sampler = make_sampler(cfg.rollout.engine, student, student_tok.pad_token_id, sampling)
    scorer = HFScorer(teacher, temperature=cfg.rollout.temperature, chunk_size=cfg.run.chunk_size)
    order = DataOrder(len(prompt_ids), cfg.run.seed)
    amp_dtype = torch.bfloat16 if bf16 else None
    evaluator = _make_evaluator(cfg, student_tok, eval_problems) if cfg.eval.every else None

    bar = tqdm(
        range(start_step + 1, cfg.run.max_steps + 1),
        desc=f"train {cfg.reward.label}",
        disable=not (progress and accelerator.is_main_process),
    )
    for step in bar:
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(cfg.run.seed, step, comm.rank))

        # 1. sample --------------------------------------------------------------------------------
        batch = order.indices(step, cfg.run.batch_size, comm.rank, comm.world_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            rollouts = sampler.sample([prompt_ids[i] for i in batch])
        t_sample = time.perf_counter()

        # 2. score ---------------------------------------------------------------------------------
        teacher_scores = scorer.score(rollouts, keep_hidden=full_kl, logprobs=not full_kl)
        t_score = time.perf_counter()

        # 3. reward + 4. update --------------------------------------------------------------------
        result = compute_gradients(
            student,
            rollouts,
            teacher_scores,
            objective,
            micro_batch_size=micro_batch_size,
            include_stop_token=cfg.rollout.include_stop_token,
            temperature=cfg.rollout.temperature,
            chunk_size=cfg.run.chunk_size,
            teacher_output_layer=output_layer(teacher),
            vocab_size=len(student_tok),
            comm=comm,
            autocast_dtype=amp_dtype,
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        t_update = time.perf_counter()

        # 5. log -----------------------------------------------------------------------------------
        metrics = _step_metrics(
            result, rollouts, comm, grad_norm=grad_norm.item(), lr=scheduler.get_last_lr()[0]
        )
        metrics.update(
            {
                "time/sample_s": t_sample - t0,
                "time/score_s": t_score - t_sample,
                "time/update_s": t_update - t_score,
                "time/step_s": t_update - t0,
                "tokens_per_s": metrics["response_length/sum"] / (t_update - t0),
                "memory/peak_mb": peak_memory_mb(device),
            }
        )
        if step == 1 or step % cfg.run.positions_every == 0:
            run.log_positions(step, _gathered_positions(result, comm))
        if evaluator is not None and (step % cfg.eval.every == 0 or step == cfg.run.max_steps):
            metrics.update(evaluator(student))
        run.log_metrics(step, metrics)
        bar.set_postfix(
            loss=f"{result.loss:.3g}",
            reward=f"{metrics['reward/mean']:.3g}",
            len=f"{metrics['response_length/mean']:.0f}",
        )

        # 6. save ----------------------------------------------------------------------------------
        if cfg.run.save_every and (step % cfg.run.save_every == 0 or step == cfg.run.max_steps):
            run.save_checkpoint(
                step,
                student,
                student_tok,
                optimizer,
                scheduler,
                {"epoch_samples": step * cfg.run.batch_size, "seed": cfg.run.seed},
            )
        accelerator.wait_for_everyone()

    final = run.save_final(student, student_tok)
    run.close()
    accelerator.wait_for_everyone()
    return final


def _check_vocab_sizes(student, teacher, tokenizer_size: int, cfg: TrainConfig) -> None:
    for name, model in (("--student", student), ("--teacher", teacher)):
        rows = output_layer(model).weight.shape[0]
        if rows < tokenizer_size:
            raise UserError(
                f"{name} {getattr(cfg.model, name[2:])}: output layer has {rows} rows, expected at least the tokenizer's {tokenizer_size}"
            )


def _step_metrics(
    result: UpdateResult, rollouts: Rollouts, comm: Collective, *, grad_norm: float, lr: float
) -> dict[str, float]:
    """Batch-wide statistics (every process's tokens) of the trained signal and of the log ratio."""
    (reward_all, _), (ratio_all, _), (logp_all, _), (mask_all, _) = (
        comm.gather_rows(t)
        for t in (result.reward_BT, result.log_ratio_BT, result.student_logp_BT, result.mask_BT.long())
    )
    mask_all = mask_all.bool()
    lengths_B, _ = comm.gather_rows(rollouts.response_lengths_B.float().to(result.mask_BT.device)[:, None])
    truncated_B, _ = comm.gather_rows(rollouts.truncated_B.float().to(result.mask_BT.device)[:, None])
    probs = logp_all.exp()[mask_all]
    return {
        "loss": result.loss,
        "grad/norm": grad_norm,
        "lr": lr,
        **token_stats("reward", reward_all, mask_all),
        **token_stats("log_ratio", ratio_all, mask_all),
        "response_length/mean": lengths_B.mean().item(),
        "response_length/max": lengths_B.max().item(),
        "response_length/sum": lengths_B.sum().item(),
        "response/truncated_frac": truncated_B.mean().item(),
        "student_prob/mean": probs.mean().item() if probs.numel() else float("nan"),
        "tokens/valid": int(mask_all.sum()),
    }


def _gathered_positions(result: UpdateResult, comm: Collective) -> list[dict]:
    (reward_all, _), (ratio_all, _), (mask_all, _) = (
        comm.gather_rows(t) for t in (result.reward_BT, result.log_ratio_BT, result.mask_BT.long())
    )
    return position_rows(reward_all, ratio_all, mask_all.bool())


def _make_evaluator(cfg: TrainConfig, tokenizer, problems: dict | None = None) -> Callable:
    """Returns student -> {eval/<benchmark>/avg@n, ...} on the configured benchmarks (or on ``problems``)."""
    from .benchmarks import load_benchmark, resolve_benchmarks
    from .evaluate import EvalConfig as HarnessConfig
    from .evaluate import evaluate_model

    if problems is None:
        names = resolve_benchmarks(cfg.eval.benchmarks)
        problems = {b: load_benchmark(b, cfg.eval.data_dir, cfg.eval.limit) for b in names}
    harness = HarnessConfig(
        benchmarks=tuple(problems),
        n=cfg.eval.n,
        temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        seed=cfg.run.seed,
        engine=cfg.rollout.engine,
    )

    def evaluate(student) -> dict[str, float]:
        results, _ = evaluate_model(student, tokenizer, problems, harness, progress=False)
        student.train()
        return {
            f"eval/{b}/{k}": v
            for b, row in results.items()
            if b != "mean"
            for k, v in row.items()
            if k != "n_problems"
        }

    return evaluate
