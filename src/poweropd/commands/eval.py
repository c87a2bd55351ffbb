"""Avg@n / Pass@n / mean response length of a model on the paper's math benchmarks.

Samples --n responses per problem (temperature 0.6, top-p 0.95 by default, as in the paper), grades each
final answer with math-verify and prints one row per benchmark plus their mean. Writes results.json,
samples.jsonl (every response, its extracted answer and grade) and config.json to --output-dir.

Example (offline): `poweropd eval --model smollm2-135m-instruct --benchmarks gsm8k,math500 --limit 50 --n 4
--max-new-tokens 256 --data-dir ../shared/data --output-dir runs/eval_smollm2`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engines import ENGINE_HELP, ENGINES, add_vllm_arguments

    parser.add_argument(
        "--model", required=True, help="hub id, local folder or alias (e.g. smollm2-135m-instruct)"
    )
    parser.add_argument(
        "--benchmarks",
        default="all",
        help="comma list of gsm8k, math500, amc23, aime24, aime25, minerva, olympiadbench, or 'all' (default)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the benchmark JSONL files (offline); default: load from the Hugging Face hub (needs datasets)",
    )
    parser.add_argument("--n", type=int, default=8, help="samples per problem (Avg@n, Pass@n); default 8")
    parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature; 0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="response length cap (default 2048)")
    parser.add_argument("--limit", type=int, default=None, help="only the first K problems of each benchmark")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per generate call (default 16)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run the model")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="model weights dtype"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run Python code shipped with the model"
    )
    parser.add_argument(
        "--rollout-engine",
        default="generate",
        choices=ENGINES,
        help=ENGINE_HELP + "; default generate",
    )
    add_vllm_arguments(parser)
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="write results.json and samples.jsonl here"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import time

    from ..benchmark_data import load_benchmark, resolve_benchmarks
    from ..engines import resolve_engine, vllm_options
    from ..errors import UserError
    from ..evaluate import EvalConfig, evaluate_model, format_table, write_results

    # Every input is checked before the model loads and before anything is written.
    cfg = EvalConfig(
        benchmarks=tuple(resolve_benchmarks(args.benchmarks)),
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        engine=args.rollout_engine,
    )
    vllm = vllm_options(args)
    out = args.output_dir
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out}: expected a folder, found a file")
    if out is not None and (out / "results.json").exists():
        raise UserError(f"--output-dir {out}: already holds results.json; choose another folder or remove it")
    problems = {name: load_benchmark(name, args.data_dir, cfg.limit) for name in cfg.benchmarks}

    import torch

    from ..models import load_causal_lm, load_tokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    # under `accelerate launch` the problems are sharded over the processes and gathered (distributed.py)
    from accelerate import Accelerator

    from ..distributed import AcceleratorCollective

    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device if args.device == "cuda" else "cpu"
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_causal_lm(
        args.model, dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code
    )
    if resolve_engine(cfg.engine, model) == "vllm":
        from ..vllm_engine import check_supported

        check_supported(model, device, f"--model {args.model}", vllm)

    start = time.perf_counter()
    results, samples = evaluate_model(
        model, tokenizer, problems, cfg, progress=not args.no_progress and accelerator.is_main_process,
        comm=AcceleratorCollective(accelerator), vllm=vllm,
    )  # fmt: skip
    wall_s = time.perf_counter() - start
    if not accelerator.is_main_process:
        return 0

    print(format_table(results))
    processes = f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
    print(
        f"\n{len(samples)} responses in {wall_s:.0f} s ({args.model}, n={cfg.n}, "
        f"max_new_tokens={cfg.max_new_tokens}, engine {resolve_engine(cfg.engine, model)}{processes})"
    )
    if out is not None:
        write_results(out, results, samples, cfg)
        print(f"wrote {out / 'results.json'} and {out / 'samples.jsonl'}")
    return 0
