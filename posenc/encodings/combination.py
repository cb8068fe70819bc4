"""Combinations: several encodings at once, their hooks chained (absolute plus relative)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from posenc.encodings.base import DigitLayout, PositionalEncoding, feature_kwargs
from posenc.encodings.registry import build, parse_spec, parts_graph_break, register
from posenc.errors import ConfigError


def _own_weights(encoding: PositionalEncoding) -> bool:
    """Whether ``encoding`` may compute its own attention weights (overrides the hook)."""
    return type(encoding).attention_weights is not PositionalEncoding.attention_weights


def draws_positions(encoding: PositionalEncoding) -> bool:
    """Whether ``encoding`` chooses its own sequence positions (a randomized wrapper, or a
    combination holding one) rather than the default 0, 1, ..., T-1. Encodings that place
    tokens by what they are (``places_by_token``) draw only their own offsets: not counted."""
    if isinstance(encoding, Combination):
        return encoding.position_source is not None
    if encoding.places_by_token:
        return False
    return type(encoding).positions is not PositionalEncoding.positions


@register(
    "combo",
    family="combination",
    paper="posenc composite; absolute plus relative as tried by Shaw et al. 2018",
    description="several encodings at once with their hooks chained, e.g. learned + t5",
)
class Combination(PositionalEncoding):
    """Any encodings at once: ``parts`` (names, or mappings of a name and its parameters).

    embed: x -> part_n.embed(... part_1.embed(x)); rotate: applied part by part in order;
    bias: the sum of the parts' biases (None if none has one). So ``[learned, t5]`` adds
    learned absolute vectors to the tokens and T5 biases to the logits, ``[sinusoidal,
    rope]`` rotates queries and keys of a model that also has absolute vectors. A bias that
    reads queries and keys (shaw, transformer_xl, cope) sees them after every rotation.
    Hidden states: ``transform`` applies the parts in order, one state per part
    (``[canon, rope]``: Canon layers with RoPE). Inside attention: observe keeps one state per part, state biases add up, query scales
    multiply (``[rope, ssmax]``: RoPE with SSMax), and at most one part may compute its own
    attention weights (stick-breaking, PaTH), which then receive the other parts' biases.

    Every combination that is well-defined is allowed, including two absolute parts
    (their vectors add up). Refused: fewer than two parts, and more than one part that
    draws its own positions (randomized ones), since the model has a single position
    tensor; with one such part, its positions serve every part.
    ``max_positions`` is the smallest of the parts'.

    Parts that place tokens by what they are (abacus, coupled: ``places_by_token``) need
    positions of their own beside the sequence positions the other parts read, so a
    combination holding one keeps one channel per part: its positions are (B, T, parts),
    part i draws and derives channel i and its hooks receive ``pos[..., i]``. The other
    parts' channels all hold the shared sequence positions. Explicit (B, T) positions given
    to such a combination are sequence positions for every part (no offsets).
    """

    @classmethod
    def graph_break_for(cls, params: dict[str, Any]) -> str | None:
        return parts_graph_break(params.get("parts"))

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        parts: Sequence[Any] = ("learned", "t5"),
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if isinstance(parts, str | dict) or not isinstance(parts, Sequence) or len(parts) < 2:
            raise ConfigError(
                f"encoding.parts must list at least two encodings, e.g. [learned,t5]; got {parts!r}"
            )
        built = []
        for spec in parts:
            name, params = parse_spec(spec, "every entry of encoding.parts")
            built.append(
                build(
                    name,
                    d_model=d_model,
                    n_heads=n_heads,
                    max_len=max_len,
                    n_layers=n_layers,
                    **params,
                )
            )
        self.parts = nn.ModuleList(built)
        self.part_names = [parse_spec(spec)[0] for spec in parts]
        sources = [p for p in built if draws_positions(p)]
        if len(sources) > 1:
            raise ConfigError(
                "encoding.parts has more than one part that draws its own positions "
                f"({', '.join(n for n, p in zip(self.part_names, built, strict=True) if p in sources)}); "
                "a model has a single position tensor: randomize at most one part, or wrap the "
                "whole combination (encoding=randomized encoding.base=combo)"
            )
        self.position_source = sources[0] if sources else None
        own = [n for n, p in zip(self.part_names, built, strict=True) if _own_weights(p)]
        if len(own) > 1:
            raise ConfigError(
                f"encoding.parts has more than one part that computes its own attention weights "
                f"({', '.join(own)}); a layer has one attention: keep one of them"
            )
        first_wide = next((i for i, p in enumerate(built) if p.widens_heads), len(built))
        later = [
            self.part_names[i]
            for i in range(first_wide + 1, len(built))
            if type(built[i]).rotate is not PositionalEncoding.rotate
        ]
        if later:
            raise ConfigError(
                f"encoding.parts rotates with {later[0]!r} after {self.part_names[first_wide]!r}, "
                "whose queries and keys are wider than the head; list it last among the parts "
                "that rotate"
            )
        self.widens_heads = first_wide < len(built)
        self.data_dependent = any(p.data_dependent for p in built)
        self.places_by_token = any(p.places_by_token for p in built)
        limits = [p.max_positions for p in built if p.max_positions is not None]
        self.max_positions = min(limits) if limits else None

    def positions(
        self,
        batch: int,
        length: int,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if self.position_source is None:
            shared = super().positions(batch, length, device=device, generator=generator)
        else:
            shared = self.position_source.positions(
                batch, length, device=device, generator=generator
            )
        if not self.places_by_token:
            return shared
        channels = [
            p.positions(batch, length, device=device, generator=generator)
            if p.places_by_token
            else shared
            for p in self.parts
        ]
        return torch.stack(channels, dim=-1)  # (B, T, parts)

    def _channel(self, pos: Tensor, i: int) -> Tensor:
        return pos[..., i] if self.places_by_token and pos.dim() == 3 else pos

    def token_positions(self, tokens: Tensor, pos: Tensor) -> Tensor:
        if not self.places_by_token:
            return pos
        return torch.stack(
            [p.token_positions(tokens, self._channel(pos, i)) for i, p in enumerate(self.parts)],
            dim=-1,
        )

    def bind_task(self, layout: DigitLayout) -> None:
        for part in self.parts:
            part.bind_task(layout)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        for i, part in enumerate(self.parts):
            x = part.embed(x, self._channel(pos, i), tokens)
        return x

    def features(self, pos_q: Tensor, pos_k: Tensor) -> list[Any] | None:
        """Each part's features of its own channel (None where it has none), or None."""
        parts = [
            part.features(self._channel(pos_q, i), self._channel(pos_k, i))
            for i, part in enumerate(self.parts)
        ]
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
        for i, part in enumerate(self.parts):
            extra = feature_kwargs(part, "rotate", features[i] if features else None)
            q, k = part.rotate(
                q, k, self._channel(pos_q, i), self._channel(pos_k, i), layer=layer, **extra
            )
        return q, k

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
        total = None
        for i, part in enumerate(self.parts):
            extra = feature_kwargs(part, "bias", features[i] if features else None)
            b = part.bias(
                q, k, self._channel(pos_q, i), self._channel(pos_k, i), layer=layer, **extra
            )
            if b is not None:
                total = b if total is None else total + b
        return total

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Any:
        past = past if past is not None else [None] * len(self.parts)
        states = [part.observe(x, p, layer=layer) for part, p in zip(self.parts, past, strict=True)]
        return None if all(s is None for s in states) else states

    def state_bias(self, state: Any, t_q: int, *, layer: int = 0) -> Tensor | None:
        if state is None:
            return None
        total = None
        for part, s in zip(self.parts, state, strict=True):
            b = part.state_bias(s, t_q, layer=layer)
            if b is not None:
                total = b if total is None else total + b
        return total

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor | None:
        total = None
        for part in self.parts:
            s = part.query_scale(t_q, t_k, layer=layer)
            if s is not None:
                total = s if total is None else total * s
        return total

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor | None:
        states = state if state is not None else [None] * len(self.parts)
        for part, s in zip(self.parts, states, strict=True):
            w = part.attention_weights(q, k, bias, s, layer=layer)
            if w is not None:
                return w
        return None

    def transform(
        self, x: Tensor, site: str, past: Any = None, *, layer: int = 0
    ) -> tuple[Tensor, Any]:
        past = past if past is not None else [None] * len(self.parts)
        states = []
        for part, p in zip(self.parts, past, strict=True):
            x, s = part.transform(x, site, p, layer=layer)
            states.append(s)
        return x, None if all(s is None for s in states) else states

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parts={'+'.join(self.part_names)}"
