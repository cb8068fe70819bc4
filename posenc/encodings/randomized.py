"""Randomized positions (Ruoss et al. 2023): a wrapper that only changes ``positions``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc.encodings.base import DigitLayout, PositionalEncoding, feature_kwargs
from posenc.encodings.combination import draws_positions
from posenc.encodings.registry import build, info, parts_graph_break, register
from posenc.errors import ConfigError

EVAL_MODES = ("random", "contiguous")
# Families whose hooks read the positions; the others would ignore randomized ones.
POSITIONAL_FAMILIES = ("absolute", "rotary", "bias", "combination")


def random_positions(
    batch: int,
    length: int,
    max_position: int,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """A sorted random ``length``-subset of [0, max_position), one for the whole batch: (B, T).

    Drawn on the generator's device (CPU without one, from torch's global generator, whose
    state the run checkpoints), then moved to ``device``.
    """
    if length > max_position:
        raise ConfigError(
            f"a sequence of {length} tokens needs {length} distinct positions but "
            f"encoding.max_position={max_position}; raise encoding.max_position"
        )
    where = generator.device if generator is not None else torch.device("cpu")
    subset = torch.randperm(max_position, generator=generator, device=where)[:length]
    return subset.sort().values.to(device).expand(batch, length)


@register(
    "randomized",
    family="wrapper",
    paper="Ruoss et al. 2023, Randomized Positional Encodings Boost Length Generalization of Transformers",
    description="any positional scheme, fed a sorted random subset of [0, max_position) as positions",
)
class Randomized(PositionalEncoding):
    """Randomized positional encodings (Ruoss et al. 2023) around any ``base`` scheme.

    For a sequence of T tokens the positions are a sorted random T-subset of
    [0, ``max_position``) (the paper's L ≫ the longest test length: 2048 for tests up to
    500) instead of 0..T-1; the base encoding (``base``, with ``base_params``) is then
    used unchanged, so every position it meets at test time was met in training. As in
    the reference code, one subset is drawn per batch and shared by its rows.

    ``eval_mode``: ``random`` (default) draws positions at evaluation too, as the authors
    do (they confirmed sampling at test time; evaluation here uses a seeded generator, so
    scores are reproducible); ``contiguous`` evaluates with 0..T-1.

    The base is built with ``max_len = max_position`` (a ``learned`` base gets a table of
    max_position rows), and ``max_positions`` is max_position: no sequence can be longer.
    Bases that ignore positions are refused (none, cope, and any holding a data-dependent
    scheme: fox, path), as are nested wrappers.
    """

    @classmethod
    def graph_break_for(cls, params: dict[str, Any]) -> str | None:
        base, base_params = params.get("base", "rope"), params.get("base_params") or {}
        spec = {**base_params, "name": base} if isinstance(base_params, dict) else base
        return parts_graph_break([spec])

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        base: str = "rope",
        base_params: dict[str, Any] | None = None,
        max_position: int = 2048,
        eval_mode: str = "random",
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(base, str):
            raise ConfigError(f"encoding.base must be an encoding name, got {base!r}")
        family = info(base).family
        if family not in POSITIONAL_FAMILIES:
            raise ConfigError(
                f"randomized positions need a base that reads positions; {base!r} "
                f"(family {family}) does not; valid families: {', '.join(POSITIONAL_FAMILIES)}"
            )
        if base_params is not None and not isinstance(base_params, dict):
            raise ConfigError(f"encoding.base_params must be a mapping, got {base_params!r}")
        if not isinstance(max_position, int) or max_position < 1:
            raise ConfigError(
                f"encoding.max_position must be an integer >= 1, got {max_position!r}"
            )
        if eval_mode not in EVAL_MODES:
            raise ConfigError(
                f"unknown encoding.eval_mode {eval_mode!r}; valid choices: {', '.join(EVAL_MODES)}"
            )
        self.base = build(
            base,
            d_model=d_model,
            n_heads=n_heads,
            max_len=max_position,
            n_layers=n_layers,
            **(base_params or {}),
        )
        if self.base.places_by_token:
            raise ConfigError(
                f"the base {base!r} places tokens by what they are and draws its own offsets; "
                "randomize the attention part inside a combination instead, e.g. "
                "encoding=combo 'encoding.parts=[abacus,{name:randomized,base:fire}]'"
            )
        if self.base.data_dependent:
            raise ConfigError(
                f"the base {base!r} holds a data-dependent scheme whose positions come from "
                "the hidden states, not from positions; randomized positions would not reach it"
            )
        if draws_positions(self.base):
            raise ConfigError(
                f"the base {base!r} already draws its own positions; randomize only once"
            )
        self.base_name = base
        self.max_position = max_position
        self.eval_mode = eval_mode
        self.max_positions = min(max_position, self.base.max_positions or max_position)

    def positions(
        self,
        batch: int,
        length: int,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if self.training or self.eval_mode == "random":
            return random_positions(
                batch, length, self.max_position, device=device, generator=generator
            )
        return super().positions(batch, length, device=device, generator=generator)

    def bind_task(self, layout: DigitLayout) -> None:
        self.base.bind_task(layout)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        return self.base.embed(x, pos, tokens)

    def features(self, pos_q: Tensor, pos_k: Tensor) -> Any:
        return self.base.features(pos_q, pos_k)

    def rotate(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: Any = None,
    ) -> tuple[Tensor, Tensor]:
        extra = feature_kwargs(self.base, "rotate", features)
        return self.base.rotate(q, k, pos_q, pos_k, layer=layer, **extra)

    def bias(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: Any = None,
    ) -> Tensor | None:
        extra = feature_kwargs(self.base, "bias", features)
        return self.base.bias(q, k, pos_q, pos_k, layer=layer, **extra)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_position={self.max_position}, eval_mode={self.eval_mode}"
        )
