"""Writing folders so that an interrupted run never leaves a half-written one behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_folder(final: Path, write: Callable[[Path], None], *, replace: bool = False) -> Path:
    """Call ``write(tmp)`` on a fresh sibling folder, then rename it to ``final``.

    ``replace=False`` (caches): if another process finished ``final`` first, keep theirs. ``replace=True``
    (checkpoints, the final model): an existing ``final`` is replaced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; caches and run folders may be shared
        if replace:
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same folder first: keep theirs
            if replace or not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
