"""Prompt datasets (JSONL rows with ``problem``) and the prompt template."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import UserError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def read_jsonl(
    path: str | Path,
    *,
    required: tuple[str, ...] = ("problem",),
    what: str = "--data",
    allow_empty: bool = False,
) -> list[dict]:
    """Rows of a JSONL file; each must be a JSON object with the ``required`` string fields.

    Errors name the file and line: ``--data x.jsonl:17: expected a JSON object ...``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: file not found (expected a JSONL file of prompts)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{what} {path}:{lineno}: expected one JSON object per line ({err.msg})"
                ) from None
            if not isinstance(row, dict):
                raise UserError(f"{what} {path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for field in required:
                if not isinstance(row.get(field), str) or not row[field].strip():
                    raise UserError(f"{what} {path}:{lineno}: expected a non-empty string field '{field}'")
            rows.append(row)
    if not rows and not allow_empty:
        raise UserError(f"{what} {path}: expected at least one row, the file is empty")
    return rows


def render_prompt(tokenizer, problem: str) -> str:
    """The prompt text: the tokenizer's chat template around problem + instruction, or a plain template."""
    user = f"{problem}\n{INSTRUCTION}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {user}\nAnswer:"


def encode_prompts(tokenizer, problems: list[str]) -> list[list[int]]:
    # The template already holds any BOS the model wants; add_special_tokens=False avoids a second one.
    return [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in problems]


@dataclass(frozen=True)
class DataOrder:
    """Which prompts a step uses: a seeded permutation per epoch, indexed by the global sample count.

    Stateless: the prompts of step s depend only on (seed, s), so resuming needs nothing but the step.
    """

    num_prompts: int
    seed: int

    def indices(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
        per_process = batch_size // world_size
        first = (step - 1) * batch_size + rank * per_process
        return [self._index(g) for g in range(first, first + per_process)]

    def _index(self, sample: int) -> int:
        epoch, position = divmod(sample, self.num_prompts)
        return int(self._permutation(epoch)[position])

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few epochs' permutations, tied to this frozen object
    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(
            self.num_prompts, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        )
