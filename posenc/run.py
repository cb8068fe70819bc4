"""One training run, as a pure function of its resolved config: plan, train, evaluate, write.

``plan(cfg)`` checks everything and builds the model without writing a byte; ``run(cfg)``
then trains (resuming from the run folder's checkpoint if one is there), evaluates every
length on the frozen evaluation set and writes ``metrics.json`` last, atomically: a run
folder with ``metrics.json`` is finished and is never overwritten without ``overwrite``.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import tasks
from posenc import encodings
from posenc.config import encoding_label, encoding_params, task_params, to_yaml
from posenc.console import Reporter
from posenc.data import TrainStream, by_length, generate_eval_rows, load_eval_set
from posenc.errors import ConfigError, RunExistsError, UnreadableFileError
from posenc.evaluate import evaluate_lengths
from posenc.io import atomic_torch_save, atomic_write_json, atomic_write_text, read_json
from posenc.lock import LOCK, RunLock
from posenc.metrics import summarize
from posenc.model import ModelConfig, Transformer
from posenc.signals import StopSignals
from posenc.train import Trainer
from tasks.format import vocab_size

METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
LOG = "train.log"
MAX_THREADS = 1024  # torch takes a C int; more threads than this is a typo
# Settings that change how a run is executed or shown, not what it computes.
EXECUTION_KEYS = ("overwrite", "progress", "threads", "device", "run_dir", "runs_root", "data_dir")


@dataclass
class Plan:
    cfg: DictConfig
    task: tasks.Task
    model: Transformer
    eval_lengths: list[int]
    quick_lengths: list[int]
    run_dir: Path
    device: torch.device


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


def plan(cfg: DictConfig) -> Plan:
    """Check the whole config and build task and model; writes nothing."""
    task = tasks.build(cfg.task.name, **task_params(cfg.task))
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
    _positive_int(cfg.eval.n_samples, "eval.n_samples")
    _positive_int(cfg.eval.batch_size, "eval.batch_size")
    lengths = eval_lengths(cfg)
    for n in lengths:
        task.check_length(n, "evaluation length")
    quick = sorted(set(tr.eval_lengths or []))
    for n in quick:
        _positive_int(n, "every entry of train.eval_lengths")
        task.check_length(n, "train.eval_lengths entry")
    if cfg.threads is not None:
        _positive_int(cfg.threads, "threads")
        if cfg.threads > MAX_THREADS:
            raise ConfigError(f"threads must be at most {MAX_THREADS}, got {cfg.threads}")
    device = resolve_device(str(cfg.device))

    m = cfg.model
    for key in ("d_model", "n_layers", "n_heads", "d_ff", "max_len"):
        _positive_int(m[key], f"model.{key}")
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
            f"valid n_heads: {', '.join(str(h) for h in range(1, m.d_model + 1) if m.d_model % h == 0 and h <= 64)}"
        )
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")

    def build_encoding():
        return encodings.build(
            cfg.encoding.name,
            d_model=m.d_model,
            n_heads=m.n_heads,
            max_len=m.max_len,
            n_layers=m.n_layers,
            **encoding_params(cfg.encoding),
        )

    check_model_size(m, device)
    try:
        with torch.device("meta"):  # checks its parameters and sizes it without allocating
            encoding = build_encoding()
    except ConfigError:
        raise
    except Exception as exc:  # sizes past what torch can index, and the like
        raise ConfigError(
            f"cannot build encoding {cfg.encoding.name!r}: {_first_line(exc)}"
        ) from exc
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
    model_cfg = ModelConfig(
        vocab_size=vocab_size(len(task.symbols)),
        d_model=m.d_model,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        d_ff=m.d_ff,
        dropout=m.dropout,
        max_len=m.max_len,
    )
    try:
        check_memory(cfg, model_cfg, encoding, task, lengths, device)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot build this model: {_first_line(exc)}") from exc
    torch.manual_seed(cfg.seed)
    encoding = build_encoding()
    model = Transformer(model_cfg, encoding).to(device)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    return Plan(cfg, task, model, lengths, quick, run_dir, device)


def available_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: the GPU's, else the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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


def config_identity(cfg: DictConfig) -> dict:
    """The part of the config that determines the numbers (for resume checks)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    for key in EXECUTION_KEYS:
        tree.pop(key, None)
    return tree


def check_run_dir(p: Plan) -> str:
    """'new', 'resume' or 'overwrite'; raises if the folder holds a finished or foreign run."""
    d = p.run_dir
    if (d / METRICS).exists():
        if not p.cfg.overwrite:
            raise RunExistsError(
                f"{d} already holds a finished run ({METRICS}); pass overwrite=true to replace it "
                "or choose another run_dir/experiment"
            )
        return "overwrite"
    if (d / CHECKPOINT).exists() and (d / CONFIG).exists():
        if p.cfg.overwrite:
            return "overwrite"
        try:
            old = OmegaConf.load(d / CONFIG)
            config_identity(old)
        except Exception as exc:
            raise UnreadableFileError(
                f"{d / CONFIG} cannot be read ({_first_line(exc)}); pass overwrite=true to "
                "start the run over"
            ) from exc
        if config_identity(old) != config_identity(p.cfg):
            raise RunExistsError(
                f"{d} holds an unfinished run with a different config; pass overwrite=true to "
                "start over or choose another run_dir/experiment"
            )
        return "resume"
    return "new"


class _Log:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "a", buffering=1)

    def __call__(self, text: str) -> None:
        self.f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def close(self) -> None:
        self.f.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: Path, model, trainer=None, stream=None, device="cpu") -> dict:
    """Restore a checkpoint into ``model`` (and ``trainer`` and ``stream``); returns the whole
    state. A truncated, corrupt or foreign file raises `UnreadableFileError` naming it."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        if trainer is not None:
            trainer.load_state_dict(state["trainer"])
        if stream is not None:
            stream.load_state(state["stream"])
        float(state["seconds"]), int(state["tokens"])
    except Exception as exc:
        reason = _first_line(exc)
        if isinstance(exc, KeyError | TypeError):
            reason = f"no {exc} entry: not a posenc checkpoint"
        raise UnreadableFileError(
            f"{path} cannot be read as a checkpoint of this run ({reason[:160]}); pass "
            "overwrite=true to start the run over"
        ) from exc
    return state


def clear_run_dir(d: Path) -> None:
    """Empty a run folder for ``overwrite=true``, keeping the lock file this process holds."""
    import shutil

    for child in d.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def run(cfg: DictConfig, reporter: Reporter | None = None, *, lock: bool = True) -> dict[str, Any]:
    """Train and evaluate one run; returns the metrics written to ``metrics.json``.

    Holds the run folder's `RunLock` throughout (``lock=False``: the caller holds it); a
    second process on the same folder gets `posenc.lock.RunLockedError`. SIGTERM, SIGUSR1
    and SIGUSR2 save a checkpoint at the next step boundary and raise
    `posenc.signals.RunStopped` (`posenc.signals`).
    """
    reporter = reporter or Reporter()
    p = plan(cfg)
    if lock:
        RunLock(p.run_dir).probe()  # a held folder is named first, whatever it holds
    check_run_dir(p)  # refuse a finished or foreign folder before touching it
    if not lock:
        return _run(p, reporter)
    with RunLock(p.run_dir):
        return _run(p, reporter)


def _run(p: Plan, reporter: Reporter) -> dict[str, Any]:
    cfg = p.cfg
    mode = check_run_dir(p)  # again: the folder may have changed while we waited for it
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    d = p.run_dir
    d.mkdir(parents=True, exist_ok=True)
    tr = cfg.train
    model, task = p.model, p.task
    stream = TrainStream(task, tr.min_len, tr.max_len, tr.batch_size, cfg.seed)
    trainer = Trainer.from_config(model, tr, p.device)
    elapsed_before = 0.0
    tokens_before = 0
    if mode == "resume":  # before anything is written: an unreadable checkpoint changes nothing
        state = load_checkpoint(d / CHECKPOINT, model, trainer, stream, p.device)
        torch.set_rng_state(state["torch_rng"])
        elapsed_before, tokens_before = float(state["seconds"]), int(state["tokens"])
    if mode == "overwrite":
        clear_run_dir(d)
    atomic_write_text(d / CONFIG, to_yaml(cfg))
    log = _Log(d / LOG)
    if mode == "resume":
        log(f"resumed from step {trainer.step_count}")

    def save_checkpoint(seconds: float, tokens: int) -> None:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "trainer": trainer.state_dict(),
                "stream": stream.state(),
                "torch_rng": torch.get_rng_state(),
                "seconds": seconds,
                "tokens": tokens,
                "config": to_yaml(cfg),
            },
            d / CHECKPOINT,
        )

    from posenc import tblog

    writer = tblog.open_writer(d, purge_step=trainer.step_count if mode == "resume" else None)
    quick_groups = {}
    if p.quick_lengths and tr.eval_every:  # small, in memory, disjoint seed from the final set
        rows = generate_eval_rows(
            task, p.quick_lengths, min(32, cfg.eval.n_samples), cfg.eval.seed + 1
        )
        for n, inputs, target in zip(rows["length"], rows["input"], rows["target"], strict=True):
            quick_groups.setdefault(n, []).append((inputs, target))
    title = f"{task.name} · {encoding_label(cfg.encoding)} · seed {cfg.seed} → {d}"
    log(f"start ({mode}) {title}; {model.num_parameters():,} parameters")
    reporter.start(title, tr.steps, trainer.step_count)
    t0 = time.perf_counter()
    tokens = tokens_before
    window_t, window_steps = t0, 0
    loss = float("nan")
    stop = StopSignals()
    try:
        stop.__enter__()
        while trainer.step_count < tr.steps:
            if stop.requested:
                save_checkpoint(elapsed_before + time.perf_counter() - t0, tokens)
                name = signal.Signals(stop.requested).name
                log(f"stopped by {name} at step {trainer.step_count}; checkpoint saved")
                stop.stop(trainer.step_count)
            result = trainer.step(stream.next())
            step, loss = trainer.step_count, result.loss
            tokens += result.tokens
            window_steps += 1
            if step % max(tr.log_every, 1) == 0 or step == tr.steps:
                now = time.perf_counter()
                rate = window_steps / max(now - window_t, 1e-9)
                writer.add_scalar("train/loss", loss, step)
                writer.add_scalar("train/lr", result.lr, step)
                writer.add_scalar(
                    "train/tokens_per_sec", (tokens - tokens_before) / max(now - t0, 1e-9), step
                )
                reporter.step(step, loss, rate)
                log(f"step {step} loss {loss:.4f} lr {result.lr:.2e} {rate:.1f} steps/s")
                window_t, window_steps = now, 0
            if quick_groups and step % tr.eval_every == 0 and step < tr.steps:
                scores = evaluate_lengths(
                    model,
                    quick_groups,
                    greedy=False,
                    device=p.device,
                    batch_size=cfg.eval.batch_size,
                )
                tblog.log_per_length(writer, scores, step)
                summary = ", ".join(f"n={n}: {s['exact_match']:.2f}" for n, s in scores.items())
                reporter.message(f"step {step}: exact match {summary}")
                log(f"step {step} quick eval exact match {summary}")
            if tr.checkpoint_every and step % tr.checkpoint_every == 0:
                save_checkpoint(elapsed_before + time.perf_counter() - t0, tokens)
        train_seconds = elapsed_before + time.perf_counter() - t0
        save_checkpoint(train_seconds, tokens)
        metrics = _evaluate_and_write(
            p, reporter, model, trainer, writer, log, stop, title, loss, train_seconds, tokens
        )
    except KeyboardInterrupt:
        save_checkpoint(elapsed_before + time.perf_counter() - t0, tokens)
        log(f"interrupted at step {trainer.step_count}; checkpoint saved")
        raise
    finally:
        stop.__exit__()
        writer.close()
        reporter.close()
        log.close()
    reporter.finish(metrics)
    return metrics


def _evaluate_and_write(
    p, reporter, model, trainer, writer, log, stop, title, loss, train_seconds, tokens
) -> dict[str, Any]:
    from posenc import attention, tblog

    cfg, task, d, tr = p.cfg, p.task, p.run_dir, p.cfg.train

    def on_length(n, scores):
        if stop.requested:  # the final checkpoint is saved: a rerun only evaluates
            stop.stop(trainer.step_count)
        reporter.eval_length(n, scores)

    eval_ds = load_eval_set(task, p.eval_lengths, cfg.eval.n_samples, cfg.eval.seed, cfg.data_dir)
    groups = by_length(eval_ds)
    reporter.eval_start(len(groups))
    t_eval = time.perf_counter()
    generator = torch.Generator(device=p.device).manual_seed(cfg.eval.seed)
    per_length = evaluate_lengths(
        model,
        groups,
        batch_size=cfg.eval.batch_size,
        greedy=cfg.eval.greedy,
        device=p.device,
        generator=generator,
        on_length=on_length,
    )
    eval_seconds = time.perf_counter() - t_eval
    summary = summarize(per_length, tr.min_len, tr.max_len, cfg.eval.threshold)
    metrics = {
        "status": "complete",
        "experiment": str(cfg.experiment),
        "task": task.name,
        "encoding": encoding_label(cfg.encoding),
        "seed": int(cfg.seed),
        "train_range": [int(tr.min_len), int(tr.max_len)],
        "summary": summary,
        "per_length": {str(n): v for n, v in per_length.items()},
        "train": {
            "steps": trainer.step_count,
            "seconds": round(train_seconds, 3),
            "tokens_per_sec": round(tokens / max(train_seconds, 1e-9), 1),
            "final_loss": loss,
            "parameters": model.num_parameters(),
        },
        "eval": {"seconds": round(eval_seconds, 3), "greedy": bool(cfg.eval.greedy)},
    }
    hparams = tblog.flat_hparams(
        {
            k: OmegaConf.to_container(cfg[k], resolve=True)
            for k in ("encoding", "task", "model", "train")
        }
        | {"seed": int(cfg.seed)}
    )
    tblog.log_final(
        writer,
        per_length,
        summary,
        hparams,
        step=trainer.step_count,
        train_max=tr.max_len,
        title=title.split(" → ")[0],
    )
    # Attention maps (posenc.attention): one image per layer, at a training length and beyond.
    attention.log_attention_maps(
        writer,
        model,
        groups,
        tr.min_len,
        tr.max_len,
        step=trainer.step_count,
        device=p.device,
        seed=cfg.eval.seed,
    )
    writer.close()
    atomic_write_json(d / METRICS, metrics)  # last: its presence marks the run finished
    log(f"finished: {summary}")
    return metrics


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / METRICS)
