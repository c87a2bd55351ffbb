"""Where a run's metrics go (``--report-to``): one small class per destination, the same row for each.

- ``jsonl``: ``DIR/metrics.jsonl``, one JSON object per step (what ``poweropd plot`` and the demo read);
- ``tensorboard``: ``DIR/tb/`` through torch's SummaryWriter;
- ``wandb``: Weights & Biases (``pip install wandb``; project ``$WANDB_PROJECT`` or ``poweropd``; offline with
  ``WANDB_MODE=offline``). The resolved config is logged once, at ``wandb.init``; the run id is kept in
  ``DIR/wandb_id`` so that ``--resume`` continues the same wandb run.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, step: int, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: v for k, v in row.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class JsonlTracker:
    def __init__(self, run_dir: Path, config: dict):
        self.path = run_dir / "metrics.jsonl"

    def log(self, step: int, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, step: int, row: dict[str, Any]) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = (
            id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        )  # [a-z0-9], as wandb wants
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "poweropd"), name=run_dir.name, id=run_id, resume="allow",
            dir=str(run_dir), config=config,
        )  # fmt: skip

    def log(self, step: int, row: dict[str, Any]) -> None:
        self.run.log(_scalars(row), step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"jsonl": JsonlTracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}
NEEDS = {"wandb": "wandb"}
"""The package each optional tracker imports."""


def missing_package(names: tuple[str, ...]) -> str | None:
    """The first package a chosen tracker needs and this environment lacks."""
    import importlib.util

    for name in names:
        package = NEEDS.get(name)
        if package and importlib.util.find_spec(package) is None:
            return package
    return None


def make_trackers(names: tuple[str, ...], run_dir: Path, config: dict) -> list[Tracker]:
    return [TRACKERS[name](run_dir, config) for name in names]
