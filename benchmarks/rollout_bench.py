"""Rollout engines side by side: tokens/s, peak memory and the whole OPD step per engine, against the decode floor.

    .venv/bin/python benchmarks/rollout_bench.py                       # the shipped task models, CPU, ~2 min
    .venv/bin/python benchmarks/rollout_bench.py --model smollm2-135m-instruct --engines generate,vllm \
        --batch-sizes 32 --max-new-tokens 128 --threads 2                # a real model, GSM8K prompts
    .venv/bin/python benchmarks/rollout_bench.py --shape qwen3-0.6b --teacher-shape qwen3-4b --device cuda \\
        --dtype bfloat16 --batch-sizes 32 --max-new-tokens 1024 --mean-length 400 --step   # the paper's shape

Models: ``task`` (default) is the shipped task student and teacher, what the demo trains (head size 24: vLLM's
CPU attention cannot run it, so ``vllm`` is left out there); ``--model`` loads a real model (student and teacher
alike) with GSM8K prompts from ../shared/data; ``--shape`` builds a random-init Qwen3 of that shape
(benchmarks/stepbench SHAPES) with the Qwen3 vocabulary. A random model
never says its stop token, so ``--mean-length L`` makes the first V/L token ids stop tokens: lengths are then
about geometric with mean L, capped at --max-new-tokens, as real rollouts vary.

Per batch size and engine, in one process, the engines alternating and each call re-seeded: the median time
of a sampler call over --repeats (after one warm-up call), generated tokens/s, the peak memory the call adds
(CUDA: the allocator's peak during the last call plus the KV cache an engine keeps between calls; CPU: the
resident set's high-water mark of building the engine and one call, in a fresh process, since the engines
alternating in one process reuse each other's heap) and the time against the decode floor. The
floor: every decode step reads the weights once and each live row's KV cache; summed over the steps of the
lengths the call produced and divided by the copy bandwidth measured here (a large tensor copy, read +
write). ``--step`` adds the whole step (sample, teacher score, update with the power reward and AdamW).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def copy_bandwidth(device) -> float:
    """Bytes per second of a large device-to-device copy, counting the read and the write (median of 5)."""
    import torch

    n = (256 if device.type == "cuda" else 64) * 2**20 // 4
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    times = []
    for _ in range(6):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n * 4 / statistics.median(times[1:])


def decode_floor_s(lengths: list[int], prompt_lens: list[int], weight_bytes: int, kv_per_token: int, bw: float):
    """Σ over decode steps of (weights + the live rows' KV cache) bytes ÷ bandwidth."""
    total = 0.0
    for t in range(max(lengths)):
        kv = sum((p + t) * kv_per_token for p, n in zip(prompt_lens, lengths, strict=True) if n > t)
        total += (weight_bytes + kv) / bw
    return total


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb_of_one_call(make, prompts, device) -> float:
    """Memory that building an engine and one call of it add: the CUDA allocator's peak, or on CPU the resident
    set's high-water mark (reset through /proc/self/clear_refs) above the resident set before."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        sampler = make()
        sampler.sample(prompts)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
    else:
        Path("/proc/self/clear_refs").write_text("5")
        start = _status_kb("VmRSS")
        sampler = make()
        sampler.sample(prompts)
        peak = (_status_kb("VmHWM") - start) * 1024
    sampler.close()
    return peak / 2**20


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mb(engine: str, batch: int) -> float | None:
    """``_peak_mb_of_one_call`` in a fresh process (the engines alternating in one process share its heap)."""
    import subprocess

    argv = [a for a in sys.argv[1:] if a != "--step"]
    cmd = [
        sys.executable,
        __file__,
        *argv,
        "--engines",
        engine,
        "--batch-sizes",
        str(batch),
        "--memory-probe",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])["peak_mb"] if proc.returncode == 0 and lines else None


def load_models(args, device):
    """(student, teacher, stop ids, pad id, prompt ids per row)."""
    import torch

    from poweropd.data import encode_prompts
    from poweropd.demo.tasks import arithmetic
    from poweropd.demo.tasks.recipe import SHIPPED_DIR
    from poweropd.demo.tasks.sft import load_task_model
    from poweropd.models.hf import stop_token_ids

    rows = max(map(int, args.batch_sizes.split(",")))
    if args.model is not None:
        from poweropd.data import read_jsonl
        from poweropd.models.hf import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(args.model)
        student, teacher = (load_causal_lm(args.model, dtype="float32", device=device) for _ in range(2))
        data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
        problems = [r["problem"] for r in read_jsonl(data)][:rows]
        return student, teacher, stop_token_ids(tokenizer), tokenizer.pad_token_id, encode_prompts(tokenizer, problems)
    if args.shape is None:
        student, tokenizer = load_task_model(SHIPPED_DIR / "student")
        teacher, _ = load_task_model(SHIPPED_DIR / "teacher")
        problems = [r["problem"] for r in arithmetic.make_test(seed=1, n_test=rows)]
        return student, teacher, stop_token_ids(tokenizer), tokenizer.pad_token_id, encode_prompts(tokenizer, problems)
    from stepbench import QWEN3_VOCAB, make_model

    vocab = args.vocab or QWEN3_VOCAB
    student = make_model(args.shape, vocab, seed=0, device=device, dtype=torch.float32)
    teacher_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    teacher = make_model(args.teacher_shape, vocab, seed=1, device=device, dtype=teacher_dtype)
    stops = list(range(1, max(2, vocab // args.mean_length) + 1))
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (rows,), generator=g).tolist()
    high = vocab - 1
    prompts = [torch.randint(len(stops) + 1, high, (n,), generator=g).tolist() for n in lens]
    return student, teacher, stops, 0, prompts


def main() -> None:
    import torch

    from poweropd.config.sections import RewardConfig
    from poweropd.objectives.losses import make_objective
    from poweropd.rollout.continuous import kv_bytes_per_token
    from poweropd.rollout.engines import SAMPLERS, make_sampler
    from poweropd.rollout.samplers import SamplingConfig
    from poweropd.rollout.vllm_engine import unsupported_reason
    from poweropd.teachers.scorers import HFScorer
    from poweropd.training.update import compute_gradients

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default=None, help="default: every engine that runs the model")
    p.add_argument("--model", default=None, help="a real model (folder, hub id, alias) instead of --shape")
    p.add_argument("--batch-sizes", default="32,256")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, choices=[0, 1], help="an uncounted first call per engine")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--shape", default=None, help="random-init student of this stepbench shape (default: task)"
    )
    p.add_argument("--teacher-shape", default="bench-teacher")
    p.add_argument("--mean-length", type=int, default=200, help="--shape only: mean rollout length")
    p.add_argument("--prompt-len", type=int, default=128, help="--shape only: longest prompt")
    p.add_argument(
        "--vocab", type=int, default=None, help="--shape only: vocabulary (default Qwen3's 151,936)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--step", action="store_true", help="also time the whole step per engine")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    student, teacher, stops, pad_id, all_prompts = load_models(args, device)
    student, teacher = student.to(device), teacher.to(device)
    amp = torch.bfloat16 if args.dtype == "bfloat16" else None
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, stop_token_ids=tuple(stops))
    engines = args.engines.split(",") if args.engines else [
        e for e in SAMPLERS if e != "vllm" or unsupported_reason(student, device) is None
    ]
    if args.memory_probe:  # one engine, one batch size, in a fresh process
        make = lambda: make_sampler(engines[0], student, pad_id, config, dtype=amp)  # noqa: E731
        batch = int(args.batch_sizes.split(",")[0])
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            print(json.dumps({"peak_mb": _peak_mb_of_one_call(make, all_prompts[:batch], device)}))
        return
    samplers = {e: make_sampler(e, student, pad_id, config, dtype=amp) for e in engines}
    bw = copy_bandwidth(device)
    weight_bytes = sum(q.numel() * (2 if amp else q.element_size()) for q in student.parameters())
    kv_per_token = kv_bytes_per_token(student.config, amp or torch.float32)
    scorer = HFScorer(teacher)
    objective = make_objective(RewardConfig(name="power", alpha=1.0))
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-7)

    call_peak_mb = {}

    def one_step(sampler):
        """(sample s, score s, update s, rollouts); the sample time includes an engine's weight sync (vLLM)."""
        _sync(device)
        t0 = time.perf_counter()
        if args.step:
            sampler.sync_weights()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            rollouts = sampler.sample(prompts)
        _sync(device)
        t1 = time.perf_counter()
        if device.type == "cuda":  # the call's peak, and the cache an engine keeps between calls
            call_peak_mb[id(sampler)] = (
                torch.cuda.max_memory_allocated(device) - start + getattr(sampler, "cache_bytes", 0)
            ) / 2**20
        if not args.step:
            return t1 - t0, 0.0, 0.0, rollouts
        scores = scorer.score(rollouts)
        _sync(device)
        t2 = time.perf_counter()
        compute_gradients(student, rollouts, scores, objective, micro_batch_size=8,
                          autocast_dtype=amp)  # fmt: skip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return t1 - t0, t2 - t1, time.perf_counter() - t2, rollouts

    report = {"device": str(device), "dtype": args.dtype, "copy_GBps": bw / 1e9, "model": args.shape or "task",
              "max_new_tokens": args.max_new_tokens, "rows": []}  # fmt: skip
    print(
        f"copy bandwidth {bw / 1e9:.1f} GB/s; student weights {weight_bytes / 2**20:.0f} MB, KV {kv_per_token} B/token"
    )
    print("| batch | engine | s per call | generated tokens/s | peak MB | time vs generate | × decode floor |"
          + (" step s (sample / score / update) | step vs generate |" if args.step else ""))  # fmt: skip
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.step else ""))
    for batch in map(int, args.batch_sizes.split(",")):
        prompts = all_prompts[:batch]
        runs = {e: [] for e in engines}
        for repeat in range(
            1 - args.warmup, args.repeats + 1
        ):  # round 0 warms up (and starts the continuous engine)
            for engine in engines:
                torch.manual_seed(repeat)
                sample_s, score_s, update_s, rollouts = one_step(samplers[engine])
                lengths = rollouts.response_lengths_B.tolist()
                floor = decode_floor_s(lengths, [len(q) for q in prompts], weight_bytes, kv_per_token, bw)
                if repeat:
                    runs[engine].append((sample_s, score_s, update_s, sum(lengths), floor))
        reference = runs.get("generate", runs[engines[0]])
        base_sample = statistics.median(r[0] for r in reference)
        base_step = statistics.median(sum(r[:3]) for r in reference)
        for engine in engines:
            sample_s, score_s, update_s, tokens, floor = (
                statistics.median(r[k] for r in runs[engine]) for k in range(5)
            )
            step_s = statistics.median(sum(r[:3]) for r in runs[engine])
            peak = (
                call_peak_mb[id(samplers[engine])] if device.type == "cuda" else peak_memory_mb(engine, batch)
            )
            row = {"batch": batch, "engine": engine, "sample_s": sample_s, "score_s": score_s, "update_s": update_s,
                   "tokens_per_s": tokens / sample_s, "peak_mb": peak, "floor_s": floor, "step_s": step_s,
                   "sample_vs_generate": sample_s / base_sample, "step_vs_generate": step_s / base_step}  # fmt: skip
            report["rows"].append(row)
            peak_cell = "failed" if peak is None else f"{peak:.0f}"
            line = (f"| {batch} | {engine} | {sample_s:.3f} | {row['tokens_per_s']:,.0f} | {peak_cell} | "
                    f"{row['sample_vs_generate']:.2f} | {sample_s / floor:.1f} |")  # fmt: skip
            if args.step:
                line += f" {step_s:.2f} ({sample_s:.2f} / {score_s:.2f} / {update_s:.2f}) | {row['step_vs_generate']:.2f} |"
            print(line, flush=True)
    for sampler in samplers.values():
        sampler.close()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
