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
    """EvalConfig's fields as flags, with `poweropd eval`'s own defaults (config.EVAL_COMMAND)."""
    from ..config.flags import add_field, add_section
    from ..config.sections import EVAL_COMMAND, EvalConfig, ModelConfig
    from .shared import add_vllm_arguments

    a = parser.add_argument
    a("--model", required=True, help="hub id, local folder or alias (e.g. smollm2-135m-instruct)")
    fields = add_section(parser, EvalConfig, preset=EVAL_COMMAND)
    add_field(parser, ModelConfig, "device", default="cpu", shown="cpu")  # not the GPU by default here
    add_field(parser, ModelConfig, "dtype", default="float32")
    add_field(parser, ModelConfig, "trust_remote_code", default=False)
    add_vllm_arguments(parser)
    a("--output-dir", type=Path, default=None, help="write results.json and samples.jsonl here")
    a("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(_fields=fields)


def run(args: argparse.Namespace) -> int:
    import time

    from ..errors import UserError
    from ..eval.benchmarks import load_benchmark, resolve_benchmarks
    from ..eval.harness import EvalConfig, evaluate_model, format_table, write_results
    from ..rollout.engines import resolve_engine
    from .shared import vllm_options

    # Every input is checked before the model loads and before anything is written.
    given = {key: getattr(args, dest) for dest, (_, key) in args._fields.items()}
    cfg = EvalConfig(**{**given, "benchmarks": tuple(resolve_benchmarks(given["benchmarks"]))})
    vllm = vllm_options(args)
    out = args.output_dir
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out}: expected a folder, found a file")
    if out is not None and (out / "results.json").exists():
        raise UserError(f"--output-dir {out}: already holds results.json; choose another folder or remove it")
    problems = {name: load_benchmark(name, cfg.data_dir, cfg.limit) for name in cfg.benchmarks}

    import torch

    from ..models.hf import load_causal_lm, load_tokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    # under `accelerate launch` the problems are sharded over the processes and gathered (training/collective.py)
    from accelerate import Accelerator

    from ..collective import AcceleratorCollective

    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device if args.device == "cuda" else "cpu"
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_causal_lm(
        args.model, dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code
    )
    if resolve_engine(cfg.engine, model) == "vllm":
        from ..rollout.vllm_engine import check_supported

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
