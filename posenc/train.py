"""The training step: AdamW, linear warm-up then cosine decay, gradient clipping.

``precision="bf16"`` runs the forward and backward passes under ``torch.autocast`` in
bfloat16 (matmuls and attention in bf16; weights, gradients and AdamW state stay fp32, so
the optimizer keeps full-precision master weights). ``compile=True`` trains through
``torch.compile(model, dynamic=True)`` (one graph for every sequence length). Both are off
by default: measured on CPU, neither pays at this model size (README, "Speed").
``buckets`` > 1 computes each batch in that many length-sorted pieces at most
(`posenc.data.length_buckets`) and accumulates their gradients: the same step as the whole
padded batch, with a fraction of its padding.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.data import Batch, length_buckets
from posenc.model import Transformer
from tasks.format import PAD


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up, cosine decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    decay_embeddings: bool = False,
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not norms, biases, the encoding's
    parameters, or the token embeddings unless ``decay_embeddings``: nanoGPT decays them)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied head appears once, as tok_emb.weight
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and not name.startswith("encoding.")
        if "emb" in name and not decay_embeddings:
            is_matrix = False
        (decay if is_matrix else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def masked_loss(logits: Tensor, batch: Batch, reduction: str = "mean") -> Tensor:
    """Cross-entropy over target and EOS tokens only: their mean, or with
    ``reduction="sum"`` their sum."""
    labels = batch.labels.masked_fill(~batch.loss_mask, -100)
    return F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction=reduction
    )


PRECISIONS = ("fp32", "bf16")


def bucket_count(train_cfg, batching: str | None = None) -> int:
    """Pieces a batch is computed in: ``train.buckets`` under ``bucketed`` batching (or
    ``batching`` in its place), else 1."""
    if (batching or train_cfg.get("batching")) == "bucketed":
        return train_cfg.get("buckets", 2)
    return 1


@dataclass
class StepResult:
    loss: float
    lr: float
    tokens: int  # non-padding tokens processed
    slots: int  # token slots processed, padding included


class Trainer:
    """Owns the optimizer and schedule; ``step(batch)`` is one optimizer step."""

    def __init__(
        self,
        model: Transformer,
        *,
        steps: int,
        lr: float,
        warmup_steps: int,
        min_lr_ratio: float,
        weight_decay: float,
        betas: tuple[float, float],
        grad_clip: float,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        decay_embeddings: bool = False,
        buckets: int = 1,
    ) -> None:
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self.buckets = buckets
        if precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}"
            )
        self.model = model
        self.device = device
        self.grad_clip = grad_clip
        self.precision = precision
        # The compiled module shares parameters with `model`; checkpoints use `model`.
        self.forward = torch.compile(model, dynamic=True) if compile else model
        self.optimizer = make_optimizer(
            model,
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            decay_embeddings=decay_embeddings,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, warmup=warmup_steps, total=steps, min_ratio=min_lr_ratio),
        )
        self.step_count = 0

    @classmethod
    def from_config(
        cls, model: Transformer, train_cfg, device: torch.device | str = "cpu"
    ) -> Trainer:
        """A trainer for the ``train.*`` section of a posenc config."""
        return cls(
            model,
            steps=train_cfg.steps,
            lr=train_cfg.lr,
            warmup_steps=train_cfg.warmup_steps,
            min_lr_ratio=train_cfg.min_lr_ratio,
            weight_decay=train_cfg.weight_decay,
            betas=tuple(train_cfg.betas),
            grad_clip=train_cfg.grad_clip,
            device=device,
            precision=train_cfg.get("precision", "fp32"),
            compile=bool(train_cfg.get("compile", False)),
            decay_embeddings=bool(train_cfg.get("decay_embeddings", False)),
            buckets=bucket_count(train_cfg),
        )

    def autocast(self):
        """The context of a forward pass at this trainer's precision."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        device_type = torch.device(self.device).type
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)

    def backward(self, batch: Batch) -> tuple[Tensor, int]:
        """Zero the gradients, then accumulate those of the mean answer-token loss over
        ``batch``, computed in up to ``buckets`` length-sorted pieces (`length_buckets`):
        each piece's summed loss is divided by the whole batch's answer-token count, so
        the pieces add up to the whole batch's loss and gradient. Returns the loss
        (detached) and the token slots processed, padding included."""
        self.model.train()
        pieces = [batch] if self.buckets == 1 else length_buckets(batch, self.buckets)
        n_answer = batch.loss_mask.sum().clamp(min=1).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        total, slots = torch.zeros((), device=self.device), 0
        for piece in pieces:
            piece = Batch(piece.tokens.to(self.device), piece.loss_mask.to(self.device))
            with self.autocast():
                logits, _ = self.forward(piece.inputs)
            if len(pieces) == 1:  # the mean itself: the arithmetic of runs before buckets
                loss = masked_loss(logits.float(), piece)
            else:
                loss = masked_loss(logits.float(), piece, reduction="sum") / n_answer
            loss.backward()
            total += loss.detach()
            slots += piece.tokens.numel()
        return total, slots

    def step(self, batch: Batch) -> StepResult:
        """One optimizer step on ``batch``: `backward`, clip, AdamW, schedule."""
        loss, slots = self.backward(batch)
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return StepResult(loss.item(), lr, int((batch.tokens != PAD).sum()), slots)

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = state["step"]
