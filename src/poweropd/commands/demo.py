"""The embedded default: a synthetic arithmetic task on which every reward trains the same student.

Prepares (or loads from $POWEROPD_CACHE) a tiny teacher trained to ≥ 95% and a weak student, runs
`poweropd train` in process for log_ratio, clip, tanh, zscore, power with α ∈ {0.1, 1, 10, 100, 500} and
full_kl, evaluates everything with Avg@8 / Pass@8 / length on held-out problems, and writes DIR/results.json,
DIR/report.md (table, figures, and a verdict on each of the paper's claims) and every run's folder.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a(
        "--quick",
        action="store_true",
        help="log_ratio, power@1 and full_kl, 60 steps: 80 s with cached task models, ~6 min from an empty cache",
    )
    a("--methods", metavar="LIST", help="comma-separated method ids, e.g. log_ratio,power@10,full_kl")
    a("--seeds", type=int, default=1, metavar="K", help="runs per method; results are mean ± std (default 1)")
    a("--steps", type=int, metavar="N", help="optimizer steps per run")
    a("--lr", type=float, metavar="LR", help="OPD learning rate of every run")
    a("--batch-size", type=int, metavar="B", help="rollouts per OPD step")
    a("--output-dir", default="demo", metavar="DIR", help="where results go (default ./demo)")
    a("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, results_table, run_demo

    overrides = {"output_dir": args.output_dir, "seeds": args.seeds}
    if args.methods:
        overrides["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for name in ("steps", "lr", "batch_size"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    results = run_demo(cfg, progress=not args.no_progress)
    print(results_table(results))
    for key, claim in results["claims"].items():
        print(f"{key} {claim['verdict']:>14}: {claim['claim']}")
    print(f"report: {args.output_dir}/report.md  ({results['wall_time_s']:.0f} s)")
    return 0
