"""Command-line flags read from the config dataclasses: one source per fact (issue #24, point 4).

Each field of a config section (config/sections.py) is a flag: its name is the field's with dashes (``--max-steps``)
unless the field's metadata says ``flag``; its help is the field's docstring (the string literal under it,
read from the class source) and its default as computed from the field, never copied; its choices are the
registry the field is validated against (metadata ``choices``, a tuple or a function returning one). The same
metadata names the flag in validation messages (``where``) and carries a field's traits (``resumable``).

Traits (``dataclasses.field(metadata=...)``, written with ``arg``):
  flag        the flag's name when it is not the field's (``--reward`` for reward.name)
  usage       how messages show the flag when it takes a special form (``--teacher NAME=SPEC``)
  choices     the allowed values, or a function returning them (read when the parser is built)
  more        a function returning text appended to the help (the rewards' citations)
  metavar     the value's placeholder in ``--help``
  special     the command declares the flag itself (``--teacher`` appends, ``--alpha-schedule`` is A0:A1)
  resumable   ``--resume`` may change the field (run/rundir.py refuses any other change)
  train_only  eval section: only a training run reads it, so ``poweropd eval`` has no flag for it
  train       eval section: False when ``poweropd train`` has no ``--eval-*`` flag for it

The eval section is both ``poweropd eval`` (flags named after the fields) and the ``eval`` section of a run
(the same flags with ``--eval-`` in front), so its messages name both.

Why our own reader rather than tyro: the CLI keeps argparse's one-line errors with exit code 2 (cli._Parser),
flags that predate this reader keep their names and special forms, and one section (eval) is read by two
commands under two prefixes with two sets of defaults; each of those is an override in tyro, a few lines here.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

from ..errors import require

_EVAL_PREFIX = "eval-"


def arg(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **traits: Any):
    """A dataclass field with traits (see the module docstring)."""
    return dataclasses.field(default=default, default_factory=factory, metadata=traits)


@functools.cache
def docstrings(cls: type) -> dict[str, str]:
    """{field: its docstring} for every field of ``cls`` followed by a string literal."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def section_of(cls: type) -> str:
    """The section a config class is: ModelConfig -> "model" (config.sections.SECTIONS keys them the same)."""
    return cls.__name__.removesuffix("Config").lower()


def flag_name(cls: type, name: str, prefix: str = "") -> str:
    """The flag of a field: metadata ``flag`` or the field's name with dashes; ``prefix`` after the dashes."""
    flag = _field(cls, name).metadata.get("flag") or "--" + name.replace("_", "-")
    return "--" + prefix + flag[2:]


def field_flags(cls: type, name: str) -> tuple[str, ...]:
    """Every flag that sets the field, in every command (the eval section: ``poweropd eval``'s, then train's)."""
    traits = _field(cls, name).metadata
    if "usage" in traits:
        return (traits["usage"],)
    if section_of(cls) != "eval":
        return (flag_name(cls, name),)
    own = () if traits.get("train_only") else (flag_name(cls, name),)
    return own + ((flag_name(cls, name, _EVAL_PREFIX),) if traits.get("train", True) else ())


def where(obj: Any, *names: str) -> str:
    """How messages name fields: ``model.dtype (--dtype)``, ``reward.clip_low/clip_high (--clip-low/--clip-high)``."""
    cls = obj if isinstance(obj, type) else type(obj)
    flags = "/".join(", ".join(field_flags(cls, name)) for name in names)
    return f"{section_of(cls)}.{'/'.join(names)} ({flags})"


def choices(cls: type, name: str) -> tuple | None:
    found = _field(cls, name).metadata.get("choices")
    return tuple(found()) if callable(found) else found


def check_choice(obj: Any, name: str) -> None:
    """The field's value is one of its choices; the message lists them."""
    allowed = choices(type(obj), name)
    value = getattr(obj, name)
    require(value in allowed, where(obj, name), f"one of {', '.join(allowed)}", value)


def default_of(cls: type, name: str) -> Any:
    f = _field(cls, name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _shown(value: Any) -> str | None:
    if value is None or value == "":
        return None  # the docstring says what None (or a required field's "") stands for
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


_TYPES = {"int": int, "float": float}
_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "tuple[str, ...]": "LIST"}


def add_field(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    name: str,
    *,
    prefix: str = "",
    default: Any = None,
    shown: Any = dataclasses.MISSING,
    **overrides: Any,
) -> str:
    """Declare the field's flag; returns its dest. ``default`` is argparse's (None: a flag not given leaves
    the preset or the field default); ``shown`` the default that ``--help`` names (the field's unless given);
    ``overrides`` replace argparse keywords where a command means something wider (prune's float16)."""
    f = _field(cls, name)
    flag = flag_name(cls, name, prefix)
    kind = f.type.replace(" | None", "")
    shown_value = _shown(default_of(cls, name) if shown is dataclasses.MISSING else shown)
    text = docstrings(cls).get(name, "")
    if "more" in f.metadata:
        text += " " + f.metadata["more"]()
    if shown_value is not None:
        text += f" (default {shown_value})"
    options: dict[str, Any] = {"default": default, "help": text.strip().replace("%", "%%")}
    if kind == "bool":
        action = argparse.BooleanOptionalAction if "None" in f.type else "store_true"
        options["action"] = action
    else:
        options["type"] = _TYPES.get(kind, str)
        found = choices(cls, name)
        if found is not None:
            options["choices"] = found
        else:
            options["metavar"] = f.metadata.get("metavar", _METAVARS.get(kind, "V"))
    options.update(overrides)
    return parser.add_argument(flag, **options).dest


def add_section(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    preset: Any = None,
) -> dict[str, tuple[str, str]]:
    """Every field of ``cls`` not ``special``/skipped as a flag; returns {dest: (section, field)}. With
    ``preset`` (an instance) its values are the argparse defaults and what ``--help`` names."""
    section = section_of(cls)
    dests = {}
    for f in dataclasses.fields(cls):
        traits = f.metadata
        if f.name in skip or traits.get("special") or (prefix and traits.get("train") is False):
            continue
        if section == "eval" and not prefix and traits.get("train_only"):
            continue
        if preset is None:
            dest = add_field(parser, cls, f.name, prefix=prefix)
        else:
            value = getattr(preset, f.name)
            dest = add_field(parser, cls, f.name, prefix=prefix, default=value, shown=value)
        dests[dest] = (section, f.name)
    return dests


def add_reward_hparams(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, reward_cls: type
) -> dict[str, tuple[str, str]]:
    """A flag per reward hyperparameter of the registry (rewards.HParam: ``--clip-low``), read when the parser
    is built so that a registered reward's own hyperparameter is a flag too; its help names each reward's range.
    Returns {dest: ("reward", key)}, key ``extra.NAME`` where ``reward_cls`` (RewardConfig) has no field NAME."""
    from ..objectives.rewards import REWARDS

    by_field: dict[str, list] = {}
    for record in REWARDS.values():
        for hp in record.settings.values():
            by_field.setdefault(hp.field, []).append((record.name, hp))
    dests = {}
    for name, uses in by_field.items():
        ranges = "; ".join(f"{reward}: {hp.expected()}" for reward, hp in uses)
        text = f"{uses[0][1].doc} ({ranges}; default {_shown(uses[0][1].default)})"
        flag = "--" + name.replace("_", "-")
        dest = parser.add_argument(flag, type=float, metavar="X", help=text.replace("%", "%%")).dest
        dests[dest] = ("reward", name if name in reward_cls.__dataclass_fields__ else f"extra.{name}")
    return dests


def resumable_changes(sections: dict[str, type]) -> dict[str, set[str]]:
    """{section: fields that ``--resume`` may change}, from the fields' ``resumable`` trait."""
    found = {
        section: {f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable")}
        for section, cls in sections.items()
    }
    return {section: names for section, names in found.items() if names}
