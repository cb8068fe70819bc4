"""Shell completion (``posenc --install-completion``): commands, ``encoding=``/``task=`` (and
every other config group's) options, encoding and task names after ``--encodings`` and
``--tasks``, and config keys. Reads only the file names and YAML of the config folders (posenc's
and ``POSENC_CONFIG_PATH``'s) and the names of installed plugins' entry points: no torch, no
Hydra, so a TAB answers at once."""

from __future__ import annotations

from functools import cache

SKIP_GROUPS = ("hydra",)


@cache
def _groups() -> dict[str, list[str]]:
    from posenc.config import group_options, groups

    try:
        return {g: group_options(g) for g in groups() if g not in SKIP_GROUPS}
    except Exception:  # e.g. a POSENC_CONFIG_PATH folder that is gone: no completions
        return {}


@cache
def _keys(group: str | None) -> list[str]:
    """Keys of the root config (``group=None``) or of a group's default YAML."""
    import yaml

    from posenc.config import CONFIG_DIR, find_config

    if group is None:
        path = CONFIG_DIR / "config.yaml"
    else:
        options = _groups().get(group, [])
        name = "default" if "default" in options else (options[0] if options else "")
        path = find_config(group, name) or CONFIG_DIR / group / f"{name}.yaml"
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    return [k for k in tree if k != "defaults" and isinstance(k, str)]


def override_candidates(incomplete: str, previous: list[str] | None = None) -> list[str]:
    """Completions of one override word. Bash splits ``encoding=al`` at ``=``, so there the
    word is ``al`` and ``previous`` ends with ``encoding``, ``=``."""
    previous = previous or []
    groups = _groups()
    if len(previous) >= 2 and previous[-1] == "=" and previous[-2] in groups:
        return [o for o in groups[previous[-2]] if o.startswith(incomplete)]
    if "=" in incomplete:
        key, value = incomplete.split("=", 1)
        if key in groups:
            return [f"{key}={o}" for o in groups[key] if o.startswith(value)]
        return []
    if "." in incomplete:
        group, rest = incomplete.split(".", 1)
        return [f"{group}.{k}=" for k in _keys(group) if k.startswith(rest)]
    words = [f"{g}=" for g in groups if g != "preset" or groups[g]]
    words += [f"{g}." for g in groups if _keys(g)]
    words += [f"{k}=" for k in _keys(None)]
    return sorted(w for w in dict.fromkeys(words) if w.startswith(incomplete))


def complete_overrides(ctx, incomplete: str) -> list[str]:
    """Typer's hook: the words typed so far are the argument's parsed values."""
    typed = [w for v in (ctx.params or {}).values() if isinstance(v, list | tuple) for w in v]
    return override_candidates(incomplete, [str(w) for w in typed])


def _names(group: str, incomplete: str) -> list[str]:
    """``rope,al`` -> ``rope,alibi``: the last name of a comma-separated list."""
    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    chosen = set(done.split(","))
    return [f"{prefix}{o}" for o in _groups()[group] if o.startswith(last) and o not in chosen]


def complete_encodings(incomplete: str) -> list[str]:
    return _names("encoding", incomplete)


def complete_tasks(incomplete: str) -> list[str]:
    return _names("task", incomplete)
