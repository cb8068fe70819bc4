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


def _hydra_compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from posenc import plugins

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    plugins.store_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(
                config_name="config", overrides=[*searchpath_override(), *overrides]
            )
    except Exception as exc:  # Hydra's messages are good but multi-line
        chain = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}"
        missing = _missing_key(chain, overrides)
        if missing:
            raise ConfigError(missing) from exc
        first = first_line(exc)
        raise ConfigError(f"bad override: {first}") from exc


def _missing_key(message: str, overrides: list[str]) -> str | None:
    """For "Could not override 'a.b' ... not in struct": one line naming the section's keys
    (and, for an encoding parameter, the encoding that lacks it), or None."""
    m = re.search(r"Could not override '([^']+)'", message)
    if not m or "not in struct" not in message or "." not in m[1]:
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


def compose(overrides: list[str] | None = None, *, check: bool = True) -> DictConfig:
    """The root config with ``overrides`` applied (Hydra's Compose API), its values checked
    against the types of the same config groups' defaults (`posenc.schema`)."""
    from posenc.schema import check_config

    overrides = list(overrides or [])
    check_group_overrides(overrides)
    cfg = _hydra_compose(overrides)
    if check:
        known = set(groups())
        choices = [o for o in overrides if (m := _GROUP_OVERRIDE.match(o)) and m["group"] in known]
        check_config(cfg, _hydra_compose(choices))
        check_preset_task(cfg, overrides)
        from posenc import plugins

        plugins.check_config(cfg)  # a plugged-in encoding or task: built and checked
    return cfg


def check_preset_task(cfg: DictConfig, overrides: list[str]) -> None:
    """A preset made for some tasks (its ``compare:`` block lists them) must not silently
    train the default task: `posenc train/sweep preset=kazemnejad_reverse` without
    ``task=`` would train copy. An explicit ``task=`` always wins."""
    tasks = [str(t) for t in ((cfg.get("compare") or {}).get("tasks") or [])]
    if not tasks or cfg.task.name in tasks:
        return
    named = {m["group"]: m["value"] for o in overrides if (m := _GROUP_OVERRIDE.match(o))}
    if "task" in named:
        return
    preset = named.get("preset", "?")
    raise ConfigError(
        f"preset {preset!r} is made for task {', '.join(tasks)} (its compare: block), but "
        f"this run would train the default task {cfg.task.name!r}; add task={tasks[0]} "
        f"(or run posenc compare --preset {preset})"
    )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def encoding_label(enc_cfg: DictConfig) -> str:
    """Folder and table name of an encoding config: its ``label`` if set, else its ``name``."""
    label = enc_cfg.get("label") or enc_cfg.get("name")
    return str(label)


def encoding_params(enc_cfg: DictConfig) -> dict:
    """The encoding's own hyperparameters: everything but ``name`` and ``label``."""
    params = OmegaConf.to_container(enc_cfg, resolve=True)
    assert isinstance(params, dict)
    params.pop("name", None)
    params.pop("label", None)
    return params


# Keys of ``task.*`` that choose the sequence format (`posenc.tasks.format.SequenceFormat`), not data.
FORMAT_KEYS = ("answer", "bos")


def task_params(task_cfg: DictConfig) -> dict:
    """The task's own parameters: everything but ``name`` and the format keys."""
    params = OmegaConf.to_container(task_cfg, resolve=True)
    assert isinstance(params, dict)
    for key in ("name", *FORMAT_KEYS):
        params.pop(key, None)
    return params


def task_format(task_cfg: DictConfig):
    """The `posenc.tasks.format.SequenceFormat` of ``task.answer`` and ``task.bos`` (checked)."""
    from posenc.tasks.format import SequenceFormat

    return SequenceFormat(answer=str(task_cfg.get("answer", "eos")), bos=task_cfg.get("bos", True))
