"""Relative encodings that add a bias to the attention logits (``bias`` hook)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc.encodings.base import (
    Memo,
    PositionalEncoding,
    PositionBias,
    relative_distance,
    shared_rows,
)
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
class ALiBi(PositionBias):
    """Attention with Linear Biases (Press et al. 2022).

    logit_ij <- q_i·k_j / sqrt(d_head) - m_h · |i - j|, with the fixed head slopes of
    `alibi_slopes` (m_h = 2^(-8h/n) for n a power of two). Under the causal mask only
    j <= i is visible, where |i - j| = i - j as in the paper. No learned parameters.

    ``token_scale = "gpt"``: with ``model.embed_init=auto`` ALiBi trains with GPT-2's
    unscaled N(0, 0.02) token embeddings, as Press et al. trained it: on copy it
    extrapolates there and hardly at unit variance, where T5's bias and NoPE do better (the
    figures: docs/results.md).
    """

    token_scale = "gpt"

    def __init__(self, *, d_model: int, n_heads: int, max_len: int, n_layers: int = 1) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads)), persistent=False)

    def position_bias(self, pos_q: Tensor, pos_k: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, Tq), (B, Tk) -> the bias -m_h·|i - j| (B|1, H, Tq, Tk) in ``dtype``."""
        pos_q, pos_k = shared_rows(pos_q, pos_k)
        dist = relative_distance(pos_q, pos_k).abs().to(dtype)  # (B|1, 1, Tq, Tk)
        return -self.slopes.to(dtype)[None, :, None, None] * dist  # (B|1, H, Tq, Tk)


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
class T5Bias(PositionBias):  # one table shared by every layer
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

    def position_bias(self, pos_q: Tensor, pos_k: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, Tq), (B, Tk) -> the bias b_h[bucket(i - j)] (B|1, H, Tq, Tk) in ``dtype``."""
        pos_q, pos_k = shared_rows(pos_q, pos_k)
        buckets = t5_bucket(
            relative_distance(pos_q, pos_k)[:, 0], self.num_buckets, self.max_distance
        )
        return self.table(buckets).permute(0, 3, 1, 2).to(dtype)  # (B|1, H, Tq, Tk)


KERPLE_EPS = 1e-2  # the reference code's lower bound on r1 and r2


class _Kerple(PositionalEncoding):
    """Shared machinery of the two KERPLE kernels: per-head r1 and r2.

    ``layer_shared`` (default, as in the GPT-NeoX reference code, which builds one
    ``rpe_emb`` and hands the same instance to every layer): one (r1, r2) per head for the
    whole model. ``layer_shared=False``: one per layer and head.

    The reference keeps r1, r2 in range by clamping the stored values (``.data``) before
    each use, i.e. projected gradient descent: a parameter pushed below the bound restarts
    from it. Here the projection is `constrain_`, which the trainer calls after every
    optimizer step (and the constructor once), so the forward pass never writes to a
    parameter: bucketed pieces computed side by side in threads share the parameters
    safely. The forward pass uses out-of-place clamped values, which equal the stored ones
    whenever `constrain_` has run since the last update.
    """

    r1_init: float  # r1 ~ U(0, r1_init)
    r2_init: float  # r2 ~ U(0, r2_init)
    r2_max: float | None

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        layer_shared: bool = True,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(layer_shared, bool):
            raise ConfigError(f"encoding.layer_shared must be true or false, got {layer_shared!r}")
        self.layer_shared = layer_shared
        copies = 1 if layer_shared else n_layers
        self.r1 = nn.ParameterList(
            nn.Parameter(torch.rand(n_heads) * self.r1_init) for _ in range(copies)
        )
        self.r2 = nn.ParameterList(
            nn.Parameter(torch.rand(n_heads) * self.r2_init) for _ in range(copies)
        )
        self.constrain_()

    @torch.no_grad()
    def constrain_(self) -> None:
        for r1, r2 in zip(self.r1, self.r2, strict=True):
            r1.clamp_(min=KERPLE_EPS)
            r2.clamp_(min=KERPLE_EPS, max=self.r2_max)

    def _clamped(self, layer: int) -> tuple[Tensor, Tensor]:
        i = 0 if self.layer_shared else layer
        r1 = self.r1[i].clamp(min=KERPLE_EPS)
        r2 = self.r2[i].clamp(min=KERPLE_EPS, max=self.r2_max)
        return r1[None, :, None, None], r2[None, :, None, None]  # (1, H, 1, 1)

    def kernel(self, dist: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
        raise NotImplementedError

    def distance(self, pos_q: Tensor, pos_k: Tensor) -> Tensor:
        """(B, Tq), (B, Tk) -> |i - j| (B|1, 1, Tq, Tk), float32."""
        pos_q, pos_k = shared_rows(pos_q, pos_k)
        return relative_distance(pos_q, pos_k).abs().to(torch.float32)

    def kernel_bias(self, dist: Tensor, layer: int, dtype: torch.dtype) -> Tensor:
        r1, r2 = self._clamped(layer)
        return self.kernel(dist, r1, r2).to(dtype)  # (B|1, H, Tq, Tk)

    def features(self, pos_q: Tensor, pos_k: Tensor) -> Memo:
        # the distances once; the kernel once per set of (r1, r2): once for the model when
        # the layers share them, once per layer otherwise
        dist = self.distance(pos_q, pos_k)
        return Memo(lambda i, dtype: self.kernel_bias(dist, i, dtype))

    def bias(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: Memo | None = None,
    ) -> Tensor:
        if features is not None:
            return features(0 if self.layer_shared else layer, q.dtype)
        return self.kernel_bias(self.distance(pos_q, pos_k), layer, q.dtype)


@register(
    "kerple_log",
    family="bias",
    paper="Chi et al. 2022, KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation",
    description="learned logarithmic decay -r1·log(1 + r2·|i-j|) per head, shared by the layers",
)
class KerpleLog(_Kerple):
    """KERPLE, logarithmic variant (Chi et al. 2022): b_ij = -r1·log(1 + r2·|i - j|).

    r1, r2 > 0 are learned per head, shared by every layer as in the reference code
    (``layer_shared=False``: per layer), initialised r1 ~ U(0, 2), r2 ~ U(0, 1) and kept
    >= 0.01 by projection after each optimizer step (`_Kerple`), as the reference code's
    clamp does. Added after the 1/sqrt(d_head) scaling.
    """

    r1_init, r2_init, r2_max = 2.0, 1.0, None

    def kernel(self, dist: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
        return -r1 * torch.log1p(r2 * dist)


@register(
    "kerple_power",
    family="bias",
    paper="Chi et al. 2022, KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation",
    description="learned power decay -r1·|i-j|^r2 (0 < r2 <= 2) per head, shared by the layers",
)
class KerplePower(_Kerple):
    """KERPLE, power variant (Chi et al. 2022): b_ij = -r1·|i - j|^r2.

    r1 > 0 and 0 < r2 <= 2 (the range in which the kernel is conditionally positive
    definite) are learned per head, shared by every layer as in the reference code
    (``layer_shared=False``: per layer), initialised r1 ~ U(0, 1), r2 ~ U(0, 2) and
    projected onto [0.01, ∞) and [0.01, 2] after each optimizer step (`_Kerple`), as the
    reference code's clamp does.
    """

    r1_init, r2_init, r2_max = 1.0, 2.0, 2.0

    def kernel(self, dist: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
        # |i-j|^r2 with a zero-safe gradient: d/dr2 of 0^r2 is 0·log 0, which autograd turns
        # into NaN; exp(r2·log d) on d >= 1 and 0 on d = 0 has the same values.
        safe = dist.clamp(min=1.0)
        return -r1 * torch.where(dist > 0, torch.exp(r2 * torch.log(safe)), torch.zeros_like(safe))


@register(
    "fire",
    family="bias",
    paper="Li et al. 2023, Functional Interpolation for Relative Positions Improves Long Context Transformers",
    description="an MLP of the log-scaled distance divided by the log-scaled query position",
)
class FIRE(PositionalEncoding):
    """FIRE (Li et al. 2023, and the pseudocode in their appendix).

    b_ij = f_θ(ψ(i - j) / ψ(max(i, L))), ψ(x) = log(|c|·x + 1), i the query position,
    f_θ: 1 -> ``mlp_width`` -> heads with ReLU. The division by ψ(max(i, L)) is the
    progressive interpolation: once i > L every query sees its distances squeezed into
    [0, 1]. As in the paper's pseudocode, c is learned (init ``init_c`` = 0.1) and
    L = |m·L0| with L0 = ``init_L`` fixed (512) and a learned multiplier m (init 1);
    ψ(max(i, L)) gets + 1e-6. Each layer has its own f_θ, c and m (the module sits in
    every attention layer in the reference code). For queries below L the bias depends on
    i - j only; beyond L it also depends on i, by design.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        mlp_width: int = 32,
        init_c: float = 0.1,
        init_L: float = 512.0,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(mlp_width, int) or mlp_width < 1:
            raise ConfigError(f"encoding.mlp_width must be an integer >= 1, got {mlp_width!r}")
        if init_c <= 0:
            raise ConfigError(f"encoding.init_c must be > 0, got {init_c}")
        if init_L <= 0:
            raise ConfigError(f"encoding.init_L must be > 0, got {init_L}")
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(1, mlp_width), nn.ReLU(), nn.Linear(mlp_width, n_heads))
            for _ in range(n_layers)
        )
        self.c = nn.Parameter(torch.full((n_layers,), float(init_c)))
        self.L_multiplier = nn.Parameter(torch.ones(n_layers))
        self.register_buffer("init_L", torch.tensor(float(init_L)))
        self.eps = 1e-6

    def threshold(self, layer: int = 0) -> Tensor:
        """The learned threshold L = |m·L0| of ``layer``."""
        return (self.L_multiplier[layer] * self.init_L).abs()

    @staticmethod
    def distances(pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor]:
        """(B, Tq), (B, Tk) -> i - j clamped at 0 (B, 1, Tq, Tk) and i (B, 1, Tq, 1), float32:
        what every layer's `normalized_distance` reads of the positions."""
        rel = relative_distance(pos_q, pos_k).clamp(min=0).to(torch.float32)  # j > i is masked
        return rel, pos_q.to(torch.float32)[:, None, :, None]

    def normalized_distance(
        self,
        pos_q: Tensor,
        pos_k: Tensor,
        layer: int = 0,
        distances: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """(B, Tq), (B, Tk) -> (B, 1, Tq, Tk): ψ(i - j) / ψ(max(i, L)), in [0, 1] for j <= i.
        ``distances``: `distances` of these positions, if already computed."""
        c = self.c[layer].abs()
        rel, i = distances if distances is not None else self.distances(pos_q, pos_k)
        norm = torch.log(c * torch.maximum(i, self.threshold(layer)) + 1) + self.eps
        return torch.log(c * rel + 1) / norm

    def features(self, pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor, tuple]:
        # c, L and the MLP are per layer: only the distances are shared
        pos_q, pos_k = shared_rows(pos_q, pos_k)
        return pos_q, pos_k, self.distances(pos_q, pos_k)

    def bias(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: tuple[Tensor, Tensor, tuple] | None = None,
    ) -> Tensor:
        if features is None:
            pos_q, pos_k = shared_rows(pos_q, pos_k)
            distances = None
        else:
            pos_q, pos_k, distances = features
        x = self.normalized_distance(pos_q, pos_k, layer, distances)[:, 0, :, :, None]
        return self.mlp[layer](x).permute(0, 3, 1, 2).to(q.dtype)  # (B, H, Tq, Tk)
