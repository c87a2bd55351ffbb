"""Reward statistics of a student/teacher pair before training: how heavy is the log ratio's negative tail,
where does it sit, and what do bounded rewards make of the same tokens?

Samples student rollouts exactly as training does, scores every token with both models and writes
summary.json (statistics of the log ratio, power@α, clip, tanh and zscore rewards; per position bucket;
the most negative tokens), histogram.png, positions.png, surface.png and a short report.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        alphas = []
    if not alphas or any(not a > 0 for a in alphas):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive numbers like '0.1,1,10', got '{text}'"
        )
    return sorted(set(alphas))


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got '{text}'")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config.flags import add_field
    from ..config.sections import ModelConfig, RolloutConfig, RunConfig
    from ..models.hf import DTYPES as LOAD_DTYPES
    from .shared import add_vllm_arguments

    parser.add_argument("--teacher", required=True, help="hub id, local folder or alias of the teacher")
    parser.add_argument("--student", required=True, help="hub id, local folder or alias of the student")
    parser.add_argument("--data", required=True, type=Path, help="JSONL of prompts with a 'problem' field")
    parser.add_argument("--num-prompts", type=_positive_int, default=32, help="first N rows of --data (32)")
    parser.add_argument("--samples-per-prompt", type=_positive_int, default=1, help="rollouts per prompt (1)")
    # the training fields these flags stand for, with the short defaults of a diagnosis
    add_field(parser, RolloutConfig, "max_new_tokens", default=128, shown=128, type=_positive_int)
    add_field(parser, RolloutConfig, "temperature", default=1.0, type=_temperature)
    add_field(parser, ModelConfig, "teacher_temperature", default=1.0, shown=1.0, type=_temperature)
    parser.add_argument(
        "--alphas", type=_alphas, default=[0.1, 1.0, 10.0, 100.0], help="power-reward α values (0.1,1,10,100)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="rollouts sampled at once (8)")
    add_field(parser, RunConfig, "seed", default=0)
    add_field(parser, ModelConfig, "trust_remote_code", default=False)
    add_field(parser, RolloutConfig, "engine", default="generate")
    add_vllm_arguments(parser)
    # any torch device (cuda:1), for both models; float16 too: the models are only scored, never trained
    add_field(parser, ModelConfig, "device", default="cpu", shown="cpu", choices=None, metavar="DEV")
    parser.add_argument("--dtype", default="float32", choices=tuple(LOAD_DTYPES), help="dtype of both models")
    parser.add_argument(
        "--output-dir", required=True, type=Path, help="folder for summary.json, report, figures"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import diagnostics as D
    from ..data import read_jsonl
    from ..errors import UserError
    from ..models.hf import check_pair, load_causal_lm, load_tokenizer
    from ..plots import diagnose as plots
    from .shared import vllm_options

    vllm = vllm_options(args)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UserError(f"--output-dir {args.output_dir}: expected a folder, found a file")
    problems = [row["problem"] for row in read_jsonl(args.data)][: args.num_prompts]
    remote = {"trust_remote_code": args.trust_remote_code}
    teacher_tok = load_tokenizer(args.teacher, what="--teacher", **remote)
    student_tok = load_tokenizer(args.student, what="--student", **remote)
    check_pair(student_tok, teacher_tok, student=args.student, teacher=args.teacher)
    teacher = load_causal_lm(args.teacher, dtype=args.dtype, device=args.device, what="--teacher", **remote)
    student = load_causal_lm(args.student, dtype=args.dtype, device=args.device, what="--student", **remote)

    torch.manual_seed(args.seed)
    scored = D.sample_and_score(
        student,
        teacher,
        student_tok,
        problems,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        samples_per_prompt=args.samples_per_prompt,
        batch_size=args.batch_size,
        engine=args.rollout_engine,
        vllm=vllm,
        teacher_temperature=args.teacher_temperature,
    )
    summary = build_summary(scored, student_tok, args, num_prompts=len(problems))

    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    plots.reward_histogram(summary["histograms"], args.output_dir / "histogram.png")
    plots.position_figure(summary["positions"], args.output_dir / "positions.png")
    plots.reward_surface_figure(args.alphas, args.output_dir / "surface.png")
    report = plots.diagnose_report(summary)
    (args.output_dir / "report.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


def build_summary(scored, tokenizer, args: argparse.Namespace, *, num_prompts: int) -> dict:
    """summary.json: meta, per-reward statistics, early-position share, position buckets, histograms,
    the most negative tokens."""
    from .. import diagnostics as D

    mask_BT = scored.mask_BT
    rewards_BT = D.reward_values(scored.teacher_logp_BT, scored.student_logp_BT, mask_BT, args.alphas,
                                 kl_BT=scored.kl_BT)  # fmt: skip
    log_ratio_BT = rewards_BT["log_ratio"]
    lengths_B = scored.response_lengths_B.double()
    most_negative = D.most_negative(log_ratio_BT, mask_BT, k=10)
    for row in most_negative:
        ids = scored.response_ids_BT[row["row"]].tolist()
        row["token_id"] = ids[row["position"]]
        row["text"] = tokenizer.decode([row["token_id"]])
        row["context"] = tokenizer.decode(ids[max(0, row["position"] - 8) : row["position"]])
        row["prompt_index"] = int(scored.prompt_index_B[row["row"]])
    return {
        "meta": {
            "teacher": args.teacher,
            "student": args.student,
            "data": str(args.data),
            "num_prompts": num_prompts,
            "samples_per_prompt": args.samples_per_prompt,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "seed": args.seed,
            "alphas": args.alphas,
            "num_rollouts": int(lengths_B.numel()),
            "num_tokens": int(mask_BT.sum()),
            "response_length": {
                "mean": float(lengths_B.mean()),
                "min": int(lengths_B.min()),
                "max": int(lengths_B.max()),
            },
            "truncated_fraction": float(scored.truncated_B.double().mean()),
        },
        "rewards": {
            name: D.summary_stats(r_BT[mask_BT], D.LOG_RATIO_THRESHOLDS if name == "log_ratio" else ())
            for name, r_BT in rewards_BT.items()
        },
        "early_positions": D.early_share(log_ratio_BT, mask_BT),
        "positions": {name: D.position_stats(r_BT, mask_BT) for name, r_BT in rewards_BT.items()},
        "histograms": {
            name: D.histogram(r_BT[mask_BT], value_range=None if name.startswith("log_ratio") else (-1.0, 1.0))
            for name, r_BT in rewards_BT.items()
            if name == "log_ratio" or name.startswith("power@")
        },
        "most_negative": most_negative,
    }
