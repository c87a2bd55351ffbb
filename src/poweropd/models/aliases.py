"""Offline model aliases: a name that ``--model``/``--student``/``--teacher`` accept in place of a hub id.

A literal table, alias -> ``"module:function"``; the function returns a local Hugging Face folder (creating
it on first use) and is imported only when its alias is used, so that optional readers (gguf) load only then.
"""

from __future__ import annotations

import importlib
from pathlib import Path

ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": "poweropd.models.from_gguf:smollm2_135m_instruct",
}


def alias_folder(name: str) -> Path | None:
    """The local folder of an alias (made on first use), or None when ``name`` is not an alias."""
    if name not in ALIASES:
        return None
    module, _, function = ALIASES[name].partition(":")
    return Path(getattr(importlib.import_module(module), function)())
