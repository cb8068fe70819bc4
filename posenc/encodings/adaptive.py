"""Content-adaptive biases: CABLE, a per-head logit bias accumulated from the tokens."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, full_precision
from posenc.encodings.gated import gate_bias
from posenc.encodings.registry import register


@register(
    "cable",
    family="data-dependent",
    paper="Veisi, Mansourian, Amirzadeh 2025, Context-aware Biases for Length Extrapolation (EMNLP; arXiv 2503.08067)",
    description="bias b_i - b_j, b_t = -Σ_{l<=t} softplus(w_h·x_l + c_h): a learned per-token distance",
)
class ContextAwareBias(PositionalEncoding):
    """CABLE (Veisi et al. 2025, arXiv 2503.08067): each token contributes a
    learned, content-dependent step to the distance between a query and a key.

        s_t,h = softplus(w_h·x_t + c_h) >= 0,    b_t,h = -Σ_{l<=t} s_l,h,
        logit_ij = q_i·k_j/sqrt(d_head) + b_i,h - b_j,h = ... - Σ_{l=j+1..i} s_l,h,

    x_t the layer's input (after the block's LayerNorm), one (w, c) per head and layer
    (the reference's ``h_attn = nn.Linear(n_embd, n_head)`` in every attention). With every
    step equal to s the bias is ALiBi's -s·(i - j); a token with a large step pushes
    everything before it further away. The bias is a plain additive one, so the fused
    kernel stays; the running sums b are ``observe``'s state, kept in the KV cache.

    As written this is FoX's bias with the gate's logit negated (log σ(-z) = -softplus(z)),
    and both initialise the projection N(0, 0.02) with a zero bias: the two schemes differ in
    their papers' framing (a learned distance here, a forget gate there), not in the
    function they can represent. Choices as in the reference code (``src/Cable.py``):
    weights N(0, 0.02) and bias 0 (its ``_init_weights``), the steps in float32, no other
    position signal. One difference is a parameter: the reference scales the logits by
    1/sqrt(C / n_embd) = 1, i.e. not at all, where the paper's formula and every other
    posenc scheme divide q·k by sqrt(d_head); ``unscaled_logits=true`` reproduces the code
    (a query scale of sqrt(d_head), on the fused kernel), false (the default) the formula.
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
        unscaled_logits: bool = False,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        d_in = d_input or d_model
        self.weight = nn.Parameter(torch.randn(n_layers, n_heads, d_in) * 0.02)
        self.bias_ = nn.Parameter(torch.zeros(n_layers, n_heads))
        self.unscaled_logits = bool(unscaled_logits)

    def steps(self, x: Tensor, layer: int) -> Tensor:
        """(B, T, D) -> the non-negative steps s (B, H, T) in float32."""
        with full_precision(x):
            z = x.float() @ self.weight[layer].float().t() + self.bias_[layer].float()
            return F.softplus(z).transpose(1, 2)

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Tensor:
        b = -self.steps(x, layer).cumsum(-1)  # (B, H, T)
        if past is None:
            return b
        return torch.cat((past, b + past[..., -1:]), dim=-1)  # (B, H, Tk)

    def state_bias(self, state: Any, t_q: int, *, layer: int = 0) -> Tensor:
        return gate_bias(state, t_q)  # b_i - b_j (B, H, Tq, Tk)

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor | None:
        if not self.unscaled_logits:
            return None
        return torch.full((1, 1, 1, 1), math.sqrt(self.d_head), device=self.weight.device)
