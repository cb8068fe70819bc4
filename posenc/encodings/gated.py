"""Data-dependent position: forget gates (FoX) and Householder transport (PaTH).

Both read the layer's input hidden states through ``observe`` and keep what they computed
per token in the KV cache (cumulative log gates; Householder vectors and strengths), so a
cached decoding step sees exactly what teacher forcing sees.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, full_precision, visible_keys
from posenc.encodings.registry import register
from posenc.errors import ConfigError


class ForgetGate(nn.Module):
    """Per-head scalar forget gates f_t = σ(w_h·x_t + b_h), one (w, b) per layer.

    ``cumulative(x, past, layer)`` returns c_t = Σ_{l<=t} log f_l for the whole history
    (B, H, Tk); the bias between query i and key j is c_i - c_j = Σ_{l=j+1..i} log f_l.
    Computed in float32, as the reference code does (``logsigmoid(fgate_logit.float())``).
    """

    GATE_TYPES = ("full", "bias_only", "fixed")

    def __init__(
        self, d_model: int, n_heads: int, n_layers: int, bias_init: float, gate_type: str = "full"
    ) -> None:
        super().__init__()
        if gate_type not in self.GATE_TYPES:
            raise ConfigError(
                f"encoding.gate_type must be one of {', '.join(self.GATE_TYPES)}, got {gate_type!r}"
            )
        self.gate_type = gate_type
        bias = torch.full((n_layers, n_heads), float(bias_init))
        if gate_type == "full":
            # The reference initialises every Linear N(0, 0.02) with zero bias (its _init_weights).
            self.weight = nn.Parameter(torch.randn(n_layers, n_heads, d_model) * 0.02)
        else:  # the reference's data-independent gates: f_h = σ(b_h), no input weight
            self.register_buffer("weight", torch.zeros(n_layers, n_heads, d_model))
        if gate_type == "fixed":  # not learned (the reference's "fixed")
            self.register_buffer("bias", bias)
        else:
            self.bias = nn.Parameter(bias)

    def log_gates(self, x: Tensor, layer: int) -> Tensor:
        """(B, T, D) -> log f (B, H, T) in float32."""
        with full_precision(x):
            logit = x.float() @ self.weight[layer].float().t() + self.bias[layer].float()
            return F.logsigmoid(logit).transpose(1, 2)

    def cumulative(self, x: Tensor, past: Tensor | None, layer: int) -> Tensor:
        c = self.log_gates(x, layer).cumsum(-1)  # (B, H, T)
        if past is None:
            return c
        return torch.cat((past, c + past[..., -1:]), dim=-1)  # (B, H, Tk)


def gate_bias(c: Tensor, t_q: int) -> Tensor:
    """Cumulative log gates (B, H, Tk) -> D_ij = c_i - c_j (B, H, Tq, Tk) for the last Tq
    queries; entries with j > i (positive) are masked by the causal mask."""
    return c[..., -t_q:, None] - c[..., None, :]


@register(
    "fox",
    family="data-dependent",
    paper="Lin, Nikishin, He, Courville 2025, Forgetting Transformer: Softmax Attention with a Forget Gate (ICLR)",
    description="forgetting attention: logit bias Σ log f_l over the path, f_t = σ(w·x_t + b) per head",
)
class ForgettingAttention(PositionalEncoding):
    """Forgetting attention, FoX (Lin et al. 2025), without any other position signal.

    Per layer and head h a forget gate f_t = σ(w_h·x_t + b_h) from the layer's input x_t
    (after the block's LayerNorm), and the logit bias

        D_ij = Σ_{l=j+1..i} log f_l = c_i - c_j,   c_t = Σ_{l<=t} log f_l,

    added after the 1/sqrt(d_head) scaling (the reference's ``naive_forgetting_attn`` adds
    it to q·k·scale). D_ii = 0, and a constant gate f gives the ALiBi-like bias
    (i - j)·log f. Being a plain additive bias, it keeps the fused softmax kernel.

    Choices the paper leaves open, as taken here: the gate reads the normalised layer input
    (the reference's attention layer receives the post-norm hidden states); weights
    N(0, 0.02) and bias ``gate_bias_init`` (0, the reference's zero bias under its
    initialiser: f ≈ 0.5 at the start; the paper's "fgate_bias_init" variant, which spreads
    the biases for long contexts, is off by default there too); float32 gates; no RoPE
    (the paper's "FoX (LLaMA)" drops RoPE; add one with ``encoding=combo
    encoding.parts=[rope,fox]``). ``gate_type`` as the reference's ``fgate_type``: ``full``
    (the default, f_t = σ(w_h·x_t + b_h)), ``bias_only`` (f_h = σ(b_h), learned, no input)
    or ``fixed`` (f_h = σ(gate_bias_init), not learned: ALiBi with slope -log f_h). The
    "Pro" block's output gate, QK-norm and KV-shift are architecture, not position, and are
    left out.
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
        gate_bias_init: float = 0.0,
        gate_type: str = "full",
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        self.gate = ForgetGate(d_input or d_model, n_heads, n_layers, gate_bias_init, gate_type)

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Tensor:
        return self.gate.cumulative(x, past, layer)

    def state_bias(self, state: Any, t_q: int, *, layer: int = 0) -> Tensor:
        return gate_bias(state, t_q)


def householder_logits(q: Tensor, k: Tensor, w: Tensor, beta: Tensor) -> Tensor:
    """PaTH logits q_iᵀ (H_i H_{i-1} ... H_{j+1}) k_j for all i, j <= i (0 above the diagonal).

    q, k, w (B, H, T, Dh), beta (B, H, T), with H_s = I - β_s w_s w_sᵀ. The product over any
    interval (j, i] has the compact WY form I - Σ_{s,s'} w_s U_{ss'} β_{s'} w_{s'}ᵀ with
    U = (I + L)⁻¹, L_{ss'} = β_s w_s·w_{s'} for s > s' (strictly lower: applying H_{j+1}
    first, then H_{j+2}, ..., the coefficient of w_s is β_s times w_s·(the vector so far))
    and the sums over s, s' in (j, i]; the interval's block of U is the block of the whole
    sequence's U (a triangular matrix's inverse, restricted to a diagonal block), so one
    solve serves every pair:

        A_ij = q_i·k_j - Σ_{s<=i} Σ_{s'>j} (q_i·w_s) U_{ss'} β_{s'} (w_{s'}·k_j).

    Memory O(T²) per head (the (T, T) matrices only); the triangular solve costs O(T³),
    where the reference kernel splits the sequence into chunks of 64 to bound it.
    """
    T = q.shape[2]
    ww = w @ w.transpose(-1, -2)  # (B, H, T, T)
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=q.device).tril(-1)
    eye = torch.eye(T, dtype=q.dtype, device=q.device)
    L = (ww * beta[..., :, None]).masked_fill(~strictly_lower, 0.0)
    U = torch.linalg.solve_triangular(eye + L, eye.expand_as(L), upper=False, unitriangular=True)
    lower = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    qw = (q @ w.transpose(-1, -2)).masked_fill(~lower, 0.0)  # [s <= i]
    wk = ((w * beta[..., None]) @ k.transpose(-1, -2)).masked_fill(~strictly_lower, 0.0)  # [s' > j]
    return (q @ k.transpose(-1, -2) - qw @ U @ wk).masked_fill(~lower, 0.0)


@register(
    "path",
    family="data-dependent",
    paper="Yang, Shen, Wen, Tan, Mishra, Ren, Panda, Kim 2025, PaTH Attention: Position Encoding via Accumulating Householder Transformations (NeurIPS)",
    description="logit q_iᵀ(Π_{s=j+1..i} H_s)k_j, H_t = I - β_t w_t w_tᵀ from the hidden states",
)
class PaTH(PositionalEncoding):
    """PaTH attention (Yang et al. 2025): position as accumulated Householder transforms.

    Per layer, from the layer input x_t: w_t = L2norm(SiLU(ShortConv(W_up W_down x_t)))
    per head (W_down: D -> ``w_rank``, W_up: -> H·d_head, a causal depthwise convolution
    of width ``conv_size`` without bias), β_t = 2σ(u_h·x_t + b_h) ∈ (0, 2) (β > 1 gives
    the negative eigenvalue 1 - β), H_t = I - β_t w_t w_tᵀ, and

        logit_ij = q_iᵀ (H_i H_{i-1} ... H_{j+1}) k_j / sqrt(d_head)   (j <= i; H-free for j = i)

    then softmax over the causal past (`householder_logits`). As in the reference layer
    (fla ``PaTHAttention``: low-rank w of rank 32, ``ShortConvolution`` kernel 3 with SiLU
    and no bias, ``l2_norm``, ``bt_proj`` with bias, ``sigmoid() * 2``), and the keys are
    the layer's plain keys (no RoPE). With ``forget_gate`` (PaTH-FoX, registered as
    ``path_fox``) a FoX gate's c_i - c_j is added to the logit before the 1/sqrt(d_head)
    scaling, as the reference kernel does (``(b_s + g_i - g_j) * scale``), unlike FoX alone.
    Other encodings' biases (in a combination) are added after the scaling, as everywhere.

    Choices the paper leaves open: initialisation (N(0, 0.02) for the projections and
    zero biases, as the reference model's initialiser, so β ≈ 1 at the start; PyTorch's
    default U(±1/sqrt(conv_size)) for the convolution: the reference model draws it
    N(0, 0.02) too, which at its width (2048) still gives ||w||² ≫ ε, but at d_model 64
    would leave ||w||² near ε = 1e-6, so w would start far from unit length); L2 norm with ε = 1e-6 under the
    square root; w, β and the logits in float32. The KV cache keeps w, β and the last
    ``conv_size - 1`` inputs of the convolution; a decoding step recomputes the logits of
    its queries from the cached keys (the reference instead multiplies the cached keys by
    each new H_t: the same numbers).
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
        w_rank: int = 32,
        conv_size: int = 3,
        forget_gate: bool = False,
        gate_bias_init: float = 0.0,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        d_in = d_input or d_model  # the width of the hidden states observed
        if not isinstance(w_rank, int) or w_rank < 1:
            raise ConfigError(f"encoding.w_rank must be an integer >= 1, got {w_rank!r}")
        if not isinstance(conv_size, int) or conv_size < 1:
            raise ConfigError(f"encoding.conv_size must be an integer >= 1, got {conv_size!r}")
        self.conv_size = conv_size
        self.w_down = nn.Parameter(torch.randn(n_layers, w_rank, d_in) * 0.02)
        self.w_up = nn.Parameter(torch.randn(n_layers, d_model, w_rank) * 0.02)
        bound = 1 / math.sqrt(conv_size)  # nn.Conv1d's default for one input channel per group
        self.conv = nn.Parameter(torch.empty(n_layers, d_model, conv_size).uniform_(-bound, bound))
        self.beta_weight = nn.Parameter(torch.randn(n_layers, n_heads, d_in) * 0.02)
        self.beta_bias = nn.Parameter(torch.zeros(n_layers, n_heads))
        self.forget_gate = bool(forget_gate)
        self.gate = ForgetGate(d_in, n_heads, n_layers, gate_bias_init) if forget_gate else None

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> dict[str, Tensor]:
        with full_precision(x):
            return self._observe(x, past, layer)

    def _observe(self, x: Tensor, past: Any, layer: int) -> dict[str, Tensor]:
        B, T, _ = x.shape
        x = x.float()
        u = x @ self.w_down[layer].float().t() @ self.w_up[layer].float().t()  # (B, T, H·Dh)
        K = self.conv_size
        if past is None:
            history = F.pad(u, (0, 0, K - 1, 0))  # causal: zeros before the first token
        else:
            history = torch.cat((past["conv"], u), dim=1)
        # depthwise causal convolution: out_t = Σ_m conv[:, m] · u_{t-K+1+m}
        windows = history.unfold(1, K, 1)  # (B, T, H·Dh, K)
        w = F.silu((windows * self.conv[layer].float()).sum(-1))
        w = w.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        w = w / torch.sqrt((w * w).sum(-1, keepdim=True) + 1e-6)
        beta = 2 * torch.sigmoid(x @ self.beta_weight[layer].float().t() + self.beta_bias[layer])
        state = {
            "w": w,
            "beta": beta.transpose(1, 2),
            "conv": history[:, history.shape[1] - (K - 1) :],
        }
        if self.gate is not None:
            state["gates"] = self.gate.cumulative(x, None if past is None else past["gates"], layer)
        if past is not None:
            state["w"] = torch.cat((past["w"], state["w"]), dim=2)
            state["beta"] = torch.cat((past["beta"], state["beta"]), dim=2)
        return state

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor:
        with full_precision(q):
            return self._weights(q, k, bias, state)

    def _weights(self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any) -> Tensor:
        t_q, t_k = q.shape[2], k.shape[2]
        # The keys' own queries are not needed: a query's logits depend on it alone, so the
        # earlier queries are padded with zeros to use the whole-history transform.
        q_full = F.pad(q.float(), (0, 0, t_k - t_q, 0))
        logits = householder_logits(q_full, k.float(), state["w"], state["beta"])[..., -t_q:, :]
        if self.gate is not None:
            logits = logits + gate_bias(state["gates"], t_q)
        logits = logits / math.sqrt(self.d_head)
        if bias is not None:
            logits = logits + bias.float()
        visible = visible_keys(t_q, t_k, q.device)
        return logits.masked_fill(~visible, float("-inf")).softmax(-1)


@register(
    "path_fox",
    family="data-dependent",
    paper="Yang et al. 2025, PaTH Attention (PaTH-FoX: PaTH with FoX's forget gate)",
    description="PaTH attention plus a forget gate's Σ log f_l on the logits (fla's use_forget_gate)",
)
class PaTHFoX(PaTH):
    """PaTH-FoX (Yang et al. 2025): PaTH with FoX's forget gate (`PaTH`, ``forget_gate=True``).

        logit_ij = (q_iᵀ (H_i ... H_{j+1}) k_j + Σ_{l=j+1..i} log f_l) / sqrt(d_head),
        f_t = σ(w_h·x_t + b_h),

    the gate term scaled with the transported product, as fla's parallel PaTH kernel does
    (``(b_s + g_q - g_k) * scale``); its paper's strongest variant on length extrapolation.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        d_input: int | None = None,
        w_rank: int = 32,
        conv_size: int = 3,
        gate_bias_init: float = 0.0,
    ) -> None:
        super().__init__(
            d_model=d_model,
            n_heads=n_heads,
            max_len=max_len,
            n_layers=n_layers,
            d_input=d_input,
            w_rank=w_rank,
            conv_size=conv_size,
            forget_gate=True,
            gate_bias_init=gate_bias_init,
        )
