"""Synthetic algorithmic tasks for length generalization, and their registry.

Importing this package registers every task module listed below.
"""

from posenc.tasks import (  # noqa: F401  (registration)
    addition,
    associative_recall,
    bucket_sort,
    copy,
    count,
    duplicate,
    flip_flop,
    missing_duplicate,
    mode,
    mqar,
    odds_first,
    parity,
    reverse,
    sort,
    state_tracking,
)
from posenc.tasks.base import Task, build, names, register, task_class

__all__ = ["Task", "build", "names", "register", "task_class"]

# Tasks of other installed packages (entry point group ``posenc.tasks``): last, so a plugin
# module can import everything above. A broken one is kept aside with its error.
from posenc import plugins as _plugins  # noqa: E402
from posenc.tasks.base import register_plugin as _register_plugin  # noqa: E402

_plugins.REGISTRARS["task"] = _register_plugin
_plugins.load("task")
