"""Attention maps: each layer's attention probabilities, for TensorBoard.

The model makes one ``scaled_dot_product_attention`` call per layer, which returns no
weights. A forward hook on each `CausalSelfAttention` receives the exact arguments of
that call (x, positions, encoding, cache) and recomputes

    softmax(q·kᵀ / √d_head + bias) over the causal past

(or the encoding's own ``attention_weights``, for stick-breaking and PaTH) from the
layer's own `CausalSelfAttention.prepare`, so the maps are those of the trained model
whatever its encoding, and the model needs no flag. A test checks that ``probabilities @ v`` reproduces the layer's output.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from posenc.encodings.base import softmax_weights
from posenc.model import CausalSelfAttention, LayerCache, Transformer


@torch.no_grad()
def attention_probabilities(
    attn: CausalSelfAttention,
    x: Tensor,
    pos: Tensor,
    encoding,
    cache: LayerCache | None = None,
    features=None,
) -> tuple[Tensor, Tensor]:
    """Recompute one layer's attention: probabilities (B, H, Tq, Tk) and values (B, H, Tk, Dh)."""
    q, k, v, _, bias, state = attn.prepare(x, pos, encoding, cache, features=features)
    weights = encoding.attention_weights(q, k, bias, state, layer=attn.layer)
    if weights is None:
        weights = softmax_weights(q, k, bias)
    return weights.to(v.dtype), v


def attention_layers(model: Transformer) -> list[CausalSelfAttention]:
    """The model's attention layers, in order (a recurrent mixer has no attention map)."""
    return [b.attn for b in model.blocks if isinstance(b.attn, CausalSelfAttention)]


@contextmanager
def capture(model: Transformer) -> Iterator[list[Tensor]]:
    """While active, every forward pass appends each attention layer's (B, H, Tq, Tk)
    probabilities."""
    maps: list[Tensor] = []

    def hook(module, args, kwargs, output):
        names = ("x", "pos", "encoding", "cache", "features")
        bound = dict(zip(names, args, strict=False)) | kwargs
        bound.pop("carry", None)  # where the layer hands its transform states to the block
        probs, _ = attention_probabilities(module, **bound)
        maps.append(probs.detach().cpu())

    handles = [
        attn.register_forward_hook(hook, with_kwargs=True) for attn in attention_layers(model)
    ]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def attention_maps(model: Transformer, tokens: Tensor, pos: Tensor) -> list[Tensor]:
    """One sequence (1, T) and its positions (1, T) -> per layer (H, T, T) probabilities."""
    was_training = model.training
    model.eval()
    with capture(model) as maps:
        model(tokens, pos)
    model.train(was_training)
    return [m[0] for m in maps]


def attention_figure(probs: Tensor, title: str, boundary: int | None = None):
    """(H, T, T) probabilities -> a matplotlib figure with one panel per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_heads = probs.shape[0]
    fig, axes = plt.subplots(1, n_heads, figsize=(2.6 * n_heads, 2.9), squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(probs[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        if boundary is not None:  # the separator: prompt above/left, answer below/right
            ax.axhline(boundary, color="white", lw=0.6, ls=":")
            ax.axvline(boundary, color="white", lw=0.6, ls=":")
        ax.set_title(f"head {h}", fontsize=8)
        ax.set_xlabel("key position", fontsize=7)
        if h == 0:
            ax.set_ylabel("query position", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    # Fixed margins in inches: tight_layout measures every label's extent (1.6 s of a smoke
    # run under cProfile, over its four attention maps and the accuracy plot).
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.5 / width,
        right=1 - 0.1 / width,
        bottom=0.5 / height,
        top=1 - 0.6 / height,
        wspace=0.3,
    )
    return fig


def pick_lengths(lengths: Sequence[int], train_min: int, train_max: int) -> dict[str, int]:
    """A training length (the longest) and one beyond it (the longest up to twice it, else the
    shortest beyond), among the evaluated ``lengths``: {"train": n, "beyond": m}."""
    inside = [n for n in lengths if train_min <= n <= train_max]
    beyond = [n for n in lengths if n > train_max]
    picked = {}
    if inside:
        picked["train"] = max(inside)
    if beyond:
        near = [n for n in beyond if n <= 2 * train_max]
        picked["beyond"] = max(near) if near else min(beyond)
    return picked


def log_attention_maps(
    writer,
    model: Transformer,
    groups: Mapping[int, Sequence[tuple[list[int], list[int]]]],
    train_min: int,
    train_max: int,
    *,
    step: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    fmt=None,
) -> None:
    """Log one image per layer (``attention/<train|beyond>_len_<n>/layer_<l>``) for the first
    evaluation example at a training length and one beyond it."""
    from posenc.data import collate
    from posenc.tasks.format import DEFAULT_FORMAT

    fmt = fmt or DEFAULT_FORMAT
    generator = torch.Generator(device=device).manual_seed(seed)
    for where, n in pick_lengths(sorted(groups), train_min, train_max).items():
        inputs, target = groups[n][0]
        tokens = collate([(inputs, target)], fmt).tokens.to(device)  # (1, T)
        pos = model.encoding.positions(1, tokens.shape[1], device=device, generator=generator)
        layers = [attn.layer for attn in attention_layers(model)]
        for layer, probs in zip(layers, attention_maps(model, tokens, pos), strict=True):
            title = f"layer {layer} · length {n} ({'training' if where == 'train' else where})"
            fig = attention_figure(probs, title, boundary=len(fmt.prompt_ids(inputs)) - 1)
            writer.add_figure(f"attention/{where}_len_{n}/layer_{layer}", fig, step)
