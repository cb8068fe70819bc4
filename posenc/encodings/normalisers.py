"""Schemes that change attention's normaliser: stick-breaking (replaces the softmax) and
Scalable-Softmax (rescales each query's logits by log n)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, full_precision, visible_keys
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def stick_breaking_weights(
    logits: Tensor, *, attend_current: bool = False, remainder_to_current: bool = True
) -> Tensor:
    """Stick-breaking weights from logits z (B, H, Tq, Tk) (queries: the last Tq of Tk).

    Over the keys j a query i may break the stick at (j < i, or j <= i with
    ``attend_current``), β_ij = σ(z_ij) and A_ij = β_ij Π_{j<k, k visible} (1 - β_ik),
    in log space: log A_ij = log σ(z_ij) + Σ_{j<k, k visible} log σ(-z_ik). Rows sum to
    at most 1; with ``remainder_to_current`` the rest, 1 - Σ_j A_ij, goes to the query's
    own token (j = i), so the row sums to 1.
    """
    t_q, t_k = logits.shape[-2:]
    offset = 0 if attend_current else 1
    allowed = visible_keys(t_q, t_k - offset, logits.device)
    allowed = F.pad(allowed, (0, offset), value=False)  # (Tq, Tk): j <= i - offset
    z = logits.float()
    log_beta = F.logsigmoid(z).masked_fill(~allowed, float("-inf"))
    log_keep = F.logsigmoid(-z).masked_fill(~allowed, 0.0)
    # Σ over visible k > j: the reversed cumulative sum from j, minus j's own term.
    after = log_keep.flip(-1).cumsum(-1).flip(-1) - log_keep
    weights = (log_beta + after).exp()
    if remainder_to_current:
        rest = 1 - weights.sum(-1)  # (B, H, Tq)
        current = torch.arange(t_q, device=logits.device) + (t_k - t_q)
        own = F.one_hot(current, t_k).to(weights.dtype)  # (Tq, Tk)
        weights = weights + rest[..., None] * own
    return weights


@register(
    "stick_breaking",
    family="attention",
    paper="Tan, Yang, Courville, Panda, Shen 2025, Scaling Stick-Breaking Attention: An Efficient Implementation and In-depth Study (ICLR)",
    description="A_ij = σ(z_ij)·Π_{j<k<i}(1-σ(z_ik)) replaces the softmax; no position signal",
)
class StickBreaking(PositionalEncoding):
    """Stick-breaking attention (Tan et al. 2025), in place of the softmax.

    z_ij = q_i·k_j / sqrt(d_head) (+ any bias of a combination's other parts),
    β_ij = σ(z_ij), and the nearest key breaks off its share first:

        A_ij = β_ij Π_{j<k<i} (1 - β_ik),   j < i,

    computed in log space (`stick_breaking_weights`); Σ_j A_ij <= 1. No other position
    signal: the order of the keys is the recency the stick is broken in.

    Choices, as in the reference (shawntan/stickbreaking-attention): a query does not
    break the stick at its own token (``attend_current: false``, the kernel's default),
    and the remainder 1 - Σ_j A_ij weights the query's own value
    (``remainder_to_current: true``, the reference test's ``o + rem[..., None] * v``; the
    paper's layers do the same), so the first token attends to itself. The logits are
    computed in float32 (the reference casts them to float). The paper's models use no
    other positional encoding; its softmax-plus-RoPE baseline is ``rope``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        attend_current: bool = False,
        remainder_to_current: bool = True,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        self.attend_current = bool(attend_current)
        self.remainder_to_current = bool(remainder_to_current)

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor:
        with full_precision(q):
            logits = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])
            if bias is not None:
                logits = logits + bias.float()
            return stick_breaking_weights(
                logits,
                attend_current=self.attend_current,
                remainder_to_current=self.remainder_to_current,
            )


@register(
    "ssmax",
    family="scale",
    paper="Nakanishi 2025, Scalable-Softmax Is Superior for Attention",
    description="each query's logits times s_h·log n (n keys visible, s_h learned per head)",
)
class ScalableSoftmax(PositionalEncoding):
    """Scalable-Softmax, SSMax (Nakanishi 2025): softmax(s_h·log(n_i)·z_i).

    Query i, which sees n_i = i + 1 keys under the causal mask (counted over the KV cache's
    history too), has its logits z_ij = q_i·k_j / sqrt(d_head) multiplied by s_h·log n_i,
    with a learned s_h per layer and head; implemented by scaling the query, so it
    composes with any scheme and keeps the fused kernel. Alone it is NoPE with SSMax;
    combined (``encoding=combo encoding.parts=[rope,ssmax]``) it scales the rotated
    queries. Additive biases of other parts are not scaled (the paper has none).

    Choices the paper leaves open or tuned for a large model: the first query (n = 1,
    log n = 0) would see all-zero logits, which for a single key changes nothing;
    ``init_s`` = 0.3 makes s·log n = 1 at n ≈ 28, within our training lengths (the paper's
    figure uses s = 0.43 for a 2048-token context; its learned s settle near 0.3-0.5);
    the paper's optional bias b in (s·log n + b) is left out (it reports no gain);
    s is not weight-decayed (encoding parameters never are here). Llama 4's variant
    (1 + 0.1·log(⌊(t+1)/8192⌋ + 1), a step function of the position) is the same idea
    tuned for 8k contexts and has no effect below 8,192 tokens, so it is not offered.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        init_s: float = 0.3,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(init_s, int | float) or isinstance(init_s, bool) or init_s <= 0:
            raise ConfigError(f"encoding.init_s must be a number > 0, got {init_s!r}")
        self.s = nn.Parameter(torch.full((n_layers, n_heads), float(init_s)))

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor:
        n = torch.arange(t_k - t_q + 1, t_k + 1, device=self.s.device, dtype=torch.float32)
        return (self.s[layer][:, None] * n.log()[None, :])[None, :, :, None]  # (1, H, Tq, 1)
