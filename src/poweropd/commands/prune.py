"""Depth-pruned copy of a causal LM: keep some decoder layers, renumber them, save model + tokenizer.

Example: `poweropd prune --model smollm2-135m-instruct --keep-layers 0-7 --output-dir students/smol8`.
The result loads with `from_pretrained` and serves as a (degenerate, unhealed) student.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config.flags import add_field
    from ..config.sections import ModelConfig
    from ..models.hf import DTYPES as LOAD_DTYPES

    parser.add_argument("--model", required=True, help="hub id, local folder or alias of the model to prune")
    parser.add_argument(
        "--keep-layers",
        required=True,
        metavar="SPEC",
        help="decoder layers to keep, in increasing order: '0-7', '0,3,6,9' or '0-3,8'",
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="folder to write the pruned model to")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=tuple(LOAD_DTYPES),
        help="dtype of the saved weights (default float32)",
    )
    add_field(parser, ModelConfig, "trust_remote_code", default=False)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..fsutil import atomic_folder
    from ..models.hf import load_causal_lm, load_tokenizer, save_model
    from ..models.prune import parse_layer_spec, prune_layers

    if args.output_dir.exists() and (not args.output_dir.is_dir() or any(args.output_dir.iterdir())):
        raise UserError(f"--output-dir {args.output_dir}: already exists (expected a new or empty folder)")
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_causal_lm(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    num_layers = model.config.num_hidden_layers
    keep = parse_layer_spec(args.keep_layers, num_layers)
    pruned = prune_layers(model, keep)
    del model
    if args.output_dir.exists():
        args.output_dir.rmdir()  # empty (checked above): atomic_folder renames a finished folder into place
    atomic_folder(args.output_dir, functools.partial(save_model, pruned, tokenizer))
    params = sum(p.numel() for p in pruned.parameters())
    print(f"kept layers {keep} of {num_layers} ({params / 1e6:.1f}M parameters) -> {args.output_dir}")
    return 0
