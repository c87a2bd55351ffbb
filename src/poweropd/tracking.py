"""The run directory: config.yaml, metrics.jsonl, positions.jsonl, TensorBoard, checkpoints and resume.

Layout of ``DIR``::

    config.yaml              the resolved configuration
    metrics.jsonl            one JSON object per optimizer step
    positions.jsonl          reward / log-ratio statistics per position bucket, every K steps
    tb/                      the same scalars for TensorBoard
    checkpoints/step-N/      student (safetensors) + tokenizer + optimizer.pt, scheduler.pt, rng.pt, state.json
    final/                   the trained student (save_pretrained) and its tokenizer

Checkpoints are written to a temporary sibling folder and renamed, so a run killed mid-save leaves no half checkpoint.
Only the main process writes.
"""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig, write_yaml
from .errors import UserError
from .fsutil import atomic_folder
from .models import save_model


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan; null keeps the file readable by every JSON parser
    return value


class RunDir:
    def __init__(self, path: str | Path, *, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self._tb = None

    # -- setup ---------------------------------------------------------------------------------------
    def prepare(self, config: TrainConfig, *, resume: bool) -> None:
        """Create the directory; refuse to mix a new run into an old one unless resuming."""
        has_run = (self.path / "metrics.jsonl").exists() or (self.path / "checkpoints").exists()
        if has_run and not resume:
            raise UserError(
                f"--output-dir {self.path}: already holds a run (expected an empty or new folder; "
                "pass --resume to continue it)"
            )
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            write_yaml(config, self.path / "config.yaml")

    # -- logging -------------------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        tb = self._writer()
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                tb.add_scalar(key, value, step)
        tb.flush()

    def log_positions(self, step: int, buckets: list[dict[str, Any]]) -> None:
        if self.is_main:
            with (self.path / "positions.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "buckets": buckets}) + "\n")

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def truncate_logs(self, after_step: int) -> None:
        """On resume, drop log rows of steps after the checkpoint: they are about to be run again."""
        if not self.is_main:
            return
        for name in ("metrics.jsonl", "positions.jsonl"):
            path = self.path / name
            if path.exists():
                rows = [
                    line
                    for line in path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= after_step
                ]
                path.write_text("".join(r + "\n" for r in rows))

    # -- checkpoints ---------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        steps = [
            (int(p.name.removeprefix("step-")), p)
            for p in (self.path / "checkpoints").glob("step-*")
            if p.is_dir() and p.name.removeprefix("step-").isdigit() and (p / "state.json").exists()
        ]
        return max(steps)[1] if steps else None

    def save_checkpoint(
        self, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any]
    ) -> Path:
        final = self.path / "checkpoints" / f"step-{step}"
        if not self.is_main:
            return final

        def write(tmp: Path) -> None:
            save_model(model, tokenizer, tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))

        return atomic_folder(final, write, replace=True)

    def save_final(self, model, tokenizer) -> Path:
        final = self.path / "final"
        if self.is_main:
            atomic_folder(final, functools.partial(save_model, model, tokenizer), replace=True)
        return final


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(checkpoint: Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from a checkpoint; returns its state.json."""
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=False))
    return json.loads((checkpoint / "state.json").read_text())
