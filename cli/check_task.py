"""``posenc check-task``: train a task's positive control and say whether it learned the task."""

from __future__ import annotations

from typing import Annotated

import typer

from posenc.cli.common import Overrides, fail


def check_task(
    name: Annotated[
        str, typer.Argument(help="a task (or another control, e.g. state_tracking_a5)")
    ],
    overrides: Overrides = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="the quick variant (seconds on one core; CI runs it)")
    ] = False,
) -> None:
    """Train the task's positive control (configs/control/NAME.yaml) and say whether the
    pipeline learns the task: exit 0 if it did, 1 if not."""
    from posenc import controls
    from posenc.errors import PosencError

    try:
        cfg = controls.compose_control(name, overrides, quick=quick)
    except PosencError as exc:
        fail(str(exc))
    from posenc.console import Reporter, RichReporter
    from posenc.run.signals import RunStopped

    reporter = RichReporter() if cfg.progress else Reporter()
    try:
        record, metrics, path = controls.check(name, overrides, quick=quick, reporter=reporter)
    except PosencError as exc:
        reporter.close()
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to check anew", 130)
    except RunStopped as stopped:
        fail(f"{stopped}: run the same command again to check anew", stopped.exit_code)
    _show(name, record, metrics, quick)
    print(f"wrote {path}")
    raise typer.Exit(0 if record["learned"] else 1)


def _show(name: str, record: dict, metrics: dict, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    lo, hi = metrics["train_range"]
    table = Table(title=f"control {name}{' (quick)' if quick else ''}: training lengths")
    for column in ("length", "exact match", "token accuracy"):
        table.add_column(column, justify="right")
    for n, scores in sorted(metrics["per_length"].items(), key=lambda kv: int(kv[0])):
        if lo <= int(n) <= hi:
            table.add_row(str(n), f"{scores['exact_match']:.3f}", f"{scores['token_accuracy']:.3f}")
    console = Console(highlight=False)
    console.print(table)
    word = "[bold green]learned[/]" if record["learned"] else "[bold red]did not learn[/]"
    relation = ">=" if record["learned"] else "<"
    console.print(
        f"{word} {record['task']}: min exact match {record['min_id_exact_match']:.3f} "
        f"{relation} {record['threshold']} over lengths {lo}-{hi} after {record['steps']} steps",
        soft_wrap=True,
    )
