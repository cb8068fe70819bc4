"""Synthetic algorithmic tasks for length generalization, and their registry.

Importing this package registers every task module listed below.
"""

from tasks import copy  # noqa: F401  (registration)
from tasks.base import Task, build, names, register, task_class

__all__ = ["Task", "build", "names", "register", "task_class"]
