"""Prompt datasets and the prompt template.

``load_problems`` reads the training prompts from a local JSONL file (our own reader: errors name the line), or
through Hugging Face ``datasets`` from a parquet file, a folder written by ``save_to_disk``, or a hub dataset id
such as ``agentica-org/DeepScaleR-Preview-Dataset`` (``--data-split``, ``--data-field``).
"""

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


def load_problems(
    source: str, *, split: str = "train", field: str = "problem", what: str = "--data"
) -> list[str]:
    """The ``field`` strings of a prompt dataset, in order; every failure names the input."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json") or (path.is_file() and path.suffix not in (".parquet", ".arrow")):
        return [row[field] for row in read_jsonl(path, required=(field,), what=what)]
    dataset = _hf_dataset(source, path, split, what)
    if field not in dataset.column_names:
        raise UserError(
            f"{what} {source}: expected a column '{field}' (--data-field), found {', '.join(dataset.column_names)}"
        )
    problems = dataset[field]
    bad = next((i for i, p in enumerate(problems) if not isinstance(p, str) or not p.strip()), None)
    if bad is not None:
        raise UserError(f"{what} {source}: row {bad}: expected a non-empty string in column '{field}'")
    if not problems:
        raise UserError(f"{what} {source}: expected at least one row, split '{split}' is empty")
    return list(problems)


def load_routes(cfg, rows: int) -> list[str]:
    """Each prompt row's teacher name (several teachers): the ``run.teacher_field`` column, every name one of
    ``--teacher NAME=SPEC``; else one line naming the row."""
    names = list(cfg.model.teacher_specs)
    field, source = cfg.run.teacher_field, cfg.run.data
    route = load_problems(source, split=cfg.run.data_split, field=field)
    assert len(route) == rows
    for i, name in enumerate(route):
        if name not in names:
            raise UserError(f"--data {source}: row {i + 1}: {field} '{name}' is not one of the teachers "
                            f"{', '.join(names)} (expected a name given as --teacher NAME=SPEC)")  # fmt: skip
    return route


def _hf_dataset(source: str, path: Path, split: str, what: str):
    """One split through ``datasets``: a parquet file, a ``save_to_disk`` folder, or a hub id."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{what} {source}: reading parquet, dataset folders or hub ids needs `pip install datasets`"
        ) from None

    def pick(splits):
        if split not in splits:
            raise UserError(
                f"{what} {source}: expected a split '{split}' (--data-split), found {', '.join(splits)}"
            )
        return splits[split]

    try:
        if path.suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            return pick(loaded) if isinstance(loaded, datasets.DatasetDict) else loaded
        if path.exists():
            raise UserError(
                f"{what} {source}: expected a JSONL or parquet file, a dataset folder or a hub id"
            )
        return pick(datasets.load_dataset(source))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 — offline, unknown id, gated: one line naming the input
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{what} {source}: could not load it as a Hugging Face dataset ({first[:200]})"
        ) from None


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
