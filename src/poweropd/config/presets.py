"""YAML presets (configs/*.yaml) and the resolved config.yaml of a run: read, type-checked, written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


def has_type(value, annotation: str) -> bool:
    """Whether a preset value fits a field's annotation (the scalar ones; containers are checked later)."""
    scalars = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    options = [a.strip() for a in annotation.split("|")]
    if value is None:
        return "None" in options
    if not all(o in scalars or o == "None" for o in options):
        return True
    ok = tuple(t for o in options if o in scalars for t in scalars[o])
    return isinstance(value, ok) and (bool in ok or not isinstance(value, bool))


def read_preset(path: str | Path) -> dict[str, dict[str, Any]]:
    """The sections of a YAML preset, unvalidated (flags may still fill required fields)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found (expected a YAML preset, see configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: expected valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(
            f"--config {path}: expected a mapping of sections (model, rollout, reward, optim, eval, run)"
        )
    return data


def write_yaml(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
