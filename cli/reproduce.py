"""``posenc reproduce``: train a finished run again from its own config and say whether it
came out the same (`posenc.run.reproduce`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from posenc.cli.common import fail, train_run


def reproduce(
    run_dir: Annotated[
        str,
        typer.Argument(
            help="a finished run's folder (config.yaml and metrics.json), e.g. "
            "docs/experiments/compare_protocol/copy/rope/seed0, or a folder of runs (an "
            "experiment: every run in it)"
        ),
    ],
    into: Annotated[
        str | None,
        typer.Option(
            help="where the reproduction trains (default: RUNS_ROOT/_reproduce/<experiment>/"
            "<task>/<encoding>/seed<N>); run again, it resumes or, finished, is only compared"
        ),
    ] = None,
    runs_root: Annotated[
        str, typer.Option(help="the runs root: the default --into and the frozen sets' cache")
    ] = "runs",
    progress: Annotated[bool, typer.Option(help="show training progress")] = True,
    jobs: Annotated[
        int, typer.Option(min=1, help="for a folder of runs: how many reproduce at once")
    ] = 1,
) -> None:
    """Train a finished run again from its saved config (the same seeds, threads and
    buckets) and compare: exit 0 if every test example, the validation scores, the final
    loss and the steps are the same, 1 if not (with what differs and where each trained).
    Given a folder of runs (an experiment, a published one), every run in it, --jobs at a
    time, then a table: exit 0 if all reproduced."""
    from posenc.errors import PosencError
    from posenc.run import reproduce as rp
    from posenc.run.spec import FINISHED, FOREIGN, differences, run_status
    from posenc.runfolder import CONFIG, METRICS

    if Path(run_dir).is_dir() and not (Path(run_dir) / CONFIG).exists():
        from posenc.cli.reproduce_all import reproduce_all

        raise typer.Exit(reproduce_all(Path(run_dir), into, runs_root, jobs))
    try:
        source = rp.source_run(run_dir)
        folder = rp.default_folder(source, runs_root) if into is None else Path(into)
        cfg = rp.reproduction(source, folder, runs_root, progress=progress)
        status = run_status(folder, cfg)
    except PosencError as exc:
        fail(str(exc))
    if status == FOREIGN:
        diff = differences(folder, cfg)
        fail(
            f"{folder} holds another run ({diff or 'a config that cannot be read'}); "
            "give --into a new folder"
        )
    if status == FINISHED:
        from posenc.report.records import read_metrics

        try:
            here = read_metrics(folder / METRICS)
        except PosencError as exc:
            fail(str(exc))
        print(f"{folder} already holds the finished reproduction: comparing it")
    else:
        here = train_run(cfg)
    comparison = rp.compare_runs(source.metrics, here)
    _show(comparison, run_dir, str(folder))
    print(rp.verdict(comparison))
    print(rp.machines_line(comparison, (source.metrics.get("train") or {}).get("attempts")))
    raise typer.Exit(0 if comparison.same else 1)


def _show(c, there: str, here: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"run: {escape(there)}\nreproduction: {escape(here)}")
    table = Table()
    for column in ("", "run", "reproduction", "same"):
        table.add_column(column, justify="left" if not column else "right")
    marks = {True: "yes", False: "[bold red]no[/]", None: "—"}
    for name, a, b, same in c.rows:
        table.add_row(name, escape(a), escape(b), marks[same])
    console.print(table)
    if c.summary_versions:
        console.print(
            "—: the run's summary was written under older definitions (summary_version "
            f"{c.summary_versions[0]}, here {c.summary_versions[1]}; posenc report recomputes "
            "it), so its figures are shown, not compared: the examples decide"
        )
