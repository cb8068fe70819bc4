"""Encodings and tasks from other packages, found through Python entry points.

A package plugs a class in by declaring it in its ``pyproject.toml``::

    [project.entry-points."posenc.encodings"]
    wobble = "my_pkg.encoding:Wobble"      # a PositionalEncoding subclass

    [project.entry-points."posenc.tasks"]
    echo2 = "my_pkg.task:EchoTwice"        # a posenc.tasks.base.Task subclass

The entry point's name is the encoding's (or task's) name everywhere: ``encoding=wobble``,
``posenc compare -e wobble,rope``, run folders, reports. Its config group option is made from
the constructor's keyword arguments and their defaults (Hydra's ConfigStore), so
``encoding.KEY=VALUE`` is checked against the constructor like a built-in encoding's YAML.
Every process that imports `posenc.encodings` or `posenc.tasks` registers the installed
plugins itself (the sweep's child, joblib workers, Slurm jobs): nothing has to be passed on.

A plugin that cannot be loaded is reported as one line naming it and its class (`problem`);
one that raises in its constructor or breaks the interface, by `posenc.conformance` before
anything trains; `posenc list` and every other command that does not use it keep working.

Discovery only: this module imports neither torch nor Hydra at import time (shell completion
reads `entry_point_names`), nor the registries, the model or the conformance checks.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from posenc.errors import describe

GROUPS = {"encoding": "posenc.encodings", "task": "posenc.tasks"}
# Constructor arguments every encoding takes from model.*: never part of encoding.*.
MODEL_ARGS = ("self", "d_model", "n_heads", "max_len", "n_layers")


@dataclass
class Plugin:
    group: str  # "encoding" or "task"
    name: str  # the entry point's name: the encoding's or task's name
    target: str  # "module:Class"
    dist: str  # the distribution that declares it
    cls: type | None = None
    error: str | None = None  # why it cannot be used (None: loaded and registered)

    @property
    def label(self) -> str:
        return f"{self.group} {self.name!r} ({self.target} from {self.dist})"


_loaded: dict[str, dict[str, Plugin]] = {}
# group -> register(name, cls, dist): set by posenc.encodings and posenc.tasks as they are
# imported (this module imports neither: the registries import it); raises for a class
# that cannot be registered.
REGISTRARS: dict[str, Callable[[str, Any, str], None]] = {}


@cache  # read once per process: scanning every installed distribution takes ~20 ms
def _entry_points(group: str):
    from importlib.metadata import entry_points

    seen: dict[str, Any] = {}
    for ep in entry_points(group=GROUPS[group]):
        seen.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return seen


def entry_point_names(group: str) -> list[str]:
    """Names of the installed plugins of ``group`` (read from metadata; nothing imported)."""
    return sorted(_entry_points(group))


def load(group: str) -> dict[str, Plugin]:
    """Import and register every installed plugin of ``group`` once; never raises (a broken
    plugin is kept with its ``error``)."""
    if group in _loaded:
        return _loaded[group]
    plugins: dict[str, Plugin] = {}
    _loaded[group] = plugins  # before importing: a plugin module may import posenc back
    for name, ep in _entry_points(group).items():
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        plugin = Plugin(group, name, ep.value, dist)
        plugins[name] = plugin
        try:
            obj = ep.load()
        except Exception as exc:
            plugin.error = f"{plugin.label} cannot be imported: {describe(exc)}"
            continue
        try:
            _register(plugin, obj)
        except Exception as exc:
            plugin.error = f"{plugin.label}: {describe(exc)}"
    return plugins


def _register(plugin: Plugin, obj: Any) -> None:
    if plugin.group not in REGISTRARS:  # the package registers its registrar when imported
        importlib.import_module(GROUPS[plugin.group])
    REGISTRARS[plugin.group](plugin.name, obj, plugin.dist)
    plugin.cls = obj


def problem(group: str, name: str) -> str | None:
    """Why the plugin ``name`` of ``group`` cannot be used, or None (also for non-plugins)."""
    if group not in GROUPS or name not in _entry_points(group):
        return None
    plugin = load(group).get(name)
    return plugin.error if plugin else None


def is_plugin(group: str, name: str) -> bool:
    return group in GROUPS and name in _entry_points(group)


def _yaml_value(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return "???"  # Hydra's MISSING: the user must set it
    if isinstance(value, tuple):
        return list(value)
    return value


def config_node(group: str, name: str) -> dict[str, Any]:
    """The config group option of a plugin: its name and its constructor's defaults."""
    plugin = load(group).get(name)
    if plugin is None or plugin.cls is None:
        return {"name": name}
    sig = inspect.signature(plugin.cls.__init__)
    node: dict[str, Any] = {"name": name}
    for p in sig.parameters.values():
        if p.name in MODEL_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if group == "encoding" and p.kind is not p.KEYWORD_ONLY:
            continue  # encodings take their own parameters keyword-only
        node[p.name] = _yaml_value(p.default)
    return node


def store_configs() -> None:
    """Put every installed plugin's config node into Hydra's ConfigStore (group encoding or
    task), so that ``encoding=NAME`` composes like a YAML in ``configs/encoding/``."""
    if not any(entry_point_names(g) for g in GROUPS):
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group in GROUPS:
        for name in load(group):
            try:
                cs.store(group=group, name=name, node=config_node(group, name))
            except Exception as exc:  # a default OmegaConf cannot hold
                plugin = load(group)[name]
                plugin.error = plugin.error or f"{plugin.label}: {describe(exc)}"
                cs.store(group=group, name=name, node={"name": name})
