"""Run records: what each run folder of an experiment holds, and the tidy per-length table.

Names in tables come from ``metrics.json`` (the encoding's label), never from folder names,
except for runs that have none yet.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posenc import schema
from posenc.errors import UnreadableFileError
from posenc.io import read_json
from posenc.report.protocol import fits, generalizes, run_summary
from posenc.runfolder import CHECKPOINT, CONFIG, ERROR, METRICS

CSV_COLUMNS = (
    "task",
    "encoding",
    "seed",
    "length",
    "in_train_range",
    "exact_match",
    "token_accuracy",
    "fits_training_range",
    "generalizes",
)


@dataclass
class RunRecord:
    """One run folder: complete (metrics), failed (error) or unfinished (running or stopped)."""

    task: str
    encoding: str
    seed: int
    status: str  # "complete", "failed", "unfinished"
    path: str = ""
    metrics: dict[str, Any] | None = None
    error: str | None = None
    config: dict[str, Any] | None = None  # the run's config.yaml, when there is one
    summary_version: int | None = None  # the definitions its metrics.json was written with


def record_from_metrics(
    metrics: dict[str, Any], path: str = "", config: dict[str, Any] | None = None
) -> RunRecord:
    """A complete run. Its summary is recomputed from ``per_length`` with the current
    definitions (`posenc.metrics`), the run's training range, its ``eval.threshold`` and the
    protocol it was made under (`posenc.report.protocol.run_summary`), so folders written
    under older definitions are never mixed in silently."""
    threshold = ((config or {}).get("eval") or {}).get("threshold", schema.Eval.threshold)
    metrics = dict(metrics, summary=run_summary(metrics, threshold))
    return RunRecord(
        task=str(metrics["task"]),
        encoding=str(metrics["encoding"]),
        seed=int(metrics["seed"]),
        status="complete",
        path=path,
        metrics=metrics,
        config=config,
        summary_version=int(metrics.get("summary_version", 1)),
    )


def _read_config(folder: Path) -> dict[str, Any] | None:
    import yaml

    path = folder / CONFIG
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else None


def _skipped(path: Path, root: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def _names_from_path(d: Path) -> tuple[str, str, int]:
    seed_part = d.name
    seed = int(seed_part[4:]) if seed_part.startswith("seed") and seed_part[4:].isdigit() else -1
    return d.parent.parent.name, d.parent.name, seed


def _failed_record(d: Path, rel: str) -> RunRecord:
    task, encoding, seed = _names_from_path(d)
    try:
        err = read_json(d / ERROR)
    except UnreadableFileError as exc:
        err = {"error": str(exc)}
    return RunRecord(
        task=str(err.get("task", task)),
        encoding=str(err.get("encoding", encoding)),
        seed=int(err.get("seed", seed)),
        status="failed",
        path=rel,
        error=str(err.get("error", "unknown error")),
        config=_read_config(d),
    )


def read_run(d: Path, rel: str) -> RunRecord:
    """The record of one run folder ``d`` (``rel``: its path within the experiment)."""
    if (d / METRICS).exists():
        try:
            return record_from_metrics(read_json(d / METRICS), rel, _read_config(d))
        except UnreadableFileError as exc:
            task, encoding, seed = _names_from_path(d)
            return RunRecord(task, encoding, seed, "failed", rel, error=str(exc))
    if (d / ERROR).exists():
        return _failed_record(d, rel)
    task, encoding, seed = _names_from_path(d)
    return RunRecord(task, encoding, seed, "unfinished", rel, config=_read_config(d))


def load_experiment(exp_dir: str | Path) -> list[RunRecord]:
    """Every run folder ``<task>/<encoding>/seed<k>/`` of an experiment folder (skipping
    ``_sweeps``, ``_data`` and hidden folders)."""
    root = Path(exp_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    folders = set()
    for name in (METRICS, ERROR, CHECKPOINT):
        folders |= {
            p.parent
            for p in root.glob(f"*/*/seed*/{name}")
            if p.parent.name[4:].isdigit() and not _skipped(p.parent, root)
        }
    return [read_run(d, str(d.relative_to(root))) for d in sorted(folders)]


def tasks_of(records: Iterable[RunRecord]) -> list[str]:
    return sorted({r.task for r in records})


def train_ranges(records: Iterable[RunRecord], task: str) -> list[tuple[int, int]]:
    return sorted(
        {tuple(r.metrics["train_range"]) for r in records if r.task == task and r.metrics}
    )


def results_rows(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per complete run × evaluated length (columns `CSV_COLUMNS`); the run's fit and
    whether its horizon passes the training range repeat on each of its rows."""
    rows = []
    for r in records:
        if r.status != "complete" or r.metrics is None:
            continue
        lo, hi = r.metrics["train_range"]
        for n, scores in sorted(r.metrics["per_length"].items(), key=lambda kv: int(kv[0])):
            rows.append(
                {
                    "task": r.task,
                    "encoding": r.encoding,
                    "seed": r.seed,
                    "length": int(n),
                    "in_train_range": lo <= int(n) <= hi,
                    "exact_match": float(scores["exact_match"]),
                    "token_accuracy": float(scores["token_accuracy"]),
                    "fits_training_range": fits(r),
                    "generalizes": generalizes(r),
                }
            )
    rows.sort(key=lambda row: (row["task"], row["encoding"], row["seed"], row["length"]))
    return rows


def results_csv(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()
