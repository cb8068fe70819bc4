"""Every check of a config against itself, each failing with a one-line `ConfigError` that
names the key, the bad value and what is valid.

The typed sections (``model``, ``train``, ``eval`` and the root keys, `posenc.schema`) get
their types from OmegaConf while composing; here they get their ranges (`check_values`):
no negative count, finite numbers, ``train.min_len <= train.max_len``, a head count that
divides the width, a known ``train.batching``... The open sections (``encoding``, ``task``)
are typed by their own YAML's defaults (`check_open_sections`): a value must have the type
of its default, must not be negative where the default is not, and must not add or remove
keys. What depends on the task, the encoding or the machine (a length the task cannot make,
a model that does not fit in memory, a CUDA device) is `posenc.run.planning`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posenc.errors import ConfigError, first_line
from posenc.runfolder import RETIRED_KEYS
from posenc.schema import BATCHING, EMBED_INITS, MIXERS, PRECISIONS, SECTIONS, SWITCH_OR_AUTO, Root

# The largest integer torch, numpy and the OS accept as a seed, a size or a count.
MAX_INT = 2**63 - 1
# The largest float32: parameters and buffers are float32, and torch refuses a larger
# Python float with a traceback ("value cannot be converted to type float without overflow").
MAX_FLOAT = 3.4028234663852886e38
MAX_THREADS = 1024  # torch takes a C int; more threads than this is a typo
DEVICES = "cpu, cuda, cuda:N, auto"

Check = Callable[[Any, str, dict], None]  # (value, dotted key, the whole config) -> None or raise


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # OmegaConf makes a float key's 2 into 2.0: show what was typed
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


def number(*, minimum: float | None = None, below: float | None = None) -> Check:
    def check(value: Any, path: str, tree: dict) -> None:
        if not _is_number(value) or not math.isfinite(value):
            _fail(path, "a finite number", value)
        if abs(value) > MAX_FLOAT:
            _fail(path, f"a number of magnitude at most {MAX_FLOAT:.4g} (float32)", value)
        if minimum is not None and value < minimum:
            _fail(path, f"a number >= {minimum}", value)
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


def switch_or_auto(value: Any, path: str, tree: dict) -> None:
    """True, false or ``auto`` (`posenc.schema.SWITCH_OR_AUTO`)."""
    if not any(value is v if isinstance(v, bool) else value == v for v in SWITCH_OR_AUTO):
        _fail(path, "true, false or auto", value)


def name(value: Any, path: str, tree: dict) -> None:
    """A string; an integer also names a folder (``experiment=2024``)."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        _fail(path, "a non-empty name", value)


def choice(options: tuple[str, ...]) -> Check:
    def check(value: Any, path: str, tree: dict) -> None:
        if value not in options:
            raise ConfigError(f"unknown {path} {value!r}; valid choices: {', '.join(options)}")

    return check


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


# ---------------------------------------------------------------- the typed sections

# Keys whose check replaces the one their default implies (`inferred`).
DECLARED: dict[str, Check] = {
    "model.dropout": number(minimum=0.0, below=1.0),
    "model.embed_init": choice(EMBED_INITS),
    "model.mixers": optional(list_of(choice(MIXERS))),
    "train.betas": list_of(number(minimum=0.0, below=1.0), length=2),
    "train.batching": choice(BATCHING),
    "train.precision": choice(PRECISIONS),
    "train.compile": switch_or_auto,
    "train.fused_adamw": switch_or_auto,
    "train.eval_lengths": list_of(integer(minimum=1)),
    "eval.lengths": optional(list_of(integer(minimum=1))),
    "eval.threshold": unit_interval,
    "train.max_steps": optional(integer(minimum=1)),
    "eval.val_share": number(minimum=0.0, below=1.0),
    "run_dir": optional(name),
    "threads": optional(integer(minimum=1)),
}
# Counts and lengths that must be at least 1 (checked after their type and sign).
POSITIVE = (
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.d_ff",
    "model.max_len",
    "train.steps",
    "train.batch_size",
    "train.min_len",
    "train.max_len",
    "train.buckets",
    "eval.min_len",
    "eval.max_len",
    "eval.n_samples",
    "eval.val_samples",
    "eval.batch_size",
)


def _typed_keys() -> list[tuple[str, Any]]:
    """(dotted key, default) of every key of the typed sections, in config order."""
    keys = []
    for f in fields(Root):
        if f.name in SECTIONS:
            keys += [(f"{f.name}.{g.name}", _default(g)) for g in fields(SECTIONS[f.name])]
        elif f.name not in ("encoding", "task", "paper"):
            keys.append((f.name, _default(f)))
    return keys


def _default(f) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default


def check_values(cfg: DictConfig) -> None:
    """The ranges of the typed sections and the values that depend on each other."""
    tree = _container(cfg)
    _check_keys(tree)
    for key, default in _typed_keys():
        section, _, leaf = key.rpartition(".")
        part = tree[section] if section else tree
        if leaf not in part:  # removed by a ~key override (Hydra allows it on the root)
            raise ConfigError(f"{key} cannot be deleted: every run needs a value")
        value = part[leaf]
        check = DECLARED.get(key) or inferred(default)
        if check is not None:
            check(value, key, tree)
        if key in POSITIVE:
            integer(minimum=1)(value, key, tree)
    _check_lengths(tree)
    _check_model(tree["model"])
    _check_schedule(tree["train"])
    _check_machine(tree)


def unknown_key(key: str) -> str:
    """The one line for a key the schema lacks (``train.momentum`` or a top-level one):
    the section's valid keys, or what replaced a retired key."""
    if key in RETIRED_KEYS:
        return f"unknown key {key}: {RETIRED_KEYS[key]}"
    section, _, _ = key.rpartition(".")
    known = [f.name for f in fields(SECTIONS[section] if section else Root)]
    prefix = f"{section}." if section else ""
    return f"unknown key {key}; valid keys: {', '.join(prefix + k for k in known)}"


def _check_keys(tree: dict) -> None:
    """No key that the schema lacks (``+train.momentum=0.9`` adds one past OmegaConf)."""
    for section, part in [("", tree), *((s, tree[s]) for s in SECTIONS)]:
        known = [f.name for f in fields(SECTIONS[section] if section else Root)]
        prefix = f"{section}." if section else ""
        for key in part:
            if key not in known:
                raise ConfigError(unknown_key(prefix + key))


def _check_lengths(tree: dict) -> None:
    tr, ev = tree["train"], tree["eval"]
    if tr["min_len"] > tr["max_len"]:
        raise ConfigError(
            f"train.min_len={tr['min_len']} is greater than train.max_len={tr['max_len']}"
        )
    if ev["lengths"] is not None and not ev["lengths"]:
        raise ConfigError("eval.lengths is an empty list; give at least one length or null")
    if ev["lengths"] is None and ev["min_len"] > ev["max_len"]:
        raise ConfigError(
            f"eval.min_len={ev['min_len']} is greater than eval.max_len={ev['max_len']}"
        )


def _check_model(m: dict) -> None:
    mixers = m["mixers"]
    if mixers is not None and len(mixers) not in (1, m["n_layers"]):
        raise ConfigError(
            f"model.mixers has {len(mixers)} entries but model.n_layers={m['n_layers']}; give "
            "one mixer for every layer (e.g. [delta]) or one per layer"
        )
    if m["d_model"] % m["n_heads"]:
        valid = (h for h in range(1, min(m["d_model"], 64) + 1) if m["d_model"] % h == 0)
        raise ConfigError(
            f"model.d_model={m['d_model']} is not divisible by model.n_heads={m['n_heads']}; "
            f"valid n_heads: {', '.join(str(h) for h in valid)}"
        )


def _check_schedule(tr: dict) -> None:
    if not tr["lr"] > 0:
        raise ConfigError(f"train.lr must be > 0, got {tr['lr']}")
    stop_at = tr["stop_at"]
    if stop_at is not None:
        if not 0 < stop_at <= 1:
            raise ConfigError(f"train.stop_at must be in (0, 1] or null, got {stop_at}")
        if not tr["eval_every"]:
            raise ConfigError("train.stop_at needs quick evaluations; set train.eval_every > 0")
    if tr["max_steps"] is not None and tr["max_steps"] < tr["steps"]:
        raise ConfigError(
            f"train.max_steps={tr['max_steps']} is below train.steps={tr['steps']}; the "
            "ceiling of until_fit is past train.steps: raise it (null: 4 x train.steps)"
        )


def _check_machine(tree: dict) -> None:
    threads, device = tree["threads"], str(tree["device"])
    if threads is not None and threads > MAX_THREADS:
        raise ConfigError(f"threads must be at most {MAX_THREADS}, got {threads}")
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}; valid choices: {DEVICES}")


def _container(cfg: DictConfig) -> dict:
    try:
        tree = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # an interpolation that cannot resolve
        raise ConfigError(f"bad value: {first_line(exc)}") from exc
    assert isinstance(tree, dict)
    return tree


# ---------------------------------------------------------------- the open sections


def inferred(default: Any) -> Check | None:
    """The check a default implies; None where any value will do (a null default, or a
    required parameter's ``???``: its constructor checks it). A number whose default is
    >= 0 takes no negative value (docs/extending.md: a default < 0 allows them)."""
    if isinstance(default, bool):
        return boolean
    if default == "???":
        return None
    if isinstance(default, int):
        return _non_negative(integer(minimum=0)) if default >= 0 else integer()
    if isinstance(default, float):
        return _non_negative(number(minimum=0.0)) if default >= 0 else number()
    if isinstance(default, str):
        return name
    if isinstance(default, list):
        if default and all(isinstance(d, int) and not isinstance(d, bool) for d in default):
            return list_of(integer(minimum=0 if min(default) >= 0 else None))
        if default and all(_is_number(d) for d in default):
            return list_of(number(minimum=0.0 if min(default) >= 0 else None))
        if default and all(isinstance(d, str) for d in default):
            return list_of(name)
        return list_of(lambda v, p, t: None)
    return None


def _non_negative(check: Check) -> Check:
    """``check``, its refusal of a negative value saying which rule refused it."""

    def checked(value: Any, path: str, tree: dict) -> None:
        try:
            check(value, path, tree)
        except ConfigError as exc:
            if _is_number(value) and value < 0:
                raise ConfigError(
                    f"{exc} (its default is >= 0, so posenc takes it as non-negative; one that "
                    "may be negative has a negative or null default: docs/extending.md)"
                ) from None
            raise

    return checked


# Encoding parameters whose constructor refuses more than their default's sign implies
# (zero, or anything up to 1): checked here with the constructor's own bound, so a negative
# value is not told ">= 0.0" only for a zero to be refused next.
# (encoding name, key) -> (lower bound, whether the bound itself is refused).
LOWER_BOUNDS: dict[tuple[str, str], tuple[float, bool]] = {
    ("abacus", "init_std"): (0, True), ("coupled", "init_std"): (0, True),
    ("fire", "init_c"): (0, True), ("fire", "init_L"): (0, True),
    ("ssmax", "init_s"): (0, True), ("polynomial", "span"): (0, True),
    ("xpos", "scale_base"): (0, True), ("xpos", "gamma"): (0, True),
    ("sinusoidal", "amplitude"): (0, True),
    ("rope", "base"): (1, True), ("xpos", "base"): (1, True), ("p_rope", "base"): (1, True),
    ("sinusoidal", "base"): (1, True), ("rope", "scaling_factor"): (1, False),
}  # fmt: skip
# A per-layer scheme inside a per-layer entry (or per-head inside per-head) would build
# silently as a one-layer (one-head) copy of itself: never what was meant.
NESTING = {"encoding.layers": "per_layer", "encoding.heads": "per_head"}


def _lower_bound(owner: Any, key: str, value: Any, path: str) -> None:
    bound = LOWER_BOUNDS.get((owner, key))
    if bound is None or not _is_number(value):
        return
    least, strict = bound
    if value < least or (strict and value == least):
        _fail(path, f"a number {'>' if strict else '>='} {least:g}", value)


class OpenSections:
    """The checks of ``encoding.*`` and ``task.*`` against the defaults of their YAMLs;
    ``encoding_defaults(name)`` gives an encoding's defaults (a combination's parts)."""

    def __init__(self, encoding_defaults: Callable[[str], dict]) -> None:
        self.encoding_defaults = encoding_defaults
        # Keys whose default cannot show their type.
        self.declared: dict[str, Check] = {
            "encoding.scaling": optional(name),
            "encoding.label": optional(name),
            "encoding.yarn_original_len": optional(integer(minimum=1)),
            "encoding.parts": list_of(self.encoding_part),
            "encoding.layers": optional(list_of(self.entry_of("per_layer"))),
            "encoding.heads": optional(list_of(self.entry_of("per_head"))),
            "encoding.base_params": self.base_params,
        }

    def encoding_part(self, value: Any, path: str, tree: dict) -> None:
        """One part of a combination: a name, or a mapping of a name and that encoding's
        params."""
        if isinstance(value, str):
            return  # unknown names are listed with the valid ones when the encoding is built
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            _fail(path, "an encoding name or a mapping with a 'name' key, e.g. {name: t5}", value)
        params = {k: v for k, v in value.items() if k != "name"}
        self.partial(params, self.encoding_defaults(value["name"]), path, tree, value["name"])

    def entry_of(self, outer: str) -> Check:
        """An entry of ``outer``'s list (per_layer's layers, per_head's heads): a part, but
        not ``outer`` itself (`NESTING`)."""

        def check(value: Any, path: str, tree: dict) -> None:
            inner = value.get("name") if isinstance(value, dict) else value
            if inner == outer:
                what = "layer" if outer == "per_layer" else "head"
                raise ConfigError(
                    f"{path} is {outer!r} inside {outer!r}: each entry is one {what}'s own "
                    f"encoding; give a plain encoding such as rope or none"
                )
            self.encoding_part(value, path, tree)

        return check

    def base_params(self, value: Any, path: str, tree: dict) -> None:
        """A randomized encoding's ``base_params``, typed by its base encoding's YAML."""
        if not isinstance(value, dict):
            _fail(path, "a mapping, e.g. {num_buckets: 16}", value)
        base = tree["encoding"].get("base")
        if isinstance(base, str):  # a bad base is reported by its own check
            self.partial(value, self.encoding_defaults(base), path, tree)

    def tree(self, value: Any, default: Any, path: str, tree: dict) -> None:
        """Check ``value`` against ``default`` (recursively for mappings)."""
        if path in self.declared:
            self.declared[path](value, path, tree)
        elif isinstance(default, dict):
            self.mapping(value, default, path, tree)
        elif (check := inferred(default)) is not None:
            check(value, path, tree)

    def mapping(self, value: Any, default: dict, path: str, tree: dict) -> None:
        """Same keys as ``default``, each value checked against its default."""
        if not isinstance(value, dict):
            _fail(path, "a mapping", value)
        for key in value:
            if key not in default:
                valid = ", ".join(f"{path}.{k}" for k in default) or "none"
                raise ConfigError(f"unknown key {path}.{key}; valid keys: {valid}")
        for key in default:
            if key not in value:
                raise ConfigError(f"{path}.{key} is missing; it has no value to fall back on")
            if path == "encoding":
                _lower_bound(value.get("name"), key, value[key], f"{path}.{key}")
            self.tree(value[key], default[key], f"{path}.{key}", tree)

    def partial(
        self, value: dict, default: dict, path: str, tree: dict, owner: str | None = None
    ) -> None:
        """Some of ``default``'s keys (the others keep their defaults), each checked;
        ``owner``: the encoding they belong to (a combination's part)."""
        for key in value:
            if key not in default:
                valid = ", ".join(default) or "none"
                raise ConfigError(f"{path} has no key {key!r}; valid keys: {valid}")
            _lower_bound(owner, key, value[key], f"{path}.{key}")
            self.tree(value[key], default[key], f"{path}.{key}", tree)


def check_open_sections(
    cfg: DictConfig, reference: DictConfig, encoding_defaults: Callable[[str], dict]
) -> None:
    """``encoding.*`` and ``task.*`` of ``cfg`` against ``reference`` (the same encoding and
    task with no value overridden)."""
    tree = _container(cfg)
    defaults = OmegaConf.to_container(reference, resolve=False)
    assert isinstance(defaults, dict)
    if isinstance(tree["encoding"], dict) and "label" in tree["encoding"]:
        # `+encoding.label=NAME` names a variant's folder and table row (sweeps, ablations).
        defaults["encoding"].setdefault("label", None)
    checks = OpenSections(encoding_defaults)
    for section in ("encoding", "task"):
        checks.tree(tree[section], defaults[section], section, tree)
