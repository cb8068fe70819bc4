"""Relative encodings whose logit term reads the query content (``bias`` hook):
Shaw et al. 2018 and Transformer-XL (Dai et al. 2019)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc.encodings.absolute import sinusoidal_table
from posenc.encodings.base import PositionalEncoding, relative_distance
from posenc.encodings.registry import register
from posenc.errors import ConfigError


@register(
    "shaw",
    family="bias",
    paper="Shaw et al. 2018, Self-Attention with Relative Position Representations",
    description="learned key vectors a_(j-i) for distances clipped to ±k, logit term q_i·a_(j-i)",
)
class Shaw(PositionalEncoding):
    """Relative position representations (Shaw et al. 2018), keys only.

    e_ij = q_i·(k_j + a^K_ij) / sqrt(d_head), a^K_ij = w^K_clip(j - i, k), k = ``max_distance``:
    2k + 1 learned vectors of d_head dims per layer, shared by the heads of that layer as
    in the paper. The hook returns the extra term q_i·a^K_ij / sqrt(d_head) (the
    model adds the bias after its own 1/sqrt(d_head) scaling, so the division is done here).
    Under the causal mask only j - i <= 0 occurs, so the k vectors for positive offsets
    stay at their initialisation; the table keeps the paper's 2k + 1 rows anyway.

    The value term a^V is left out: it would change the attention output, which
    no hook reaches, and the paper's own ablation found it adds nothing.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        max_distance: int = 16,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(max_distance, int) or max_distance < 1:
            raise ConfigError(
                f"encoding.max_distance must be an integer >= 1, got {max_distance!r}"
            )
        self.max_distance = max_distance
        self.table = nn.Parameter(
            torch.randn(n_layers, 2 * max_distance + 1, self.d_head) * init_std
        )

    def offset_index(self, pos_q: Tensor, pos_k: Tensor) -> Tensor:
        """(B, Tq), (B, Tk) -> the table row of each (i, j): clip(j - i, ±k) + k (B, 1, Tq, Tk)."""
        offset = -relative_distance(pos_q, pos_k)  # (B, 1, Tq, Tk): j - i
        return offset.clamp(-self.max_distance, self.max_distance) + self.max_distance

    def features(self, pos_q: Tensor, pos_k: Tensor) -> Tensor:
        return self.offset_index(pos_q, pos_k)  # the tables are per layer, the rows are not

    def bias(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: Tensor | None = None,
    ) -> Tensor:
        index = features if features is not None else self.offset_index(pos_q, pos_k)
        per_offset = q @ self.table[layer].to(q.dtype).T  # (B, H, Tq, 2k+1)
        B, H, Tq, _ = q.shape
        index = index.expand(B, H, Tq, index.shape[-1])
        return per_offset.gather(-1, index) / math.sqrt(self.d_head)  # (B, H, Tq, Tk)


@register(
    "transformer_xl",
    family="bias",
    paper="Dai et al. 2019, Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context",
    description="(q_i+u)·k_j + (q_i+v)·W_R R_(i-j) with sinusoidal R and learned u, v, W_R",
)
class TransformerXL(PositionalEncoding):
    """Transformer-XL relative attention (Dai et al. 2019, §3.3), without the segment memory.

    logit_ij = [(q_i + u)·k_j + (q_i + v)·W_R R_(i-j)] / sqrt(d_head), R_n the sinusoidal
    vector of the relative distance n (interleaved sin/cos; the reference code concatenates
    [sin | cos], a permutation W_R absorbs). u, v are learned per head and shared by all
    layers (the paper's and the reference code's default); W_R (d_model -> d_model, read
    per head) is learned per layer. No absolute encoding. The hook returns everything but
    the plain q_i·k_j, i.e. (u·k_j + (q_i + v)·W_R R_(i-j)) / sqrt(d_head).
    """

    graph_break = "torch.unique over the distances that occur (a data-dependent shape)"

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if d_model % 2:
            raise ConfigError(f"transformer_xl needs an even model.d_model, got {d_model}")
        self.u = nn.Parameter(torch.randn(n_heads, self.d_head) * init_std)
        self.v = nn.Parameter(torch.randn(n_heads, self.d_head) * init_std)
        self.w_r = nn.Parameter(torch.randn(n_layers, d_model, d_model) * init_std)

    def distance_table(self, pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor]:
        """(B, Tq), (B, Tk) -> the sinusoidal vectors R_n of the n distances that occur
        (n, D) and the index of each (i, j)'s distance among them (B, 1, Tq, Tk)."""
        dist = relative_distance(pos_q, pos_k).clamp(min=0)  # (B, 1, Tq, Tk); j > i is masked
        # Project only the distances that occur: (n,) unique values and where each one goes.
        distances, index = torch.unique(dist, return_inverse=True)
        return sinusoidal_table(distances, self.d_model), index

    def features(self, pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor]:
        return self.distance_table(pos_q, pos_k)  # W_R is per layer, R and the index are not

    def bias(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        B, H, Tq, Dh = q.shape
        table, index = features if features is not None else self.distance_table(pos_q, pos_k)
        r = table.to(q.dtype)  # (n, D)
        keys = (r @ self.w_r[layer].to(q.dtype)).view(-1, H, Dh)  # (n, H, Dh): W_R R_n per head
        position = torch.einsum("bhqd,nhd->bhqn", q + self.v.to(q.dtype)[:, None], keys)
        position = position.gather(-1, index.expand(B, H, Tq, index.shape[-1]))
        content = torch.einsum("hd,bhkd->bhk", self.u.to(q.dtype), k)[:, :, None, :]
        return (content + position) / math.sqrt(Dh)  # (B, H, Tq, Tk)
