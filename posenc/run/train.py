"""The training step: AdamW, linear warm-up then cosine decay, gradient clipping.

``precision="bf16"`` runs the forward passes under ``torch.autocast`` in bfloat16 (matmuls
in bf16, attention in float32 on CPU; weights, gradients and AdamW state stay fp32, so the
optimizer keeps full-precision master weights). ``compile=True`` trains through
``torch.compile(model, dynamic=True)`` (one graph for every sequence length; its artifacts
cached on disk, `use_compile_cache`). Both are off by default, and both change the
rounding (their speed and accuracy checks: docs/performance.md). ``train.compile=auto`` (with
``train.fused_adamw=auto``) is resolved to true or false before a run starts, where it pays
(`posenc.run.spec.resolve_compile`, the rule's one home), so the trainer only ever sees
booleans; ``train.compile=false`` opts out. Under compile the bucketed pieces still run side by
side: the threads share the one compiled graph (dynamic shapes, so the pieces' lengths
share it too), each piece one compiled forward and backward pass.
``buckets`` > 1 computes each batch in that many length-sorted pieces at most
(`posenc.data.length_buckets`) and accumulates their gradients: the same step as the whole
padded batch, with a fraction of its padding. On CPU with more than one torch thread the
pieces run side by side, one Python thread each (``workers``): small matmuls gain little
from a second intra-op thread, and a second piece in flight uses that core fully. The
arithmetic is that of the sequential loop: positions are drawn in piece order on the
calling thread and the pieces' gradients are added in piece order, so the step is
bit-for-bit the sequential loop's at the same intra-op threads per piece (a test checks it).
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.data import Batch, length_buckets
from posenc.encodings.base import PositionalEncoding
from posenc.model import Transformer
from posenc.precision import resolve as resolve_precision
from posenc.tasks.format import PAD


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up, cosine decay
    to ``min_ratio`` at ``total``, held there past it (``train.until_fit`` trains on)."""
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
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not norms, biases, the encoding's
    parameters, or the token embeddings unless ``decay_embeddings``: nanoGPT decays them).
    ``fused``: torch's fused kernel (one pass over each parameter's update, on CPU too)
    instead of ``foreach``."""
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
    # foreach: one kernel per operation over all parameters instead of one per parameter
    # (about a quarter less optimizer time on CPU), the same numbers bit for bit
    # (tests/test_fast_paths.py). ``fused`` is faster still but rounds differently (within
    # float32 rounding of foreach, tests/test_speed.py); opt-in (why: docs/performance.md).
    if fused:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), foreach=True)


def masked_loss(logits: Tensor, batch: Batch, reduction: str = "mean") -> Tensor:
    """Cross-entropy over target and EOS tokens only: their mean, or with
    ``reduction="sum"`` their sum."""
    labels = batch.labels.masked_fill(~batch.loss_mask, -100)
    return F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction=reduction
    )


COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache() -> str:
    """Where torch.compile keeps its compiled artifacts (inductor's FX-graph cache and
    AOT-autograd's cache, both on by default): ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/posenc/torchinductor`` (``~/.cache/...``) rather than torch's /tmp
    default, so every run of a comparison and every later command on this machine reuses
    them (a cold compile of the default model is about two minutes on one core, a cached
    one about half a minute: docs/performance.md)."""
    if os.environ.get(COMPILE_CACHE_ENV) in (None, _torch_default_cache_dir()):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ[COMPILE_CACHE_ENV] = os.path.join(base, "posenc", "torchinductor")
    return os.environ[COMPILE_CACHE_ENV]


def _torch_default_cache_dir() -> str | None:
    """The folder torch itself writes into ``$TORCHINDUCTOR_CACHE_DIR`` (a temporary one)
    when anything imports ``torch._dynamo`` before a trainer compiles, as building a model
    does: that value is torch's default, not a user's choice, so `use_compile_cache` still
    replaces it (it did not, and every compiled run's artifacts went to /tmp)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch without it: only an unset variable is ours to set
        return None
    return default_cache_dir()


def resolved_compile(train_cfg, model: nn.Module, device: torch.device | str) -> tuple[bool, bool]:
    """``train.compile`` and ``train.fused_adamw`` as booleans. A run's config holds them
    resolved (`posenc.run.spec.resolve_compile`); an ``auto`` that reaches a trainer built
    outside a run (a `posenc.schema.Train` of its own) is decided by the same rule
    (`posenc.run.spec.compile_pays`), over the graph breaks its model's encoding modules
    declare and this machine's compile measurement at torch's threads now."""
    from posenc.precision import compile_speedup
    from posenc.run.spec import compile_pays

    compiled, fused = train_cfg.compile, train_cfg.fused_adamw
    if compiled == "auto":
        breaks = [m.graph_break for m in model.modules() if isinstance(m, PositionalEncoding)]
        reason = next((b for b in breaks if b), None)
        speedup = compile_speedup(torch.get_num_threads(), device)
        compiled = compile_pays(
            str(device), train_cfg.steps, train_cfg.compile_min_steps, reason, speedup
        )
    if fused == "auto":
        fused = compiled
    return bool(compiled), bool(fused)


def bucket_count(train_cfg, batching: str | None = None) -> int:
    """Pieces a batch is computed in: ``train.buckets`` under ``bucketed`` batching (or
    ``batching`` in its place), else 1."""
    if (batching or train_cfg.batching) == "bucketed":
        return train_cfg.buckets
    return 1


def largest_first(pieces: list[Batch]) -> list[int]:
    """The order in which concurrent pieces start: most token slots (rows x length) first,
    ties in piece order. Longest-processing-time-first scheduling: `length_buckets` returns
    the pieces shortest first, and started in that order the longest piece begins last and
    runs alone while the other threads idle; started largest first, the threads finish
    closer together (measured in docs/performance.md, "Pieces side by side"). The order
    changes no number: each piece computes alone on its thread and the gradients add up in
    piece order."""
    return sorted(range(len(pieces)), key=lambda i: (-pieces[i].tokens.numel(), i))


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
        train: Any,
        device: torch.device | str = "cpu",
        workers: int | None = None,
    ) -> None:
        """A trainer for ``train``, the ``train.*`` section of a posenc config (any object
        with `posenc.schema.Train`'s fields; ``workers``: see `Trainer._workers`)."""
        self.buckets = bucket_count(train)
        self.model = model
        self.device = device
        self.grad_clip = train.grad_clip
        compiled, fused = resolved_compile(train, model, device)
        # "auto" -> fp32 or bf16, by this machine's record for an eager or a compiled step
        self.precision = resolve_precision(train.precision, device, compiled)
        # The compiled module shares parameters with `model`; checkpoints use `model`.
        if compiled:
            use_compile_cache()
        self.forward = torch.compile(model, dynamic=True) if compiled else model
        self.optimizer = make_optimizer(
            model,
            lr=train.lr,
            weight_decay=train.weight_decay,
            betas=tuple(train.betas),
            decay_embeddings=train.decay_embeddings,
            fused=fused,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(
                s, warmup=train.warmup_steps, total=train.steps, min_ratio=train.min_lr_ratio
            ),
        )
        self.step_count = 0
        self.workers = self._workers(workers)
        self._pool: ThreadPoolExecutor | None = None
        self._threads = torch.get_num_threads()  # the calling thread's, kept across pieces

    def _workers(self, workers: int | None) -> int:
        """Pieces computed at once: ``workers`` if given, else one per torch thread (at most
        ``buckets``) on CPU; 1 where concurrent pieces would change the arithmetic or the
        random stream (dropout draws masks inside the forward pass) or cannot run
        (accelerators). Compiled pieces share the compiled graph across the threads."""
        if workers is not None:
            if workers < 1:
                raise ValueError(f"workers must be >= 1, got {workers}")
            return min(workers, self.buckets)
        if (
            torch.device(self.device).type != "cpu"
            or getattr(getattr(self.model, "cfg", None), "dropout", 0) > 0
        ):
            return 1
        return max(1, min(torch.get_num_threads(), self.buckets))

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._threads = torch.get_num_threads()
            per_worker = max(1, self._threads // self.workers)
            self._pool = ThreadPoolExecutor(
                self.workers,
                thread_name_prefix="posenc-piece",
                initializer=torch.set_num_threads,
                initargs=(per_worker,),
            )
        return self._pool

    def close(self) -> None:
        """Stop the piece threads (a no-op if none were started)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def autocast(self, cache: bool = True):
        """The context of a forward pass at this trainer's precision. ``cache=False`` turns
        off autocast's cache of cast weights (the same casts, made again where reused)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        device_type = torch.device(self.device).type
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, cache_enabled=cache)

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
        if self.workers > 1 and len(pieces) > 1:
            return self._backward_side_by_side(pieces, n_answer)
        if self.precision == "bf16":
            return self._backward_bf16(pieces, n_answer)
        total, slots = torch.zeros((), device=self.device), 0
        for piece in pieces:
            piece = piece.to(self.device)
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

    def _backward_bf16(self, pieces: list[Batch], n_answer: Tensor) -> tuple[Tensor, int]:
        """`backward` in bf16: every piece's forward pass inside one autocast context, so each
        weight is cast to bf16 once per step (autocast caches the casts of parameters until
        its context closes) rather than once per piece, then one backward pass over the
        pieces' summed losses, outside autocast. Weights, gradients and AdamW state stay
        float32 (master weights); LayerNorm, softmax and the loss run in float32 as autocast
        runs them, and attention on CPU in float32 too (`posenc.model.attend`)."""
        losses, slots = [], 0
        with self.autocast():
            for piece in pieces:
                piece = piece.to(self.device)
                logits, _ = self.forward(piece.inputs)
                if len(pieces) == 1:
                    losses.append(masked_loss(logits.float(), piece))
                else:
                    losses.append(masked_loss(logits.float(), piece, reduction="sum") / n_answer)
                slots += piece.tokens.numel()
        total = torch.stack(losses).sum()
        total.backward()
        return total.detach(), slots

    def _backward_side_by_side(self, pieces: list[Batch], n_answer: Tensor) -> tuple[Tensor, int]:
        """`backward` with the pieces computed concurrently on the thread pool. Each piece's
        positions are drawn here first, in piece order (the random stream of the sequential
        loop, whose forward passes draw them one piece at a time); each thread returns its
        piece's gradients, which are added in piece order, as the sequential loop's
        ``backward()`` calls accumulate them. The pieces start largest first
        (`largest_first`), so the threads finish closer together: the step's numbers do not
        depend on that order, its wall time does."""
        pieces = [p.to(self.device) for p in pieces]
        encoding = self.model.encoding
        positions = [encoding.positions(*p.inputs.shape, device=self.device) for p in pieces]
        params = [p for p in self.model.parameters() if p.requires_grad]

        def piece_gradients(piece: Batch, pos: Tensor) -> tuple[Tensor, tuple]:
            # autocast and grad mode are per thread; autocast's cache of casts is one map for
            # all threads, and with it on, compiled bf16 pieces deadlocked (docs/performance.md,
            # pieces side by side). A piece's forward casts each weight about once anyway.
            with self.autocast(cache=False):
                logits, _ = self.forward(piece.inputs, pos)
            loss = masked_loss(logits.float(), piece, reduction="sum") / n_answer
            return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

        pool = self._thread_pool()
        futures = {
            i: pool.submit(piece_gradients, pieces[i], positions[i]) for i in largest_first(pieces)
        }
        results = [futures[i].result() for i in range(len(pieces))]
        if torch.get_num_threads() != self._threads:
            # A piece thread's torch.set_num_threads can lower this thread's count too (seen
            # in a bare script whose main thread had run no parallel op yet; not in a run):
            # the optimizer step and the evaluation keep the run's threads either way.
            torch.set_num_threads(self._threads)
        total = torch.zeros((), device=self.device)
        for loss, _ in results:
            total += loss
        for i, p in enumerate(params):
            for _, grads in results:
                g = grads[i]
                if g is not None:
                    p.grad = g if p.grad is None else p.grad.add_(g)
        return total, sum(p.tokens.numel() for p in pieces)

    def step(self, batch: Batch) -> StepResult:
        """One optimizer step on ``batch``: `backward`, clip, AdamW, schedule. Every encoding
        module hears the step first (``on_step``: DroPE's switch)."""
        for module in self.model.encoding.modules():
            if isinstance(module, PositionalEncoding):
                module.on_step(self.step_count)
        loss, slots = self.backward(batch)
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        for module in self.model.encoding.modules():  # projections, out of the forward pass
            if isinstance(module, PositionalEncoding):
                module.constrain_()
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
