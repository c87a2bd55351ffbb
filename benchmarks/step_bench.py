"""Time and peak memory of one OPD update step: our training path against the naive recipes.

One step = teacher scoring + student forward/backward + AdamW step, on a fixed random batch of rollouts
(generation is excluded) and random-init Qwen3-shaped models at the Qwen3 vocabulary (151,936) by default.
Modes (``MODES`` below):

- ``power_sampled``    our path: ``HFScorer`` + ``compute_gradients`` with the power reward (α = 1);
- ``naive_sampled``    the paper repo's recipe (EIT-NLP/PowerOPD, TRL GOLD): an fp32 log_softmax over B×T×V
                       from ``model(...).logits`` for both models, a separate no-grad student pass for the
                       rewards, then the training pass (gather from the full log_softmax);
- ``full_kl_naive``    exact reverse KL from materialised fp32 log-softmaxes (``reverse_kl_per_token``);
- ``full_kl_chunked``  our full_kl path (``HFScorer(keep_hidden=True, logprobs=False)`` + ``compute_gradients``:
                       the fused reverse-KL op, which also gives the teacher's sampled-token log-probs);
- ``body_floor``       the floor under every mode: the teacher's and the student's decoder bodies (forward;
                       forward + backward of a trivial loss) and the optimizer step, no output layer. The
                       report shows each mode's time and memory above it: the cost of the output layer.
- ``matmul_floor``     ``body_floor`` plus the vocabulary-sized matmuls of our fused paths (the teacher's
                       logits; the student's logits, ∂hidden and ∂W), chunk by chunk, without any softmax:
                       the floor set by the matmuls. Our paths add the elementwise (exp) passes to it.

The naive recipes get the logits of the T response positions only (``logits_to_keep``), not of the prompt:
the comparison is with the cheapest version of the naive recipe.

Each mode runs in a fresh process (this script with ``--worker MODE``) so that one mode's allocator state
cannot flatter the next. A worker builds the models, the rollouts and AdamW, takes ``--warmup`` steps (so
the Adam state exists), then ``--repeats`` timed steps, and reports the median; on the CPU it then takes
``--repeats`` more steps to measure memory (the RSS sampler below would slow the timed ones).

Peak memory is the peak of the step *above* what the process held just before it (models, optimizer
state, batch):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus ``memory_allocated``
  before the step;
- CPU: the process's resident set size (``/proc/self/statm``) sampled every ~0.2 ms by a background thread
  during the step, minus the RSS just before it, after ``malloc_trim(0)`` hands freed heap pages back to
  the OS. Tensors of more than 32 MB are mmap-ed by glibc and unmapped when freed, so the RSS follows the
  big (vocabulary-sized) tensors; small freed blocks may stay in the heap, which can only raise the
  number. Every mode is measured the same way.

    python benchmarks/step_bench.py --quick --json bench.json
    python benchmarks/step_bench.py --dry-run --json /tmp/dry.json          # tiny shapes, seconds
    python benchmarks/step_bench.py --check --device cuda --dtype bfloat16    # ours vs naive, one batch
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

QWEN3_VOCAB = 151_936
MODE_NAMES = (
    "power_sampled",
    "naive_sampled",
    "full_kl_naive",
    "full_kl_chunked",
    "body_floor",
    "matmul_floor",
)

# name -> (layers, hidden, heads, kv heads, head_dim, intermediate, tied embeddings)
SHAPES = {
    "tiny": (2, 32, 4, 2, 8, 64, False),
    "bench-student": (2, 128, 4, 2, 32, 384, False),
    "bench-teacher": (2, 192, 4, 2, 48, 576, False),
    "qwen3-0.6b": (28, 1024, 16, 8, 128, 3072, True),  # as the released Qwen3-0.6B and 4B configs
    "qwen3-4b": (36, 2560, 32, 8, 128, 9728, True),
}

# (ours, reference, metric, bound): ours / reference must be ≤ bound
TARGETS = (
    ("power_sampled", "full_kl_naive", "time_s", 0.6),
    ("power_sampled", "full_kl_naive", "peak_mb", 0.35),
    ("power_sampled", "naive_sampled", "time_s", 0.8),
    ("power_sampled", "naive_sampled", "peak_mb", 0.5),
    ("full_kl_chunked", "full_kl_naive", "peak_mb", 0.5),
)


@dataclass(frozen=True)
class BenchConfig:
    vocab: int = QWEN3_VOCAB
    batch: int = 8
    seq: int = 256
    """Response tokens per rollout (T)."""
    prompt_len: int = 32
    repeats: int = 3
    warmup: int = 1
    chunk_size: int | None = None
    """Positions per output-layer chunk in our paths; None: the library default."""
    device: str = "cpu"
    dtype: str = "float32"
    """float32, or bfloat16: teacher in bf16, student fp32 master weights under bf16 autocast (as train.py)."""
    student_shape: str = "bench-student"
    teacher_shape: str = "bench-teacher"
    threads: int | None = None
    seed: int = 0


# ---------------------------------------------------------------------------------------------------
# Models and batch
# ---------------------------------------------------------------------------------------------------
def make_model(shape: str, vocab: int, *, seed: int, device: str, dtype):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    layers, hidden, heads, kv, head_dim, inter, tied = SHAPES[shape]
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: a 4B model initialises in seconds on a GPU
        model = Qwen3ForCausalLM(config)
    return model.to(dtype)


def make_rollouts(cfg: BenchConfig, device: str):
    """A fixed random batch: left-padded prompts of varied length, responses of varied length (stop token 0)."""
    import torch

    from poweropd.rollout import build_rollouts

    g = torch.Generator().manual_seed(cfg.seed + 1)
    B, P, T = cfg.batch, cfg.prompt_len, cfg.seq
    prompt_BP = torch.randint(1, cfg.vocab, (B, P), generator=g)
    prompt_mask_BP = torch.ones(B, P, dtype=torch.long)
    response_BT = torch.randint(1, cfg.vocab, (B, T), generator=g)
    for b in range(B):
        prompt_mask_BP[b, : (b * P) // (2 * B)] = 0  # up to half the prompt is padding
        prompt_BP[b, : (b * P) // (2 * B)] = 0
        if b % 2:  # odd rows stop early; even rows are truncated at T
            response_BT[b, T - 1 - (b * T) // (2 * B)] = 0
    rollouts = build_rollouts(torch.cat([prompt_BP, response_BT], 1), prompt_mask_BP, (0,), pad_token_id=0)
    return rollouts.to(device)


@dataclass
class Context:
    cfg: BenchConfig
    student: object
    teacher: object
    rollouts: object
    amp_dtype: object  # torch.dtype | None

    def autocast(self):
        import torch

        enabled = self.amp_dtype is not None
        return torch.autocast(self.student.device.type, dtype=self.amp_dtype, enabled=enabled)


def build_context(cfg: BenchConfig) -> Context:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = cfg.dtype == "bfloat16"
    student = make_model(cfg.student_shape, cfg.vocab, seed=cfg.seed, device=cfg.device, dtype=torch.float32)
    teacher_dtype = torch.bfloat16 if bf16 else torch.float32
    teacher = make_model(
        cfg.teacher_shape, cfg.vocab, seed=cfg.seed + 7, device=cfg.device, dtype=teacher_dtype
    )
    student.train()
    teacher.eval().requires_grad_(False)
    return Context(cfg, student, teacher, make_rollouts(cfg, cfg.device), torch.bfloat16 if bf16 else None)


# ---------------------------------------------------------------------------------------------------
# The four modes: score (teacher, no grad) then update (student forward + backward, grads in .grad)
# ---------------------------------------------------------------------------------------------------
def _objective(name: str):
    from poweropd.config import RewardConfig
    from poweropd.train import Objective

    return Objective.from_config(RewardConfig(name=name, alpha=1.0))


def _chunk_kwargs(cfg: BenchConfig) -> dict:
    return {} if cfg.chunk_size is None else {"chunk_size": cfg.chunk_size}


def ours_score(ctx: Context, *, keep_hidden: bool):
    from poweropd.teacher import HFScorer

    scorer = HFScorer(ctx.teacher, **_chunk_kwargs(ctx.cfg))
    return scorer.score(ctx.rollouts, keep_hidden=keep_hidden, logprobs=not keep_hidden)  # as train.py


def ours_update(ctx: Context, scores, *, objective: str) -> float:
    from poweropd.models import output_layer
    from poweropd.train import compute_gradients

    result = compute_gradients(
        ctx.student,
        ctx.rollouts,
        scores,
        _objective(objective),
        micro_batch_size=ctx.cfg.batch,
        teacher_output_layer=output_layer(ctx.teacher),
        vocab_size=ctx.cfg.vocab,
        autocast_dtype=ctx.amp_dtype,
        **_chunk_kwargs(ctx.cfg),
    )
    return result.loss


def full_logits(model, rollouts):
    """``model(...).logits`` at the T positions that predict the response tokens, shape (B, T, V)."""
    r = rollouts
    position_ids_BL = (r.attention_mask_BL.long().cumsum(-1) - 1).clamp(min=0)
    T = r.response_ids_BT.shape[1]
    out = model(
        input_ids=r.input_ids_BL[:, :-1],
        attention_mask=r.attention_mask_BL[:, :-1],
        position_ids=position_ids_BL[:, :-1],
        use_cache=False,
        logits_to_keep=T,
    )
    return out.logits


def naive_token_logprobs(logits_BTV, tokens_BT):
    import torch.nn.functional as F

    logp_BTV = F.log_softmax(logits_BTV.float(), dim=-1)
    return logp_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)


def naive_sampled_score(ctx: Context):
    import torch

    with torch.no_grad():
        return naive_token_logprobs(full_logits(ctx.teacher, ctx.rollouts), ctx.rollouts.response_ids_BT)


def naive_sampled_update(ctx: Context, teacher_logp_BT) -> float:
    import torch

    from poweropd.losses import policy_gradient_loss
    from poweropd.rewards import power

    r = ctx.rollouts
    mask_BT = r.loss_mask()
    num_tokens = mask_BT.sum().clamp(min=1).item()
    with ctx.autocast():
        with torch.no_grad():  # the paper repo's separate reward pass
            old_logp_BT = naive_token_logprobs(full_logits(ctx.student, r), r.response_ids_BT)
        reward_BT = power(teacher_logp_BT, old_logp_BT, mask_BT, alpha=1.0)
        logp_BT = naive_token_logprobs(full_logits(ctx.student, r), r.response_ids_BT)
        loss, _ = policy_gradient_loss(logp_BT, reward_BT, mask_BT, num_tokens=num_tokens)
    loss.backward()
    return loss.item()


def full_kl_naive_score(ctx: Context):
    import torch

    with torch.no_grad():
        return full_logits(ctx.teacher, ctx.rollouts)


def full_kl_naive_update(ctx: Context, teacher_logits_BTV) -> float:
    from poweropd.losses import full_kl_loss, reverse_kl_per_token

    mask_BT = ctx.rollouts.loss_mask()
    with ctx.autocast():
        kl_BT = reverse_kl_per_token(full_logits(ctx.student, ctx.rollouts), teacher_logits_BTV)
        loss, _ = full_kl_loss(kl_BT, mask_BT, num_tokens=mask_BT.sum().clamp(min=1).item())
    loss.backward()
    return loss.item()


def body_floor_score(ctx: Context):
    import torch

    from poweropd.models import response_hidden_states

    r = ctx.rollouts
    with torch.no_grad():
        return response_hidden_states(ctx.teacher, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)


def body_floor_update(ctx: Context, _teacher_hidden_BTH) -> float:
    """The student's decoder body forward and backward with a trivial loss on its hidden states: what
    every mode pays before the output layer."""
    from poweropd.models import response_hidden_states

    r = ctx.rollouts
    with ctx.autocast():
        hidden_BTH = response_hidden_states(ctx.student, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)
        loss = hidden_BTH.float().square().mean()
    loss.backward()
    return loss.item()


def _chunk_size(ctx: Context) -> int:
    from poweropd.logprobs import DEFAULT_CHUNK_SIZE

    return ctx.cfg.chunk_size or DEFAULT_CHUNK_SIZE


def matmul_floor_score(ctx: Context):
    """The teacher's body and its output-layer matmul, chunk by chunk, and nothing else."""
    import torch

    from poweropd.logprobs import compute_dtype_for
    from poweropd.models import output_layer

    hidden_BTH = body_floor_score(ctx)
    hidden_NH = hidden_BTH.reshape(-1, hidden_BTH.shape[-1])
    weight_VH, chunk = output_layer(ctx.teacher).weight, _chunk_size(ctx)
    with torch.no_grad():
        for s in range(0, hidden_NH.shape[0], chunk):
            logits_nV = hidden_NH[s : s + chunk].to(compute_dtype_for(hidden_NH)) @ weight_VH.T
            del logits_nV
    return hidden_BTH


def matmul_floor_update(ctx: Context, _teacher_hidden_BTH) -> float:
    """The student's body forward and backward around the three vocabulary-sized matmuls of a fused
    output layer (logits, ∂hidden, ∂W) with the logits standing in for their gradient: no softmax, no
    loss. The floor that the matmuls set; our paths add the elementwise passes to it."""
    import torch

    from poweropd.models import output_layer, response_hidden_states

    r = ctx.rollouts
    weight_VH, chunk = output_layer(ctx.student).weight, _chunk_size(ctx)
    with ctx.autocast():
        hidden_BTH = response_hidden_states(ctx.student, r.input_ids_BL, r.attention_mask_BL, r.prompt_len)
    dtype = ctx.amp_dtype or hidden_BTH.dtype  # the matmul dtype of the fused ops under this autocast
    hidden_NH = hidden_BTH.detach().reshape(-1, hidden_BTH.shape[-1]).to(dtype)
    weight_c = weight_VH.detach().to(dtype)
    grad_hidden_NH = torch.empty_like(hidden_NH)
    grad_weight_VH = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device)
    for s in range(0, hidden_NH.shape[0], chunk):
        h_nH = hidden_NH[s : s + chunk]
        logits_nV = h_nH @ weight_c.T
        grad_hidden_NH[s : s + chunk] = logits_nV @ weight_c
        grad_weight_VH.add_((logits_nV.T @ h_nH).float())
        del logits_nV
    hidden_BTH.backward(grad_hidden_NH.view(hidden_BTH.shape).to(hidden_BTH.dtype) * 1e-6)
    weight_VH.grad = (
        grad_weight_VH.to(weight_VH.dtype) if weight_VH.grad is None else weight_VH.grad + grad_weight_VH
    )
    return 0.0


@dataclass(frozen=True)
class Mode:
    score: Callable  # ctx -> teacher data
    update: Callable  # (ctx, teacher data) -> loss; fills the student's .grad


MODES: dict[str, Mode] = {
    "power_sampled": Mode(
        functools.partial(ours_score, keep_hidden=False), functools.partial(ours_update, objective="power")
    ),
    "naive_sampled": Mode(naive_sampled_score, naive_sampled_update),
    "full_kl_naive": Mode(full_kl_naive_score, full_kl_naive_update),
    "full_kl_chunked": Mode(
        functools.partial(ours_score, keep_hidden=True), functools.partial(ours_update, objective="full_kl")
    ),
    "body_floor": Mode(body_floor_score, body_floor_update),
    "matmul_floor": Mode(matmul_floor_score, matmul_floor_update),
}


# ---------------------------------------------------------------------------------------------------
# Equivalence: our path and the naive recipe it replaces give the same loss and gradient
# ---------------------------------------------------------------------------------------------------
PAIRS = (("power_sampled", "naive_sampled"), ("full_kl_chunked", "full_kl_naive"))


def loss_and_grads(mode: str, ctx: Context) -> tuple[float, dict]:
    ctx.student.zero_grad(set_to_none=True)
    loss = MODES[mode].update(ctx, MODES[mode].score(ctx))
    return loss, {n: p.grad.clone() for n, p in ctx.student.named_parameters() if p.grad is not None}


def grad_agreement(grad, ref) -> tuple[float, float]:
    """(‖g − ref‖ / ‖ref‖, cosine) in float64, exact for tiny gradients (F.cosine_similarity clamps
    ‖g‖·‖ref‖ at 1e-8, which turned gradients of norm ~1e-5 into a cosine of 0.13)."""
    g, r = grad.double().flatten(), ref.double().flatten()
    g_norm, r_norm = g.norm().item(), r.norm().item()
    if r_norm == 0.0:
        return (0.0, 1.0) if g_norm == 0.0 else (float("inf"), 0.0)
    cosine = (g @ r).item() / (g_norm * r_norm) if g_norm > 0 else 0.0
    return (g - r).norm().item() / r_norm, cosine


def compare_pair(ctx: Context, ours: str, naive: str) -> dict:
    """Loss of each, and per parameter the gradients' relative error ‖g − g_ref‖/‖g_ref‖ and cosine."""
    loss_ours, grads_ours = loss_and_grads(ours, ctx)
    loss_naive, grads_naive = loss_and_grads(naive, ctx)
    if grads_ours.keys() != grads_naive.keys():
        raise AssertionError(f"{ours} and {naive} fill different gradients")
    rel, cos = {}, {}
    for name, g in grads_ours.items():
        rel[name], cos[name] = grad_agreement(g, grads_naive[name])
    return {
        "ours": ours,
        "naive": naive,
        "loss_ours": loss_ours,
        "loss_naive": loss_naive,
        "max_grad_rel_err": max(rel.values()),
        "min_grad_cosine": min(cos.values()),
        "worst_param": max(rel, key=rel.get),
        "grads_ours": grads_ours,
        "grads_naive": grads_naive,
    }


def check(cfg: BenchConfig) -> list[dict]:
    """Both pairs on one batch at ``cfg``'s shapes, device and dtype (one step, no optimizer)."""
    ctx = build_context(cfg)
    rows = []
    for ours, naive in PAIRS:
        row = compare_pair(ctx, ours, naive)
        del row["grads_ours"], row["grads_naive"]
        rows.append(row)
        print(
            f"  {ours} vs {naive}: loss {row['loss_ours']:.6g} vs {row['loss_naive']:.6g}, "
            f"max grad rel. error {row['max_grad_rel_err']:.2e} ({row['worst_param']}), "
            f"min cosine {row['min_grad_cosine']:.6f}",
            file=sys.stderr,
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------------
class RSSPeak:
    """Peak resident set size above the RSS at entry, sampled by a background thread (CPU)."""

    def __init__(self, interval_s: float = 2e-4):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)

    def rss(self) -> int:
        return int(os.pread(self.fd, 128, 0).split()[1]) * self.page

    def __enter__(self):
        _malloc_trim()
        self.before = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.extra_bytes = self.peak - self.before


def _malloc_trim() -> None:
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class CudaPeak:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        import torch

        torch.cuda.synchronize(self.device)
        self.extra_bytes = torch.cuda.max_memory_allocated(self.device) - self.before


def run_worker(mode_name: str, cfg: BenchConfig) -> dict:
    """Warm-up, ``cfg.repeats`` timed steps (CUDA: with their peak memory), then on the CPU ``cfg.repeats``
    steps under the RSS sampler for the peak memory; one mode, in this process."""
    import torch

    from poweropd.config import OptimConfig
    from poweropd.train import make_optimizer

    ctx = build_context(cfg)
    mode = MODES[mode_name]
    # the training loop's optimizer (fused AdamW), the same for every mode
    optimizer = make_optimizer(ctx.student.parameters(), OptimConfig(lr=1e-6), torch.device(cfg.device))
    cuda = cfg.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        scores = mode.score(ctx)
        sync()
        t1 = time.perf_counter()
        loss = mode.update(ctx, scores)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del scores
        sync()
        return loss, t1 - t0, time.perf_counter() - t1

    for _ in range(cfg.warmup):
        step()
    samples = {key: [] for key in SAMPLE_KEYS}
    for _ in range(cfg.repeats):  # timed steps; on CUDA the peak counter costs nothing, so measured here too
        meter = CudaPeak(torch.device(cfg.device)) if cuda else contextlib.nullcontext()
        cpu0 = time.process_time()
        with meter:
            loss, t_score, t_update = step()
        samples["times"].append(t_score + t_update)
        samples["score_times"].append(t_score)
        samples["update_times"].append(t_update)
        samples["cpu_times"].append(time.process_time() - cpu0)
        samples["losses"].append(loss)
        if cuda:
            samples["peaks_mb"].append(meter.extra_bytes / 2**20)
    for _ in range(0 if cuda else cfg.repeats):
        # CPU memory in separate steps: the RSS sampler thread polls every 0.2 ms and would slow the timed
        # steps (on 2 cores a step took ~1.5× as long with it)
        with RSSPeak() as meter:
            step()
        samples["peaks_mb"].append(meter.extra_bytes / 2**20)
    return summarize(samples) | {"threads": torch.get_num_threads()}


# per-step samples a worker returns, and the medians reported from them
SAMPLE_KEYS = ("times", "peaks_mb", "score_times", "update_times", "cpu_times", "losses")
MEDIANS = {
    "time_s": "times",
    "peak_mb": "peaks_mb",
    "score_s": "score_times",
    "update_s": "update_times",
    "cpu_s": "cpu_times",
}


def summarize(samples: dict[str, list]) -> dict:
    return {key: statistics.median(samples[src]) for key, src in MEDIANS.items()} | samples


def merge_rounds(results: list[dict]) -> dict:
    """One mode's results from several fresh processes: the samples pooled, medians over all of them."""
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    samples = {key: [v for r in results for v in r[key]] for key in SAMPLE_KEYS}
    return summarize(samples) | {"threads": results[0]["threads"], "rounds": len(results)}


def run_mode_subprocess(mode_name: str, cfg: BenchConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", mode_name, "--worker-out", str(out), *config_flags(cfg)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"error": f"worker exited with {proc.returncode}", "stderr_tail": tail}
        return json.loads(out.read_text())


def config_flags(cfg: BenchConfig) -> list[str]:
    flags = []
    for key, value in asdict(cfg).items():
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
def target_rows(modes: dict) -> list[dict]:
    rows = []
    for ours, ref, metric, bound in TARGETS:
        if ours in modes and ref in modes and "error" not in modes[ours] and "error" not in modes[ref]:
            ratio = modes[ours][metric] / max(modes[ref][metric], 1e-9)
            rows.append(
                {
                    "ours": ours,
                    "ref": ref,
                    "metric": metric,
                    "ratio": ratio,
                    "bound": bound,
                    "pass": ratio <= bound,
                }
            )
    return rows


def format_report(result: dict) -> str:
    modes = result["modes"]
    floor = modes.get("body_floor", {})
    floor = None if "error" in floor else floor
    lines = [
        "| mode | step s (median) | score s | update s | process CPU s | peak MB above start "
        "| s above floor | MB above floor | step times s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in modes.items():
        if "error" in m:
            lines.append(f"| {name} | error: {m['error']} | | | | | | | |")
            continue
        times = ", ".join(f"{t:.2f}" for t in m["times"])
        above = (
            f"{m['time_s'] - floor['time_s']:.2f} | {m['peak_mb'] - floor['peak_mb']:.0f}"
            if floor and name != "body_floor"
            else " | "
        )
        lines.append(
            f"| {name} | {m['time_s']:.2f} | {m['score_s']:.2f} | {m['update_s']:.2f} | {m['cpu_s']:.2f} "
            f"| {m['peak_mb']:.0f} | {above} | {times} |"
        )
    lines += ["", "| target | ratio | bound | result |", "|---|---|---|---|"]
    for row in result.get("targets", []):
        verdict = "PASS" if row["pass"] else "FAIL"
        lines.append(
            f"| {row['ours']} / {row['ref']} {row['metric']} | {row['ratio']:.3f} | ≤ {row['bound']} | {verdict} |"
        )
    matmul_floor = modes.get("matmul_floor", {"error": "not run"})
    floor_rows = [
        f"| {name} / matmul_floor time | {modes[name]['time_s'] / matmul_floor['time_s']:.3f} |"
        for name in ("power_sampled", "full_kl_chunked", "naive_sampled", "full_kl_naive")
        if "error" not in matmul_floor and "error" not in modes.get(name, {"error": "not run"})
    ]
    if floor_rows:
        lines += ["", "| against the floor set by the matmuls | ratio |", "|---|---|", *floor_rows]
    return "\n".join(lines)


def bench(cfg: BenchConfig, modes: list[str], *, rounds: int = 1, echo: bool = True) -> dict:
    """Each mode in a fresh process, ``rounds`` times in rotation (so that a change in the machine's load
    hits every mode alike); medians over the pooled steps."""
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name in modes:
            t0 = time.perf_counter()
            m = run_mode_subprocess(name, cfg)
            runs[name].append(m)
            if echo:
                summary = m.get("error") or f"{m['time_s']:.2f} s, {m['peak_mb']:.0f} MB"
                print(
                    f"  {name}: {summary}  ({time.perf_counter() - t0:.0f} s with start-up)", file=sys.stderr
                )
    result = {
        "config": asdict(cfg) | {"rounds": rounds},
        "modes": {n: merge_rounds(r) for n, r in runs.items()},
    }
    result["targets"] = target_rows(result["modes"])
    return result


def merge_results(results: list[dict]) -> dict:
    """Results of runs with the same config and different modes (e.g. ours and the naive recipes under
    separate timeouts) as one result, with the targets recomputed across them."""
    configs = {json.dumps(r["config"], sort_keys=True) for r in results}
    if len(configs) > 1:
        raise ValueError("the results were measured with different configs")
    merged = {"config": results[0]["config"], "modes": {}}
    for r in results:
        merged["modes"].update(r["modes"])
    merged["targets"] = target_rows(merged["modes"])
    return merged


def parse_args(argv=None) -> tuple[argparse.Namespace, BenchConfig]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = BenchConfig()
    p.add_argument(
        "--quick",
        action="store_true",
        help="batch 4 × 128 response tokens, chunk 128, 2 rounds × 3 steps: the table of BENCHMARKS.md (~4 min here)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny shapes and vocabulary 512: checks the code path in seconds",
    )
    p.add_argument("--vocab", type=int, default=d.vocab)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--seq", type=int, default=d.seq, help="response tokens per rollout")
    p.add_argument("--prompt-len", type=int, default=d.prompt_len)
    p.add_argument("--repeats", type=int, default=d.repeats, help="measured steps per process")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument(
        "--chunk-size", type=int, default=None, help="our paths' positions per chunk (default: library's)"
    )
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16"))
    p.add_argument("--student-shape", default=d.student_shape, choices=tuple(SHAPES))
    p.add_argument("--teacher-shape", default=d.teacher_shape, choices=tuple(SHAPES))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rounds", type=int, default=1, help="run every mode this many times, in rotation")
    p.add_argument("--modes", nargs="+", default=list(MODE_NAMES), choices=MODE_NAMES)
    p.add_argument(
        "--check",
        action="store_true",
        help="instead of timing: our paths against the naive recipes on one batch (loss, gradient error)",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="instead of running: one report (table and ratios) from results written by earlier runs",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", choices=MODE_NAMES, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # N = 512 positions in chunks of 128: the N/chunk ratio of a real run (8192 / 1024)
        args.batch, args.seq, args.prompt_len = 4, 128, 32
        # two processes per mode, in rotation, so that the machine's changing load hits every mode alike
        args.repeats, args.rounds = max(args.repeats, 2), max(args.rounds, 2)
        args.chunk_size = args.chunk_size or 128
    if args.dry_run:
        args.vocab, args.batch, args.seq, args.prompt_len, args.repeats = 512, 2, 16, 8, 1
        args.student_shape = args.teacher_shape = "tiny"
    cfg = BenchConfig(
        vocab=args.vocab,
        batch=args.batch,
        seq=args.seq,
        prompt_len=args.prompt_len,
        repeats=args.repeats,
        warmup=args.warmup,
        chunk_size=args.chunk_size,
        device=args.device,
        dtype=args.dtype,
        student_shape=args.student_shape,
        teacher_shape=args.teacher_shape,
        threads=args.threads,
        seed=args.seed,
    )
    return args, cfg


def main(argv=None) -> int:
    args, cfg = parse_args(argv)
    if args.worker:
        args.worker_out.write_text(json.dumps(run_worker(args.worker, cfg)))
        return 0
    if args.merge:
        try:
            result = merge_results([json.loads(path.read_text()) for path in args.merge])
        except (OSError, ValueError, KeyError) as e:  # one line, exit 2, as every user-facing failure
            print(
                f"step_bench.py --merge: {e} (expected results written by step_bench.py --json)",
                file=sys.stderr,
            )
            return 2
        print(format_report(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    print(f"config: {json.dumps(asdict(cfg))}", file=sys.stderr)
    if args.check:
        rows = check(cfg)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"config": asdict(cfg), "check": rows}, indent=2))
        return 0
    result = bench(cfg, args.modes, rounds=args.rounds)
    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if any("error" in m for m in result["modes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
