"""Canon layers: causal depthwise convolutions added to a block's hidden states."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding
from posenc.encodings.registry import register
from posenc.errors import ConfigError

# Allen-Zhu's letters for the sites posenc's block offers (`base.HIDDEN_SITES`), and each one's
# width in units of d_model.
POINTS = {"A": ("attention_input", 1), "B": ("qkv", 3), "C": ("mlp_input", 1)}


def causal_conv(x: Tensor, weight: Tensor, past: Tensor | None) -> tuple[Tensor, Tensor]:
    """y_t = Σ_{i=0..K-1} w[:, i] ⊙ x_{t-K+1+i} over (B, T, C), zeros before the sequence;
    ``past`` (B, K-1, C) holds the last K-1 inputs before x. Returns y and the last K-1 inputs
    of the whole history. The reference's ``ShortConvolution`` without its CUDA kernel
    (``nn.Conv1d(C, C, K, groups=C, padding=K-1)`` cut to T), written as K shifted products so
    that a decoding step computes exactly what the whole sequence does."""
    B, T, C = x.shape
    K = weight.shape[1]
    if past is None:
        past = x.new_zeros(B, K - 1, C)
    padded = torch.cat((past.to(x.dtype), x), dim=1)  # (B, K-1+T, C)
    y = sum(padded[:, i : i + T] * weight[:, i] for i in range(K))
    return y, padded[:, padded.shape[1] - (K - 1) :]


@register(
    "canon",
    family="hidden",
    paper="Allen-Zhu 2025, Physics of Language Models: Part 4.1, Architecture Design and the Magic of Canon Layers (NeurIPS)",
    description="causal depthwise conv (kernel 4) added residually before attention, on q,k,v, before the MLP; no positions",
)
class Canon(PositionalEncoding):
    """Canon layers (Allen-Zhu 2025), with no positional encoding of their own (Canon + NoPE).

    At each chosen point of every block, the hidden states h_t (B, T, C) become

        h'_t = h_t + Σ_{i=0..K-1} w_i ⊙ h_{t-K+1+i}     (h_s = 0 for s < 0; ⊙ per channel)

    a causal depthwise convolution of kernel K added residually (``canon_residual=True``).
    Points (the reference's ``canon_set`` letters): A, the attention's input after the
    first norm; B, the concatenated q, k, v projections (width 3·d_model) before the heads
    are split and rotated; C, the MLP's input after the second norm. Each layer and point
    has its own kernel. Combine with a positional encoding through ``combo``
    (``encoding.parts=[canon,rope]``): Canon + NoPE against NoPE separates local mixing
    from position.

    As in facebookresearch/PhysicsLM4 (``canon_helper.create_canon``, the Llama Canon
    config's defaults): kernel 4, no bias, no activation (``canon_activation=False``),
    residual on, weights drawn by ``nn.Conv1d``'s own init (Kaiming-uniform, a = √5:
    U(-1/√K, 1/√K)), which the reference model keeps (its ``_init_weights`` calls
    ``reset_parameters`` on them). Computed in the hidden states' dtype (as the
    reference's convolution runs in the model's). Left out: point D (inside the MLP, on
    the gate and up projections of the reference's SwiGLU; posenc's MLP is GELU and its
    width is not the encoding's to know), and the reference's padding mask (posenc pads
    after the answer, which a causal convolution never reads back). Options: ``points``
    (any of A, B, C), ``kernel`` (>= 2), ``residual``, ``activation`` (SiLU after the
    convolution, the reference's ``canon_activation``).

    The KV cache keeps, per layer and point, the last K-1 inputs, so a decoding step
    convolves exactly what teacher forcing does.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        points: str = "ABC",
        kernel: int = 4,
        residual: bool = True,
        activation: bool = False,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(points, str) or not points or set(points) - set(POINTS):
            raise ConfigError(
                f"encoding.points must be letters among {''.join(POINTS)} (A: before attention, "
                f"B: on q,k,v, C: before the MLP), e.g. ABC; got {points!r}"
            )
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 2:
            raise ConfigError(f"encoding.kernel must be an integer >= 2, got {kernel!r}")
        self.points = "".join(p for p in POINTS if p in points)
        self.kernel = kernel
        self.residual = bool(residual)
        self.activation = bool(activation)
        bound = 1 / math.sqrt(kernel)  # nn.Conv1d's default init for a depthwise kernel
        self.weights = nn.ParameterDict(
            {
                POINTS[p][0]: nn.Parameter(
                    torch.empty(n_layers, POINTS[p][1] * d_model, kernel).uniform_(-bound, bound)
                )
                for p in self.points
            }
        )

    def transform(
        self, x: Tensor, site: str, past: Any = None, *, layer: int = 0
    ) -> tuple[Tensor, Any]:
        if site not in self.weights:
            return x, None
        y, state = causal_conv(x, self.weights[site][layer].to(x.dtype), past)
        if self.activation:
            y = torch.nn.functional.silu(y)
        return (x + y if self.residual else y), state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, points={self.points}, kernel={self.kernel}"
