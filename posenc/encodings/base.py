"""The positional-encoding interface: three hooks, explicit positions.

A positional encoding can touch a decoder in exactly three places, and every scheme is
some combination of them (see DESIGN.md):

- ``embed(x, pos, tokens=None)``: the token embeddings ``x`` (B, T, D) before layer 0.
- ``rotate(q, k, pos_q, pos_k, layer=0)``: queries (B, H, Tq, Dh) and keys (B, H, Tk, Dh)
  in every attention layer. A rotation must act on each query and each key independently,
  given its own position only, so that keys can be cached after rotation.
- ``bias(q, k, pos_q, pos_k, layer=0)``: a float tensor broadcastable to (B, H, Tq, Tk),
  added to the attention logits *after* the 1/sqrt(d_head) scaling, or ``None``.

Positions are explicit integer tensors of shape (B, T), never implied by ``arange(T)``:
the same mechanism serves KV-cache decoding (an offset), randomized training positions
and position interpolation at evaluation. ``positions(...)`` is where an encoding chooses
them; the default is ``0, 1, ..., T-1``.

The base class is NoPE (Kazemnejad et al. 2023, "The Impact of Positional Encoding on
Length Generalization in Transformers"): every hook is the identity, so a causal decoder
has to infer order from the causal mask alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PositionalEncoding(nn.Module):
    """NoPE, and the base class of every encoding: override only the hooks you need.

    ``max_positions`` is the largest number of distinct positions the encoding can
    represent (``None``: unbounded); the model checks it against the longest sequence.
    """

    max_positions: int | None = None

    def __init__(self, *, d_model: int, n_heads: int, max_len: int, n_layers: int = 1) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.max_len = max_len
        self.n_layers = n_layers

    def positions(
        self,
        batch: int,
        length: int,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Positions for ``batch`` sequences of ``length`` tokens: (B, T) int64."""
        return torch.arange(length, device=device).expand(batch, length)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Token embeddings (B, T, D) -> embeddings with position information."""
        return x

    def rotate(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Queries (B, H, Tq, Dh) and keys (B, H, Tk, Dh) -> rotated queries and keys."""
        return q, k

    def bias(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> Tensor | None:
        """Additive attention-logit bias broadcastable to (B, H, Tq, Tk), or None."""
        return None

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, max_len={self.max_len}"


def relative_distance(pos_q: Tensor, pos_k: Tensor) -> Tensor:
    """(B, Tq), (B, Tk) -> (B, 1, Tq, Tk) with entry i - j (query minus key position)."""
    return (pos_q[:, None, :, None] - pos_k[:, None, None, :]).long()
