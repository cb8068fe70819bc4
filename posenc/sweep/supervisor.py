"""The sweep's process, seen from the parent: start ``python -m posenc.sweep --multirun`` with
its output in a log file, report its progress while it runs, and stop it cleanly.

The child runs in its own session, so the sweep and its worker processes are one process
group that the parent stops as a whole, whether the parent got Ctrl-C or a kill (SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from posenc.run.signals import noted_signals
from posenc.sweep.plan import SweepPlan
from posenc.sweep.status import STOPPING, SweepProgress, job_pids, sweep_progress


@dataclass
class Outcome:
    """How the sweep process ended: its exit status, or the signal that stopped it."""

    returncode: int | None
    signum: int | None = None  # SIGINT or SIGTERM: the sweep was stopped, checkpoints saved


def child_command(plan: SweepPlan) -> list[str]:
    # -P: the current folder is not put on the import path, so a sweep started inside a
    # checkout runs the installed posenc (and its workers, which inherit the path), not the
    # checkout's posenc/ folder
    return [sys.executable, "-P", "-m", "posenc.sweep", "--multirun", *plan.overrides]


def child_env() -> dict[str, str]:
    """The environment of the sweep process: this one's (the child imports the installed
    posenc and its plugins, and reads ``POSENC_CONFIG_PATH``, as this process does), with
    OpenMP threads that sleep instead of spin-waiting (parallel jobs collapse otherwise)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(child: subprocess.Popen, sweep_dir: Path, signum: int, grace: float = 60) -> None:
    """Stop the sweep: mark its folder as stopping (`posenc.sweep.status.STOPPING`). Each
    running job sees it at its next step, saves its checkpoint and returns; a job that has
    not started a run starts none; a run already in its final evaluation finishes. Once no
    job is running (or after ``grace`` seconds), the signal goes to the sweep's whole process
    group (the sweep itself, joblib's helpers), and whatever is left is killed.

    No signal goes to the jobs themselves: a worker that dies of one (a SIGTERM outside the
    training loop), or a job that raises, makes joblib abort its pool and kill the workers
    that are still saving. Under load one run of two lost its checkpoint that way."""
    from posenc.io import atomic_write_text

    deadline = time.monotonic() + grace
    atomic_write_text(sweep_dir / STOPPING, f"stopped by {signal.Signals(signum).name}\n")
    while time.monotonic() < deadline and any(map(alive, job_pids(sweep_dir))):
        time.sleep(0.1)
    group = child.pid  # its own session: the group id is its pid
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def watch(
    child: subprocess.Popen,
    plan: SweepPlan,
    requested: list[int],
    on_progress: Callable[[SweepProgress], None],
    interval: float = 0.5,
) -> None:
    """Hand the sweep's progress to ``on_progress`` every ``interval`` seconds until the
    child exits or a stop is ``requested`` (a signal number appended by `noted_signals`)."""
    while True:
        running = child.poll() is None
        on_progress(sweep_progress(plan.sweep_dir, plan.total))
        if not running or requested:
            break
        time.sleep(interval)


def supervise(
    plan: SweepPlan,
    log_path: Path,
    on_progress: Callable[[SweepProgress], None],
    on_stop: Callable[[int], None] = lambda signum: None,
) -> Outcome:
    """Run the sweep to its end, its output appended to ``log_path``. SIGINT (Ctrl-C) and
    SIGTERM stop it (`stop`, after ``on_stop(signum)``), the checkpoints saved."""
    plan.write_specs()
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            child_command(plan),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
        with noted_signals() as requested:  # the watch loop sees one within half a second
            watch(child, plan, requested, on_progress)
            if requested:
                signum = requested[0]
                on_stop(signum)
                stop(child, plan.sweep_dir, signum)
                return Outcome(child.returncode, signum)
    return Outcome(child.returncode)
