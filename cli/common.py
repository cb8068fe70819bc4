"""What the command modules share: the overrides argument and one-line errors."""

from __future__ import annotations

from typing import Annotated

import typer

from posenc.cli.completion import complete_overrides

Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Hydra overrides, e.g. encoding=alibi task=copy train.steps=2000 seed=1",
        autocompletion=complete_overrides,
    ),
]

# A choices file from posenc tune (posenc compare --choices; posenc.choices).
ChoicesFile = Annotated[
    str | None,
    typer.Option(
        "--choices",
        help="A choices file from posenc tune: each encoding's chosen settings, applied to "
        "its runs and recorded in each (the config key choices=FILE).",
    ),
]


def error_line(message: str) -> None:
    """One red line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold red]error:[/] {escape(message)}", soft_wrap=True
    )


def warning_line(message: str) -> None:
    """One yellow line on stderr: something left out, the command goes on."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True
    )


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr, then exit with ``code``."""
    error_line(message)
    raise typer.Exit(code)


def os_error_message(exc: OSError) -> str:
    """One line for a disk fault: the path, the cause and what to do. Nothing was lost:
    files are written atomically, so the previous checkpoint or report stays whole."""
    import errno

    path = exc.filename if exc.filename is not None else "a file"
    cause = exc.strerror or type(exc).__name__
    hints = {
        errno.ENOSPC: "free some space and run the same command again: finished runs and "
        "the last checkpoint are kept",
        errno.EDQUOT: "free some space and run the same command again: finished runs and "
        "the last checkpoint are kept",
        errno.EROFS: "the file system is read-only: write elsewhere (runs_root=, run_dir=, "
        "data_dir=, or another destination folder)",
        errno.EACCES: "no permission to write there: write elsewhere (runs_root=, run_dir=, "
        "data_dir=, or another destination folder) or change its permissions",
        errno.EPERM: "no permission to write there: write elsewhere or change its permissions",
        errno.ENOTDIR: "a file stands where posenc needs a folder: choose another path",
        errno.EEXIST: "a file stands where posenc needs a folder: choose another path",
        errno.EISDIR: "a folder stands where posenc needs a file: move it away",
    }
    hint = hints.get(exc.errno or 0)
    return f"{path}: {cause}" + (f"; {hint}" if hint else "")


def train_run(cfg) -> dict:
    """Train and evaluate the run ``cfg`` describes, with progress; its metrics. A fault or
    a signal ends the command with its one line and exit status (``posenc train``'s)."""
    from posenc.console import Reporter, RichReporter
    from posenc.errors import PosencError
    from posenc.run.execute import run
    from posenc.run.signals import RunStopped, StoppedAtOnce

    reporter = RichReporter() if cfg.progress else Reporter()
    try:
        return run(cfg, reporter)
    except PosencError as exc:
        reporter.close()
        fail(str(exc))
    except OSError:  # a disk fault: main() gives its one line once the live display is gone
        reporter.close()
        raise
    except StoppedAtOnce as exc:
        fail(f"{exc}: run the same command again to resume from the last checkpoint", 130)
    except KeyboardInterrupt:
        fail("interrupted; the last checkpoint is saved: run the same command again to resume", 130)
    except RunStopped as stopped:
        fail(f"{stopped}: run the same command again to resume", stopped.exit_code)
