"""Hard windows on the attention logits (``bias`` hook): Hard-ALiBi."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.encodings.base import Memo, PositionalEncoding, relative_distance
from posenc.encodings.registry import register
from posenc.errors import ConfigError


@register(
    "hard_alibi",
    family="bias",
    paper="Jelassi, Brandfonbrener, Kakade, Malach 2024, Repeat After Me: Transformers are Better than State Space Models at Copying (ICML)",
    description="head h < m sees only distances 0..h (bias 0, else -inf); the other heads are NoPE",
)
class HardALiBi(PositionalEncoding):
    """Hard-ALiBi (Jelassi et al. 2024): per-head hard windows, the other heads NoPE.

    With m = round(``masked_fraction`` · heads) masked heads, head h < m gets the bias
    0 for 0 <= i - j <= h and -inf beyond (a window of the h + 1 latest tokens, itself
    included); heads h >= m get no bias (causal NoPE). The windows 0..h are those of the
    official code (``hard_alibi_model.py``: ``for j in range(i + 1)`` unmasks distance j for
    head i); the paper writes the bias as -∞·1[i - j > m_h] without fixing m_h.

    Choices: ``masked_fraction`` 0.5 (the code's default: 8 masked heads of 16); the
    distance is that of the positions (so a KV cache and explicit positions work), equal to
    the index distance for the default positions. No rotary part (the code's RoPE dims are
    computed but not applied). Short windows (head 0 sees only itself) are the point: they
    give the n-gram "hashing" heads the paper's copy mechanism needs.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        masked_fraction: float = 0.5,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(masked_fraction, int | float) or not 0 <= masked_fraction <= 1:
            raise ConfigError(
                f"encoding.masked_fraction must be a number in [0, 1], got {masked_fraction!r}"
            )
        self.masked_heads = round(masked_fraction * n_heads)
        # head h's widest visible distance: h for masked heads, unbounded for the others
        reach = [float(h) if h < self.masked_heads else float("inf") for h in range(n_heads)]
        self.register_buffer("reach", torch.tensor(reach), persistent=False)

    def window_bias(self, pos_q: Tensor, pos_k: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, Tq), (B, Tk) -> 0 inside each head's window, -inf outside (B, H, Tq, Tk)."""
        dist = relative_distance(pos_q, pos_k).to(torch.float32)  # (B, 1, Tq, Tk)
        outside = dist > self.reach[None, :, None, None]  # (B, H, Tq, Tk)
        return torch.zeros(outside.shape, dtype=dtype, device=pos_q.device).masked_fill(
            outside, float("-inf")
        )

    def features(self, pos_q: Tensor, pos_k: Tensor) -> Memo:
        return Memo(lambda dtype: self.window_bias(pos_q, pos_k, dtype))

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
            return features(q.dtype)
        return self.window_bias(pos_q, pos_k, q.dtype)
