"""The embedded default: a synthetic arithmetic task on which every reward trains the same student.

Uses the task's teacher and miscalibrated student shipped with the package (or, with --retrain-task-models,
trains them by their recipe), runs `poweropd train` in process for log_ratio, clip, tanh, zscore, power with
α ∈ {0.1, 1, 10} and full_kl, three seeds each, evaluates everything with Avg@8 / Pass@8 / length on held-out
problems, and writes DIR/results.json, DIR/report.md (figures, a multi-seed table, and a verdict on each of
the paper's claims with its effect and standard error) and every run's folder.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config.flags import add_field, default_of
    from ..config.sections import RolloutConfig
    from ..demo.experiment import DemoConfig

    a = parser.add_argument
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quick", action="store_true", help="log_ratio, power@1 and full_kl, 3 seeds, 60 steps"
    )
    group.add_argument(
        "--full",
        action="store_true",
        help="the paper's α sweep (0.1 … 500) and every baseline, 3 seeds (results: docs/demo_full/)",
    )
    a("--methods", metavar="LIST", help="comma-separated method ids, e.g. log_ratio,power@10,full_kl")
    for name in ("seeds", "steps", "lr", "batch_size"):  # help and default from DemoConfig's fields
        add_field(parser, DemoConfig, name)
    a("--output-dir", default="demo", metavar="DIR", help="where results go (default ./demo)")
    a(
        "--retrain-task-models",
        action="store_true",
        help="train the task's teacher and student by their recipe (~6 min) instead of using the shipped ones",
    )
    add_field(parser, RolloutConfig, "engine", shown=default_of(DemoConfig, "rollout_engine"))
    a("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..demo.experiment import DemoConfig, run_demo
    from ..demo.report import results_table

    overrides = {"output_dir": args.output_dir, "retrain_task_models": args.retrain_task_models}
    if args.methods:
        overrides["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for name in ("seeds", "steps", "lr", "batch_size", "rollout_engine"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    make = DemoConfig.quick if args.quick else DemoConfig.full if args.full else DemoConfig
    results = run_demo(make(**overrides), progress=not args.no_progress)
    print(results_table(results))
    crit = results["criterion"]
    print(f"learning criterion: {'met' if crit['met'] else 'NOT met'} (full_kl gain "
          f"{crit.get('full_kl_gain', float('nan')):+.3f}, sampled-token mean gain "
          f"{crit.get('sampled_mean_gain', float('nan')):+.3f})")  # fmt: skip
    for key, claim in results["claims"].items():
        print(f"{key} {claim['verdict']:>14}: {claim['claim']}")
    print(f"report: {args.output_dir}/report.md  ({results['wall_time_s']:.0f} s)")
    return 0
