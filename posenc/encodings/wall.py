"""Wall attention: a data-dependent decay per channel of q·k (FoX's per-head gate, per channel)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, full_precision, visible_keys
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def wall_logits(q: Tensor, k: Tensor, p_q: Tensor, p_k: Tensor, chunk: int) -> Tensor:
    """Σ_n q_i,n k_j,n exp(P_i,n - P_j,n) for queries q (B, H, Tq, d) and keys k (B, H, Tk, d)
    with their log-decay prefixes p_q, p_k (P non-increasing along the sequence; the queries
    are the last Tq keys): (B, H, Tq, Tk), exact for j <= i (the entries a query can see),
    finite everywhere.

    Chunked as the reference's decode cache (fla ``WallAttention._decode_incremental`` and
    ``build_wall_kv_cache``, chunks of ``chunk`` keys), each chunk c = [s, e) anchored at
    R_c = P at its *last* key, the smallest P of the chunk, so that no factor exceeds 1:

        k̃_j = k_j · exp(R_c - P_j)       (j in c: R_c - P_j <= 0)
        q̃_i,c = q_i · exp(P_i - R_c)     (i >= e - 1: P_i - R_c <= 0)

    and q̃_i,c · k̃_j = Σ_n q_n k_n exp(P_i - P_j). A query inside the chunk (s <= i < e - 1)
    would need exp(P_i - R_c) >= 1, which overflows once the gates close (log decay -60 a
    token is exp(+3,780) over 63 keys), so those rows are computed directly as
    Σ_n q_in k_jn exp(min(P_in - P_jn, 0)), the clamp touching only masked pairs (j > i), as
    the reference's flash kernel does within its diagonal tile. Queries before the chunk see
    none of it (masked pairs) and get exp(min(P_i - R_c, 0)). A k̃ that underflows to 0 is a
    weight exp(P_i - P_j) <= exp(R_c - P_j) below float32's range: the product underflows
    too. Memory: O(Tq·Tk·d / chunk) for the q̃ and O(chunk²·d) for the diagonal rows.
    """
    t_q, t_k = q.shape[2], k.shape[2]
    first = t_k - t_q  # the position of query 0
    pieces = []
    for start in range(0, t_k, chunk):
        stop = min(start + chunk, t_k)
        p_c, k_c = p_k[:, :, start:stop], k[:, :, start:stop]
        anchor = p_c[:, :, -1:]  # (B, H, 1, d): the chunk's smallest P
        k_tilde = k_c * torch.exp(anchor - p_c)
        q_tilde = q * torch.exp((p_q - anchor).clamp(max=0.0))
        block = q_tilde @ k_tilde.transpose(-1, -2)  # (B, H, Tq, stop - start)
        # the queries at positions start .. stop - 2, as indices a:b (ints: one graph)
        a, b = max(start - first, 0), min(stop - 1 - first, t_q)
        if a < b:
            diff = (p_q[:, :, a:b, None] - p_c[:, :, None]).clamp(max=0.0)  # (B,H,m,c,d)
            direct = (q[:, :, a:b, None] * k_c[:, :, None] * diff.exp()).sum(-1)
            block = torch.cat((block[:, :, :a], direct, block[:, :, b:]), dim=2)
        pieces.append(block)
    return torch.cat(pieces, dim=-1)


@register(
    "wall",
    family="data-dependent",
    paper="Averbuch, Pai (Tilde Research) 2026, Wall attention (fla-org/flash-linear-attention fla/layers/wall_attn.py)",
    description="logit Σ_n q_i,n k_j,n Π_{l=j+1..i} γ_l,n: per-channel decay γ = σ(W x + b) from the hidden states",
)
class WallAttention(PositionalEncoding):
    """Wall attention (Tilde Research 2026): softmax attention whose q·k decays per channel
    with data-dependent gates, generalising FoX's one gate per head to one per channel.

        g_t = log σ(W_g x_t + b_g) ∈ (-∞, 0]^(H·d)     (per layer; x_t the layer's input)
        P_t = Σ_{l<=t} g_l                          (per head and channel n)
        logit_ij = Σ_n q_i,n k_j,n exp(P_i,n - P_j,n) / sqrt(d_head) + bias_ij,   j <= i

    then the softmax over the causal past. exp(P_i - P_j) = Π_{l=j+1..i} σ(·)_l,n is the
    product of the channel's gates between key and query, so a channel forgets at its own,
    content-chosen rate; with every gate of a head equal it is FoX's decay, applied to the
    logit multiplicatively per channel instead of additively per head. The decay weighs
    each channel of the dot product, so it is not an additive bias: Wall computes its own
    weights (`wall_logits`, the chunk-anchored stable form of the reference) and leaves the
    fused kernel. ``observe`` keeps P for the whole history in the KV cache.

    Choices as in the reference (fla ``WallAttention`` and ``naive_wall_attn``, read at
    fla-org/flash-linear-attention): ``g_proj`` a Linear D -> H·d with bias, weights
    N(0, 0.02) (the model's ``initializer_range``) and the bias at ``gate_init_bias`` 8.0
    (log σ(8) ≈ -3.4e-4: near-plain attention at the start); the gates and their prefix in
    float32; the scale 1/sqrt(d_head); the decay on both q and k, nothing on v; key chunks
    of 64 (``WALL_DECODE_CHUNK``). Left out as architecture, not position, and off by
    default there too: the FoX-style scalar gate (``use_scalar_gate``; add it with
    ``encoding=combo encoding.parts=[wall,fox]``, whose FoX bias Wall receives), QK-norm, the
    output gate and sliding windows. No other position signal (the reference layer has no
    RoPE).
    """

    data_dependent = True

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        d_input: int | None = None,
        gate_init_bias: float = 8.0,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"encoding 'wall' needs chunk_size >= 1, got {chunk_size!r}")
        d_in = d_input or d_model
        width = n_heads * self.d_head
        self.gate_weight = nn.Parameter(torch.randn(n_layers, width, d_in) * 0.02)
        self.gate_bias = nn.Parameter(torch.full((n_layers, width), float(gate_init_bias)))
        self.chunk_size = chunk_size

    def log_decays(self, x: Tensor, layer: int) -> Tensor:
        """(B, T, D) -> g = log σ(W_g x + b_g) (B, H, T, d) in float32."""
        B, T, _ = x.shape
        with full_precision(x):
            z = x.float() @ self.gate_weight[layer].float().t() + self.gate_bias[layer].float()
            return F.logsigmoid(z).view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Tensor:
        p = self.log_decays(x, layer).cumsum(2)  # (B, H, T, d)
        if past is None:
            return p
        return torch.cat((past, p + past[:, :, -1:]), dim=2)  # (B, H, Tk, d)

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor:
        t_q, t_k = q.shape[2], k.shape[2]
        with full_precision(q):
            p_k = state.float()  # (B, H, Tk, d)
            logits = wall_logits(q.float(), k.float(), p_k[:, :, -t_q:], p_k, self.chunk_size)
            logits = logits / math.sqrt(q.shape[-1])
            if bias is not None:
                logits = logits + bias.float()
            visible = visible_keys(t_q, t_k, q.device)
            return logits.masked_fill(~visible, float("-inf")).softmax(-1)
