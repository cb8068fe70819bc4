"""Rotary encodings: queries and keys rotated by position-dependent angles (``rotate`` hook)."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.encodings.base import PositionalEncoding
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (GPT-NeoX layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate the first ``2 * angle.shape[-1]`` dims of ``x`` (..., T, Dh) by ``angle`` (..., T, r/2).

    Dimension i is paired with i + r/2 (half-split layout); the remaining dims pass through.
    """
    r = 2 * angle.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    cos = torch.cat((angle.cos(), angle.cos()), dim=-1).to(x.dtype)
    sin = torch.cat((angle.sin(), angle.sin()), dim=-1).to(x.dtype)
    out = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


@register(
    "rope",
    family="rotary",
    paper="Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding",
    description="rotates query/key pairs by position·θ_i so q·k depends on the offset only",
)
class RoPE(PositionalEncoding):
    """Rotary position embedding (Su et al. 2021).

    For each rotary pair i < r/2, with θ_i = base^(-2i/r) (r = rotary dims, base 10000), a
    query or key at position m is rotated by the angle m·θ_i:
        (x_i, x_{i+r/2}) <- (x_i cos mθ_i - x_{i+r/2} sin mθ_i, x_i sin mθ_i + x_{i+r/2} cos mθ_i)
    so that <R_m q, R_n k> = <q, R_{n-m} k> depends only on the offset n - m.

    Layout: half-split pairs (i, i + r/2) as in GPT-NeoX and Hugging Face LLaMA; the paper's
    interleaved pairs (2i, 2i+1) are the same up to a fixed permutation of head dims.
    ``rotary_fraction`` < 1 rotates only the first ``rotary_fraction · d_head`` dims
    (partial rotary: 25% in the NoPE paper's code, 50% in x-transformers); default: all.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not 0.0 < rotary_fraction <= 1.0:
            raise ConfigError(f"encoding.rotary_fraction must be in (0, 1], got {rotary_fraction}")
        if base <= 1:
            raise ConfigError(f"encoding.base must be > 1, got {base}")
        rot = self.d_head * rotary_fraction
        if rot != int(rot) or int(rot) % 2 or int(rot) == 0:
            raise ConfigError(
                f"rotary dimension d_head·rotary_fraction = {self.d_head}·{rotary_fraction} = {rot:g} "
                "must be a positive even integer; choose model.d_model/model.n_heads and "
                "encoding.rotary_fraction accordingly"
            )
        self.rotary_dim = int(rot)
        self.base = float(base)
        self.rotary_fraction = rotary_fraction
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self) -> Tensor:
        """θ_i = base^(-2i/r), i = 0 .. r/2 - 1."""
        i = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32)
        return self.base ** (-i / self.rotary_dim)

    def angles(self, pos: Tensor) -> Tensor:
        """(B, T) positions -> (B, 1, T, r/2) rotation angles m·θ_i."""
        return pos.to(torch.float32)[:, None, :, None] * self.inv_freq

    def rotate(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> tuple[Tensor, Tensor]:
        return apply_rotary(q, self.angles(pos_q)), apply_rotary(k, self.angles(pos_k))
