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

# flag dest -> (config section, field). Each flag exists here once; help comes from the config docstrings.
FLAGS: dict[str, tuple[str, str]] = {
    "student": ("model", "student"),
    "teacher_timeout": ("model", "teacher_timeout_s"),
    "teacher_retries": ("model", "teacher_retries"),
    "teacher_field": ("run", "teacher_field"),
    "device": ("model", "device"),
    "teacher_device": ("model", "teacher_device"),
    "dtype": ("model", "dtype"),
    "data": ("run", "data"),
    "data_split": ("run", "data_split"),
    "data_field": ("run", "data_field"),
    "output_dir": ("run", "output_dir"),
    "reward": ("reward", "name"),
    "alpha": ("reward", "alpha"),
    "clip_low": ("reward", "clip_low"),
    "clip_high": ("reward", "clip_high"),
    "tanh_tau": ("reward", "tanh_tau"),
    "token_select": ("reward", "token_select"),
    "max_steps": ("run", "max_steps"),
    "batch_size": ("run", "batch_size"),
    "micro_batch_size": ("run", "micro_batch_size"),
    "seed": ("run", "seed"),
    "save_every": ("run", "save_every"),
    "positions_every": ("run", "positions_every"),
    "keep_last": ("run", "keep_last"),
    "report_to": ("run", "report_to"),
    "max_skipped_steps": ("run", "max_skipped_steps"),
    "max_new_tokens": ("rollout", "max_new_tokens"),
    "temperature": ("rollout", "temperature"),
    "rollout_engine": ("rollout", "engine"),
    **{dest: ("rollout", dest) for dest in ("vllm_kv_cache_gb", "vllm_gpu_memory_utilization", "vllm_enforce_eager",
                                            "vllm_sleep", "vllm_max_model_len")},  # fmt: skip
    "trust_remote_code": ("model", "trust_remote_code"),
    "gradient_checkpointing": ("model", "gradient_checkpointing"),
    "lora_rank": ("model", "lora_rank"),
    "lora_alpha": ("model", "lora_alpha"),
    "lora_dropout": ("model", "lora_dropout"),
    "lora_target_modules": ("model", "lora_target_modules"),
    "merge_lora": ("model", "merge_lora"),
    "fsdp": ("model", "fsdp"),
    "lr": ("optim", "lr"),
    "eval_every": ("eval", "every"),
    "eval_benchmarks": ("eval", "benchmarks"),
    "eval_data_dir": ("eval", "data_dir"),
    "eval_limit": ("eval", "limit"),
    "eval_n": ("eval", "n"),
    "eval_max_new_tokens": ("eval", "max_new_tokens"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import DEVICES, DTYPES, methods
    from ..engines import ENGINE_HELP, ENGINES, add_vllm_arguments
    from ..rewards import REWARDS

    a = parser.add_argument
    a("--student", metavar="S", help="student: HF id, folder or alias (e.g. smollm2-135m-instruct)")
    a("--teacher", metavar="T", action="append",
      help="teacher: HF id, folder, alias or the URL of a vLLM server (http://HOST:PORT/v1); same tokenizer as the "
           "student. Several: --teacher NAME=SPEC once each, every prompt row naming its teacher in --teacher-field")  # fmt: skip
    a("--teacher-field", metavar="NAME", help="column naming each row's teacher, with several teachers (default teacher)")
    a("--teacher-timeout", type=float, metavar="S", help="served teacher: seconds per request (default 120)")
    a("--teacher-retries", type=int, metavar="N", help="served teacher: retries before the run stops (default 4)")
    a("--data", metavar="SOURCE", help="prompts: a JSONL/parquet file, a datasets folder or a hub dataset id")
    a("--data-split", metavar="NAME", help="split of a dataset folder or hub dataset (default train)")
    a("--data-field", metavar="NAME", help="column holding the problem text (default problem)")
    a("--output-dir", metavar="DIR", help="run directory")
    a(
        "--config",
        metavar="PRESET.yaml",
        help="YAML preset (sections model/rollout/reward/optim/eval/run); flags override it",
    )
    a(
        "--reward",
        choices=methods(),
        help="training signal (default power): "
        + "; ".join(f"{name}: {record.citation}" for name, record in REWARDS.items())
        + "; full_kl: the exact reverse KL at every position",
    )
    a(
        "--alpha",
        type=float,
        metavar="A",
        help="α of power (π_T^α − π_S^α) or proximal (0 < α ≤ 1); default 1.0",
    )
    a(
        "--alpha-schedule",
        metavar="A0:A1",
        help="α from A0 at the first step to A1 at the last, geometrically (power, proximal); overrides --alpha",
    )
    a(
        "--token-select",
        metavar="entropy:K",
        help="train on the fraction K of each micro-batch's tokens with the highest student entropy",
    )
    a("--clip-low", type=float, metavar="L", help="lower bound of the clip reward (default −1)")
    a("--clip-high", type=float, metavar="H", help="upper bound of the clip reward (default 1)")
    a("--tanh-tau", type=float, metavar="TAU", help="tanh reward temperature (default 1)")
    a("--max-steps", type=int, metavar="N", help="optimizer steps (default 1500)")
    a("--batch-size", type=int, metavar="B", help="rollouts per optimizer step, all processes (default 32)")
    a("--micro-batch-size", type=int, metavar="M", help="rollouts per forward/backward (default: all)")
    a("--max-new-tokens", type=int, metavar="T", help="longest rollout (default 1024)")
    a("--temperature", type=float, metavar="X", help="sampling temperature (default 1.0)")
    a(
        "--rollout-engine",
        choices=ENGINES,
        help=ENGINE_HELP + "; default generate",
    )
    add_vllm_arguments(parser)
    a("--lr", type=float, metavar="LR", help="AdamW learning rate (default 5e-7)")
    a("--seed", type=int, metavar="S", help="seed of data order and sampling (default 0)")
    a("--save-every", type=int, metavar="K", help="checkpoint every K steps (default 100; 0 = final only)")
    a("--positions-every", type=int, metavar="K", help="per-position statistics every K steps (default 10)")
    a(
        "--report-to",
        metavar="LIST",
        help="metric destinations: jsonl, tensorboard, wandb (default jsonl,tensorboard)",
    )
    a(
        "--keep-last",
        type=int,
        metavar="K",
        help="checkpoints kept, older removed once a newer is complete (default 3; 0 = all)",
    )
    a("--max-skipped-steps", type=int, metavar="N",
      help="stop after N consecutive steps with a NaN/inf loss or gradient norm, each skipped (default 3)")  # fmt: skip
    a("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    a("--device", choices=DEVICES, help="student device (default cuda where a GPU is visible, else cpu)")
    a("--teacher-device", metavar="DEV", help="teacher device, e.g. cuda:1 (default: the student's)")
    a(
        "--lora-rank",
        type=int,
        metavar="R",
        help="train a LoRA adapter of rank R through peft (default 0: all weights)",
    )
    a("--lora-alpha", type=float, metavar="A", help="LoRA scaling alpha (default: the rank)")
    a("--lora-dropout", type=float, metavar="D", help="LoRA dropout (default 0)")
    a("--lora-target-modules", metavar="LIST", help="peft target modules (default all-linear)")
    a(
        "--merge-lora",
        action="store_true",
        default=None,
        help="also write final-merged/, the adapter merged in",
    )
    a("--fsdp", action="store_true", default=None,
      help="shard the student and teacher over the processes with FSDP2 (2+ processes: accelerate launch)")  # fmt: skip
    a("--gradient-checkpointing", action="store_true", default=None,
      help="recompute the student's decoder layers in the backward pass (less memory, ~1 more forward)")  # fmt: skip
    a("--trust-remote-code", action="store_true", default=None,
      help="run Python code shipped with a model (transformers' trust_remote_code; off by default)")  # fmt: skip
    a("--dtype", choices=DTYPES, help="compute dtype (default float32)")
    a("--eval-every", type=int, metavar="K", help="evaluate every K steps (default 0 = never)")
    a("--eval-benchmarks", metavar="LIST", help="benchmarks for --eval-every (default gsm8k)")
    a("--eval-data-dir", metavar="DIR", help="folder of benchmark JSONL files (default: the HF hub)")
    a("--eval-limit", type=int, metavar="K", help="problems per benchmark (default 50)")
    a("--eval-n", type=int, metavar="N", help="samples per problem (default 4)")
    a("--eval-max-new-tokens", type=int, metavar="T", help="longest evaluation response (default 1024)")
    a("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    """Preset (if any) overlaid with the flags that were given, validated."""
    from ..config import TrainConfig, read_preset

    sections = read_preset(args.config) if args.config else {}
    source = f"--config {args.config}" if args.config else "flags"
    # Preset keys are checked before flags fill in required fields, so a typo is named as the preset's.
    for dest, (section, key) in FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
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

    from ..faults import Interrupted
    from ..train import train

    config = build_config(args)
    try:
        final = train(config, progress=not args.no_progress, resume=args.resume)
    except Interrupted as stop:  # SIGTERM / Ctrl-C: a checkpoint of the last step is on disk
        sys.stderr.write(f"poweropd train: {stop}\n")
        return 128 + stop.signum
    if os.environ.get("RANK", "0") == "0":  # once, not once per process of a multi-process run
        print(f"trained student: {final}")
    return 0
