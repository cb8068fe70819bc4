"""Contextual encodings: positions counted from the content itself (``bias`` hook)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def visible_keys(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """(Tq, Tk) bool: query i, the last Tq of Tk positions (the model's convention for a
    KV cache), sees key j <= i."""
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    return torch.arange(t_k, device=device)[None, :] <= i


def cope_positions(gates: Tensor, max_position: int) -> Tensor:
    """p_ij = Σ_{t=j..i} g_it, clamped to ``max_position``: gates (..., Tq, Tk), zero where
    key t is not visible to query i, summed from each key to the end of the row."""
    return gates.flip(-1).cumsum(-1).flip(-1).clamp(max=max_position)


@register(
    "cope",
    family="contextual",
    paper="Golovneva et al. 2024, Contextual Position Encoding: Learning to Count What's Important",
    description="positions counted by learned gates σ(q·k); logit term q·e(p), interpolated",
)
class CoPE(PositionalEncoding):
    """Contextual position encoding (Golovneva et al. 2024, and their reference code).

    Gates g_ij = σ(q_i·k_j / sqrt(d_head)) over the causal past (the reference code takes the
    sigmoid of the already scaled logits), contextual positions p_ij = Σ_{t=j..i} g_it
    clamped to p_max = ``npos_max`` - 1, and the logit term q_i·e[p_ij] with e a learned
    (d_head × npos_max) table per layer, shared by the heads, initialised to zero as in the
    reference code; q_i·e is computed at ⌊p⌋ and ⌈p⌉ and linearly interpolated.

    Where the term enters: the reference's default path (``--cope-nodiv`` off, as its run
    script trains) adds q_i·e[p_ij] to q_i·k_j *before* the division by sqrt(d_head):
    logit_ij = (q_i·k_j + q_i·e[p_ij]) / sqrt(d_head). That is ``scale_position_term=True``
    (the default): this hook returns q_i·e[p_ij] / sqrt(d_head), added after the model's
    own scaling. ``scale_position_term=False`` is the reference's ``--cope-nodiv``:
    logit_ij = q_i·k_j / sqrt(d_head) + q_i·e[p_ij], a position term sqrt(d_head) times larger.

    Absolute positions are ignored: only the content and the causal order matter, so
    randomized positions have nothing to act on. In a combination after a rotary part,
    the gates see the rotated queries and keys.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        npos_max: int = 64,
        scale_position_term: bool = True,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(npos_max, int) or npos_max < 2:
            raise ConfigError(f"encoding.npos_max must be an integer >= 2, got {npos_max!r}")
        if not isinstance(scale_position_term, bool):
            raise ConfigError(
                f"encoding.scale_position_term must be true or false, got {scale_position_term!r}"
            )
        self.npos_max = npos_max
        self.scale_position_term = scale_position_term
        self.pos_emb = nn.Parameter(torch.zeros(n_layers, self.d_head, npos_max))

    def contextual_positions(self, q: Tensor, k: Tensor) -> Tensor:
        """(B, H, Tq, Dh), (B, H, Tk, Dh) -> p (B, H, Tq, Tk), 0 where key j > query i."""
        visible = visible_keys(q.shape[2], k.shape[2], q.device)
        gates = torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(self.d_head)) * visible
        return cope_positions(gates, self.npos_max - 1)

    def bias(self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0) -> Tensor:
        p = self.contextual_positions(q, k)
        per_position = q @ self.pos_emb[layer].to(q.dtype)  # (B, H, Tq, npos_max)
        lo, hi = p.floor(), p.ceil()
        w = (p - lo).to(q.dtype)
        at_lo = per_position.gather(-1, lo.long())
        at_hi = per_position.gather(-1, hi.long())
        term = at_hi * w + at_lo * (1 - w)  # (B, H, Tq, Tk)
        return term / math.sqrt(self.d_head) if self.scale_position_term else term
