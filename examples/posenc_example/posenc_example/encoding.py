"""``logbias``: an ALiBi-like additive bias that grows with the log of the distance."""

from __future__ import annotations

import torch
from torch import Tensor

from posenc.encodings import PositionalEncoding
from posenc.encodings.base import relative_distance
from posenc.errors import ConfigError


class LogDistanceBias(PositionalEncoding):
    """Log-distance bias: head h adds -slope_h * log(1 + i - j) to the logit of query i, key j.

    Only the ``bias`` hook is overridden, so the model sees no absolute position: like ALiBi,
    the scheme depends on offsets only. ``slope_scale`` multiplies ALiBi's geometric slopes.
    """

    # Shown by `posenc list` (family and paper; the description is the docstring's first line).
    family = "bias"
    paper = "example plugin (examples/posenc_example in the posenc repository)"

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        slope_scale: float = 1.0,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not slope_scale > 0:
            raise ConfigError(f"encoding 'logbias' needs slope_scale > 0, got {slope_scale}")
        self.slope_scale = float(slope_scale)
        exponents = torch.arange(1, n_heads + 1, dtype=torch.float32) * (8.0 / n_heads)
        slopes = self.slope_scale * torch.pow(2.0, -exponents)
        self.register_buffer("slopes", slopes.view(1, n_heads, 1, 1), persistent=False)

    def bias(self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0) -> Tensor:
        # (B, 1, Tq, Tk): i - j; future keys (negative) are masked by the model anyway.
        distance = relative_distance(pos_q, pos_k).clamp(min=0).to(q.dtype)
        return -self.slopes.to(q.dtype) * torch.log1p(distance)  # (B, H, Tq, Tk)
