"""One training run, as a pure function of its resolved config: plan, train, evaluate, write.

``plan(cfg)`` checks everything and builds the model without writing a byte; ``run(cfg)``
then trains (resuming from the run folder's checkpoint if one is there), evaluates every
length on the frozen evaluation set and writes ``metrics.json`` last, atomically: a run
folder with ``metrics.json`` is finished and is never overwritten without ``overwrite``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from posenc import encodings, tasks
from posenc.checkpoint import load_checkpoint
from posenc.config import encoding_label, task_format, task_params, to_yaml
from posenc.console import Reporter
from posenc.data import BATCHING, TrainStream, by_length, generate_eval_rows, load_eval_set
from posenc.errors import ConfigError, RunExistsError, UnreadableFileError
from posenc.evaluate import evaluate_lengths
from posenc.io import atomic_torch_save, atomic_write_json, atomic_write_text, read_json
from posenc.lock import RunLock, clear_folder
from posenc.memory import check_fits
from posenc.metrics import SUMMARY_VERSION, summarize
from posenc.model import EMBED_INITS, ModelConfig, Transformer
from posenc.runfolder import (
    CHECKPOINT,
    CONFIG,
    LEGACY_DEFAULTS,
    LOG,
    METRICS,
    config_identity,
)
from posenc.signals import RunStopped, StopSignals
from posenc.tasks.format import DEFAULT_FORMAT, N_SPECIAL, SEP, SequenceFormat, vocab_size
from posenc.train import PRECISIONS, Trainer

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


def plan(cfg: DictConfig) -> Plan:
    """Check the whole config and build task and model; writes nothing."""
    task = tasks.build(cfg.task.name, **task_params(cfg.task))
    fmt = task_format(cfg.task).for_task(task)
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
    quick = quick_lengths(cfg)
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
    embed_init = m.get("embed_init", "scaled")
    if embed_init not in EMBED_INITS:
        raise ConfigError(
            f"unknown model.embed_init {embed_init!r}; valid choices: {', '.join(EMBED_INITS)}"
        )
    for (section, name), default in LEGACY_DEFAULTS.items():
        value = OmegaConf.select(cfg, f"{section}.{name}", default=default)
        if isinstance(default, bool) and not isinstance(value, bool):
            key = f"{section}.{name}"
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    check_fits(cfg, task, lengths, device)  # posenc.memory: before anything is allocated
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
    model = Transformer(model_cfg, encoding).to(device)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    return Plan(cfg, task, model, lengths, quick, run_dir, device, fmt)


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
                f"{d / CONFIG} cannot be read ({str(exc).strip().splitlines()[0]}); pass "
                "overwrite=true to start the run over"
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


@dataclass
class Session:
    """A run in progress: its plan, folder, trainer, data stream, log and counters."""

    p: Plan
    mode: str
    trainer: Trainer
    stream: TrainStream
    log: _Log
    writer: Any
    title: str
    quick_groups: dict[int, list]
    seconds_before: float = 0.0  # training time of earlier, interrupted attempts
    tokens: int = 0  # non-padding training tokens so far
    slots: int = 0  # training token slots so far, padding included
    stop_hits: int = 0  # consecutive quick evaluations at or above train.stop_at
    stopped_at: int | None = None  # the step train.stop_at ended training at
    loss: float = float("nan")

    def checkpoint(self, seconds: float) -> None:
        atomic_torch_save(
            {
                "model": self.p.model.state_dict(),
                "trainer": self.trainer.state_dict(),
                "stream": self.stream.state(),
                "torch_rng": torch.get_rng_state(),
                "seconds": seconds,
                "tokens": self.tokens,
                "slots": self.slots,
                "stop_hits": self.stop_hits,
                "config": to_yaml(self.p.cfg),
            },
            self.p.run_dir / CHECKPOINT,
        )

    def close(self) -> None:
        self.writer.close()
        self.log.close()


def quick_lengths(cfg: DictConfig) -> list[int]:
    """Lengths of the quick evaluations: ``train.eval_lengths``, plus every training length
    when ``train.stop_at`` is set (it needs the in-distribution exact match)."""
    quick = set(cfg.train.eval_lengths or [])
    if cfg.train.get("stop_at") is not None:
        quick |= set(range(cfg.train.min_len, cfg.train.max_len + 1))
    return sorted(quick)


def prepare(p: Plan, mode: str) -> Session:
    """Make the run folder, write the config, build the trainer, resume if a checkpoint is there."""
    cfg, d, tr = p.cfg, p.run_dir, p.cfg.train
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # An unreadable checkpoint fails here, before anything is written.
    state = load_checkpoint(d / CHECKPOINT, p.model, p.device) if mode == "resume" else None
    if mode == "overwrite":
        clear_folder(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / CONFIG, to_yaml(cfg))
    log = _Log(d / LOG)
    stream = TrainStream(
        p.task, tr.min_len, tr.max_len, tr.batch_size, cfg.seed, tr.batching, p.fmt
    )
    trainer = Trainer.from_config(p.model, tr, p.device)
    resumed: dict[str, Any] = {}
    if state is not None:  # the model's weights are loaded already
        trainer.load_state_dict(state["trainer"])
        stream.load_state(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        resumed = state
        log(f"resumed from step {trainer.step_count}")

    from posenc import tblog

    writer = tblog.open_writer(d, purge_step=trainer.step_count if mode == "resume" else None)
    quick_groups: dict[int, list] = {}
    if p.quick_lengths and tr.eval_every:  # small, in memory, disjoint seed from the final set
        rows = generate_eval_rows(
            p.task, p.quick_lengths, min(32, cfg.eval.n_samples), cfg.eval.seed + 1
        )
        for n, inputs, target in zip(rows["length"], rows["input"], rows["target"], strict=True):
            quick_groups.setdefault(n, []).append((inputs, target))
    title = f"{p.task.name} · {encoding_label(cfg.encoding)} · seed {cfg.seed} → {d}"
    log(f"start ({mode}) {title}; {p.model.num_parameters():,} parameters")
    return Session(
        p,
        mode,
        trainer,
        stream,
        log,
        writer,
        title,
        quick_groups,
        seconds_before=resumed.get("seconds", 0.0),
        tokens=resumed.get("tokens", 0),
        slots=resumed.get("slots", 0),
        stop_hits=resumed.get("stop_hits", 0),
    )


def quick_evaluation(s: Session, step: int, reporter: Reporter) -> None:
    """Score the quick lengths (teacher forcing); count a hit towards ``train.stop_at``."""
    from posenc import tblog

    cfg, tr = s.p.cfg, s.p.cfg.train
    scores = evaluate_lengths(
        s.p.model, s.quick_groups, device=s.p.device, batch_size=cfg.eval.batch_size, fmt=s.p.fmt
    )
    tblog.log_per_length(s.writer, scores, step)
    shown = {n: v for n, v in scores.items() if n in (tr.eval_lengths or scores)}
    summary = ", ".join(f"n={n}: {v['exact_match']:.2f}" for n, v in shown.items())
    inside = [v["exact_match"] for n, v in scores.items() if tr.min_len <= n <= tr.max_len]
    if tr.stop_at is not None and inside:
        id_em = sum(inside) / len(inside)
        s.stop_hits = s.stop_hits + 1 if id_em >= tr.stop_at else 0
        s.writer.add_scalar("train/quick_id_exact_match", id_em, step)
        summary += f"; ID {id_em:.3f}"
    reporter.message(f"step {step}: exact match {summary}")
    s.log(f"step {step} quick eval exact match {summary}")


def train_phase(s: Session, reporter: Reporter, stop_file: Path | None = None) -> float:
    """The training loop, until ``train.steps`` or ``train.stop_at``; returns training seconds.

    Ctrl-C, a stop signal or ``stop_file`` appearing saves a checkpoint before it propagates,
    so the same command resumes the run.
    """
    tr, trainer = s.p.cfg.train, s.trainer
    reporter.start(s.title, tr.steps, trainer.step_count)
    t0 = time.perf_counter()
    tokens_at_start = s.tokens
    window_t, window_steps = t0, 0
    stop = StopSignals(stop_file).install()  # SIGTERM, SIGUSR1, SIGUSR2: posenc.signals
    try:
        while trainer.step_count < tr.steps and s.stop_hits < 2:
            stop.check(trainer.step_count)
            result = trainer.step(s.stream.next())
            step, s.loss = trainer.step_count, result.loss
            s.tokens += result.tokens
            s.slots += result.slots
            window_steps += 1
            if step % max(tr.log_every, 1) == 0 or step == tr.steps:
                now = time.perf_counter()
                rate = window_steps / max(now - window_t, 1e-9)
                s.writer.add_scalar("train/loss", s.loss, step)
                s.writer.add_scalar("train/lr", result.lr, step)
                s.writer.add_scalar(
                    "train/tokens_per_sec", (s.tokens - tokens_at_start) / max(now - t0, 1e-9), step
                )
                reporter.step(step, s.loss, rate)
                s.log(f"step {step} loss {s.loss:.4f} lr {result.lr:.2e} {rate:.1f} steps/s")
                window_t, window_steps = now, 0
            if s.quick_groups and step % tr.eval_every == 0 and step < tr.steps:
                quick_evaluation(s, step, reporter)
                if s.stop_hits >= 2:
                    s.stopped_at = step
                    s.log(f"stopped at step {step}: ID exact match >= {tr.stop_at} twice running")
            if tr.checkpoint_every and step % tr.checkpoint_every == 0:
                s.checkpoint(s.seconds_before + time.perf_counter() - t0)
    except (KeyboardInterrupt, RunStopped):
        s.checkpoint(s.seconds_before + time.perf_counter() - t0)
        s.log(f"interrupted at step {trainer.step_count}; checkpoint saved")
        s.close()
        reporter.close()
        stop.pass_on()  # a stop signal goes on to the earlier handler (submitit requeues)
        raise
    finally:
        stop.restore()  # also after a crash: the caller's handlers come back
        trainer.close()  # the piece threads, if any (a resumed loop restarts them)
    seconds = s.seconds_before + time.perf_counter() - t0
    s.checkpoint(seconds)
    return seconds


def evaluate_phase(s: Session, reporter: Reporter) -> tuple[dict, dict, float]:
    """Every evaluation length on the frozen set: (per-length scores, groups, seconds)."""
    cfg = s.p.cfg
    eval_ds = load_eval_set(
        s.p.task, s.p.eval_lengths, cfg.eval.n_samples, cfg.eval.seed, cfg.data_dir
    )
    groups = by_length(eval_ds)
    reporter.eval_start(len(groups))
    t_eval = time.perf_counter()
    generator = torch.Generator(device=s.p.device).manual_seed(cfg.eval.seed)
    per_length = evaluate_lengths(
        s.p.model,
        groups,
        batch_size=cfg.eval.batch_size,
        greedy=cfg.eval.greedy,
        device=s.p.device,
        generator=generator,
        on_length=reporter.eval_length,
        fmt=s.p.fmt,
    )
    return per_length, groups, time.perf_counter() - t_eval


def write_phase(
    s: Session, per_length: dict, groups: dict, train_seconds: float, eval_seconds: float
) -> dict[str, Any]:
    """TensorBoard summaries and attention maps, then ``metrics.json`` last, atomically."""
    from posenc import attention, tblog

    cfg, tr, model = s.p.cfg, s.p.cfg.train, s.p.model
    step = s.trainer.step_count
    summary = summarize(per_length, tr.min_len, tr.max_len, cfg.eval.threshold)
    metrics = {
        "status": "complete",
        "experiment": str(cfg.experiment),
        "task": s.p.task.name,
        "encoding": encoding_label(cfg.encoding),
        "seed": int(cfg.seed),
        "train_range": [int(tr.min_len), int(tr.max_len)],
        "summary_version": SUMMARY_VERSION,
        "summary": summary,
        "per_length": {str(n): v for n, v in per_length.items()},
        "train": {
            "steps": step,
            "stopped_at": s.stopped_at,
            "seconds": round(train_seconds, 3),
            "tokens_per_sec": round(s.tokens / max(train_seconds, 1e-9), 1),
            "padding_share": round(1 - s.tokens / s.slots, 4) if s.slots else None,
            "final_loss": s.loss,
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
    title = s.title.split(" → ")[0]
    tblog.log_final(
        s.writer, per_length, summary, hparams, step=step, train_max=tr.max_len, title=title
    )
    attention.log_attention_maps(  # one image per layer, at a training length and beyond
        s.writer,
        model,
        groups,
        tr.min_len,
        tr.max_len,
        step=step,
        device=s.p.device,
        seed=cfg.eval.seed,
        fmt=s.p.fmt,
    )
    s.writer.close()
    atomic_write_json(s.p.run_dir / METRICS, metrics)  # last: its presence marks the run finished
    s.log(f"finished: {summary}")
    s.log.close()
    return metrics


def run(
    cfg: DictConfig,
    reporter: Reporter | None = None,
    *,
    lock: bool = True,
    stop_file: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run; returns the metrics written to ``metrics.json``.

    Holds the run folder's `posenc.lock.RunLock` throughout (``lock=False``: the caller
    holds it): a second process on the folder gets `posenc.lock.RunLockedError`. Once
    ``stop_file`` exists, training stops at the next step as on SIGTERM (a sweep's stop).
    """
    p = plan(cfg)
    if not lock:
        return _run(p, reporter, stop_file)
    RunLock(p.run_dir).probe()  # a held folder is named first, whatever it holds
    check_run_dir(p)  # a finished or foreign folder is refused before it is touched
    with RunLock(p.run_dir):
        return _run(p, reporter, stop_file)


def _run(p: Plan, reporter: Reporter | None, stop_file: Path | None = None) -> dict[str, Any]:
    reporter = reporter or Reporter()
    # Again: the folder may have changed while we waited for its lock.
    session = prepare(p, check_run_dir(p))
    train_seconds = train_phase(session, reporter, stop_file)
    per_length, groups, eval_seconds = evaluate_phase(session, reporter)
    metrics = write_phase(session, per_length, groups, train_seconds, eval_seconds)
    reporter.finish(metrics)
    return metrics


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / METRICS)
