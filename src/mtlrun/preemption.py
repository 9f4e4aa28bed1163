"""Preemption: turn the signals a scheduler sends before it kills a job into a clean stop.

SLURM sends SIGTERM (and, with `--signal`, SIGUSR1 or SIGUSR2) some time before it kills a
job. A handler only records the signal; the training loop looks at the record at the next
step boundary, saves a checkpoint and stops. A handler that was installed before ours (as
submitit installs one that requeues the job) is called after the checkpoint is safe, so
the job comes back and resumes from it by itself.
"""

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from mtlrun.errors import UserError

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)


class Preempted(UserError):
    """The run saved a checkpoint and stopped because the scheduler asked it to."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class PreemptionWatch:
    """Records the first preemption signal while training runs (a context manager)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionWatch":
        # Signal handlers can only be installed from the main thread; elsewhere (a thread
        # pool launcher) the run simply has no preemption handling.
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def hand_over(self) -> None:
        """Call the handler that was there before ours (e.g. submitit's requeue), if any."""
        if self.signum is None:
            return
        previous: Callable[[int, FrameType | None], Any] | int | None = self._previous.get(
            self.signum
        )
        if callable(previous):
            previous(self.signum, None)

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"
