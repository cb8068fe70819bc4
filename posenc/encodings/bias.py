"""Relative encodings that add a bias to the attention logits (``bias`` hook)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, relative_distance
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022, §3 and their reference code).

    For n a power of two: m_h = 2^(-8h/n), h = 1..n. Otherwise, with c the largest power
    of two below n: the c slopes for c heads, then every other slope of the 2c-head list
    (the odd-indexed h = 1, 3, 5, ...) until there are n.
    """
    if n_heads <= 0:
        raise ConfigError(f"ALiBi needs model.n_heads > 0, got {n_heads}")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    c = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(c) + power_of_two(2 * c)[0::2][: n_heads - c]


@register(
    "alibi",
    family="bias",
    paper="Press et al. 2022, Train Short, Test Long: Attention with Linear Biases",
    description="a fixed per-head linear penalty -m_h·(i-j) on the attention logits",
)
class ALiBi(PositionalEncoding):
    """Attention with Linear Biases (Press et al. 2022).

    logit_ij <- q_i·k_j / sqrt(d_head) - m_h · |i - j|, with the fixed head slopes of
    `alibi_slopes` (m_h = 2^(-8h/n) for n a power of two). Under the causal mask only
    j <= i is visible, where |i - j| = i - j as in the paper. No learned parameters.
    """

    def __init__(self, *, d_model: int, n_heads: int, max_len: int, n_layers: int = 1) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads)), persistent=False)

    def bias(self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0) -> Tensor:
        dist = relative_distance(pos_q, pos_k).abs().to(q.dtype)  # (B, 1, Tq, Tk)
        return -self.slopes.to(q.dtype)[None, :, None, None] * dist  # (B, H, Tq, Tk)


def t5_bucket(distance: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """T5's causal relative-position bucket of n = max(i - j, 0) (Raffel et al. 2020).

    n < num_buckets/2: bucket n (exact); otherwise log-spaced up to max_distance:
    num_buckets/2 + floor(log(n / (num_buckets/2)) / log(max_distance / (num_buckets/2))
    · num_buckets/2), capped at num_buckets - 1.
    """
    n = distance.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    n_safe = n.clamp(min=1).to(torch.float32)  # log(0) is never used, but keep it finite
    large = max_exact + (
        torch.log(n_safe / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return torch.where(is_small, n, large)


@register(
    "t5",
    family="bias",
    paper="Raffel et al. 2020, Exploring the Limits of Transfer Learning (T5)",
    description="a learned scalar per head for each log-spaced bucket of the distance i-j",
)
class T5Bias(PositionalEncoding):
    """T5 relative position bias (Raffel et al. 2020, §2.1), causal (unidirectional) variant.

    logit_ij <- q_i·k_j / sqrt(d_head) + b_h[bucket(i - j)], with `t5_bucket`: exact
    buckets for distances below num_buckets/2, log-spaced buckets up to max_distance, and
    every longer distance in the last bucket. One (num_buckets × heads) table, owned by
    this module and so shared by all layers, as in T5.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        num_buckets: int = 32,
        max_distance: int = 128,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if num_buckets < 2 or num_buckets % 2:
            raise ConfigError(
                f"encoding.num_buckets must be an even number >= 2, got {num_buckets}"
            )
        if max_distance <= num_buckets // 2:
            raise ConfigError(
                f"encoding.max_distance={max_distance} must exceed num_buckets/2={num_buckets // 2}"
            )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.table = nn.Embedding(num_buckets, n_heads)
        nn.init.normal_(self.table.weight, std=0.02)

    def bias(self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0) -> Tensor:
        buckets = t5_bucket(
            relative_distance(pos_q, pos_k)[:, 0], self.num_buckets, self.max_distance
        )
        return self.table(buckets).permute(0, 3, 1, 2).to(q.dtype)  # (B, H, Tq, Tk)
