"""`poweropd <command>`: each command lives in ``poweropd.commands.<name>`` with ``add_arguments`` and ``run``.

Every user-facing failure is one line on stderr that names the input and what was expected, and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from .errors import UserError

DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
"""A full disk, a file-size limit, a quota: one line and exit code 2, like any bad input."""

COMMANDS = {
    "train": "on-policy distillation of a student toward a teacher",
    "eval": "Avg@n / Pass@n / length of a model on math benchmarks",
    "demo": "the embedded synthetic task: every reward compared in minutes, on a CPU",
    "diagnose": "reward statistics of a student/teacher pair before training",
    "plot": "figures from training runs' metrics",
    "prune": "depth-pruned copy of a causal LM",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit code 2 (argparse prints the whole usage)."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="poweropd", description="On-policy distillation of language models: PowerOPD and every baseline."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"poweropd.commands.{name}")
        cmd = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return _run(args)
    finally:
        _leave_process_group()


def _run(args: argparse.Namespace) -> int:
    try:
        return args._run(args) or 0
    except UserError as err:
        if args.debug:
            raise
        sys.stderr.write(f"poweropd {args.command}: error: {err}\n")
        return 2
    except OSError as err:
        if args.debug or err.errno not in DISK_FULL:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        sys.stderr.write(
            f"poweropd {args.command}: error: the disk is full ({err.strerror}{where}; output in "
            f"{getattr(args, 'output_dir', None)}); what was written before is complete (logs, checkpoints)\n"
        )
        return 2


def _leave_process_group() -> None:
    """Under accelerate/torchrun, destroy the process group before the interpreter exits: left to shutdown,
    gloo's threads sometimes abort the process (tests/_dist_worker.py measured 1–2 runs in 10)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _quiet_libraries() -> None:
    # transformers' per-file "Loading weights" / "Writing model shards" bars drown our own progress bars.
    from transformers.utils import logging

    logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
