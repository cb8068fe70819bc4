"""The ``metrics.json`` record of a run, built in one place for training (`posenc.run`) and
for re-evaluation (`posenc.reevaluate`, ``eval-<tag>.json``: the same schema)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from posenc.metrics import SUMMARY_VERSION, summarize
from posenc.schema import encoding_label


def metrics_record(
    cfg,
    task: str,
    per_length: Mapping[int, dict],
    *,
    train: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """What ``metrics.json`` holds: the run's identity, the summary (`posenc.metrics`), the
    per-length scores and the ``train`` and ``eval`` sections as given."""
    lo, hi = cfg.train.min_len, cfg.train.max_len
    return {
        "status": "complete",
        "experiment": str(cfg.experiment),
        "task": task,
        "encoding": encoding_label(cfg.encoding),
        "seed": int(cfg.seed),
        "train_range": [int(lo), int(hi)],
        "summary_version": SUMMARY_VERSION,
        "summary": summarize(per_length, lo, hi, cfg.eval.threshold),
        "per_length": {str(n): v for n, v in per_length.items()},
        "train": train,
        "eval": evaluation,
    }
