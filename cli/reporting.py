"""``posenc report``, ``posenc publish``, ``posenc tables`` and ``posenc tb``: an experiment
folder's report, published copies of it, the docs' tables made from those, TensorBoard."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from posenc.cli.common import fail, warning_line


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``posenc`` app."""
    app.command()(report)
    app.command()(publish)
    app.command()(tables)
    app.command("tb")(tensorboard)


def show_report(exp_dir: Path, baseline: str | None = None) -> set[str]:
    """Aggregate, write and print the report; returns the failed runs it lists."""
    from rich.console import Console

    from posenc.errors import PosencError
    from posenc.report import report_experiment, rich_tables

    try:
        report, written = report_experiment(exp_dir, baseline=baseline)
    except PosencError as exc:
        fail(str(exc))
    out = Console(highlight=False)
    for table in rich_tables(report):
        out.print(table)
    c = report.counts
    out.print(
        f"{len(report.records)} runs: {c['complete']} complete, {c['failed']} failed, "
        f"{c['unfinished']} unfinished"
    )
    for path in written:
        out.print(f"wrote {path}")
    return {r.path for r in report.records if r.status == "failed"}


def report(
    directory: Annotated[Path, typer.Argument(help="An experiment folder, e.g. runs/compare")],
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="An encoding of the experiment: every other one's difference to it in OOD "
            "exact match, with a 95% paired-bootstrap CI over seeds and evaluation examples.",
        ),
    ] = None,
    evaluation: Annotated[
        str | None,
        typer.Option(
            "--evaluation",
            help="Print the tables of the runs' re-evaluation TAG (posenc eval --tag TAG: "
            "eval-TAG.json) instead; writes nothing (posenc publish --evaluation does).",
        ),
    ] = None,
) -> None:
    """Aggregate an experiment folder into results.csv, report.md and plots (also while it runs)."""
    from posenc.report import load_experiment

    if not directory.is_dir():
        fail(f"{directory} is not a folder")
    if evaluation is not None:
        _evaluation_report(directory, evaluation, baseline)
        return
    if not load_experiment(directory):
        fail(f"no runs under {directory} (expected <task>/<encoding>/seed<k>/ folders)")
    show_report(directory, baseline)


def _evaluation_report(directory: Path, tag: str, baseline: str | None) -> None:
    from rich.console import Console

    from posenc.errors import PosencError
    from posenc.publish import evaluation_report
    from posenc.report import rich_tables

    try:
        report = evaluation_report(directory, tag, baseline)
    except PosencError as exc:
        fail(str(exc))
    out = Console(highlight=False)
    for table in rich_tables(report):
        out.print(table)
    out.print(f"{len(report.records)} runs re-evaluated as {tag}")


def publish(
    directory: Annotated[Path, typer.Argument(help="An experiment folder, e.g. runs/compare")],
    dest: Annotated[
        Path, typer.Argument(help="Where to publish it, e.g. docs/experiments/compare")
    ],
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="As for posenc report: differences to this encoding."),
    ] = None,
    evaluation: Annotated[
        str | None,
        typer.Option(
            "--evaluation",
            help="Publish the re-evaluation TAG (posenc eval --tag TAG: eval-TAG.json) as "
            "an experiment of its own instead.",
        ),
    ] = None,
) -> None:
    """Copy an experiment's numbers (each run's metrics.json and config.yaml: no checkpoints,
    logs or events) into DEST and write its report there; posenc report DEST regenerates it."""
    from posenc.errors import PosencError
    from posenc.publish import publish as publish_
    from posenc.publish import publish_evaluation

    try:
        if evaluation is not None:
            done = publish_evaluation(directory, dest, evaluation, baseline)
        else:
            done = publish_(directory, dest, baseline)
    except PosencError as exc:
        fail(str(exc))
    print(
        f"published {done.complete} complete and {done.failed} failed runs of {directory} to "
        f"{dest} ({len(done.files)} files)"
        + (f"; {done.unfinished} unfinished runs left out" if done.unfinished else "")
    )


def tables(
    files: Annotated[list[Path], typer.Argument(help="Markdown files, e.g. docs/results.md")],
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if a file's tables are out of date."),
    ] = False,
) -> None:
    """Re-render the results tables of markdown files from the experiment folders they name:
    every block from '<!-- posenc report FOLDER [--baseline ENC] -->' to '<!-- /posenc -->'.
    Among several files, one without blocks is passed over (README.md docs/*.md works); a
    lone file without blocks is an error."""
    from posenc.errors import PosencError
    from posenc.publish import has_blocks, update_tables

    stale = []
    some = len(files) > 1 and any(has_blocks(p) for p in files)
    for path in files:
        if some and path.is_file() and not has_blocks(path):
            print(f"{path}: no tables")
            continue
        try:
            changed = update_tables(path, check=check, warn=warning_line)
        except PosencError as exc:
            fail(str(exc))
        if changed:
            stale.append(path)
        verb = ("out of date" if check else "updated") if changed else "up to date"
        print(f"{path}: {verb}")
    if check and stale:
        fail(
            f"tables out of date in {', '.join(map(str, stale))}: run posenc tables "
            + " ".join(map(str, stale)),
            1,
        )


def tensorboard(
    directory: Annotated[
        Path, typer.Argument(help="An experiment folder, or every experiment (runs)")
    ] = Path("runs"),
    port: Annotated[
        int | None, typer.Option("--port", help="Default: 6006, else a free port.")
    ] = None,
) -> None:
    """Start TensorBoard on 127.0.0.1 for an experiment and print its URL (Ctrl-C stops it)."""
    from posenc.run.signals import noted_signals
    from posenc.tbserver import TensorBoardError, start, stop

    if not directory.is_dir():
        fail(f"{directory} is not a folder")
    with noted_signals() as requested:  # Ctrl-C and kill both stop the server by its PID
        try:
            server = start(directory, port=port, stop_if=lambda: bool(requested))
        except TensorBoardError as exc:
            fail(str(exc), 1)
        if server is None:  # stopped while it was starting
            return
        print(
            f"TensorBoard for {directory}: {server.url}  "
            f"(pid {server.process.pid}; Ctrl-C stops it)"
        )
        sys.stdout.flush()
        try:
            while not requested and server.process.poll() is None:
                time.sleep(0.25)
        finally:
            stop(server)
