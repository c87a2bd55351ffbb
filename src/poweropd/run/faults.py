"""What a run does when something goes wrong: a stop signal, a non-finite step, a kill (docs/reliability.md).

- ``StopOnSignal``: SIGTERM and SIGINT (Ctrl-C) set a flag that the loop reads at the end of a step; the run then
  writes a checkpoint of that step and raises ``Interrupted`` (the CLI says where it stopped and how to resume,
  and exits with 128 + the signal number). A second signal interrupts at once.
- ``NonFiniteGuard``: a step whose loss or gradient norm is NaN or ±inf is skipped (no optimizer step, so the
  weights and AdamW state stay as they were); after ``max_consecutive`` such steps in a row the run stops.
- ``kill_point``: a test hook; with ``POWEROPD_KILL_AT=<point>:<step>`` the process SIGKILLs itself there, so
  tests/test_faults.py can kill a run at exact moments and check that ``--resume`` is bit-exact.
"""

from __future__ import annotations

import math
import os
import signal
import threading

from ..errors import UserError

KILL_ENV = "POWEROPD_KILL_AT"
KILL_POINTS = ("sample", "update", "logged", "checkpoint", "step_end")
"""Where ``kill_point`` is called: while sampling, after the gradients and before the optimizer step, after the
metrics row is written, halfway through writing a checkpoint (weights written, state.json not), between steps."""


def kill_point(name: str, step: int) -> None:
    if os.environ.get(KILL_ENV) == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint of its last complete step."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}; "
            "continue with the same command and --resume"
        )


class StopOnSignal:
    """SIGTERM / SIGINT → ``requested``; installed only on the main thread (signal handlers live there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class NonFiniteGuard:
    """Counts skipped steps; ``check`` says whether a step may update the weights."""

    def __init__(self, max_consecutive: int, skipped: int = 0, consecutive: int = 0):
        self.max_consecutive, self.skipped, self.consecutive = max_consecutive, skipped, consecutive

    def check(self, loss: float, grad_norm: float) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        return False

    def raise_if_stuck(self, step: int, last_checkpoint) -> None:
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            where = (
                f"the last checkpoint is {last_checkpoint}"
                if last_checkpoint
                else "no checkpoint was written"
            )
            raise UserError(
                f"step {step}: the loss or gradient norm was NaN or inf for {self.consecutive} steps in a row "
                f"(--max-skipped-steps {self.max_consecutive}), so none of them updated the student; {where}"
            )

    def state(self) -> dict:
        return {"skipped_steps": self.skipped, "consecutive_skipped_steps": self.consecutive}
