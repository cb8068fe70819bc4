"""One training run, as a pure function of its resolved config: plan, prepare, train,
evaluate, write.

``plan(cfg)`` (`posenc.run.planning`) checks everything and builds the model without writing a
byte; ``run(cfg)`` then prepares the run folder and trains (`posenc.run.session`: resuming from
the folder's checkpoint if one is there), evaluates every length on the frozen evaluation set
and writes ``metrics.json`` (`posenc.run.record`) last, atomically: a run folder with
``metrics.json`` is finished and is never overwritten without ``overwrite``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from posenc.console import Reporter
from posenc.data import by_length, load_eval_set
from posenc.errors import RunExistsError, UnreadableFileError, first_line
from posenc.io import atomic_write_json
from posenc.run.evaluate import evaluate_lengths
from posenc.run.lock import RunLock
from posenc.run.planning import Plan, plan
from posenc.run.record import metrics_record, protocol_record
from posenc.run.session import Session, prepare, train_phase, validation_record
from posenc.run.spec import FINISHED, FOREIGN, NEW, differences, run_status
from posenc.runfolder import CHECKPOINT, CONFIG, METRICS


def check_run_dir(p: Plan) -> str:
    """'new', 'resume' or 'overwrite' (`posenc.run.spec.run_status`); raises if the folder holds
    a finished run, or another config's, naming what differs."""
    d = p.run_dir
    status = run_status(d, p.cfg)
    if status == NEW:
        return "new"
    if p.cfg.overwrite:
        return "overwrite"
    finished = (d / METRICS).exists()
    if status == FINISHED or (finished and not (d / CONFIG).is_file()):
        raise RunExistsError(
            f"{d} already holds a finished run ({METRICS}); pass overwrite=true to replace it "
            "or choose another run_dir/experiment"
        )
    if status == FOREIGN:
        if not (d / CONFIG).is_file():  # its config.yaml was deleted
            raise RunExistsError(
                f"{d} holds {CHECKPOINT} but no {CONFIG}, so posenc cannot tell whose run it "
                "is; pass overwrite=true to start over (replacing the checkpoint) or choose "
                "another run_dir/experiment"
            )
        try:
            OmegaConf.load(d / CONFIG)
        except Exception as exc:
            raise UnreadableFileError(
                f"{d / CONFIG} cannot be read ({first_line(exc)}); pass "
                "overwrite=true to start the run over"
            ) from exc
        what = "finished" if finished else "unfinished"
        diff = differences(d, p.cfg)
        raise RunExistsError(
            f"{d} holds an {what} run with a different config"
            + (f" ({diff})" if diff else "")
            + "; pass overwrite=true to start over or choose another run_dir/experiment"
        )
    return "resume"


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
    s: Session,
    per_length: dict,
    groups: dict,
    train_seconds: float,
    eval_seconds: float,
    validation: dict | None = None,
) -> dict[str, Any]:
    """TensorBoard summaries and attention maps, then ``metrics.json`` last, atomically."""
    from posenc import attention, tblog
    from posenc.precision import run_machine

    cfg, tr, model = s.p.cfg, s.p.cfg.train, s.p.model
    step = s.trainer.step_count
    train = {
        "steps": step,
        "stopped_at": s.stopped_at,
        "seconds": round(train_seconds, 3),
        "tokens_per_sec": round(s.tokens / max(train_seconds, 1e-9), 1),
        "padding_share": round(1 - s.tokens / s.slots, 4) if s.slots else None,
        "final_loss": s.loss,
        "parameters": model.num_parameters(),
        "precision_used": s.trainer.precision,  # what train.precision (e.g. auto) became
        # where it ran (device, CPU model, bf16 flags, torch, CPU kernels): float kernels
        # differ between machine kinds, so a run re-made elsewhere can differ without any bug
        "machine": run_machine(next(model.parameters()).device),
        # each attempt: the step it started from and its machine (two or more: resumed)
        "attempts": s.attempts,
    }
    evaluation = {"seconds": round(eval_seconds, 3), "greedy": bool(cfg.eval.greedy)}
    protocol = protocol_record(
        cfg, steps_trained=step, steps_to_fit=s.steps_to_fit, until_fit=s.until_fit,
        test_lengths=s.p.eval_lengths,
    )  # fmt: skip
    metrics = metrics_record(
        cfg,
        s.p.task.name,
        per_length,
        train=train,
        evaluation=evaluation,
        validation=validation,
        protocol=protocol,
    )
    summary = metrics["summary"]
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

    Holds the run folder's `posenc.run.lock.RunLock` throughout (``lock=False``: the caller
    holds it): a second process on the folder gets `posenc.run.lock.RunLockedError`. Once
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
    validation = validation_record(session)
    per_length, groups, eval_seconds = evaluate_phase(session, reporter)
    metrics = write_phase(session, per_length, groups, train_seconds, eval_seconds, validation)
    reporter.finish(metrics)
    return metrics
