"""Planning one run: check the config against itself (`posenc.checks`), then against the
task, the encoding and the machine, and build the task and the model, without writing a
byte (`posenc.run.execute.run` then trains it)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from posenc import encodings, tasks
from posenc.checks import check_values
from posenc.errors import ConfigError
from posenc.memory import check_fits
from posenc.model import CausalSelfAttention, ModelConfig, Transformer
from posenc.precision import resolve_device
from posenc.run.spec import run_dir
from posenc.runfolder import legacy_values
from posenc.schema import task_params
from posenc.tasks.format import DEFAULT_FORMAT, N_SPECIAL, SEP, SequenceFormat, vocab_size


@dataclass
class Plan:
    cfg: DictConfig
    task: tasks.Task
    model: Transformer
    eval_lengths: list[int]
    quick_lengths: list[int]
    run_dir: Path
    device: torch.device
    fmt: SequenceFormat = DEFAULT_FORMAT
    validation_lengths: tuple[int, ...] = ()  # past the training range (`validation_lengths`)


def eval_lengths(cfg: DictConfig) -> list[int]:
    """The test lengths: ``eval.lengths``, else ``eval.min_len..eval.max_len``, less the
    validation lengths (`validation_lengths`: selection looks at those, so the test never does)."""
    held = set(validation_lengths(cfg))
    return [n for n in _evaluation_lengths(cfg) if n not in held]


def validation_lengths(cfg: DictConfig) -> list[int]:
    """The validation lengths past the training range: the first ``eval.val_share`` of the
    evaluation lengths past ``train.max_len`` (rounded up; 21-30 of the default 21-60), at
    most all but the last, so that the test keeps a length past them."""
    past = [n for n in _evaluation_lengths(cfg) if n > cfg.train.max_len]
    count = math.ceil(round(cfg.eval.val_share * len(past), 9))
    return past[: max(0, min(count, len(past) - 1))]


def _evaluation_lengths(cfg: DictConfig) -> list[int]:
    """``eval.lengths``, else ``eval.min_len..eval.max_len``: test and validation lengths."""
    if cfg.eval.lengths is not None:
        return sorted(set(cfg.eval.lengths))
    return list(range(cfg.eval.min_len, cfg.eval.max_len + 1))


def quick_lengths(cfg: DictConfig) -> list[int]:
    """Lengths of the quick evaluations: ``train.eval_lengths``, plus every training length
    when ``train.stop_at`` is set (it needs the in-distribution exact match)."""
    quick = set(cfg.train.eval_lengths or [])
    if cfg.train.stop_at is not None:
        quick |= set(range(cfg.train.min_len, cfg.train.max_len + 1))
    return sorted(quick)


def digit_layout(task: tasks.Task) -> encodings.DigitLayout:
    """How ``task`` writes numbers, in token ids, for encodings that place digits."""
    valid = tuple(n for n in tasks.names() if tasks.build(n).numbers() is not None)
    numbers = task.numbers()
    if numbers is None:
        return encodings.DigitLayout(digits=(), task=task.name, valid_tasks=valid)
    return encodings.DigitLayout(
        digits=tuple(N_SPECIAL + d for d in numbers.digits),
        prompt_lsb_first=numbers.prompt_lsb_first,
        answer_lsb_first=numbers.answer_lsb_first,
        sep=SEP,
        interleaved=numbers.interleaved,
        task=task.name,
        valid_tasks=valid,
    )


def _check_lengths(cfg: DictConfig, task: tasks.Task) -> tuple[list[int], list[int]]:
    """Every training, final and quick evaluation length is one the task can make; returns
    the final and the quick lengths."""
    task.check_length(cfg.train.min_len, "train.min_len")
    task.check_length(cfg.train.max_len, "train.max_len")
    lengths = eval_lengths(cfg)
    for n in [*lengths, *validation_lengths(cfg)]:
        task.check_length(n, "evaluation length")
    quick = quick_lengths(cfg)
    for n in quick:
        task.check_length(n, "train.eval_lengths entry")
    return lengths, quick


def _build_model(
    cfg: DictConfig,
    task: tasks.Task,
    lengths: list[int],
    quick: list[int],
    hi: int,
    device,
    meta: bool = False,
) -> Transformer:
    """The encoding (bound to the task's digits) and the model, once the longest sequence
    fits both ``model.max_len`` and the encoding's positions (``meta``: on torch's meta
    device, every check made and no weight drawn)."""
    m = cfg.model
    torch.manual_seed(cfg.seed)  # before the encoding: many have random initial parameters
    where = torch.device("meta") if meta else contextlib.nullcontext()
    with where:
        encoding = encodings.from_config(cfg, legacy_values("encoding"))
        encoding.bind_task(digit_layout(task))  # token-derived encodings learn the digits here
        for module in encoding.modules():  # a schedule over training (DroPE) checks it fits
            if isinstance(module, encodings.PositionalEncoding):
                module.bind_steps(cfg.train.steps)
    longest = max(
        task.max_sequence_length(n, np.random.default_rng(cfg.eval.seed))
        for n in sorted({*lengths, *quick, hi})[-3:]
    )
    limit = min(m.max_len, encoding.max_positions or m.max_len)
    if longest > limit:
        raise ConfigError(
            f"length {max(*lengths, *quick, hi)} makes sequences of {longest} tokens but "
            f"model.max_len={m.max_len}"
            + (
                f" and encoding {cfg.encoding.name!r} has {encoding.max_positions} positions"
                if encoding.max_positions
                else ""
            )
            + f"; raise model.max_len to >= {longest} or lower eval.max_len"
        )
    model_cfg = ModelConfig.from_config(m, vocab_size(len(task.symbols)))
    with where:
        model = Transformer(model_cfg, encoding)
    _check_encoding_reaches_a_layer(model, cfg.encoding.name)
    return model if meta else model.to(device)


# The hooks only an attention layer calls (a recurrent mixer calls none of them).
ATTENTION_HOOKS = ("rotate", "bias", "observe", "state_bias", "query_scale", "attention_weights")


def _check_encoding_reaches_a_layer(model: Transformer, name: str) -> None:
    """Refuse an encoding whose attention hooks no layer would call (``model.mixers`` without
    an attention layer): the run would be labelled with a scheme it does not have. Composite
    encodings are judged by their parts."""
    if any(isinstance(block.attn, CausalSelfAttention) for block in model.blocks):
        return
    for module in model.encoding.modules():
        inner = [m for m in module.modules() if isinstance(m, encodings.PositionalEncoding)]
        if isinstance(module, encodings.PositionalEncoding) and inner == [module]:
            used = [
                hook
                for hook in ATTENTION_HOOKS
                if getattr(type(module), hook) is not getattr(encodings.PositionalEncoding, hook)
            ]
            if used:
                raise ConfigError(
                    f"model.mixers has no attention layer, so encoding {name!r} would never act "
                    f"(its {used[0]} hook is attention's); use encoding=none for a recurrent "
                    "model, or keep an attention layer in model.mixers"
                )


def plan(cfg: DictConfig, *, meta: bool = False) -> Plan:
    """Check the whole config and build task and model; writes nothing. ``meta``: the model
    on torch's meta device, for a check that allocates no weights (a sweep's parent)."""
    check_values(cfg)  # the config against itself
    task = tasks.build(cfg.task.name, **task_params(cfg.task))
    fmt = SequenceFormat.from_config(cfg.task).for_task(task)
    lengths, quick = _check_lengths(cfg, task)
    held = validation_lengths(cfg)
    device = resolve_device(str(cfg.device))
    check_fits(cfg, task, lengths, device)  # posenc.memory: before anything is allocated
    model = _build_model(cfg, task, lengths, [*quick, *held], cfg.train.max_len, device, meta)
    return Plan(cfg, task, model, lengths, quick, run_dir(cfg), device, fmt, tuple(held))
