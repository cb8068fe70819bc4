"""``posenc reproduce EXPERIMENT_DIR``: every finished run in a folder reproduced, ``--jobs``
at a time, each by its own ``posenc reproduce RUN_DIR`` process, then one table."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from posenc.cli.common import fail


def reproduce_all(root: Path, into: str | None, runs_root: str, jobs: int) -> int:
    """Every run under ``root`` (`posenc.run.reproduce.runs_under`), checked before any
    trains (bad input: exit 2), each into ``INTO/<its path under root>`` or its default
    folder. Returns the exit status: 0 if every run reproduced bit for bit, 1 if not. A
    SIGINT or SIGTERM stops every reproduction at its next step with its checkpoint saved
    (each is sent SIGTERM: a second SIGINT would stop it at once, saving nothing), and the
    same command resumes them."""
    from posenc.errors import PosencError
    from posenc.run import reproduce as rp
    from posenc.run.signals import noted_signals
    from posenc.run.spec import FOREIGN, differences, run_status

    runs = rp.runs_under(root)
    if not runs:
        fail(f"{root} holds no finished run (a folder with config.yaml and metrics.json)")
    plans = []
    try:
        for run in runs:
            source = rp.source_run(run)
            folder = Path(into) / run.relative_to(root) if into else None
            folder = folder or rp.default_folder(source, runs_root)
            cfg = rp.reproduction(source, folder, runs_root, progress=False)
            if run_status(folder, cfg) == FOREIGN:
                fail(f"{folder} holds another run ({differences(folder, cfg)}); give --into")
            plans.append((run, source, folder))
    except PosencError as exc:
        fail(str(exc))
    folders = [str(folder) for *_, folder in plans]
    if len(set(folders)) < len(folders):
        twice = sorted({f for f in folders if folders.count(f) > 1})[0]
        fail(f"two runs under {root} reproduce into {twice}; give --into DIR")
    print(f"{len(plans)} runs under {root}, {jobs} at a time")
    with tempfile.TemporaryDirectory() as logs, noted_signals() as requested:
        exits = _run_all(plans, runs_root, jobs, Path(logs), requested)
    if exits is None:
        stopped = requested[0]
        fail(
            "interrupted; finished reproductions are kept and checkpoints saved: run the "
            "same command again to resume",
            128 + stopped,
        )
    return _summary(root, plans, exits)


def _run_all(plans, runs_root: str, jobs: int, logs: Path, requested: list[int]):
    """{run: (exit status, last line of its stderr)}, or None once a stop signal came."""
    pending, running, exits = list(plans), {}, {}
    while pending or running:
        if requested:
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            for proc in running:
                proc.wait()
            return None
        while pending and len(running) < jobs:
            run, _, folder = pending.pop(0)
            log = logs / f"{len(exits) + len(running)}.log"
            command = [sys.executable, "-m", "posenc.cli", "reproduce", str(run), "--into",
                       str(folder), "--runs-root", str(runs_root), "--no-progress"]  # fmt: skip
            with log.open("w") as out:
                running[subprocess.Popen(command, stdout=out, stderr=out)] = (run, log)
        for proc in [p for p in running if p.poll() is not None]:
            run, log = running.pop(proc)
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            exits[run] = (proc.returncode, lines[-1] if lines else "")
            print(f"[{len(exits)}/{len(plans)}] {run}: " + _said(proc.returncode, lines))
        time.sleep(0.2)
    return exits


def _said(code: int, lines: list[str]) -> str:
    if code in (0, 1):  # the verdict is the line before the machines line
        verdict = [line for line in lines if "reproduced bit for bit" in line]
        return verdict[-1] if verdict else f"exit {code}"
    return f"failed (exit {code}): {lines[-1] if lines else 'no output'}"


def _summary(root: Path, plans, exits) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from posenc.report.records import read_metrics
    from posenc.run import reproduce as rp
    from posenc.runfolder import METRICS

    table = Table(title=f"reproductions of {root}")
    for column in ("run", "result", "test examples differing", "final loss: run", "here"):
        justify = "left" if column in ("run", "result") else "right"
        table.add_column(column, justify=justify, overflow="fold")  # names and losses whole
    same = 0
    for run, source, folder in plans:
        code, last = exits[run]
        name = escape(str(run.relative_to(root)) or ".")
        if code not in (0, 1):
            table.add_row(name, f"[bold red]failed (exit {code})[/]", "", "", escape(last))
            continue
        here = read_metrics(Path(folder) / METRICS)
        c = rp.compare_runs(source.metrics, here)
        same += c.same
        result = "bit for bit" if c.same else "[bold red]differs[/]"
        loss_there = (source.metrics.get("train") or {}).get("final_loss")
        loss_here = (here.get("train") or {}).get("final_loss")
        table.add_row(
            name, result, f"{c.differing_examples:,} of {c.examples:,}",
            repr(loss_there), repr(loss_here),
        )  # fmt: skip
    Console(highlight=False).print(table)
    print(f"{same} of {len(plans)} runs reproduced bit for bit")
    return 0 if same == len(plans) else 1
