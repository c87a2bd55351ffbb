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
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package beside this script
from stepbench import (  # noqa: E402
    DEFAULT_MODES,
    MODE_NAMES,
    SHAPES,
    BenchConfig,
    bench,
    check,
    format_report,
    merge_results,
    run_worker,
)


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
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODE_NAMES)
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
