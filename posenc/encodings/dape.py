"""DAPE and DAPE v2: a small network over the attention logits and the positional bias,
mixing across heads, that rewrites the logits before the softmax."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding, full_precision, visible_keys
from posenc.encodings.registry import build, parameters, register
from posenc.errors import ConfigError

# The reference's LeakyReLU, at torch's default slope (nn.LeakyReLU()).
LEAKY_SLOPE = 0.01


def rewrite_logits(scores: Tensor, bias: Tensor, convs: nn.ModuleList, visible: Tensor) -> Tensor:
    """DAPE's logits: scores + bias + f([scores, bias]) with f = conv₂ ∘ LeakyReLU ∘ conv₁
    over the channel axis of heads (2H -> width -> H), each a (1, kernel) convolution along
    the key axis (kernel 1: an MLP at every (i, j), DAPE v1).

    scores, bias (B, H, Tq, Tk) float; ``visible`` (Tq, Tk) bool. The entries of keys a query
    cannot see are set to 0 before the network (the reference's ``torch.tril``), and the
    matrix is extended by p = kernel // 2 zero columns on the right before the first
    convolution, so that row i reads zeros past key i whatever the number of keys: query
    i's logits are the same whether the sequence ends at i (a decoding step) or goes on
    (teacher forcing). The reference pads every layer with zeros at the right edge of the
    T×T matrix instead, which equals this on every row but the last p."""
    p = convs[0].padding[1]
    feats = torch.cat((scores, bias), dim=1).masked_fill(~visible, 0.0)  # (B, 2H, Tq, Tk)
    t_k = feats.shape[-1]
    if p:
        feats = F.pad(feats, (0, p))  # (B, 2H, Tq, Tk + p): the zeros past the last key
    hidden = F.leaky_relu(convs[0](feats), LEAKY_SLOPE)  # (B, width, Tq, Tk + p)
    mixed = convs[1](hidden)[..., :t_k]  # (B, H, Tq, Tk)
    return scores + bias + mixed


class DataAdaptivePositionalEncoding(PositionalEncoding):
    """DAPE (Zheng et al., NeurIPS 2024): the logits rewritten by a network that sees the
    content logits and the positional bias of every head at once,

        A_ij = S_ij + B_ij + f([S_ij ; B_ij]),   S = q·kᵀ/sqrt(d_head),  B the base's bias,

    f a two-layer MLP 2H -> ``mlp_width`` -> H with a LeakyReLU, applied at every (i, j)
    (the reference's ``mlp2``), then the causal mask and the softmax. The base encoding
    (``base``, default KERPLE-log: the reference's ``Kerple_DAPE``) supplies every other hook
    inside attention (its rotation, bias, state; absolute or position-drawing bases are
    refused: combine them beside), so ``base=alibi``/``fire``/``kerple_log`` are the paper's
    DAPE-ALiBi/-FIRE/-Kerple and ``base=rope`` DAPE-RoPE (no bias: B = 0, whose channels
    then contribute nothing). B is every bias the layer has (the base's, and in a
    combination the other parts'), as the reference adds the network to the logits after
    its bias.

    The network rewrites the logits themselves, so the softmax is written out here
    (``attention_weights``): DAPE leaves the fused kernel; every other encoding keeps it.
    Choices as in the reference code (chuanyang-Zheng/DAPE, ``DAPE.py`` ``*_DAPE`` and
    ``megatron/model/positional_embeddings.py``): one network per layer (each layer's
    attention owns its ``mlp2``), and the base's parameters per layer too where the base
    offers the choice (KERPLE's ``layer_shared=false`` unless ``base_params`` sets it: the
    reference builds ``ParallelKerpleLog_DAPE`` inside every attention layer); torch's
    default initialisation of the network; ``mlp_width`` 32; S the scaled logits before any
    mask; computed in float32.
    """

    kernel_size = 1  # v1: a pointwise MLP

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        d_input: int | None = None,
        base: str = "kerple_log",
        base_params: dict[str, Any] | None = None,
        mlp_width: int = 32,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        name = type(self).name
        if not isinstance(base, str):
            raise ConfigError(f"encoding.base must be an encoding name, got {base!r}")
        if base_params is not None and not isinstance(base_params, dict):
            raise ConfigError(f"encoding.base_params must be a mapping, got {base_params!r}")
        if not isinstance(mlp_width, int) or mlp_width < 1:
            raise ConfigError(f"encoding '{name}' needs mlp_width >= 1, got {mlp_width!r}")
        extra = {"d_input": d_input} if d_input is not None else {}
        # per-layer base parameters unless base_params says otherwise: the reference builds
        # its bias inside every attention layer
        per_layer = {"layer_shared": False} if "layer_shared" in parameters(base) else {}
        base_params = per_layer | (base_params or {})
        self.base = build(
            base,
            d_model=d_model,
            n_heads=n_heads,
            max_len=max_len,
            n_layers=n_layers,
            **extra,
            **base_params,
        )
        if type(self.base).attention_weights is not PositionalEncoding.attention_weights:
            raise ConfigError(
                f"encoding '{name}' rewrites the softmax logits; its base {base!r} computes its "
                "own attention weights instead of logits: choose a bias or rotary base"
            )
        outside = [
            hook
            for hook in ("embed", "positions", "token_positions")
            if getattr(type(self.base), hook) is not getattr(PositionalEncoding, hook)
        ]
        if outside or self.base.widens_heads:
            raise ConfigError(
                f"encoding '{name}' needs a base acting inside attention at the head's width; "
                f"{base!r} does not ({', '.join(outside) or 'it widens the heads'}): combine "
                f"it beside, e.g. encoding=combo 'encoding.parts=[{base},{name}]'"
            )
        self.base_name = base
        self.mlp_width = mlp_width
        k, pad = self.kernel_size, self.kernel_size // 2
        self.nets = nn.ModuleList(
            nn.ModuleList(
                (
                    nn.Conv2d(2 * n_heads, mlp_width, (1, k), padding=(0, pad)),
                    nn.Conv2d(mlp_width, n_heads, (1, k), padding=(0, pad)),
                )
            )
            for _ in range(n_layers)
        )
        self.data_dependent = self.base.data_dependent
        self.max_positions = self.base.max_positions

    # Every hook inside attention but the softmax is the base's.
    def rotate(self, q, k, pos_q, pos_k, *, layer: int = 0) -> tuple[Tensor, Tensor]:
        return self.base.rotate(q, k, pos_q, pos_k, layer=layer)

    def bias(self, q, k, pos_q, pos_k, *, layer: int = 0) -> Tensor | None:
        return self.base.bias(q, k, pos_q, pos_k, layer=layer)

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Any:
        return self.base.observe(x, past, layer=layer)

    def state_bias(self, state: Any, t_q: int, *, layer: int = 0) -> Tensor | None:
        return self.base.state_bias(state, t_q, layer=layer)

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor | None:
        return self.base.query_scale(t_q, t_k, layer=layer)

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor:
        t_q, t_k = q.shape[2], k.shape[2]
        visible = visible_keys(t_q, t_k, q.device)
        with full_precision(q):
            scores = q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5
            b = torch.zeros_like(scores) if bias is None else bias.float().expand_as(scores)
            logits = rewrite_logits(scores, b, self.nets[layer], visible)
            return logits.masked_fill(~visible, float("-inf")).softmax(-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base_name}, kernel={self.kernel_size}"


register(
    "dape",
    family="attention",
    paper="Zheng et al. 2024, DAPE: Data-Adaptive Positional Encoding for Length Extrapolation (NeurIPS)",
    description="logits S + B + MLP([S; B]) across heads at every (i, j), B a base bias (kerple_log)",
)(DataAdaptivePositionalEncoding)


@register(
    "dape_v2",
    family="attention",
    paper="Zheng et al. 2024, DAPE V2: Process Attention Score as Feature Map for Length Extrapolation (arXiv 2410.04798)",
    description="logits S + B + conv([S; B]): DAPE with 1×3 convolutions along the keys",
)
class DAPEv2(DataAdaptivePositionalEncoding):
    """DAPE v2 (Zheng et al. 2024, arXiv 2410.04798): DAPE's network made convolutional,
    treating the attention scores as a feature map,

        A = S + B + Conv₂(LeakyReLU(Conv₁(tril([S ; B])))),

    each Conv a (1, 3) kernel along the key axis with padding 1 (the reference's
    ``dapev2_kernel`` default 3, ``Alibi_DAPEV2``/``Kerple_DAPEV2``), channels 2H -> width
    -> H. Masked entries are zeroed before the convolution (``torch.tril``), so a query
    reads no later key; the zeros past the last key are extended so that a query's logits
    do not depend on how many tokens follow it (`rewrite_logits`: the reference differs
    on the last row of its T×T matrix, and its cached decoding path zeroes all but the
    first key of a one-row matrix). Other choices as DAPE's.
    """

    kernel_size = 3
