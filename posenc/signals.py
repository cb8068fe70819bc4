"""Stop a run cleanly on SIGTERM, SIGUSR1 or SIGUSR2: checkpoint at the next step boundary.

SIGTERM is what ``kill`` sends by default and what Slurm sends at a job's time limit or on
pre-emption; SIGUSR1/SIGUSR2 are the warnings Slurm can be asked to send ahead of it
(``--signal=USR1@90``; submitit asks for USR2). The handler only notes the signal; the
training loop saves a checkpoint at the next step boundary and then calls `StopSignals.stop`,
which hands the signal to the handler that was installed before ours (submitit's requeues
the job, which then resumes from that checkpoint) or raises `RunStopped`. The command exits
with 128 + the signal number, as a shell reports a process killed by it: 143 for SIGTERM,
138 for SIGUSR1, 140 for SIGUSR2 (130 for Ctrl-C).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class RunStopped(BaseException):  # noqa: N818  (like KeyboardInterrupt: not an error)
    """A stop signal arrived; the run's checkpoint is saved."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        self.signum = signum
        self.step = step
        name = signal.Signals(signum).name
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"stopped by {name}; checkpoint saved{at}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """``with StopSignals() as stop:``; ``stop.requested`` is the signal number once one came.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def stop(self, step: int | None = None) -> None:
        """After the checkpoint is saved: pass the signal on to the earlier handler if it is
        a Python function (submitit's checkpoint-and-requeue exits), then raise."""
        signum = self.requested
        assert signum is not None
        previous = self._previous.get(signum)
        self._restore()
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)
        raise RunStopped(signum, step)
