"""Compose Hydra configs from ``configs/`` and check them before anything runs.

The configs ship inside the package (``posenc.configs``; ``configs/`` in the repository).
Folders named in the environment variable ``POSENC_CONFIG_PATH`` (separated like ``PATH``)
join Hydra's search path: their ``encoding/``, ``task/``, ``preset/`` ... YAMLs become group
options beside posenc's own (posenc's win on a clash). Encodings and tasks of installed
plugins (`posenc.plugins`) are group options too, through Hydra's ConfigStore.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from posenc import schema
from posenc.errors import ConfigError, first_line


def _package_config_dir() -> Path:
    """The folder of the ``posenc.configs`` package: site-packages/posenc/configs when
    installed, the repository's configs/ in an editable install. Found without importing it."""
    spec = importlib.util.find_spec("posenc.configs")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("posenc.configs is missing: reinstall posenc (pip install .)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


CONFIG_DIR = _package_config_dir()
CONFIG_PATH_ENV = "POSENC_CONFIG_PATH"
_GROUP_OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>[A-Za-z_]+)=(?P<value>[^=]*)$")


def parts_label(parts) -> str:
    """``${parts_label:${encoding.parts}}``: a combination's name, e.g. ``learned+t5``."""
    if not isinstance(parts, list | tuple) and not OmegaConf.is_list(parts):
        return str(parts)  # a wrong type: posenc.schema reports it with the valid form
    names = [
        p if isinstance(p, str) else str(p.get("name") if hasattr(p, "get") else p) for p in parts
    ]
    return "+".join(names)


OmegaConf.register_new_resolver("parts_label", parts_label, replace=True)


def user_config_dirs() -> list[Path]:
    """The folders of ``POSENC_CONFIG_PATH``, in order (each must exist)."""
    dirs = []
    for item in filter(None, os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep)):
        path = Path(item).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"{CONFIG_PATH_ENV}: {item!r} is not a folder")
        dirs.append(path)
    return dirs


def config_dirs() -> list[Path]:
    """Where config groups are looked up: posenc's own, then the user's folders."""
    return [CONFIG_DIR, *(d for d in user_config_dirs() if d != CONFIG_DIR)]


def searchpath_override() -> list[str]:
    """``hydra.searchpath=[...]`` for the user's folders (nothing without any)."""
    dirs = [d for d in config_dirs() if d != CONFIG_DIR]
    if not dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'file://{d}'" for d in dirs) + "]"]


def find_config(group: str, name: str) -> Path | None:
    """The YAML of option ``name`` of ``group`` as Hydra picks it, or None (a plugin's, or
    unknown)."""
    for folder in config_dirs():
        path = folder / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def _is_group(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "_"))


def groups() -> list[str]:
    """Config groups: the sub-folders of the config folders."""
    return sorted({p.name for d in config_dirs() for p in d.iterdir() if _is_group(p)})


def group_options(group: str) -> list[str]:
    """Names of the options of a config group: YAML files, and installed plugins."""
    from posenc import plugins

    names = {p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")}
    if group in plugins.GROUPS:
        names.update(plugins.entry_point_names(group))
    return sorted(names)


def check_group_overrides(overrides: list[str]) -> None:
    """Reject ``encoding=nope``-style overrides with the valid choices, before Hydra does.

    Sweep values (``encoding=rope,alibi``) are checked one by one; sweep functions
    (``range(...)``, ``choice(...)``) are left to Hydra.
    """
    from posenc import plugins

    known = set(groups())
    for item in overrides:
        m = _GROUP_OVERRIDE.match(item)
        if not m or m["group"] not in known or item.startswith("~") or "(" in m["value"]:
            continue
        options = group_options(m["group"])
        for value in filter(None, (v.strip() for v in m["value"].split(","))):
            if value not in options and value != "null":
                raise ConfigError(
                    f"unknown {m['group']} {value!r}; valid choices: {', '.join(options)}"
                )
            problem = plugins.problem(m["group"], value)
            if problem:
                raise ConfigError(problem)


def check_switch_overrides(overrides: list[str]) -> None:
    """A true-or-false key (`posenc.schema.switches`) takes true or false: OmegaConf would
    read ``model.bias=3`` or ``yes`` as true."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # reported by Hydra while composing
        return
    switches = schema.switches()
    for o in parsed:
        if o.key_or_group not in switches or o.is_delete() or o.is_sweep_override():
            continue
        if not isinstance(o.value(), bool):
            raise ConfigError(f"{o.key_or_group} must be true or false, got {o.value()!r}")


def _hydra_compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from posenc import plugins

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    schema.store()
    plugins.store_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(
                config_name="config", overrides=[*searchpath_override(), *overrides]
            )
    except Exception as exc:  # Hydra's messages are good but multi-line
        chain = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}"
        message = (
            _missing_key(chain, overrides)
            or invalid_value(exc)
            or _preset_header(chain, overrides)
            or _unknown_key(chain)
        )
        if message:
            raise ConfigError(message) from exc
        first = first_line(exc)
        raise ConfigError(f"bad override: {first}{quote_hint(overrides)}") from exc


def quote_hint(overrides: list[str]) -> str:
    """For Hydra's LexerNoViableAltException on a non-ASCII character (its grammar reads
    only ASCII outside quotes): how to quote the override that has one; else nothing."""
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and not value.isascii() and not value.startswith(("'", '"')):
            return f"; a value with non-ASCII characters must be quoted: {key}='{value}'"
    return ""


def _unknown_key(message: str) -> str | None:
    """For "Key 'k' not in 'Root'" (a YAML, e.g. a user's preset, setting a key the schema
    lacks): `checks.unknown_key`'s line, or None."""
    from posenc import checks

    m = re.search(r"Key '([^']+)' not in '(\w+)'", message)
    if not m:
        return None
    section = {"Root": ""} | {cls.__name__: name for name, cls in schema.SECTIONS.items()}
    if m[2] not in section:
        return None
    return checks.unknown_key(f"{section[m[2]]}.{m[1]}".lstrip("."))


def _missing_key(message: str, overrides: list[str]) -> str | None:
    """For "Could not override 'a.b'" (a key its section lacks): one line naming the
    section's keys (and, for an encoding parameter, the encoding that lacks it), or None."""
    m = re.search(r"Could not override '([^']+)'", message)
    if not m or "." not in m[1] or not re.search(r"not in (struct|'\w+')", message):
        return None
    full_key = m[1]
    section, name = full_key.rsplit(".", 1)
    rest = [o for o in overrides if not o.lstrip("~+").startswith(full_key + "=")]
    try:
        cfg = _hydra_compose(rest)
    except ConfigError:
        return None
    node = OmegaConf.select(cfg, section)
    if not isinstance(node, DictConfig):
        return None
    keys = ", ".join(str(k) for k in node.keys())
    where = f"encoding {node.get('name')!r}" if section == "encoding" else section
    return f"{where} has no key {name!r} (valid: {keys})"


# OmegaConf's complaint about a value of a typed key -> what the key takes.
_WANTED = {
    "converted to Integer": "an integer",
    "converted to Float": "a finite number",
    "not a valid bool": "true or false",
    "to string": "a name",
    "is not a ListConfig": "a list",
    "is not Optional": "not null",
    "does not support deletion": "kept",
}


def invalid_value(exc: BaseException) -> str | None:
    """One line for OmegaConf's rejection of a value of a typed key (`posenc.schema`),
    e.g. ``train.steps must be an integer, got 'abc'``; None for any other error."""
    from omegaconf.errors import OmegaConfBaseException

    while exc is not None and not (
        isinstance(exc, OmegaConfBaseException) and getattr(exc, "full_key", None)
    ):
        exc = exc.__cause__ or exc.__context__
    if exc is None:
        return None
    message = str(exc).splitlines()[0]
    wanted = next((w for k, w in _WANTED.items() if k in message), None)
    if wanted is None:
        return None
    key = exc.full_key
    if wanted == "not null":
        return f"{key} must not be null"
    if wanted == "kept":
        return f"{key} cannot be deleted: every run needs a value"
    m = re.search(r"Value '(.*)' (?:of type '(\w+)'|is not a valid bool \(type (\w+)\))", message)
    m = m or re.search(r"Cannot convert '(.*)' to string: '(.*)'", message)
    if m and m[0].startswith("Cannot"):
        got = m[2]
    elif m:
        got = repr(m[1]) if (m[2] or m[3]) == "str" else m[1]
    else:
        return f"{key} must be {wanted}, e.g. {key}=[...]"
    return f"{key} must be {wanted}, got {got}"


def compose(
    overrides: list[str] | None = None,
    *,
    check: bool = True,
    references: dict | None = None,
    here: bool | None = True,
) -> DictConfig:
    """The root config with ``overrides`` applied (Hydra's Compose API; OmegaConf types the
    `posenc.schema` sections), its values checked (`posenc.checks`) and its choices and
    ``auto`` values resolved (`posenc.run.spec.resolve_auto`; ``here``: whether the run
    trains on this machine, at ``threads``, and None where the caller resolves
    ``train.compile=auto`` later, at the threads the run will get). ``references`` keeps
    the configs the open sections are checked against, by group choices, across calls (a
    sweep composes many runs of the same encodings and tasks)."""
    from posenc import checks, conformance
    from posenc.run.spec import resolve_auto

    overrides = list(overrides or [])
    check_group_overrides(overrides)
    check_switch_overrides(overrides)
    cfg = _hydra_compose(overrides)
    check_required(cfg)
    if check:
        known = set(groups())
        choices = [o for o in overrides if (m := _GROUP_OVERRIDE.match(o)) and m["group"] in known]
        references = {} if references is None else references
        if tuple(choices) not in references:
            references[tuple(choices)] = _hydra_compose(choices)
        checks.check_open_sections(cfg, references[tuple(choices)], encoding_defaults)
        checks.check_values(cfg)
        check_preset_task(cfg, overrides)
        conformance.check_config(cfg)  # a plugged-in encoding or task: built and checked
    resolve_auto(cfg, overrides, here=here)  # posenc.run.spec: the one place that does
    return cfg


def _preset_header(message: str, overrides: list[str]) -> str | None:
    """For "Key 'preset' not in 'Root'": a preset without ``# @package _global_`` lands under
    a key ``preset`` instead of on the whole config; say so, not "unknown key preset"."""
    if not re.search(r"Key 'preset' not in 'Root'", message):
        return None
    named = [
        m["value"] for o in overrides if (m := _GROUP_OVERRIDE.match(o)) and m["group"] == "preset"
    ]
    name = named[-1] if named else "?"
    where = find_config("preset", name)
    return (
        f"preset {name!r}{f' ({where})' if where else ''} must begin with the line "
        "'# @package _global_': a preset sets keys of the whole config (docs/experiments.md)"
    )


def check_required(cfg: DictConfig) -> None:
    """A parameter without a default (a plugin constructor's required argument, ``???``)
    must be given: one line naming it, not a run that trains with the string '???'."""
    missing = [k for k in OmegaConf.missing_keys(cfg) if k.split(".")[0] in ("encoding", "task")]
    if missing:
        key = missing[0]
        section = key.split(".")[0]
        if key == section:  # the whole group deleted (~encoding)
            raise ConfigError(f"{key} is required; choose one with {key}=NAME (posenc list)")
        raise ConfigError(
            f"{key} is required ({section} {str(cfg[section].name)!r} has no default for it); "
            f"add {key}=VALUE"
        )


def encoding_defaults(name: str) -> dict:
    """The parameters of encoding ``name`` with their defaults, from its YAML (or its
    plugin's node); raises `ConfigError` with the valid choices for an unknown name."""
    from posenc import plugins

    path = find_config("encoding", name)
    if path is None and plugins.is_plugin("encoding", name):
        return {k: v for k, v in plugins.config_node("encoding", name).items() if k != "name"}
    if path is None:
        raise ConfigError(
            f"unknown encoding {name!r}; valid choices: {', '.join(group_options('encoding'))}"
        )
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(tree, dict)
    tree.pop("name", None)
    tree.pop("label", None)
    return tree


def read_preset(name: str) -> dict:
    """The YAML of preset ``name`` as a mapping (unresolved); `ConfigError` with the valid
    choices for an unknown one."""
    path = find_config("preset", name)
    if path is None:
        valid = ", ".join(group_options("preset"))
        raise ConfigError(f"unknown preset {name!r}; valid choices: {valid}")
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    assert isinstance(tree, dict)
    return tree


def preset_axes(name: str) -> dict[str, list[str]]:
    """The sweep a preset declares the Hydra way, ``hydra: {sweeper: {params: {encoding:
    "a,b", task: copy, seed: "0,1,2"}}}``, as each key's values (``{}`` for none); these are
    the runs ``posenc compare --preset NAME`` makes unless its options say otherwise."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = ((read_preset(name).get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    axes = {}
    for key, value in params.items():
        line = f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
        try:
            (override,) = OverridesParser.create().parse_overrides([line])
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [str(override.value())]
            )
        except Exception as exc:
            raise ConfigError(
                f"preset {name!r}: hydra.sweeper.params {line!r}: {first_line(exc)}"
            ) from exc
        axes[str(key)] = values
    return axes


def preset_tasks(name: str) -> list[str]:
    """The tasks preset ``name`` is made for: its sweep's ``task`` axis, else the task its
    defaults list selects (``- override /task: addition``), else ``[]``. `posenc compare
    --preset NAME` without --tasks trains these, not the default task."""
    swept = preset_axes(name).get("task")
    if swept:
        return swept
    for entry in read_preset(name).get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if str(key).removeprefix("override ").strip().lstrip("/") == "task":
                    return [str(value)]
    return []


def check_preset_task(cfg: DictConfig, overrides: list[str]) -> None:
    """A preset made for some tasks (its sweep's ``task`` axis) must not silently train the
    default task: `posenc train/sweep preset=kazemnejad_reverse` without ``task=`` would train
    copy. An explicit ``task=`` always wins."""
    named = {m["group"]: m["value"] for o in overrides if (m := _GROUP_OVERRIDE.match(o))}
    preset = named.get("preset")
    if "task" in named or not preset or preset == "null" or "," in preset:
        return
    tasks = preset_axes(preset).get("task") or []
    if not tasks or cfg.task.name in tasks:
        return
    raise ConfigError(
        f"preset {preset!r} is made for task {', '.join(tasks)} (its hydra.sweeper.params), "
        f"but this run would train the default task {cfg.task.name!r}; add task={tasks[0]} "
        f"(or run posenc compare --preset {preset})"
    )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
