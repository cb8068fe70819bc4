"""A run in progress: its folder made and config written, the trainer and data stream built
(resumed from the checkpoint if one is there), and the training loop with its quick
evaluations, ``train.stop_at``, ``train.until_fit`` and checkpoints; the validation scores.

``train.until_fit``: at every quick evaluation (``train.eval_every``) the run is scored on its
validation samples at every training length (`validation_groups`); from ``train.steps`` on, a
check that finds every training length at ``eval.threshold`` or above ends training, and
until one does the run trains on in ``eval_every`` intervals, up to the ceiling
(`posenc.schema.ceiling`). Past ``train.steps`` the learning rate holds at
``lr * min_lr_ratio`` (`posenc.run.train.lr_factor`), so the schedule of the first
``train.steps`` steps is that of a run without until_fit, and a checkpoint taken during the
extension resumes it exactly (a check an interrupt skipped is made on resume).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posenc.config import to_yaml
from posenc.console import Reporter
from posenc.data import TrainStream, generate_eval_rows, generate_validation_rows
from posenc.io import atomic_torch_save, atomic_write_text
from posenc.run.checkpoint import load_checkpoint
from posenc.run.evaluate import evaluate_lengths
from posenc.run.lock import clear_folder
from posenc.run.planning import Plan
from posenc.run.signals import RunStopped, StoppedAtOnce, StopSignals
from posenc.run.train import Trainer
from posenc.runfolder import CHECKPOINT, CONFIG, LOG
from posenc.schema import ceiling, encoding_label


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
    val_groups: dict[int, list] | None = None  # validation samples by length (`validation_groups`)
    steps_to_fit: int | None = None  # the first check of the fitting streak ending training
    fits_now: bool = False  # the last until_fit check found the run fitting
    checked_at: int | None = None  # the step of the last until_fit check
    # each attempt at training this run: the step it started from, the machine it ran on
    # (`posenc.precision.run_machine`) and its threads; more than one when it was resumed
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def until_fit(self) -> bool:
        """Whether ``train.until_fit`` is in force: it needs quick evaluations to check at."""
        tr = self.p.cfg.train
        return bool(tr.until_fit and tr.eval_every)

    def budget_left(self) -> bool:
        """Whether the loop goes on: before ``train.steps``, or past it under until_fit while
        the last check did not fit and the ceiling is not reached."""
        tr, step = self.p.cfg.train, self.trainer.step_count
        if self.stop_hits >= 2:
            return False
        if step < tr.steps:
            return True
        return self.until_fit and not self.fits_now and step < ceiling(tr)

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
                "steps_to_fit": self.steps_to_fit,
                "fits_now": self.fits_now,
                "checked_at": self.checked_at,
                "attempts": self.attempts,
                "config": to_yaml(self.p.cfg),
            },
            self.p.run_dir / CHECKPOINT,
        )

    def close(self) -> None:
        self.writer.close()
        self.log.close()


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
    trainer = Trainer(p.model, tr, p.device)
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
    val_groups = validation_groups(p)
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
        val_groups=val_groups,
        steps_to_fit=resumed.get("steps_to_fit"),
        fits_now=resumed.get("fits_now", False),
        checked_at=resumed.get("checked_at"),
        attempts=[*previous_attempts(resumed), this_attempt(trainer.step_count, p.device)],
    )


def previous_attempts(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts a checkpoint records; a checkpoint written before attempts were recorded
    says only that one began at step 0 on a machine it did not name."""
    if not state:
        return []
    return list(state.get("attempts") or [{"from_step": 0, "machine": None}])


def this_attempt(step: int, device) -> dict[str, Any]:
    """The attempt starting now: its first step, machine and torch threads (``threads=null``
    is torch's default, the machine's cores: a count the config does not say, and the
    threads change the sums' order)."""
    from posenc.precision import run_machine

    return {
        "from_step": int(step),
        "machine": run_machine(device),
        "threads": torch.get_num_threads(),
    }


def validation_groups(p: Plan) -> dict[int, list]:
    """{length: [(input, target), ...]}: ``eval.val_samples`` validation examples at every
    training length and every validation length (`posenc.run.planning.validation_lengths`), from
    ``eval.val_seed``'s stream, none equal to an example of the test set (the frozen set's
    rows at the training lengths, regenerated from ``eval.seed``: the validation lengths are
    not test lengths). Small and in memory, like the quick set."""
    ev, tr = p.cfg.eval, p.cfg.train
    train_lengths = list(range(tr.min_len, tr.max_len + 1))
    test = generate_eval_rows(
        p.task, [n for n in train_lengths if n in set(p.eval_lengths)], ev.n_samples, ev.seed
    )
    rows = generate_validation_rows(
        p.task, [*train_lengths, *p.validation_lengths], ev.val_samples, ev.val_seed, test
    )
    groups: dict[int, list] = {n: [] for n in [*train_lengths, *p.validation_lengths]}
    for n, inputs, target in zip(rows["length"], rows["input"], rows["target"], strict=True):
        groups[n].append((inputs, target))
    return groups


def score_validation(s: Session, lengths: list[int]) -> dict[int, dict]:
    """Validation scores at ``lengths`` (teacher forcing; lengths without samples left out).
    Positions are drawn from a generator of ``eval.val_seed``, never the training stream's."""
    assert s.val_groups is not None
    cfg = s.p.cfg
    groups = {n: s.val_groups[n] for n in lengths if s.val_groups.get(n)}
    generator = torch.Generator(device=s.p.device).manual_seed(cfg.eval.val_seed)
    scores = evaluate_lengths(
        s.p.model,
        groups,
        batch_size=cfg.eval.batch_size,
        device=s.p.device,
        generator=generator,
        fmt=s.p.fmt,
    )
    return {n: {k: v for k, v in sc.items() if k != "examples"} for n, sc in scores.items()}


def fits(scores: dict[int, dict], train_min: int, train_max: int, threshold: float) -> bool:
    """Every training length with validation samples at ``threshold`` or above."""
    inside = [v["exact_match"] for n, v in scores.items() if train_min <= n <= train_max]
    return bool(inside) and min(inside) >= threshold


def fit_check(s: Session, step: int) -> None:
    """One until_fit check: validation at every training length. ``steps_to_fit`` is the
    first check of the streak of fitting checks that training ends on: a check that does
    not fit clears it, so a run that fit and lost it again (a diverging run; DroPE before
    its drop) records the step from which its final model's fit held, or None."""
    tr = s.p.cfg.train
    scores = score_validation(s, list(range(tr.min_len, tr.max_len + 1)))
    s.fits_now = fits(scores, tr.min_len, tr.max_len, s.p.cfg.eval.threshold)
    s.checked_at = step
    if not s.fits_now:
        s.steps_to_fit = None
    elif s.steps_to_fit is None:
        s.steps_to_fit = step
    worst = min((v["exact_match"] for v in scores.values()), default=float("nan"))
    s.writer.add_scalar("val/min_id_exact_match", worst, step)
    s.log(f"step {step} validation: min ID exact match {worst:.3f}, fits {s.fits_now}")


def _check_due(s: Session, step: int) -> bool:
    """Whether an until_fit check belongs to ``step``: every ``train.eval_every`` steps and
    at ``train.steps``."""
    tr = s.p.cfg.train
    return s.until_fit and step > 0 and (step % tr.eval_every == 0 or step == tr.steps)


def validation_record(s: Session) -> dict[str, Any]:
    """The ``validation`` block of ``metrics.json`` (docs/run-folder.md): the final model's
    scores at every training and validation length; the fit decided on them."""
    cfg, tr = s.p.cfg, s.p.cfg.train
    lo, hi = int(tr.min_len), int(tr.max_len)
    held = list(s.p.validation_lengths)
    scores = score_validation(s, [*range(lo, hi + 1), *held])
    inside = [v["exact_match"] for n, v in scores.items() if lo <= n <= hi]
    beyond = [scores[n]["exact_match"] for n in held if n in scores]
    return {
        "seed": int(cfg.eval.val_seed),
        "n_samples": int(cfg.eval.val_samples),
        "train_range": [lo, hi],
        "lengths": [held[0], held[-1]] if held else None,
        "per_length": {str(n): v for n, v in scores.items()},
        "fits_training_range": fits(scores, lo, hi, cfg.eval.threshold),
        "min_id_exact_match": min(inside) if inside else None,
        "ood_exact_match": sum(beyond) / len(beyond) if beyond else None,
    }


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
    """The training loop, until ``train.steps`` or ``train.stop_at``, and past ``train.steps``
    under ``train.until_fit`` (the module's docstring); returns training seconds.

    Ctrl-C, a stop signal or ``stop_file`` appearing saves a checkpoint at the next step
    boundary before it propagates, so the same command resumes the run to the same numbers; a
    second Ctrl-C stops at once and saves nothing (`posenc.run.signals.StoppedAtOnce`).
    """
    tr, trainer = s.p.cfg.train, s.trainer
    reporter.start(s.title, tr.steps, trainer.step_count)
    t0 = time.perf_counter()
    tokens_at_start = s.tokens
    window_t, window_steps = t0, 0
    stop = StopSignals(stop_file).install()  # SIGTERM, SIGUSR1, SIGUSR2: posenc.run.signals
    try:
        if _check_due(s, trainer.step_count) and s.checked_at != trainer.step_count:
            fit_check(s, trainer.step_count)  # interrupted before its check: done on resume
        while s.budget_left():
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
            if _check_due(s, step):
                fit_check(s, step)
                if s.fits_now and step >= tr.steps:
                    reporter.message(f"step {step}: fits its training range on validation")
                elif step == tr.steps:
                    reporter.message(
                        f"step {step}: does not fit on validation yet; training on, "
                        f"up to step {ceiling(tr)} (train.until_fit)"
                    )
            if tr.checkpoint_every and step % tr.checkpoint_every == 0:
                s.checkpoint(s.seconds_before + time.perf_counter() - t0)
    except StoppedAtOnce:  # a second Ctrl-C mid-step: its state would not resume exactly
        s.log(f"interrupted again at step {trainer.step_count}; resumes from the last checkpoint")
        s.close()
        reporter.close()
        stop.restore()
        raise
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
