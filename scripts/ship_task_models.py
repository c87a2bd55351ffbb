"""Rebuild the task models that ship with the package (src/poweropd/demo/tasks/shipped/) by their recipe.

    .venv/bin/python scripts/ship_task_models.py        # ~6 min on 2 cores

Runs ``prepare_task_models(TaskConfig(), retrain=True)`` in an empty temporary cache (teacher and student SFT
in two processes on the pinned float path), then replaces the shipped folders with the result. Commit the
changed files together with the recipe change that made them; tests/test_tasks.py checks that the recipe
still writes exactly these files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="poweropd-ship-") as cache:
        os.environ["POWEROPD_CACHE"] = cache
        from poweropd.demo.tasks.recipe import META_FILE, ROLES, SHIPPED_DIR, TaskConfig, prepare_task_models

        start = time.perf_counter()
        task = prepare_task_models(TaskConfig(), retrain=True, progress=True)
        for role in ROLES:
            source = getattr(task, f"{role}_dir")
            target = SHIPPED_DIR / role
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            meta = json.loads((target / META_FILE).read_text())
            print(f"{role}: greedy {meta['accuracy']:.3f}, Avg@8 {meta['avg@8']:.3f}, SFT {meta['sft_seconds']:.0f} s"
                  f" -> {target}")  # fmt: skip
        print(f"recipe wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
