"""Combinations: several encodings at once, their hooks chained (absolute plus relative)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding
from posenc.encodings.registry import build, parse_spec, register
from posenc.errors import ConfigError


def draws_positions(encoding: PositionalEncoding) -> bool:
    """Whether ``encoding`` chooses its own positions (a randomized wrapper, or a combination
    holding one) rather than the default 0, 1, ..., T-1."""
    if isinstance(encoding, Combination):
        return encoding.position_source is not None
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

    Every combination that is well-defined is allowed, including two absolute parts
    (their vectors add up). Refused: fewer than two parts, and more than one part that
    draws its own positions (randomized ones), since the model has a single position
    tensor; with one such part, its positions serve every part.
    ``max_positions`` is the smallest of the parts'.
    """

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
            return super().positions(batch, length, device=device, generator=generator)
        return self.position_source.positions(batch, length, device=device, generator=generator)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        for part in self.parts:
            x = part.embed(x, pos, tokens)
        return x

    def rotate(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> tuple[Tensor, Tensor]:
        for part in self.parts:
            q, k = part.rotate(q, k, pos_q, pos_k, layer=layer)
        return q, k

    def bias(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> Tensor | None:
        total = None
        for part in self.parts:
            b = part.bias(q, k, pos_q, pos_k, layer=layer)
            if b is not None:
                total = b if total is None else total + b
        return total

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parts={'+'.join(self.part_names)}"
