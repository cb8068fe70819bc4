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
