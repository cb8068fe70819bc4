"""PoPE: polar coordinate positional embeddings (content in the magnitudes, position in the
phases), a rotation whose queries and keys are twice as wide as the head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, full_precision
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def polar_features(x: Tensor, phase: Tensor) -> Tensor:
    """x (B, H, T, d), phase broadcastable to it -> (B, H, T, 2d): softplus(x) as the
    magnitudes of d complex numbers with these phases, written as [μ cos φ, μ sin φ]
    (x-transformers' ``apply_polar_pos_emb`` layout; PoPE-pytorch interleaves the two, which
    gives the same dot products)."""
    magnitude = F.softplus(x)
    return torch.cat((magnitude * phase.cos(), magnitude * phase.sin()), dim=-1)


@register(
    "pope",
    family="rotary",
    paper="Gopalakrishnan, Csordás, Schmidhuber, Mozer 2025, Decoupling the 'What' and 'Where' With Polar Coordinate Positional Embeddings (arXiv 2509.10534)",
    description="q·k = Σ_c softplus(q_c) softplus(k_c) cos((i-j)θ_c - δ_c): d frequencies, content in magnitudes",
)
class PolarPositionalEmbedding(PositionalEncoding):
    """PoPE (Gopalakrishnan et al. 2025): each of the d_head channels of a query or key is
    one complex number whose magnitude is the content and whose phase is the position.

        q̃_i,c = softplus(q_i,c) · e^{i·θ_c}            θ_c = base^(-c/d),  c = 0 … d-1
        k̃_j,c = softplus(k_j,c) · e^{j·θ_c + δ_h,c}     δ_h,c = clamp(δ, -2π, 0)

        logit_ij = Re Σ_c q̃_i,c conj(k̃_j,c) / sqrt(d)
                 = Σ_c softplus(q_i,c) softplus(k_j,c) cos((i - j)θ_c - δ_h,c) / sqrt(d)

    Unlike RoPE, which rotates d/2 pairs of signed coordinates so that content and position
    mix in every pair's angle, the magnitudes here are non-negative and the angle is position
    alone (plus the learned per-head phase bias δ); there are d frequencies, not d/2. The
    real and imaginary parts are written out as real vectors, so `rotate` returns queries
    and keys of width 2·d_head while the values keep d_head (the fused kernel accepts q, k
    of one width and v of another). Both references scale the logits by 1/sqrt(d_head), the
    width of the head, not of the widened q and k (x-transformers ``Attention.scale =
    dim_head ** -0.5``; PoPE-pytorch ``softmax_scale = q.shape[-1] ** -0.5`` on the
    unexpanded q): `query_scale` returns sqrt(2) so that the kernel's 1/sqrt(2·d_head)
    becomes exactly that.

    Choices, as in the references (x-transformers ``PolarEmbedding``/``apply_polar_pos_emb``
    and the ``PoPE-pytorch`` package): θ base 10000; δ one (heads, d_head) parameter shared
    by every layer (x-transformers builds one ``PolarEmbedding`` per model), initialised at 0
    (``bias_uniform_init=true``: U(-2π, 0), the references' option), clamped to [-2π, 0] in
    the forward pass as both do (no gradient outside that range); the phase bias on the keys
    only; softplus and the trigonometry in float32 with the result cast back to the input's
    dtype. Not done here: partial rotation (PoPE-pytorch's ``rotate_dim < dim``).
    """

    widens_heads = True

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        base: float = 10000.0,
        bias_uniform_init: bool = False,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not base > 1:
            raise ConfigError(f"encoding 'pope' needs base > 1, got {base}")
        self.base = base
        d = self.d_head
        self.register_buffer(
            "inv_freq", base ** -(torch.arange(d, dtype=torch.float32) / d), persistent=False
        )
        self.phase_bias = nn.Parameter(torch.zeros(n_heads, d))
        if bias_uniform_init:
            with torch.no_grad():
                self.phase_bias.uniform_(-2 * math.pi, 0.0)

    def rotate(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> tuple[Tensor, Tensor]:
        with full_precision(q):
            phase_q = pos_q.float()[:, None, :, None] * self.inv_freq  # (B, 1, Tq, d)
            phase_k = pos_k.float()[:, None, :, None] * self.inv_freq  # (B, 1, Tk, d)
            delta = self.phase_bias.float().clamp(-2 * math.pi, 0.0)[
                None, :, None, :
            ]  # (1, H, 1, d)
            q_out = polar_features(q.float(), phase_q)
            k_out = polar_features(k.float(), phase_k + delta)
        return q_out.to(q.dtype), k_out.to(k.dtype)  # (B, H, T, 2d) each

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor:
        # logits / sqrt(d_head), as the references scale them, under the kernel's 1/sqrt(2 d_head)
        return torch.full((1, 1, 1, 1), math.sqrt(2.0), device=self.inv_freq.device)
