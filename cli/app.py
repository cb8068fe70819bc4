"""The ``posenc`` command. Heavy imports (torch, datasets, tensorboard) stay inside commands
so that ``posenc --help`` answers at once."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from posenc.cli.common import Overrides, error_line, fail, train_run
from posenc.cli.data import app as data_app

app = typer.Typer(
    name="posenc",
    help="Compare positional encodings in transformers on synthetic length-generalization tasks.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (cli/completion.py)
    pretty_exceptions_enable=False,
)


def _compose(overrides: list[str] | None):
    from posenc.config import compose
    from posenc.errors import PosencError

    try:
        return compose(overrides or [])
    except PosencError as exc:
        fail(str(exc))


@app.command(context_settings={"allow_extra_args": False})
def train(overrides: Overrides = None) -> None:
    """Train one model on one task with one encoding, evaluate every length, log everything."""
    cfg = _compose(overrides)
    train_run(cfg)
    print(f"run folder: {metrics_dir(cfg)}")


def metrics_dir(cfg) -> str:
    from posenc.run.spec import run_dir

    return str(run_dir(cfg))


@app.command("list")
def list_() -> None:
    """List the encodings and tasks, one line each."""
    from rich.console import Console
    from rich.markup import escape

    from posenc import encodings, plugins, tasks

    console = Console(highlight=False, soft_wrap=True)
    width = max(map(len, [*encodings.names(), *tasks.names()])) + 2
    # a family as long as its column ("data-dependent") still gets its gap
    family = max(12, *(len(encodings.info(n).family) + 2 for n in encodings.names()))

    def broken(group: str) -> None:  # installed plugins that cannot be used, and why
        for name, plugin in sorted(plugins.load(group).items()):
            if plugin.error and name not in (encodings.names() + tasks.names()):
                console.print(
                    f"  {name:<{width}}[red]{'broken':<{family}}[/]{escape(plugin.error)}"
                )

    console.print("[bold]encodings[/]")
    for name in encodings.names():
        e = encodings.info(name)
        # escaped: a description's [rope, rope, none] is text, not rich markup
        console.print(
            f"  {name:<{width}}{e.family:<{family}}{escape(f'{e.description} ({e.paper})')}"
        )
    broken("encoding")
    console.print("[bold]tasks[/]")
    for name in tasks.names():
        console.print(f"  {name:<{width}}{escape(tasks.task_class(name).description)}")
    broken("task")
    from posenc.mixers import MIXERS

    console.print("[bold]mixers[/] (model.mixers; attention by default)")
    for name, mixer in MIXERS.items():
        console.print(f"  {name:<{width}}{mixer.description} ({mixer.paper})")


@app.command()
def config(overrides: Overrides = None) -> None:
    """Print the resolved config for these overrides."""
    cfg = _compose(overrides)
    from posenc.config import to_yaml

    sys.stdout.write(to_yaml(cfg))


@app.command("eval")
def eval_(
    run_dir: Annotated[str, typer.Argument(help="a finished run folder")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="evaluation-time overrides, e.g. encoding.scaling=yarn encoding.scaling_factor=2"
        ),
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="writes eval-TAG.json; default: made from the overrides")
    ] = None,
) -> None:
    """Re-evaluate a finished run on its frozen eval set under overrides (e.g. RoPE scaling)."""
    from rich.console import Console

    from posenc.console import results_table
    from posenc.errors import PosencError
    from posenc.run.reevaluate import reevaluate

    try:
        metrics, path = reevaluate(run_dir, overrides or [], tag=tag)
    except PosencError as exc:
        fail(str(exc))
    shown = metrics | {"encoding": f"{metrics['encoding']} · eval {metrics['eval']['tag']}"}
    Console().print(results_table(shown))
    print(f"wrote {path}")


app.add_typer(data_app, name="data")

from posenc.cli import experiments, reporting  # noqa: E402  (compare, sweep; report, publish, tables, tb)

experiments.register(app)
reporting.register(app)

from posenc.cli import tune  # noqa: E402  (posenc tune)

tune.register(app)

from posenc.cli.check_task import check_task  # noqa: E402

app.command("check-task", context_settings={"allow_extra_args": False})(check_task)

from posenc.cli.reproduce import reproduce  # noqa: E402

app.command("reproduce", context_settings={"allow_extra_args": False})(reproduce)


def main() -> None:
    # OpenMP threads that sleep instead of spin-waiting: two posenc processes sharing the
    # cores (a train beside an eval, two terminals) otherwise collapse to a fraction of one.
    # It must be set before torch loads its OpenMP runtime; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        code = app(prog_name="posenc", standalone_mode=False)
    except typer.Abort:
        error_line("aborted")
        sys.exit(1)
    except OSError as exc:  # a disk fault: a full disk, a read-only folder, a file in the way
        from posenc.cli.common import os_error_message

        error_line(os_error_message(exc))
        sys.exit(2)
    except Exception as exc:
        # A bad option or argument (click's UsageError, which typer may vendor): one line,
        # like every other posenc error, instead of click's framed box.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        error_line(f"{exc.format_message().rstrip('.')}{where}")
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
