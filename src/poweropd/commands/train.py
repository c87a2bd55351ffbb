"""On-policy distillation of --student toward --teacher on the student's own samples.

Writes DIR/metrics.jsonl (one row per step), DIR/positions.jsonl, DIR/config.yaml, TensorBoard logs in
DIR/tb, checkpoints in DIR/checkpoints/step-N and the trained student in DIR/final.
A YAML preset (--config, see configs/) sets any field; flags override it.
"""

from __future__ import annotations

import argparse
import os
import re

from ..errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every config field is a flag (flags.py: name, help, default and choices from the field); the eval
    section's are ``--eval-*``. Declared here: the forms that are not one field = one value."""
    from ..config.flags import add_reward_hparams, add_section, docstrings
    from ..config.sections import SECTIONS

    a = parser.add_argument
    a("--config", metavar="PRESET.yaml", help="YAML preset (sections model/rollout/reward/optim/eval/run); flags override it")  # fmt: skip
    model = SECTIONS["model"]
    a("--teacher", metavar="T", action="append",
      help=f"{docstrings(model)['teacher']} Several: --teacher NAME=SPEC once each. {docstrings(model)['teachers']}")  # fmt: skip
    reward = SECTIONS["reward"]
    a("--alpha-schedule", metavar="A0:A1", help=docstrings(reward)["alpha_end"] + " Overrides --alpha.")
    fields = {}
    for section, cls in SECTIONS.items():
        fields.update(add_section(parser, cls, prefix="eval-" if section == "eval" else ""))
        if section == "reward":
            fields.update(add_reward_hparams(parser, cls))
    a("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    a("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_fields=fields)


def build_config(args: argparse.Namespace):
    """Preset (if any) overlaid with the flags that were given, validated."""
    from ..config.sections import TrainConfig, read_preset

    sections = read_preset(args.config) if args.config else {}
    source = f"--config {args.config}" if args.config else "flags"
    # Preset keys are checked before flags fill in required fields, so a typo is named as the preset's.
    for dest, (section, key) in args._fields.items():
        value = getattr(args, dest)
        if value is not None and key.startswith("extra."):  # a registered reward's own hyperparameter
            sections.setdefault(section, {}).setdefault("extra", {})[key.removeprefix("extra.")] = value
        elif value is not None:
            sections.setdefault(section, {})[key] = value
    if args.teacher:  # one spec, or several NAME=SPEC (a URL's own '=' comes after its '://')
        named = len(args.teacher) > 1 or re.match(r"[A-Za-z0-9_.-]+=", args.teacher[0])
        model = sections.setdefault("model", {})
        model.pop("teacher" if named else "teachers", None)
        model["teachers" if named else "teacher"] = tuple(args.teacher) if named else args.teacher[0]
    if args.alpha_schedule is not None:
        first, sep, last = args.alpha_schedule.partition(":")
        try:
            sections.setdefault("reward", {}).update(alpha=float(first), alpha_end=float(last))
        except ValueError:
            raise UserError(f"--alpha-schedule {args.alpha_schedule}: expected A0:A1, e.g. 1:10") from None
    return TrainConfig.from_dict(sections, source=source)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..run.faults import Interrupted
    from ..training.loop import train

    config = build_config(args)
    try:
        final = train(config, progress=not args.no_progress, resume=args.resume)
    except Interrupted as stop:  # SIGTERM / Ctrl-C: a checkpoint of the last step is on disk
        sys.stderr.write(f"poweropd train: {stop}\n")
        return 128 + stop.signum
    if os.environ.get("RANK", "0") == "0":  # once, not once per process of a multi-process run
        print(f"trained student: {final}")
    return 0
