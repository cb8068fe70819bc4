"""Hard windows on the attention logits (``bias`` hook): Hard-ALiBi."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.encodings.base import PositionBias, relative_distance
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def hard_windows(masked: int, widest: int) -> list[int]:
    """The window sizes (tokens) of ``masked`` heads spread evenly over 1..``widest``, ends
    included, rounded half up (exact integer arithmetic); one head gets 1."""
    if masked == 1:
        return [1]
    span = 2 * (masked - 1)
    return [1 + (2 * h * (widest - 1) + masked - 1) // span for h in range(masked)]


@register(
    "hard_alibi",
    family="bias",
    paper="Jelassi, Brandfonbrener, Kakade, Malach 2024, Repeat After Me: Transformers are Better than State Space Models at Copying (ICML)",
    description="masked head h < m sees only the w_h latest tokens (bias 0, else -inf); the other heads are NoPE",
)
class HardALiBi(PositionBias):
    """Hard-ALiBi (Jelassi et al. 2024): per-head hard windows, the other heads NoPE.

    Formula: with m = round(``masked_fraction`` · heads) masked heads, head h < m adds the
    bias b_h(i, j) = 0 for 0 <= i - j < w_h and -inf for i - j >= w_h (a window of the w_h
    latest tokens, itself included); heads h >= m get no bias (causal NoPE). The paper
    writes the bias as -∞·1[i - j > m_h] without fixing m_h.

    The official code (``synthetic_exps/models/hard_alibi_model.py``, ``_attn``:
    ``for i in range(num_masked_heads): ... for j in range(i + 1)`` unmasks distance j for
    head i) gives head h the window w_h = h + 1, the same in every layer; its defaults
    (``main.py``: ``--heads 16``, ``--num_masked_heads 8``) make those windows 1..8. That is
    this encoding's default (``max_window`` null), so with fewer heads the windows shrink
    (4 heads, 2 masked: windows 1 and 2).

    ``max_window`` = W keeps the code's span 1..W at any head count: the m windows are
    spread evenly over 1..W, ends included, rounded half up,
    w_h = 1 + floor(h·(W - 1)/(m - 1) + 1/2) (a single masked head gets 1). W = m is the
    default h + 1 exactly; W = 8 at 16 heads is the code's 1..8; at 4 heads (2 masked)
    it is 1 and 8, at 8 heads (4 masked) 1, 3, 6, 8.

    Choices the paper leaves open, and ours: the windows (above: the code's); which heads
    are masked (the first m, as the code); the share of masked heads (``masked_fraction``
    0.5, the code's 8 of 16); the same windows in every layer (the code's); the spread at
    fewer heads (``max_window``: even, which is ours, not the paper's); the distance is that
    of the positions (so a KV cache and explicit positions work), equal to the index
    distance for the default positions (the code's mask assumes as many queries as keys).
    No rotary part (the code's RoPE dims are computed but not applied). Short windows (head
    0 sees only itself) are the point: they give the n-gram "hashing" heads the paper's
    copy mechanism needs.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        masked_fraction: float = 0.5,
        max_window: int | None = None,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(masked_fraction, int | float) or not 0 <= masked_fraction <= 1:
            raise ConfigError(
                f"encoding.masked_fraction must be a number in [0, 1], got {masked_fraction!r}"
            )
        if max_window is not None and (
            isinstance(max_window, bool) or not isinstance(max_window, int) or max_window < 1
        ):
            raise ConfigError(
                "encoding.max_window must be an integer >= 1 (the widest window, in tokens) "
                f"or null (window h + 1 for masked head h), got {max_window!r}"
            )
        self.masked_heads = m = round(masked_fraction * n_heads)
        self.max_window = max_window
        self.windows = hard_windows(m, m if max_window is None else max_window)
        # head h's widest visible distance: w_h - 1 for masked heads, unbounded for the others
        reach = [float(w - 1) for w in self.windows] + [float("inf")] * (n_heads - m)
        self.register_buffer("reach", torch.tensor(reach), persistent=False)

    def position_bias(self, pos_q: Tensor, pos_k: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, Tq), (B, Tk) -> 0 inside each head's window, -inf outside (B, H, Tq, Tk)."""
        dist = relative_distance(pos_q, pos_k).to(torch.float32)  # (B, 1, Tq, Tk)
        outside = dist > self.reach[None, :, None, None]  # (B, H, Tq, Tk)
        return torch.zeros(outside.shape, dtype=dtype, device=pos_q.device).masked_fill(
            outside, float("-inf")
        )
