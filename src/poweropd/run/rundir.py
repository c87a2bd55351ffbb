"""The run directory: config.yaml, metrics.jsonl, positions.jsonl, TensorBoard, checkpoints and resume.

Layout of ``DIR``::

    config.yaml              the resolved configuration
    metrics.jsonl            one JSON object per optimizer step
    positions.jsonl          reward / log-ratio statistics per position bucket, every K steps
    tb/                      the same scalars for TensorBoard
    checkpoints/step-N/      student (safetensors) + tokenizer + optimizer.pt, scheduler.pt, rng.pt, state.json
    checkpoints.jsonl        one row per checkpoint written: its size on disk and the older ones removed
    final/                   the trained student (save_pretrained) and its tokenizer

Checkpoints are written to a temporary sibling folder and renamed, so a run killed mid-save leaves no half
checkpoint (a leftover temporary folder is removed on resume; a checkpoint without state.json is never loaded).
Only the last ``keep_last`` checkpoints are kept, older ones removed after the new one is complete. The
``.pt`` files hold only tensors and plain containers and are read with ``torch.load(weights_only=True)``.
Only the main process writes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.sections import RESUMABLE_CHANGES, TrainConfig, write_yaml
from ..errors import UserError
from ..fsutil import atomic_folder
from ..models.hf import save_model
from .faults import kill_point
from .trackers import make_trackers, missing_package


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
        self._trackers = []

    # -- setup ---------------------------------------------------------------------------------------
    def open(self, config: TrainConfig, *, resume: bool) -> Path | None:
        """Check the folder against the run (``check``; writes nothing); the checkpoint to resume from, if any."""
        self.check(config, resume=resume)
        return self.latest_checkpoint() if resume else None

    def start(self, config: TrainConfig, start_step: int) -> None:
        """Create the folder and its trackers, write config.yaml, drop log rows after ``start_step`` (resume)."""
        self.create(config)
        self.truncate_logs(start_step)

    def check(self, config: TrainConfig, *, resume: bool) -> None:
        """Refuse a file, a new run into an old one, and a resume that would change the run; writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output-dir {self.path}: expected a folder, found a file")
        has_run = (self.path / "metrics.jsonl").exists() or (self.path / "checkpoints").exists()
        if has_run and not resume:
            raise UserError(
                f"--output-dir {self.path}: already holds a run (expected an empty or new folder; "
                "pass --resume to continue it)"
            )
        if resume:
            self._check_resumable(config)
        package = missing_package(config.run.report_to)
        if package:
            raise UserError(f"--report-to {','.join(config.run.report_to)}: needs `pip install {package}`")

    def create(self, config: TrainConfig) -> None:
        """Create the directory (checked writable), drop a killed save's temporary folder, write config.yaml."""
        if self.is_main:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                probe = self.path / ".write-test"
                probe.write_text("")
                probe.unlink()
            except OSError as err:
                raise UserError(
                    f"--output-dir {self.path}: expected a writable folder ({err.strerror})"
                ) from None
            for stale in (self.path / "checkpoints").glob(".step-*"):  # a save that was killed halfway
                shutil.rmtree(stale, ignore_errors=True)
            write_yaml(config, self.path / "config.yaml")
            self._trackers = make_trackers(config.run.report_to, self.path, config.to_dict())

    def _check_resumable(self, config: TrainConfig) -> None:
        if self.latest_checkpoint() is None:
            raise UserError(
                f"--resume: {self.path} has no complete checkpoint (expected checkpoints/step-N/ with state.json); "
                "start again without --resume in a new --output-dir"
            )
        saved_path = self.path / "config.yaml"
        if not saved_path.exists():
            return
        import yaml

        saved, now = yaml.safe_load(saved_path.read_text()) or {}, config.to_dict()
        as_yaml = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 — YAML has no tuples
        for section, fields in now.items():
            for key, value in fields.items():
                value = as_yaml(value)
                old = saved.get(section, {}).get(key, value)
                if old != value and key not in RESUMABLE_CHANGES.get(section, ()):
                    raise UserError(
                        f"--resume: {section}.{key} is {value!r} but the run in {self.path} used {old!r} "
                        "(expected the same setting; start a new --output-dir to change it)"
                    )

    # -- logging -------------------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """One row per step to every ``--report-to`` tracker (trackers.py)."""
        if not self.is_main:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        for tracker in self._trackers:
            tracker.log(step, row)

    def log_positions(self, step: int, buckets: list[dict[str, Any]]) -> None:
        if self.is_main:
            with (self.path / "positions.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "buckets": buckets}) + "\n")

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []

    def truncate_logs(self, after_step: int) -> None:
        """On resume, drop log rows of steps after the checkpoint: they are about to be run again."""
        if not self.is_main:
            return
        for name in ("metrics.jsonl", "positions.jsonl"):
            path = self.path / name
            if path.exists():
                rows = [line for line in path.read_text().splitlines() if _step_of(line) <= after_step]
                tmp = path.with_name(f".{name}.tmp")
                tmp.write_text("".join(r + "\n" for r in rows))
                os.replace(tmp, path)  # a kill here leaves the old file or the new one, never half of it

    # -- checkpoints ---------------------------------------------------------------------------------
    def _complete_checkpoints(self) -> list[tuple[int, Path]]:
        return [
            (int(p.name.removeprefix("step-")), p)
            for p in (self.path / "checkpoints").glob("step-*")
            if p.is_dir() and p.name.removeprefix("step-").isdigit() and (p / "state.json").exists()
        ]

    def latest_checkpoint(self) -> Path | None:
        steps = self._complete_checkpoints()
        return max(steps)[1] if steps else None

    def save_checkpoint(
        self, step: int, model, tokenizer, optimizer, scheduler, state: dict[str, Any], *, keep_last: int = 0,
        weights: dict | None = None, optimizer_state: dict | None = None,
    ) -> Path:  # fmt: skip
        """``weights`` / ``optimizer_state``: the whole state dicts when the model is sharded (training/fsdp.py)."""
        final = self.path / "checkpoints" / f"step-{step}"
        if not self.is_main:
            return final

        def write(tmp: Path) -> None:
            save_model(model, tokenizer, tmp, state_dict=weights)
            torch.save(
                optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt"
            )
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            kill_point("checkpoint", step)
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))

        _written(self.path, final, lambda: atomic_folder(final, write, replace=True))
        removed = self._remove_old_checkpoints(keep_last)
        size_mb = sum(f.stat().st_size for f in final.rglob("*") if f.is_file()) / 2**20
        with (self.path / "checkpoints.jsonl").open("a", encoding="utf-8") as f:
            f.write(
                json.dumps(
                    {"step": step, "path": str(final), "size_mb": round(size_mb, 3), "removed": removed}
                )
                + "\n"
            )
        return final

    def _remove_old_checkpoints(self, keep_last: int) -> list[str]:
        """Every complete checkpoint but the newest ``keep_last`` (0: none removed)."""
        if keep_last == 0:
            return []
        steps = sorted(self._complete_checkpoints())
        removed = []
        for _, path in steps[:-keep_last]:
            shutil.rmtree(path)
            removed.append(path.name)
        return removed

    def save_final(self, model, tokenizer, *, merged: bool = False, weights: dict | None = None) -> Path:
        """``final/`` (the student, or its LoRA adapter) and, with ``merged``, ``final-merged/``."""
        final = self.path / "final"
        if self.is_main and merged:
            from ..models.lora import save_merged

            folder = self.path / "final-merged"
            _written(
                self.path,
                folder,
                lambda: atomic_folder(folder, functools.partial(save_merged, model, tokenizer), replace=True),
            )
        if self.is_main:
            _written(
                self.path,
                final,
                lambda: atomic_folder(
                    final, functools.partial(save_model, model, tokenizer, state_dict=weights), replace=True
                ),
            )
        return final


def _written(run_dir: Path, folder: Path, write) -> None:
    """``write()``, with a failed write (a full disk, a file-size limit; torch.save reports those as a
    RuntimeError) as one line naming the folder. The temporary folder is gone, older checkpoints are intact."""
    try:
        write()
    except OSError as err:
        raise UserError(f"--output-dir {run_dir}: could not write {folder.name} ({err.strerror}: the disk is full "
                        "or not writable); the checkpoints before it are complete") from None  # fmt: skip
    except RuntimeError as err:
        chain = [e for e in (err, err.__context__, err.__cause__) if e is not None]
        writes = [
            e
            for e in chain
            if any(w in str(e) for w in ("iostream", "PytorchStreamWriter", "write", "space"))
        ]
        if not writes:
            raise
        first = str(writes[0]).strip().splitlines()[0]
        raise UserError(f"--output-dir {run_dir}: could not write {folder.name} ({first}: is the disk full?); "
                        "the checkpoints before it are complete") from None  # fmt: skip


def _step_of(line: str) -> float:
    """The step of a log row; a row cut short by a kill counts as after every step (it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def rng_state() -> dict[str, Any]:
    """Every RNG as tensors and plain values (what ``torch.load(weights_only=True)`` accepts)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(checkpoint: Path, optimizer, scheduler, load_optimizer=None) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG from a checkpoint; returns its state.json.

    ``load_optimizer(optimizer, state)``: how a sharded run loads its optimizer state (training/fsdp.py).

    Only tensors and plain containers are unpickled (``weights_only=True``); a file that is missing, cut
    short or not ours is a one-line error naming it.
    """

    def load(name: str):
        try:
            return torch.load(checkpoint / name, weights_only=True)
        except Exception as err:  # noqa: BLE001 — truncated zip, foreign pickle, missing file: all the same to the user
            raise UserError(
                f"--resume: {checkpoint / name}: expected a checkpoint file written by poweropd train "
                f"({type(err).__name__}); remove {checkpoint} to resume from the checkpoint before it"
            ) from None

    try:
        (load_optimizer or type(optimizer).load_state_dict)(optimizer, load("optimizer.pt"))
        scheduler.load_state_dict(load("scheduler.pt"))
    except UserError:
        raise
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(
            f"--resume: {checkpoint}: optimizer state does not fit this student ({err})"
        ) from None
    set_rng_state(load("rng.pt"))
    return json.loads((checkpoint / "state.json").read_text())


def check_same_teachers(checkpoint: Path, identities: dict[str, str], specs: dict[str, str]) -> None:
    """``--resume`` keeps the run's teachers: the same names and models (a served teacher is its model id, so a new
    URL for the same model is accepted); else one line. A checkpoint written before teachers were recorded is
    compared by its config.yaml's teacher spec instead."""
    saved = json.loads((Path(checkpoint) / "state.json").read_text()).get("teachers")
    if saved is None:
        import yaml

        config = Path(checkpoint).parents[1] / "config.yaml"
        model = (yaml.safe_load(config.read_text()) or {}).get("model", {}) if config.exists() else {}
        saved = dict(t.split("=", 1) for t in model.get("teachers") or []) or {"": model.get("teacher", "")}
        identities = specs
    if saved != identities:
        show = lambda d: ", ".join(f"{k or 'teacher'}: {v}" for k, v in sorted(d.items()))  # noqa: E731
        raise UserError(f"--resume: the teachers are {show(identities)} but the run in {Path(checkpoint).parents[1]} "
                        f"used {show(saved)} (expected the same names and models; a served teacher may change URL)")  # fmt: skip
