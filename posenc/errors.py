"""Exceptions raised by posenc's library code; only `cli/` turns them into exit codes."""


class PosencError(Exception):
    """Base class for every error posenc raises on purpose."""


class ConfigError(PosencError, ValueError):
    """A bad value in a config or an argument: the message names it and the valid choices."""


class RunExistsError(PosencError):
    """The run folder already holds a finished run and `overwrite` is false."""


class UnreadableFileError(PosencError, ValueError):
    """A file posenc wrote earlier is truncated, corrupt or not posenc's: the message names it
    and what to do (``overwrite=true``, or delete it)."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``exc``'s message (Hydra's, torch's and tracebacks run to many lines);
    ``default``, else the exception's type name, when the message is empty."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


def describe(exc: BaseException) -> str:
    """``TypeName: first line of the message``, or the type name alone when there is none."""
    first = first_line(exc, default="")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
