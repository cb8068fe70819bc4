"""The types of config values, read off the config tree's own defaults, and the check that
every composed config passes before anything runs or is written.

A value must have the type of its default (an integer where the default is an integer, a
finite number where it is a float, a list of such where it is a list, ...), must not be
negative where the default is not, and must not add or remove keys. The few keys whose
default cannot show their type (a ``null`` default, a list of fixed length, mappings whose
keys come from another encoding's YAML) are declared in `DECLARED`. Ranges that depend on
other values (``train.min_len <= train.max_len``, a head count that divides the width, a
model that fits in memory) are `posenc.run.plan`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posenc.errors import ConfigError, first_line

# The largest integer torch, numpy and the OS accept as a seed, a size or a count.
MAX_INT = 2**63 - 1

Check = Callable[[Any, str, dict], None]  # (value, dotted key, the whole config) -> None or raise


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: str, want: str, value: Any) -> None:
    raise ConfigError(f"{path} must be {want}, got {_show(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(*, minimum: int | None = None) -> Check:
    def check(value: Any, path: str, tree: dict) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(path, "an integer", value)
        if abs(value) > MAX_INT:
            _fail(path, f"an integer of at most {MAX_INT}", value)
        if minimum is not None and value < minimum:
            _fail(path, f"an integer >= {minimum}", value)

    return check


def number(
    *, minimum: float | None = None, below: float | None = None, inclusive: bool = True
) -> Check:
    def check(value: Any, path: str, tree: dict) -> None:
        if not _is_number(value) or not math.isfinite(value):
            _fail(path, "a finite number", value)
        if minimum is not None and (value < minimum if inclusive else value <= minimum):
            _fail(path, f"a number {'>=' if inclusive else '>'} {minimum}", value)
        if below is not None and value >= below:
            _fail(path, f"a number < {below}", value)

    return check


def unit_interval(value: Any, path: str, tree: dict) -> None:
    """A number in (0, 1]: a fraction of examples that must be right."""
    if not _is_number(value) or not 0 < value <= 1:
        _fail(path, "a number in (0, 1]", value)


def boolean(value: Any, path: str, tree: dict) -> None:
    if not isinstance(value, bool):
        _fail(path, "true or false", value)


def name(value: Any, path: str, tree: dict) -> None:
    """A string; an integer also names a folder (``experiment=2024``)."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        _fail(path, "a non-empty name", value)


def optional(inner: Check) -> Check:
    def check(value: Any, path: str, tree: dict) -> None:
        if value is not None:
            inner(value, path, tree)

    return check


def list_of(element: Check, *, length: int | None = None) -> Check:
    def check(value: Any, path: str, tree: dict) -> None:
        if not isinstance(value, list):
            _fail(path, f"a list, e.g. {path}=[...]", value)
        if length is not None and len(value) != length:
            _fail(path, f"a list of exactly {length} entries", value)
        for i, item in enumerate(value):
            element(item, f"{path}[{i}]", tree)

    return check


def _encoding_defaults(name_: str) -> dict:
    from posenc import plugins
    from posenc.config import find_config

    path = find_config("encoding", name_)
    if path is None and plugins.is_plugin("encoding", name_):
        return {k: v for k, v in plugins.config_node("encoding", name_).items() if k != "name"}
    if path is None:
        from posenc.config import group_options

        raise ConfigError(
            f"unknown encoding {name_!r}; valid choices: {', '.join(group_options('encoding'))}"
        )
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(tree, dict)
    tree.pop("name", None)
    tree.pop("label", None)
    return tree


def encoding_params(get_name: Callable[[dict], Any]) -> Check:
    """A mapping of an encoding's own parameters, typed by that encoding's YAML."""

    def check(value: Any, path: str, tree: dict) -> None:
        if not isinstance(value, dict):
            _fail(path, "a mapping, e.g. {num_buckets: 16}", value)
        encoding = get_name(tree)
        if not isinstance(encoding, str):
            return  # the encoding's own name is reported by its own check
        check_partial(value, _encoding_defaults(encoding), path, tree)

    return check


def encoding_part(value: Any, path: str, tree: dict) -> None:
    """One part of a combination: a name, or a mapping of a name and that encoding's params."""
    if isinstance(value, str):
        return  # unknown names are listed with the valid ones when the encoding is built
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        _fail(path, "an encoding name or a mapping with a 'name' key, e.g. {name: t5}", value)
    params = {k: v for k, v in value.items() if k != "name"}
    check_partial(params, _encoding_defaults(value["name"]), path, tree)


# Keys whose default cannot show their type.
DECLARED: dict[str, Check] = {
    "run_dir": optional(name),
    "threads": optional(integer(minimum=1)),
    "eval.lengths": optional(list_of(integer(minimum=1))),
    "train.betas": list_of(number(minimum=0.0, below=1.0), length=2),
    "eval.threshold": unit_interval,
    "encoding.scaling": optional(name),
    "encoding.label": optional(name),
    "encoding.yarn_original_len": optional(integer(minimum=1)),
    "encoding.parts": list_of(encoding_part),
    "encoding.layers": optional(list_of(encoding_part)),
    "encoding.heads": optional(list_of(encoding_part)),
    "encoding.base_params": encoding_params(lambda tree: tree["encoding"].get("base")),
}


def inferred(default: Any) -> Check | None:
    """The check a default implies; None where any value will do (a null default)."""
    if isinstance(default, bool):
        return boolean
    if isinstance(default, int):
        return integer(minimum=0 if default >= 0 else None)
    if isinstance(default, float):
        return number(minimum=0.0 if default >= 0 else None)
    if isinstance(default, str):
        return name
    if isinstance(default, list):
        elements = [inferred(d) for d in default]
        if default and all(isinstance(d, int) and not isinstance(d, bool) for d in default):
            return list_of(elements[0])
        if default and all(_is_number(d) for d in default):
            return list_of(number(minimum=0.0 if min(default) >= 0 else None))
        if default and all(isinstance(d, str) for d in default):
            return list_of(name)
        return list_of(lambda v, p, t: None)
    return None


def check_tree(value: Any, default: Any, path: str, tree: dict) -> None:
    """Check ``value`` against ``default`` (recursively for mappings)."""
    if path in DECLARED:
        DECLARED[path](value, path, tree)
        return
    if isinstance(default, dict):
        check_mapping(value, default, path, tree)
        return
    check = inferred(default)
    if check is not None:
        check(value, path, tree)


def check_mapping(value: Any, default: dict, path: str, tree: dict) -> None:
    """Same keys as ``default``, each value checked against its default."""
    if not isinstance(value, dict):
        _fail(path, "a mapping", value)
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in default:
            valid = ", ".join(f"{prefix}{k}" for k in default) or "none"
            raise ConfigError(f"unknown key {prefix}{key}; valid keys: {valid}")
    for key in default:
        if key not in value:
            raise ConfigError(f"{prefix}{key} is missing; it has no value to fall back on")
        check_tree(value[key], default[key], f"{prefix}{key}", tree)


def check_partial(value: dict, default: dict, path: str, tree: dict) -> None:
    """Some of ``default``'s keys (the others keep their defaults), each checked."""
    for key in value:
        if key not in default:
            valid = ", ".join(default) or "none"
            raise ConfigError(f"{path} has no key {key!r}; valid keys: {valid}")
        check_tree(value[key], default[key], f"{path}.{key}", tree)


def check_config(cfg: DictConfig, reference: DictConfig) -> None:
    """Raise a one-line `ConfigError` if ``cfg`` breaks the types of ``reference`` (the same
    config groups with no value overridden)."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # an interpolation that cannot resolve
        first = first_line(exc)
        raise ConfigError(f"bad value: {first}") from exc
    defaults = OmegaConf.to_container(reference, resolve=False)
    encoding = tree.get("encoding")
    if isinstance(encoding, dict) and "label" in encoding and isinstance(defaults, dict):
        # `+encoding.label=NAME` names a variant's folder and table row (sweeps, ablations).
        defaults["encoding"].setdefault("label", None)
    check_tree(tree, defaults, "", tree)
