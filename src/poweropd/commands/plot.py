"""Figures from training runs, overlaid: reward extremes per step (min/max, p05–p95 band), accuracy and
response length, gradient norm, and position-bucket extremes over training.

Example: `poweropd plot runs/log_ratio runs/power_a10 --output-dir figures/`. Each RUN_DIR needs a
metrics.jsonl; config.yaml (its `reward` section) names the method in the legend, positions.jsonl adds
the position figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="training run directories")
    parser.add_argument("--output-dir", required=True, type=Path, help="folder to write the PNGs to")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..plots.runs import plot_runs

    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UserError(f"--output-dir {args.output_dir}: expected a folder, found a file")
    for path in plot_runs(args.run_dirs, args.output_dir):
        print(path)
    return 0
