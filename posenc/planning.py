"""Planning one run: check the whole config against itself, the task and the machine, then
build the task and the model, without writing a byte (`posenc.run.run` then trains it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from posenc import encodings, tasks
from posenc.config import encoding_label, task_format, task_params
from posenc.data import BATCHING
from posenc.errors import ConfigError
from posenc.memory import check_fits
from posenc.model import EMBED_INITS, ModelConfig, Transformer
from posenc.runfolder import LEGACY_DEFAULTS
from posenc.tasks.format import DEFAULT_FORMAT, N_SPECIAL, SEP, SequenceFormat, vocab_size
from posenc.train import PRECISIONS

MAX_THREADS = 1024  # torch takes a C int; more threads than this is a typo


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


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def eval_lengths(cfg: DictConfig) -> list[int]:
    if cfg.eval.lengths is not None:
        lengths = list(cfg.eval.lengths)
        if not lengths:
            raise ConfigError("eval.lengths is an empty list; give at least one length or null")
        for n in lengths:
            _positive_int(n, "every entry of eval.lengths")
        return sorted(set(lengths))
    lo = _positive_int(cfg.eval.min_len, "eval.min_len")
    hi = _positive_int(cfg.eval.max_len, "eval.max_len")
    if lo > hi:
        raise ConfigError(f"eval.min_len={lo} is greater than eval.max_len={hi}")
    return list(range(lo, hi + 1))


def quick_lengths(cfg: DictConfig) -> list[int]:
    """Lengths of the quick evaluations: ``train.eval_lengths``, plus every training length
    when ``train.stop_at`` is set (it needs the in-distribution exact match)."""
    quick = set(cfg.train.eval_lengths or [])
    if cfg.train.get("stop_at") is not None:
        quick |= set(range(cfg.train.min_len, cfg.train.max_len + 1))
    return sorted(quick)


def default_run_dir(cfg: DictConfig) -> Path:
    return (
        Path(cfg.runs_root)
        / str(cfg.experiment)
        / str(cfg.task.name)
        / encoding_label(cfg.encoding)
        / f"seed{cfg.seed}"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; valid choices: cpu, cuda, cuda:N, auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


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


def _check_training_range(cfg: DictConfig, task: tasks.Task) -> tuple[int, int]:
    """``train.min_len``..``train.max_len``, the step counts and the learning rate."""
    tr = cfg.train
    lo = _positive_int(tr.min_len, "train.min_len")
    hi = _positive_int(tr.max_len, "train.max_len")
    if lo > hi:
        raise ConfigError(f"train.min_len={lo} is greater than train.max_len={hi}")
    task.check_length(lo, "train.min_len")
    task.check_length(hi, "train.max_len")
    for key in ("steps", "batch_size"):
        _positive_int(tr[key], f"train.{key}")
    for key in ("log_every", "eval_every", "checkpoint_every", "warmup_steps"):
        _positive_int(tr[key], f"train.{key}", minimum=0)
    if not tr.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {tr.lr}")
    return lo, hi


def _check_evaluation(cfg: DictConfig, task: tasks.Task) -> list[int]:
    """The final evaluation's sizes and lengths; returns the lengths."""
    _positive_int(cfg.eval.n_samples, "eval.n_samples")
    _positive_int(cfg.eval.batch_size, "eval.batch_size")
    lengths = eval_lengths(cfg)
    for n in lengths:
        task.check_length(n, "evaluation length")
    return lengths


def _check_schedule(tr: DictConfig) -> None:
    """How batches are drawn and computed, and ``train.stop_at``."""
    if tr.batching not in BATCHING:
        raise ConfigError(
            f"unknown train.batching {tr.batching!r}; valid choices: {', '.join(BATCHING)}"
        )
    _positive_int(tr.get("buckets", 4), "train.buckets")
    if tr.precision not in PRECISIONS:
        raise ConfigError(
            f"unknown train.precision {tr.precision!r}; valid choices: {', '.join(PRECISIONS)}"
        )
    if tr.stop_at is not None:
        if isinstance(tr.stop_at, bool) or not isinstance(tr.stop_at, int | float):
            raise ConfigError(
                f"train.stop_at must be a number in (0, 1] or null, got {tr.stop_at!r}"
            )
        if not 0 < tr.stop_at <= 1:
            raise ConfigError(f"train.stop_at must be in (0, 1] or null, got {tr.stop_at}")
        if not tr.eval_every:
            raise ConfigError("train.stop_at needs quick evaluations; set train.eval_every > 0")


def _check_quick_lengths(cfg: DictConfig, task: tasks.Task) -> list[int]:
    quick = quick_lengths(cfg)
    for n in quick:
        _positive_int(n, "every entry of train.eval_lengths")
        task.check_length(n, "train.eval_lengths entry")
    return quick


def _check_machine(cfg: DictConfig) -> torch.device:
    """``threads`` and ``device``; returns the device."""
    if cfg.threads is not None:
        _positive_int(cfg.threads, "threads")
        if cfg.threads > MAX_THREADS:
            raise ConfigError(f"threads must be at most {MAX_THREADS}, got {cfg.threads}")
    return resolve_device(str(cfg.device))


def _check_model(m: DictConfig) -> None:
    for key in ("d_model", "n_layers", "n_heads", "d_ff", "max_len"):
        _positive_int(m[key], f"model.{key}")
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
            f"valid n_heads: {', '.join(str(h) for h in range(1, m.d_model + 1) if m.d_model % h == 0 and h <= 64)}"
        )
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    embed_init = m.get("embed_init", "scaled")
    if embed_init not in EMBED_INITS:
        raise ConfigError(
            f"unknown model.embed_init {embed_init!r}; valid choices: {', '.join(EMBED_INITS)}"
        )


def _check_switches(cfg: DictConfig) -> None:
    """Options added later that are true or false (`LEGACY_DEFAULTS`) are booleans."""
    for (section, name), default in LEGACY_DEFAULTS.items():
        value = OmegaConf.select(cfg, f"{section}.{name}", default=default)
        if isinstance(default, bool) and not isinstance(value, bool):
            key = f"{section}.{name}"
            raise ConfigError(f"{key} must be true or false, got {value!r}")


def _build_model(
    cfg: DictConfig, task: tasks.Task, lengths: list[int], quick: list[int], hi: int, device
) -> Transformer:
    """The encoding (bound to the task's digits) and the model, once the longest sequence
    fits both ``model.max_len`` and the encoding's positions."""
    m = cfg.model
    torch.manual_seed(cfg.seed)  # before the encoding: many have random initial parameters
    encoding = encodings.from_config(cfg)
    encoding.bind_task(digit_layout(task))  # token-derived encodings learn the digits here
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
    return Transformer(model_cfg, encoding).to(device)


def plan(cfg: DictConfig) -> Plan:
    """Check the whole config and build task and model; writes nothing."""
    task = tasks.build(cfg.task.name, **task_params(cfg.task))
    fmt = task_format(cfg.task).for_task(task)
    _, hi = _check_training_range(cfg, task)
    lengths = _check_evaluation(cfg, task)
    _check_schedule(cfg.train)
    quick = _check_quick_lengths(cfg, task)
    device = _check_machine(cfg)
    _check_model(cfg.model)
    _check_switches(cfg)
    check_fits(cfg, task, lengths, device)  # posenc.memory: before anything is allocated
    model = _build_model(cfg, task, lengths, quick, hi, device)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    return Plan(cfg, task, model, lengths, quick, run_dir, device, fmt)
