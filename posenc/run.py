"""One training run, as a pure function of its resolved config: plan, train, evaluate, write.

``plan(cfg)`` checks everything and builds the model without writing a byte; ``run(cfg)``
then trains (resuming from the run folder's checkpoint if one is there), evaluates every
length on the frozen evaluation set and writes ``metrics.json`` last, atomically: a run
folder with ``metrics.json`` is finished and is never overwritten without ``overwrite``.
"""

from __future__ import annotations

import shutil
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
from posenc.errors import ConfigError, RunExistsError
from posenc.evaluate import evaluate_lengths
from posenc.io import atomic_torch_save, atomic_write_json, atomic_write_text, read_json
from posenc.metrics import summarize
from posenc.model import ModelConfig, Transformer
from posenc.train import Trainer
from tasks.format import N_SPECIAL, SEP, vocab_size

METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
LOG = "train.log"
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
        task=task.name,
        valid_tasks=valid,
    )


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
    torch.manual_seed(cfg.seed)  # before the encoding: many have random initial parameters
    encoding = encodings.build(
        cfg.encoding.name,
        d_model=m.d_model,
        n_heads=m.n_heads,
        max_len=m.max_len,
        n_layers=m.n_layers,
        **encoding_params(cfg.encoding),
    )
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
    model_cfg = ModelConfig(
        vocab_size=vocab_size(len(task.symbols)),
        d_model=m.d_model,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        d_ff=m.d_ff,
        dropout=m.dropout,
        max_len=m.max_len,
    )
    model = Transformer(model_cfg, encoding).to(device)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    return Plan(cfg, task, model, lengths, quick, run_dir, device)


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
        old = OmegaConf.load(d / CONFIG)
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


def run(cfg: DictConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train and evaluate one run; returns the metrics written to ``metrics.json``."""
    reporter = reporter or Reporter()
    p = plan(cfg)
    mode = check_run_dir(p)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    d = p.run_dir
    if mode == "overwrite":
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / CONFIG, to_yaml(cfg))
    log = _Log(d / LOG)
    tr = cfg.train
    model, task = p.model, p.task
    stream = TrainStream(task, tr.min_len, tr.max_len, tr.batch_size, cfg.seed)
    trainer = Trainer.from_config(model, tr, p.device)
    elapsed_before = 0.0
    tokens_before = 0
    if mode == "resume":
        state = torch.load(d / CHECKPOINT, map_location=p.device, weights_only=False)
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        stream.load_state(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        elapsed_before, tokens_before = state["seconds"], state["tokens"]
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
    try:
        while trainer.step_count < tr.steps:
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
    except KeyboardInterrupt:
        save_checkpoint(elapsed_before + time.perf_counter() - t0, tokens)
        log(f"interrupted at step {trainer.step_count}; checkpoint saved")
        writer.close()
        reporter.close()
        log.close()
        raise
    train_seconds = elapsed_before + time.perf_counter() - t0
    save_checkpoint(train_seconds, tokens)

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
        on_length=reporter.eval_length,
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
    from posenc import attention

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
    log.close()
    reporter.finish(metrics)
    return metrics


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / METRICS)
