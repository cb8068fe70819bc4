"""Stop a run cleanly on SIGINT, SIGTERM, SIGUSR1 or SIGUSR2: checkpoint at the next step boundary.

SIGTERM is what ``kill`` sends by default and what Slurm sends at a job's time limit or on
pre-emption; SIGUSR1/SIGUSR2 are the warnings Slurm can be asked to send ahead of it
(``--signal=USR1@90``; submitit asks for USR2). The handler only notes the signal; the
training loop calls `StopSignals.check` at every step boundary, which raises `RunStopped`;
the loop saves its checkpoint as it does for Ctrl-C and calls `StopSignals.pass_on`, which
hands the signal to the handler installed before ours (submitit's checkpoint-and-requeue:
the requeued job resumes from that checkpoint). The command then exits with 128 + the
signal number, as a shell reports a process killed by it: 143 for SIGTERM, 138 for SIGUSR1,
140 for SIGUSR2, 130 for SIGINT. During the final evaluation the handlers are back to what
they were: the last checkpoint is saved by then, so a rerun only evaluates.

Ctrl-C (SIGINT) is treated as SIGTERM is: a KeyboardInterrupt raised wherever the signal
lands could cut a step in half (the batch drawn, the optimizer not stepped), and the
checkpoint saved then resumed to other numbers. A second Ctrl-C before the step boundary
stops at once with `StoppedAtOnce` and saves nothing: the run resumes from the last
checkpoint saved before it. A SIGINT ignored when posenc started (a background job of a
non-interactive shell) stays ignored, as the shell meant.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StoppedAtOnce(KeyboardInterrupt):
    """A second Ctrl-C before the step boundary: stop now, save nothing (mid-step state
    would not resume to the same numbers); the last checkpoint saved stays."""


class RunStopped(BaseException):  # noqa: N818  (like KeyboardInterrupt: not an error)
    """A stop signal arrived; the run saves its checkpoint and stops."""

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
    """``stop = StopSignals().install()``; ``stop.check(step)`` at each step boundary.

    Outside the main thread (where Python cannot install handlers) it installs none. With a
    ``stop_file``, that file appearing counts as a SIGTERM: how ``posenc compare`` stops the
    jobs of its sweep without signalling the worker processes.
    """

    def __init__(self, stop_file: Path | None = None) -> None:
        self.requested: int | None = None
        self.stop_file = stop_file
        self.by_file = False  # the stop came from the file, not a signal: nothing to pass on
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = signum
        elif signum == signal.SIGINT:  # the user insists: stop now
            raise StoppedAtOnce("interrupted again: stopped at once, nothing saved since")

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                if s == signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN:
                    continue
                self._previous[s] = signal.signal(s, self._note)
        return self

    def check(self, step: int | None = None) -> None:
        """Raise `RunStopped` if a stop signal came (or the stop file appeared)."""
        if self.requested is None and self.stop_file is not None and self.stop_file.exists():
            self.requested, self.by_file = signal.SIGTERM, True
        if self.requested is not None:
            raise RunStopped(self.requested, step)

    def restore(self) -> None:
        """Put the earlier handlers back."""
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def pass_on(self) -> None:
        """After the checkpoint is saved: restore the earlier handlers and, if a stop signal
        came and the earlier handler is a Python function (submitit's), call it."""
        previous = self._previous.get(self.requested) if self.requested else None
        if self.by_file:  # no signal came, so no earlier handler is owed one (no requeue)
            previous = None
        self.restore()
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.requested, None)


@contextmanager
def noted_signals() -> Iterator[list[int]]:
    """While the block runs, SIGTERM (kill) and SIGINT (Ctrl-C) only append their number to
    the yielded list, for a loop of the command to act on; the earlier handlers come back
    after. Raising from a handler instead (KeyboardInterrupt) could land inside rich's live
    display while it held its lock, whose exit then waited forever: `posenc compare` hung
    and its sweep trained on. A SIGINT ignored when posenc started (a background job of a
    non-interactive shell) stays ignored, as the shell meant."""
    requested: list[int] = []
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    handlers = {
        s: signal.signal(s, lambda signum, frame: requested.append(signum)) for s in signals
    }
    try:
        yield requested
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
