"""DroPE: train with RoPE, drop it at a step, recalibrate without positions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posenc.encodings.registry import register
from posenc.encodings.rotary import RoPE
from posenc.errors import ConfigError


@register(
    "drope",
    family="schedule",
    paper="Gelberg, Eguchi, Akiba, Cetin 2025, Extending the Context of Pretrained LLMs by Dropping Their Positional Embeddings (arXiv 2512.12167)",
    description="RoPE until step drop_at, then no positions (recalibration); evaluated without positions",
)
class DroPE(RoPE):
    """DroPE (Gelberg et al. 2025): RoPE for the optimizer steps before the drop, then NoPE
    for the rest of training ("recalibration") and at evaluation.

    ``drop_at``: the first step without RoPE, as a step number (an integer >= 1) or as a
    fraction of ``train.steps`` in (0, 1) (0.75, the default: RoPE for the first three
    quarters, so ``train.steps`` can change without moving the drop past the end; posenc's
    choice, the paper recalibrates a model pretrained far longer than it recalibrates).

    Before the drop, every hook is RoPE's (``base``, ``rotary_fraction`` and the rest, as
    ``encoding=rope``). From step ``drop_at`` on, ``rotate`` is the identity, as the
    reference's ``NoPEAttention`` makes it (cos = 1, sin = 0: the same weights, RoPE
    removed from every layer). The trainer announces each step through ``on_step``; whether
    RoPE has been dropped is part of the module's state dict (its extra state), so a
    checkpoint, a resumed run and ``posenc eval`` of a finished one all see the post-drop
    model, and a resume across the switch is exact.

    Choices, as in SakanaAI/DroPE: the logits keep the 1/√d_head scale after the drop (the
    reference sets ``softmax_scale`` only when a config names one; none of its run configs
    does; ``softmax_scale`` here replaces 1/√d_head after the drop when given); no QK-norm
    (the reference's ``qk_norm_nope`` variant is architecture, not position). Where the
    reference recalibrates a pretrained model in a separate run (a fresh AdamW, warm-up
    over 10% of the steps, then a constant rate), posenc drops inside one run: the optimizer
    and the learning-rate schedule carry on across the switch, so DroPE and RoPE-kept share
    every step before it. The drop must fall before ``train.steps`` (else the run would be
    RoPE); a model whose run length it was not told (``bind_steps``) keeps RoPE until it
    loads a dropped state.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        drop_at: float = 0.75,
        softmax_scale: float | None = None,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
    ) -> None:
        super().__init__(
            d_model=d_model,
            n_heads=n_heads,
            max_len=max_len,
            n_layers=n_layers,
            base=base,
            rotary_fraction=rotary_fraction,
        )
        if (
            isinstance(drop_at, bool)
            or not isinstance(drop_at, int | float)
            or not drop_at > 0
            or (drop_at >= 1 and drop_at != int(drop_at))
        ):
            raise ConfigError(
                "encoding.drop_at must be a step (an integer >= 1) or a fraction of train.steps "
                f"in (0, 1), got {drop_at!r}"
            )
        if softmax_scale is not None and not (
            isinstance(softmax_scale, int | float) and softmax_scale > 0
        ):
            raise ConfigError(f"encoding.softmax_scale must be > 0 or null, got {softmax_scale!r}")
        self.drop_at = drop_at
        self.softmax_scale = softmax_scale
        self.drop_step: int | None = int(drop_at) if drop_at >= 1 else None
        # A plain attribute, not a buffer, so that torch.compile guards on it instead of
        # breaking the graph; carried in the state dict by get_extra_state.
        self.dropped = False

    def on_step(self, step: int) -> None:
        self.dropped = self.drop_step is not None and step >= self.drop_step

    def bind_steps(self, steps: int) -> None:
        if self.drop_at < 1:  # a fraction: the first step at or past it
            self.drop_step = math.ceil(self.drop_at * steps)
        if not 1 <= self.drop_step < steps:
            raise ConfigError(
                f"encoding.drop_at={self.drop_at} puts the drop at step {self.drop_step}, "
                f"outside 1 .. train.steps - 1 = {steps - 1}: raise train.steps or change "
                "encoding.drop_at (encoding=rope keeps RoPE)"
            )

    def get_extra_state(self) -> dict:
        return {"dropped": self.dropped}

    def set_extra_state(self, state: dict) -> None:
        self.dropped = bool(state["dropped"])

    def rotate(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> tuple[Tensor, Tensor]:
        if self.dropped:
            return q, k
        return super().rotate(q, k, pos_q, pos_k, layer=layer)

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor | None:
        if not self.dropped or self.softmax_scale is None:
            return None
        # the fused kernel divides by √d_head: this factor makes the scale softmax_scale
        factor = torch.tensor(self.softmax_scale * self.d_head**0.5, device=self.inv_freq.device)
        return factor.view(1, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, drop_at={self.drop_step}, dropped={self.dropped}"
