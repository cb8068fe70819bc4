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
from posenc.errors import UnreadableFileError, first_line
from posenc.io import read_json
from posenc.report.protocol import fits, generalizes, run_summary
from posenc.runfolder import CHECKPOINT, CONFIG, ERROR, METRICS, folder_seed, seed_folder

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


def damaged(path: Path, what: str) -> UnreadableFileError:
    """The one-line error of a run file that is there but not what posenc wrote."""
    return UnreadableFileError(
        f"{path} is damaged ({what}); delete it, or rerun that run with overwrite=true"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_metrics(data: Any, path: str | Path) -> dict[str, Any]:
    """``data`` read from the metrics.json at ``path``, if it holds what a report reads from
    one (`posenc.run.record.metrics_record` writes it); else `UnreadableFileError` naming the
    file and the first thing wrong, so one damaged run is listed as failed, not a traceback."""
    path = Path(path)
    if not isinstance(data, dict):
        raise damaged(path, f"a JSON {type(data).__name__} where an object is expected")
    for key in ("task", "encoding"):
        if not isinstance(data.get(key), str):
            raise damaged(path, f"{key!r} is missing or not a string")
    if not isinstance(data.get("seed"), int) or isinstance(data.get("seed"), bool):
        raise damaged(path, "'seed' is missing or not an integer")
    train_range = data.get("train_range")
    if not (
        isinstance(train_range, list)
        and len(train_range) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in train_range)
    ):
        raise damaged(path, "'train_range' is missing or not two integers")
    per_length = data.get("per_length")
    if not isinstance(per_length, dict) or not per_length:
        raise damaged(path, "'per_length' is missing, empty or not an object")
    for n, scores in per_length.items():
        if not n.isdigit():
            raise damaged(path, f"per_length has the key {n!r}, not a length")
        if not isinstance(scores, dict):
            raise damaged(path, f"per_length[{n}] is not an object")
        for key in ("exact_match", "token_accuracy"):
            if not _is_number(scores.get(key)):
                raise damaged(path, f"per_length[{n}].{key} is missing or not a number")
    for key in ("train", "eval", "summary"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise damaged(path, f"{key!r} is not an object")
    return data


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics.json checked by `check_metrics`; one `UnreadableFileError` for any fault."""
    return check_metrics(read_json(path), path)


def read_config_dict(folder: Path) -> dict[str, Any] | None:
    """The run's config.yaml as a dict; None without one; `UnreadableFileError` if it is
    not a YAML mapping (garbage, truncated, binary, a folder)."""
    import yaml

    path = folder / CONFIG
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_bytes().decode())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise damaged(path, first_line(exc)) from exc
    if not isinstance(data, dict):
        raise damaged(path, f"a YAML {type(data).__name__} where a mapping is expected")
    return data


def _skipped(path: Path, root: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def _names_from_path(d: Path) -> tuple[str, str, int]:
    seed = folder_seed(d.name)
    return d.parent.parent.name, d.parent.name, -1 if seed is None else seed


def _failed_record(d: Path, rel: str) -> RunRecord:
    task, encoding, seed = _names_from_path(d)
    try:
        err = read_json(d / ERROR)
        if not isinstance(err, dict):
            raise damaged(d / ERROR, f"a JSON {type(err).__name__} where an object is expected")
    except UnreadableFileError as exc:
        err = {"error": str(exc)}
    if not (isinstance(err.get("seed", seed), int) and not isinstance(err.get("seed"), bool)):
        err["seed"] = seed
    try:
        config = read_config_dict(d)
    except UnreadableFileError:
        config = None  # failed either way; its error.json says why
    return RunRecord(
        task=str(err.get("task", task)),
        encoding=str(err.get("encoding", encoding)),
        seed=int(err.get("seed", seed)),
        status="failed",
        path=rel,
        error=str(err.get("error", "unknown error")),
        config=config,
    )


def read_run(d: Path, rel: str) -> RunRecord:
    """The record of one run folder ``d`` (``rel``: its path within the experiment). A
    damaged metrics.json or config.yaml makes it a failed run whose error names the file."""
    if (d / METRICS).exists():  # a folder named metrics.json too: damaged, listed as such
        try:
            return record_from_metrics(read_metrics(d / METRICS), rel, read_config_dict(d))
        except UnreadableFileError as exc:
            task, encoding, seed = _names_from_path(d)
            return RunRecord(task, encoding, seed, "failed", rel, error=str(exc))
    if (d / ERROR).exists():
        return _failed_record(d, rel)
    task, encoding, seed = _names_from_path(d)
    try:
        return RunRecord(task, encoding, seed, "unfinished", rel, config=read_config_dict(d))
    except UnreadableFileError as exc:
        return RunRecord(task, encoding, seed, "failed", rel, error=str(exc))


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
            for p in root.glob(f"*/*/{seed_folder('*')}/{name}")
            if folder_seed(p.parent.name) is not None and not _skipped(p.parent, root)
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
