"""The ``metrics.json`` record of a run, built in one place for training (`posenc.run.execute`) and
for re-evaluation (`posenc.run.reevaluate`, ``eval-<tag>.json``: the same schema)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posenc.metrics import SUMMARY_VERSION, extrapolation_horizon, summarize
from posenc.schema import ceiling, encoding_label

PROTOCOL_VERSION = 1  # the ``protocol`` block's definitions (docs/run-folder.md)


def metrics_record(
    cfg,
    task: str,
    per_length: Mapping[int, dict],
    *,
    train: dict[str, Any],
    evaluation: dict[str, Any],
    validation: dict[str, Any] | None = None,
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``metrics.json`` holds: the run's identity, the summary (`posenc.metrics`), the
    per-length scores and the ``train`` and ``eval`` sections as given, and where given the
    ``validation`` (`posenc.run.session.validation_record`) and ``protocol`` blocks. With
    validation, the summary's ``fits_training_range`` is validation's (the fit is decided
    on validation samples, not the test set) and a run that does not fit has no horizon.
    The horizon is over ``per_length``, the test set: never the validation lengths, which
    chose settings (the report reads it the same way: `posenc.report.protocol.run_summary`)."""
    lo, hi = cfg.train.min_len, cfg.train.max_len
    summary = summarize(per_length, lo, hi, cfg.eval.threshold)
    if validation is not None:
        fit = bool(validation["fits_training_range"])
        em = {int(n): float(v["exact_match"]) for n, v in per_length.items()}
        summary["fits_training_range"] = fit
        summary["extrapolation_horizon"] = (
            extrapolation_horizon(em, hi, cfg.eval.threshold) if fit else None
        )
    record = {
        "status": "complete",
        "experiment": str(cfg.experiment),
        "task": task,
        "encoding": encoding_label(cfg.encoding),
        "seed": int(cfg.seed),
        "train_range": [int(lo), int(hi)],
        "summary_version": SUMMARY_VERSION,
        "summary": summary,
        "per_length": {str(n): v for n, v in per_length.items()},
        "train": train,
        "eval": evaluation,
    }
    if validation is not None:
        record["validation"] = validation
    if protocol is not None:
        record["protocol"] = protocol
    return record


def protocol_record(
    cfg, *, steps_trained: int, steps_to_fit: int | None, until_fit: bool, test_lengths
) -> dict[str, Any]:
    """The ``protocol`` block of ``metrics.json``: the training budget (``until_fit`` as in
    force: it needs ``train.eval_every`` > 0), the steps taken, the test lengths past the
    training range (``[first, last]``, null for none) and the choices file applied
    (`posenc.choices`), if any."""
    tr = cfg.train
    past = sorted(n for n in test_lengths if n > tr.max_len)
    choices = cfg.get("choices")
    if isinstance(choices, DictConfig):
        choices = OmegaConf.to_container(choices, resolve=True)
    return {
        "version": PROTOCOL_VERSION,
        "fit_on": "validation",
        "until_fit": bool(until_fit),
        "steps": int(tr.steps),
        "max_steps": ceiling(tr),
        "steps_trained": int(steps_trained),
        "steps_to_fit": steps_to_fit,
        "test_lengths": [past[0], past[-1]] if past else None,
        "choices": choices if isinstance(choices, Mapping) else None,
    }
