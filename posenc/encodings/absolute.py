"""Absolute encodings: a vector per position added to the token embeddings (``embed`` hook)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def sinusoidal_table(pos: Tensor, d_model: int, base: float = 10000.0) -> Tensor:
    """PE(pos, 2i) = sin(pos·ω_i), PE(pos, 2i+1) = cos(pos·ω_i), ω_i = base^(-2i/d).

    ``pos`` may be any real-valued tensor; the result has shape ``pos.shape + (d_model,)``.
    Interleaved as in the paper (even dims sine, odd dims cosine).
    """
    i = torch.arange(0, d_model, 2, device=pos.device, dtype=torch.float32)
    omega = base ** (-i / d_model)  # (d/2,)
    angle = pos.to(torch.float32)[..., None] * omega  # (..., d/2)
    pe = torch.stack((angle.sin(), angle.cos()), dim=-1)  # (..., d/2, 2)
    return pe.flatten(-2)


@register(
    "sinusoidal",
    family="absolute",
    paper="Vaswani et al. 2017, Attention Is All You Need",
    description="fixed sine/cosine vectors of the absolute position added to the embeddings",
)
class Sinusoidal(PositionalEncoding):
    """Fixed sinusoidal absolute encoding (Vaswani et al. 2017, §3.5).

    x_t <- x_t + PE(t), PE(t, 2i) = sin(t / base^(2i/d)), PE(t, 2i+1) = cos(t / base^(2i/d)),
    base 10000, interleaved as in the paper. Defined for every real position, so it never
    runs out of table; whether the *model* generalizes beyond trained positions is another
    matter (it usually does not). The model scales token embeddings to unit variance
    (Vaswani et al. multiply them by sqrt(d_model)) so the encoding does not swamp them.
    """

    def __init__(
        self, *, d_model: int, n_heads: int, max_len: int, n_layers: int = 1, base: float = 10000.0
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if d_model % 2:
            raise ConfigError(f"sinusoidal encoding needs an even model.d_model, got {d_model}")
        if base <= 1:
            raise ConfigError(f"encoding.base must be > 1, got {base}")
        self.base = float(base)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        return x + sinusoidal_table(pos, self.d_model, self.base).to(x.dtype)


@register(
    "learned",
    family="absolute",
    paper="Gehring et al. 2017; Radford et al. 2018 (GPT)",
    description="a trained vector per absolute position (a table of max_len rows)",
)
class Learned(PositionalEncoding):
    """Learned absolute position embeddings: x_t <- x_t + P[t], P a trained (max_len, d) table.

    As in GPT (Radford et al. 2018) and convolutional seq2seq (Gehring et al. 2017). Rows
    beyond the longest training sequence never receive a gradient, so the encoding cannot
    extrapolate; positions >= max_len are an error, raised before training starts.
    Initialised N(0, init_std²).
    """

    def __init__(
        self, *, d_model: int, n_heads: int, max_len: int, n_layers: int = 1, init_std: float = 0.02
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if max_len <= 0:
            raise ConfigError(f"learned encoding needs model.max_len > 0, got {max_len}")
        self.max_positions = max_len
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=init_std)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        if pos.numel() and int(pos.max()) >= self.max_len:
            raise ConfigError(
                f"position {int(pos.max())} is beyond the learned table (model.max_len={self.max_len})"
            )
        return x + self.table(pos.long())
