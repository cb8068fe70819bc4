"""Sequence mixers other than attention: DeltaNet, a position-free recurrent layer.

``model.mixers`` puts one in place of attention in any layer (`posenc.model.Block`), so a
hybrid (``[delta, delta, delta, attention]``) is a config line. A mixer takes the
attention's arguments and returns its output and a `LayerCache` whose ``state`` is the
recurrent state: decoding with the cache costs one step of the recurrence per token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, full_precision
from posenc.encodings.canon import causal_conv
from posenc.errors import ConfigError


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(Σ x² + eps) over the last axis (fla's ``l2norm``, eps inside the root)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def delta_rule(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, state: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The delta rule, step by step (fla ``delta_rule_recurrence``, its naive reference):

        S_t = S_{t-1} + k_t (β_t (v_t - S_{t-1}ᵀ k_t))ᵀ = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
        o_t = S_tᵀ q_t / sqrt(d_k)

    q, k (B, H, T, dk), v (B, H, T, dv), beta (B, H, T), state S (B, H, dk, dv) or None (0)
    -> o (B, H, T, dv) and the final state, in float32 (as the reference computes it).
    """
    B, H, T, dk = q.shape
    q, k, v, beta = (t.float() for t in (q, k, v, beta))
    S = q.new_zeros(B, H, dk, v.shape[-1]) if state is None else state.float()
    q = q * dk**-0.5
    out = []
    for t in range(T):
        k_t = k[:, :, t]  # (B, H, dk)
        delta = (v[:, :, t] - (S * k_t[..., None]).sum(-2)) * beta[:, :, t, None]  # (B, H, dv)
        S = S + k_t[..., None] * delta[..., None, :]
        out.append((q[:, :, t, :, None] * S).sum(-2))  # (B, H, dv)
    return torch.stack(out, dim=2), S


class DeltaNet(nn.Module):
    """DeltaNet (Schlag et al. 2021; Yang, Wang, Zhang, Shen, Kim 2024, "Parallelizing Linear
    Transformers with the Delta Rule over Sequence Length", NeurIPS), as fla's ``DeltaNet``
    layer with its defaults, in the naive recurrent form (`delta_rule`).

    Per head, from the layer input x_t (after the block's LayerNorm):

        q_t = L2norm(SiLU(conv_q(W_q x)_t)),  k_t = L2norm(SiLU(conv_k(W_k x)_t)),
        v_t = SiLU(conv_v(W_v x)_t),          β_t = σ(w_β·x_t)
        o_t = S_tᵀ q_t / sqrt(d_k),           S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
        y_t = W_o RMSNorm(o_t)   (per head, learned weight, eps 1e-5)

    Choices, as fla's layer makes them by default: ``use_short_conv=True`` (kernel 4, no
    bias, SiLU on all three), ``qk_activation=silu``, ``qk_norm=l2``, ``use_beta=True``,
    ``allow_neg_eigval=False`` (β in (0, 1)), ``use_gate=False`` (a plain RMSNorm on the
    output), ``expand_k = expand_v = 1``, no biases in the projections; weights N(0, 0.02)
    (fla's ``_init_weights``, also for the convolutions), which posenc's model init gives.
    The heads are the model's ``n_heads``. No positional signal at all: the recurrence
    orders the tokens, so the encoding's hooks are not called (it still acts on the
    attention layers of a hybrid and on the block's hidden states).

    The KV cache keeps S and the last 3 inputs of each convolution, so a decoding step is
    one step of the recurrence and equals teacher forcing.
    """

    conv_size = 4
    description = "DeltaNet, position-free recurrence S_t = (I - β k kᵀ) S_{t-1} + β k vᵀ (fla's layer, naive form)"
    paper = "Yang, Wang, Zhang, Shen, Kim 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length (NeurIPS)"

    def __init__(self, cfg, layer: int, cache_type: type) -> None:
        super().__init__()
        self.layer = layer
        self.cache_type = cache_type  # posenc.model.LayerCache (the model imports this module)
        self.n_heads = cfg.n_heads
        d = cfg.d_model
        self.d_head = d // cfg.n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)  # W_q, W_k, W_v side by side
        self.beta = nn.Linear(d, cfg.n_heads, bias=False)
        # Depthwise kernels (C, K) of q, k and v side by side, as fla's three ShortConvolutions.
        self.conv = nn.Parameter(torch.empty(3 * d, self.conv_size))
        self.norm_weight = nn.Parameter(torch.ones(self.d_head))
        self.proj = nn.Linear(d, d, bias=False)  # fla's o_proj
        nn.init.normal_(self.conv, std=0.02)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        encoding: PositionalEncoding,
        cache: Any = None,
        carry: dict | None = None,
        features: Any = None,  # position features: a position-free mixer reads none
    ) -> tuple[Tensor, Any]:
        B, T, D = x.shape
        past = cache.state if cache is not None else None
        with full_precision(x):
            x32 = x.float()
            mixed, conv_state = causal_conv(
                self.qkv(x32), self.conv.float(), past["conv"] if past else None
            )
            q, k, v = F.silu(mixed).split(D, dim=2)
            q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
            q, k = l2norm(q), l2norm(k)
            beta = torch.sigmoid(self.beta(x32)).transpose(1, 2)  # (B, H, T)
            o, S = delta_rule(q, k, v, beta, past["S"] if past else None)
            o = F.rms_norm(o, (self.d_head,), self.norm_weight.float(), eps=1e-5)
        y = self.proj(o.transpose(1, 2).reshape(B, T, D).to(x.dtype))
        pos_k = pos if cache is None else torch.cat((cache.pos, pos), dim=1)
        empty = x.new_zeros(B, self.n_heads, 0, self.d_head)  # no keys: nothing to attend to
        return y, self.cache_type(empty, empty, pos_k, state={"S": S, "conv": conv_state})


MIXERS = {"delta": DeltaNet}


def build_mixer(name: str, cfg, layer: int, cache_type: type) -> nn.Module:
    """The mixer ``name`` (a key of `MIXERS`) for ``layer`` of a model of config ``cfg``,
    returning its state in ``cache_type`` (`posenc.model.LayerCache`)."""
    if name not in MIXERS:
        raise ConfigError(f"unknown mixer {name!r}; valid choices: attention, {', '.join(MIXERS)}")
    return MIXERS[name](cfg, layer, cache_type)
