"""The registry of positional encodings: names, descriptions, and `build`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from posenc.encodings.base import PositionalEncoding
from posenc.errors import ConfigError


@dataclass(frozen=True)
class EncodingInfo:
    name: str
    cls: type[PositionalEncoding]
    # "none", "absolute", "rotary", "bias", "combination", "wrapper", "data-dependent",
    # "attention" (its own weights), "scale" (query scaling)
    family: str
    hooks: tuple[str, ...]  # which of the hooks in `HOOKS` it overrides
    paper: str
    description: str


_REGISTRY: dict[str, EncodingInfo] = {}

HOOKS = (
    "positions",
    "token_positions",
    "embed",
    "rotate",
    "bias",
    "observe",
    "state_bias",
    "query_scale",
    "attention_weights",
    "transform",
    "on_step",
)


def register(name: str, *, family: str, paper: str, description: str):
    """Class decorator: register an encoding under ``name``."""

    def wrap(cls: type[PositionalEncoding]) -> type[PositionalEncoding]:
        if name in _REGISTRY:
            raise ValueError(f"encoding {name!r} is registered twice")
        hooks = tuple(
            hook for hook in HOOKS if getattr(cls, hook) is not getattr(PositionalEncoding, hook)
        )
        _REGISTRY[name] = EncodingInfo(name, cls, family, hooks, paper, description)
        cls.name = name
        return cls

    return wrap


def names() -> list[str]:
    """Every registered encoding name, sorted."""
    return sorted(_REGISTRY)


def info(name: str) -> EncodingInfo:
    """The registry entry for ``name``; a `ConfigError` naming the valid choices if unknown."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown encoding {name!r}; valid choices: {', '.join(names())}")
    return _REGISTRY[name]


def parameters(name: str) -> dict[str, Any]:
    """The encoding's own hyperparameters and their defaults."""
    sig = inspect.signature(info(name).cls.__init__)
    common = {"self", "d_model", "n_heads", "max_len", "n_layers", "d_input"}
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in common and p.kind is p.KEYWORD_ONLY
    }


def build(
    name: str,
    *,
    d_model: int,
    n_heads: int,
    max_len: int,
    n_layers: int = 1,
    d_input: int | None = None,
    **params: Any,
) -> PositionalEncoding:
    """Build the encoding ``name`` for a model of this shape.

    ``params`` are the encoding's own hyperparameters (see ``parameters(name)``); an
    unknown one raises a `ConfigError` that lists the valid ones. ``d_input``: the width
    of the hidden states ``observe`` reads, when the encoding serves only some of the heads
    (``per_head``); passed to encodings that take it, else ``d_model``.
    """
    entry = info(name)
    if d_model <= 0 or n_heads <= 0 or d_model % n_heads:
        raise ConfigError(
            f"model.d_model={d_model} must be a positive multiple of model.n_heads={n_heads}"
        )
    valid = parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        choices = ", ".join(sorted(valid)) or "none"
        raise ConfigError(
            f"encoding {name!r} has no parameter {unknown[0]!r}; valid parameters: {choices}"
        )
    if d_input is not None and "d_input" in inspect.signature(entry.cls.__init__).parameters:
        params["d_input"] = d_input
    return entry.cls(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers, **params)


def register_plugin(name: str, obj: Any, dist: str) -> None:
    """Register the class an installed package declares under entry point ``name``
    (`posenc.plugins`); raises for one that is not an encoding or takes a built-in's name."""
    if not (isinstance(obj, type) and issubclass(obj, PositionalEncoding)):
        raise TypeError(f"{obj!r} is not a subclass of posenc.encodings.PositionalEncoding")
    known = _REGISTRY.get(name)
    if known is not None:
        if known.cls is not obj:
            raise ValueError(f"the name {name!r} is taken by {known.cls.__module__}")
        return
    doc = (inspect.getdoc(obj) or "").strip().splitlines()
    register(
        name,
        family=str(getattr(obj, "family", None) or "plugin"),
        paper=str(getattr(obj, "paper", None) or f"plugin from {dist}"),
        description=str(getattr(obj, "description", None) or (doc[0] if doc else "")),
    )(obj)


def parse_spec(spec: Any, what: str = "encoding part") -> tuple[str, dict[str, Any]]:
    """An encoding given as a name (``"t5"``) or a mapping (``{"name": "t5", "num_buckets": 16}``)
    -> (name, params)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        params = dict(spec)
        return params.pop("name"), params
    raise ConfigError(
        f"{what} must be an encoding name or a mapping with a 'name' key, e.g. "
        f"{{name: t5, num_buckets: 16}}; got {spec!r}"
    )


def graph_break(spec: Any) -> str | None:
    """Why the encoding ``spec`` names (a name or a mapping, `parse_spec`) cannot trace as one
    graph under torch.compile (`PositionalEncoding.graph_break`), or None. A spec that cannot
    be read, or names no encoding, gives None: building it raises the error that says so."""
    try:
        name, params = parse_spec(spec)
        cls = info(name).cls
    except ConfigError:
        return None
    return cls.graph_break_for(params)


def parts_graph_break(specs: Any) -> str | None:
    """A composite's `graph_break`: that of its first part that breaks the graph, naming the
    part (``part transformer_xl: ...``), or None (also for ``specs`` that are not a list)."""
    if isinstance(specs, str | dict) or not isinstance(specs, list | tuple):
        return None
    for spec in specs:
        reason = graph_break(spec)
        if reason:
            return f"part {parse_spec(spec)[0]}: {reason}"
    return None


def from_config(cfg, legacy: dict[str, Any] | None = None) -> PositionalEncoding:
    """The encoding of a posenc config: ``encoding.*`` sized by ``model.*``. A parameter the
    config lacks (one saved before the parameter existed) takes its value in ``legacy`` (the
    caller's, e.g. a run folder's) or the class's own ``legacy_params``."""
    from posenc.schema import encoding_params

    m = cfg.model
    name = cfg.encoding.name
    params = encoding_params(cfg.encoding)
    legacy = {**(legacy or {}), **info(name).cls.legacy_params}
    valid = parameters(name)
    for key, value in legacy.items():  # a config saved without the parameter
        if key in valid:
            params.setdefault(key, value)
    return build(
        name,
        d_model=m.d_model,
        n_heads=m.n_heads,
        max_len=m.max_len,
        n_layers=m.n_layers,
        **params,
    )
