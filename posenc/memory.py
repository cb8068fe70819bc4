"""Refuse, before anything is allocated, a config whose model, training batch or evaluation
set cannot fit in memory: a rough upper bound, checked against the device's memory."""

from __future__ import annotations

import os

import numpy as np
import torch

from posenc import encodings
from posenc.errors import ConfigError, first_line
from posenc.model import ModelConfig, Transformer
from posenc.tasks.format import vocab_size


def available_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: the GPU's, else the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(cfg, task, lengths: list[int], device: torch.device) -> None:
    """The whole check: the blocks' size first (cheap), then the model built on the meta
    device (its encoding's own parameters counted, nothing allocated), then activations and
    the evaluation set."""
    m = cfg.model
    check_model_size(m, device)
    model_cfg = ModelConfig.from_config(m, vocab_size(len(task.symbols)))
    try:
        with torch.device("meta"):
            encoding = encodings.from_config(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # sizes past what torch can index, and the like
        raise ConfigError(
            f"cannot build encoding {cfg.encoding.name!r}: {first_line(exc)}"
        ) from exc
    try:
        check_memory(cfg, model_cfg, encoding, task, lengths, device)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot build this model: {first_line(exc)}") from exc


def check_model_size(m, device) -> None:
    """Refuse a model whose blocks alone (4·d² attention and 2·d·d_ff MLP weights per layer,
    with gradients and AdamW moments) cannot fit, before building even a meta copy of it:
    a million layers take minutes just to construct."""
    numel = m.n_layers * (4 * m.d_model**2 + 2 * m.d_model * m.d_ff)
    have = available_memory(device)
    if 16 * numel > have:
        raise ConfigError(
            f"this config needs more than {16 * numel / 2**30:,.1f} GiB (model and optimizer) "
            f"but {device.type} memory is {have / 2**30:,.1f} GiB; lower model.n_layers, "
            "model.d_model or model.d_ff"
        )


def check_memory(cfg, model_cfg, meta_encoding, task, lengths: list[int], device) -> None:
    """Refuse a config whose model, training batch or evaluation set cannot fit in memory.

    A rough upper bound, in float32: weights, gradients and two AdamW moments; per layer the
    attention scores and about a dozen activations of width d_model or d_ff per token kept
    for the backward pass; the evaluation set held as Python lists.
    """
    with torch.device("meta"):
        meta = Transformer(model_cfg, meta_encoding)
    numel = sum(t.numel() for t in [*meta.parameters(), *meta.buffers()])
    rng = np.random.default_rng(cfg.eval.seed)
    train_tokens = task.max_sequence_length(int(cfg.train.max_len), rng)
    eval_tokens = task.max_sequence_length(max(lengths), rng)
    m = model_cfg

    def activations(batch: int, tokens: int, backward: bool) -> int:
        per_layer = batch * tokens * (m.n_heads * tokens * 3 + 12 * m.d_model + 2 * m.d_ff)
        return 4 * per_layer * (m.n_layers if backward else 1)

    parts = {
        "model and optimizer": 16 * numel,
        "training activations": activations(cfg.train.batch_size, train_tokens, True),
        "evaluation batch": activations(cfg.eval.batch_size, eval_tokens, False),
        "evaluation set": 64 * cfg.eval.n_samples * len(lengths) * eval_tokens,
    }
    need = sum(parts.values())
    have = available_memory(device)
    if need > have:
        largest = max(parts, key=parts.__getitem__)
        raise ConfigError(
            f"this config needs about {need / 2**30:,.1f} GiB ({largest}: "
            f"{parts[largest] / 2**30:,.1f} GiB) but {device.type} memory is "
            f"{have / 2**30:,.1f} GiB; lower the model sizes, batch sizes, lengths or "
            "eval.n_samples"
        )
