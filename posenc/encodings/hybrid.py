"""Per-layer and per-head schemes: a different encoding for each layer, or each group of heads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, feature_kwargs, softmax_weights
from posenc.encodings.registry import build, parse_spec, parts_graph_break, register
from posenc.errors import ConfigError


def overrides(part: PositionalEncoding, hook: str) -> bool:
    """Whether ``part`` overrides the base class's ``hook``."""
    return getattr(type(part), hook) is not getattr(PositionalEncoding, hook)


def check_attention_level(part: PositionalEncoding, where: str, name: str) -> None:
    """A part of a per-layer or per-head scheme must act inside attention only: absolute
    vectors are added before layer 0 to every head, and drawn or token-derived positions
    are the whole model's (one position tensor)."""
    for hook in ("embed", "positions", "token_positions", "transform", "on_step"):
        if overrides(part, hook):
            raise ConfigError(
                f"{where} is {name!r}, whose {hook} hook acts on the whole model, not one "
                f"{'layer' if 'layers' in where else 'head'}; put it beside the hybrid in a "
                f"combination instead (encoding=combo 'encoding.parts=[{name},{{...}}]')"
            )


def _entry_path(message: str, where: str) -> str:
    """An entry's own error with its keys named from the hybrid: ``encoding.init_s`` ->
    ``encoding.layers[3].init_s``; a message naming no key gets the entry in front."""
    named = re.sub(r"\bencoding\.(?!layers\[|heads\[)", f"{where}.", message)
    return named if named != message else f"{where}: {message}"


def _specs(value: Any, key: str, count: int, count_key: str) -> list[Any]:
    if isinstance(value, str | dict) or not isinstance(value, Sequence):
        raise ConfigError(f"encoding.{key} must be a list of encodings, got {value!r}")
    if len(value) != count:
        raise ConfigError(
            f"encoding.{key} has {len(value)} entries but {count_key}={count}; "
            f"give one encoding per {key[:-1]}"
        )
    return list(value)


@register(
    "per_layer",
    family="combination",
    paper="Llama 4 iRoPE (NoPE every 4th layer); Yang et al. 2025, Rope to Nope and Back Again (RNoPE)",
    description="one encoding per layer, e.g. [rope, rope, rope, none]",
)
class PerLayer(PositionalEncoding):
    """A different encoding in each layer: ``layers`` lists one per layer (names or
    mappings with a ``name``), exactly ``model.n_layers`` of them.

    Layer l calls the hooks of its own entry, built as a one-layer encoding (its parameters
    are its own: two ``t5`` layers do not share a table). The default (``layers: null``)
    is Llama 4's iRoPE interleaving at the model's depth: NoPE in every 4th layer (layers
    4, 8, ... counted from 1), RoPE in the others; ``[rope, rope, rope, none]`` at posenc's
    default 4 layers (at 2 layers it is plain RoPE). Entries act inside attention only: an
    absolute (embed), randomized or token-derived entry is refused, since it would act on
    the whole model; combine it beside the per-layer scheme instead.
    """

    @classmethod
    def graph_break_for(cls, params: dict[str, Any]) -> str | None:
        return parts_graph_break(params.get("layers"))  # null: RoPE and NoPE, which trace

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        layers: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if layers is None:  # Llama 4: NoPE in every 4th layer
            layers = ["none" if (i + 1) % 4 == 0 else "rope" for i in range(n_layers)]
        specs = _specs(layers, "layers", n_layers, "model.n_layers")
        built = []
        for i, spec in enumerate(specs):
            name, params = parse_spec(spec, "every entry of encoding.layers")
            try:
                part = build(
                    name, d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=1, **params
                )
            except ConfigError as exc:  # keep the entry's path: encoding.layers[3].init_s
                raise ConfigError(_entry_path(str(exc), f"encoding.layers[{i}]")) from exc
            check_attention_level(part, f"encoding.layers[{i}]", name)
            built.append(part)
        self.parts = nn.ModuleList(built)
        self.part_names = [parse_spec(s)[0] for s in specs]
        self.data_dependent = any(p.data_dependent for p in built)
        limits = [p.max_positions for p in built if p.max_positions is not None]
        self.max_positions = min(limits) if limits else None

    def rotate(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> tuple[Tensor, Tensor]:
        return self.parts[layer].rotate(q, k, pos_q, pos_k)

    def bias(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> Tensor | None:
        return self.parts[layer].bias(q, k, pos_q, pos_k)

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Any:
        return self.parts[layer].observe(x, past)

    def state_bias(self, state: Any, t_q: int, *, layer: int = 0) -> Tensor | None:
        return self.parts[layer].state_bias(state, t_q)

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor | None:
        return self.parts[layer].query_scale(t_q, t_k)

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor | None:
        return self.parts[layer].attention_weights(q, k, bias, state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layers={','.join(self.part_names)}"


def _per_group(values: list[Tensor | None], sizes: list[int], fill: float) -> Tensor | None:
    """Per-group tensors (B|1, h_g, ...) or None -> one (B, H, ...) tensor along the head
    axis, ``fill`` for the groups that gave None; None if every group gave None."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    batch = max(v.shape[0] for v in present)
    rest = torch.broadcast_shapes(*(v.shape[2:] for v in present))
    dtype = torch.promote_types(present[0].dtype, torch.float32)
    out = []
    for v, size in zip(values, sizes, strict=True):
        if v is None:
            v = torch.full((batch, size, *rest), fill, dtype=dtype, device=present[0].device)
        out.append(v.to(dtype).expand(batch, size, *rest))
    return torch.cat(out, dim=1)


@register(
    "per_head",
    family="combination",
    paper="x-transformers rotate_num_heads (RoPE on some heads, NoPE on the rest); Jelassi et al. 2024",
    description="one encoding per head, e.g. [rope, rope, none, none]; runs of equal entries share a module",
)
class PerHead(PositionalEncoding):
    """A different encoding for each head: ``heads`` lists one per head (names or mappings
    with a ``name``), exactly ``model.n_heads`` of them.

    Consecutive equal entries form a group, built as one encoding over that many heads
    (so ``alibi`` on two heads gets the two-head slopes; per-layer parameters stay per
    layer). Each hook runs per group on its slice of the heads: rotations per slice,
    biases, scales and states per group (heads of a group without one get 0, 1, none).
    If any group computes its own attention weights (stick-breaking, PaTH), the other
    groups' softmax weights are written out beside them for that layer (no fused kernel);
    otherwise the fused path stays. The default (``heads: null``) is x-transformers'
    ``rotate_num_heads`` at half the heads: RoPE on the first ⌈H/2⌉, NoPE on the rest
    (``[rope, rope, none, none]`` for 4 heads). x-transformers rotates the *last*
    ``rotate_num_heads`` heads (``q[:, -rotate_num_heads:]``, read in its
    ``x_transformers.py``) and has no default count; which heads does not matter, as heads
    are interchangeable (initialised independently, summed by the output projection), so
    posenc lists them first for readability. Entries act inside attention
    only (no absolute, randomized or token-derived entries).
    """

    @classmethod
    def graph_break_for(cls, params: dict[str, Any]) -> str | None:
        return parts_graph_break(params.get("heads"))  # null: RoPE and NoPE, which trace

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        heads: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if heads is None:  # RoPE on the first half of the heads, NoPE on the rest
            heads = ["rope" if h < (n_heads + 1) // 2 else "none" for h in range(n_heads)]
        specs = _specs(heads, "heads", n_heads, "model.n_heads")
        groups: list[list[Any]] = []
        for spec in specs:
            if groups and groups[-1][0] == spec:
                groups[-1].append(spec)
            else:
                groups.append([spec])
        built, self.sizes = [], []
        start = 0
        for group in groups:
            name, params = parse_spec(group[0], "every entry of encoding.heads")
            size = len(group)
            try:
                part = build(
                    name,
                    d_model=size * self.d_head,
                    n_heads=size,
                    max_len=max_len,
                    n_layers=n_layers,
                    d_input=d_model,  # data-dependent parts read the whole hidden state
                    **params,
                )
            except ConfigError as exc:  # keep the entry's path: encoding.heads[2].base
                raise ConfigError(_entry_path(str(exc), f"encoding.heads[{start}]")) from exc
            check_attention_level(part, f"encoding.heads[{start}]", name)
            built.append(part)
            self.sizes.append(size)
            start += size
        self.parts = nn.ModuleList(built)
        self.part_names = [parse_spec(g[0])[0] for g in groups]
        widened = [n for n, p in zip(self.part_names, built, strict=True) if p.widens_heads]
        if widened and len(widened) < len(built):
            raise ConfigError(
                f"encoding.heads mixes {widened[0]!r}, whose queries and keys are wider than the "
                "head, with encodings of the plain width; a layer's heads share one width: use "
                f"{widened[0]!r} on every head or on none"
            )
        self.widens_heads = bool(widened)
        self.data_dependent = any(p.data_dependent for p in built)
        limits = [p.max_positions for p in built if p.max_positions is not None]
        self.max_positions = min(limits) if limits else None

    def _split(self, t: Tensor | None) -> list[Tensor | None]:
        if t is None:
            return [None] * len(self.sizes)
        if t.shape[1] == 1:
            return [t] * len(self.sizes)
        return list(t.split(self.sizes, dim=1))

    def features(self, pos_q: Tensor, pos_k: Tensor) -> list[Any] | None:
        """Each group's features (None where it has none), or None: every layer uses every
        group, so they are computed once per forward pass like a single encoding's."""
        parts = [part.features(pos_q, pos_k) for part in self.parts]
        return None if all(f is None for f in parts) else parts

    def rotate(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: list[Any] | None = None,
    ) -> tuple[Tensor, Tensor]:
        given = features or [None] * len(self.parts)
        pairs = [
            part.rotate(qg, kg, pos_q, pos_k, layer=layer, **feature_kwargs(part, "rotate", f))
            for part, qg, kg, f in zip(
                self.parts, q.split(self.sizes, 1), k.split(self.sizes, 1), given, strict=True
            )
        ]
        return torch.cat([p[0] for p in pairs], 1), torch.cat([p[1] for p in pairs], 1)

    def bias(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: list[Any] | None = None,
    ) -> Tensor | None:
        given = features or [None] * len(self.parts)
        values = [
            part.bias(qg, kg, pos_q, pos_k, layer=layer, **feature_kwargs(part, "bias", f))
            for part, qg, kg, f in zip(
                self.parts, q.split(self.sizes, 1), k.split(self.sizes, 1), given, strict=True
            )
        ]
        out = _per_group(values, self.sizes, 0.0)
        return None if out is None else out.to(q.dtype)

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Any:
        past = past if past is not None else [None] * len(self.parts)
        states = [part.observe(x, p, layer=layer) for part, p in zip(self.parts, past, strict=True)]
        return None if all(s is None for s in states) else states

    def state_bias(self, state: Any, t_q: int, *, layer: int = 0) -> Tensor | None:
        if state is None:
            return None
        values = [p.state_bias(s, t_q, layer=layer) for p, s in zip(self.parts, state, strict=True)]
        return _per_group(values, self.sizes, 0.0)

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor | None:
        values = [part.query_scale(t_q, t_k, layer=layer) for part in self.parts]
        values = [
            None if v is None else v.expand(v.shape[0], size, t_q, 1)
            for v, size in zip(values, self.sizes, strict=True)
        ]
        return _per_group(values, self.sizes, 1.0)

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor | None:
        states = state if state is not None else [None] * len(self.parts)
        qs, ks, biases = q.split(self.sizes, 1), k.split(self.sizes, 1), self._split(bias)
        weights = [
            part.attention_weights(qg, kg, bg, sg, layer=layer)
            for part, qg, kg, bg, sg in zip(self.parts, qs, ks, biases, states, strict=True)
        ]
        if all(w is None for w in weights):
            return None  # every group is softmax: the fused kernel
        return torch.cat(
            [
                (softmax_weights(qg, kg, bg) if w is None else w)
                .float()
                .expand(q.shape[0], -1, -1, -1)
                for w, qg, kg, bg in zip(weights, qs, ks, biases, strict=True)
            ],
            dim=1,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={','.join(self.part_names)}"
