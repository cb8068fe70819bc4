"""Aggregate an experiment folder: tidy results, per-task summary tables, plots, report.md.

Pure functions over run records (read from ``metrics.json`` and ``error.json``), so every
number can be checked on hand-made metrics. Names in tables come from ``metrics.json``
(the encoding's label), never from folder names, except for runs that have none yet.

Seeds are summarised both ways the literature does (Kazemnejad et al. 2023 report the mean
of 3 seeds, Delétang et al. 2023 and Ruoss et al. 2023 the best of 10): mean ± the 95%
Student-t confidence half-width, and the best seed.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from posenc.errors import ConfigError, UnreadableFileError
from posenc.io import atomic_write_bytes, atomic_write_text, read_json
from posenc.metrics import SUMMARY_VERSION, summarize

METRICS = "metrics.json"  # same names as posenc.run, without importing torch
ERROR = "error.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
PLOTS = "plots"
CSV_COLUMNS = (
    "task",
    "encoding",
    "seed",
    "length",
    "in_train_range",
    "exact_match",
    "token_accuracy",
)
METRIC_NAMES = {
    "id_exact_match": "ID exact match",
    "min_id_exact_match": "min ID exact match",
    "ood_exact_match": "OOD exact match",
    "extrapolation_horizon": "extrapolation horizon",
}


# ---------------------------------------------------------------- statistics


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None for one value)."""
    from scipy import stats

    if not values:
        raise ValueError("mean_ci needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)


# ---------------------------------------------------------------- loading


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
    definitions (`posenc.metrics`), the run's training range and its ``eval.threshold``, so
    folders written under older definitions are never mixed in silently."""
    threshold = ((config or {}).get("eval") or {}).get("threshold", 0.9)
    lo, hi = metrics["train_range"]
    metrics = dict(metrics, summary=summarize(metrics["per_length"], lo, hi, threshold))
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
    records = []
    for d in sorted(folders):
        rel = str(d.relative_to(root))
        if (d / METRICS).exists():
            try:
                records.append(record_from_metrics(read_json(d / METRICS), rel, _read_config(d)))
                continue
            except UnreadableFileError as exc:
                task, encoding, seed = _names_from_path(d)
                records.append(RunRecord(task, encoding, seed, "failed", rel, error=str(exc)))
                continue
        task, encoding, seed = _names_from_path(d)
        if (d / ERROR).exists():
            try:
                err = read_json(d / ERROR)
            except UnreadableFileError as exc:
                err = {"error": str(exc)}
            records.append(
                RunRecord(
                    task=str(err.get("task", task)),
                    encoding=str(err.get("encoding", encoding)),
                    seed=int(err.get("seed", seed)),
                    status="failed",
                    path=rel,
                    error=str(err.get("error", "unknown error")),
                    config=_read_config(d),
                )
            )
        else:
            records.append(
                RunRecord(task, encoding, seed, "unfinished", rel, config=_read_config(d))
            )
    return records


def _names_from_path(d: Path) -> tuple[str, str, int]:
    seed_part = d.name
    seed = int(seed_part[4:]) if seed_part.startswith("seed") and seed_part[4:].isdigit() else -1
    return d.parent.parent.name, d.parent.name, seed


# ---------------------------------------------------------------- tidy results


def results_rows(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per complete run × evaluated length (columns `CSV_COLUMNS`)."""
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


# ---------------------------------------------------------------- summary tables


@dataclass
class Stat:
    """A metric over seeds: mean and 95% CI half-width (None below 2 seeds)."""

    mean: float | None = None
    ci: float | None = None
    n: int = 0

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        present = [float(v) for v in values if v is not None]
        if not present:
            return cls()
        mean, ci = mean_ci(present)
        return cls(mean, ci, len(present))


@dataclass
class SummaryRow:
    """One encoding on one task. The best seed is the one with the highest OOD exact match
    (ties: higher ID exact match, then lower seed); ``best`` holds that run's summary."""

    encoding: str
    seeds: list[int]
    id_exact_match: Stat
    ood_exact_match: Stat
    extrapolation_horizon: Stat
    min_id_exact_match: Stat = field(default_factory=Stat)
    best_seed: int | None = None
    best: dict[str, Any] = field(default_factory=dict)
    failed: list[RunRecord] = field(default_factory=list)
    unfinished: int = 0
    train_minutes: Stat = field(default_factory=Stat)
    paper: float | None = None  # the published figure for this encoding, if the preset has one
    as_paper: float | None = None  # ours, computed the paper's way (its metric, aggregation)
    fit: int = 0  # complete runs whose exact match reaches the threshold at every training length


def _best_key(record: RunRecord) -> tuple[float, float, int]:
    s = record.metrics["summary"] if record.metrics else {}
    ood, idm = s.get("ood_exact_match"), s.get("id_exact_match")
    return (-1.0 if ood is None else ood, -1.0 if idm is None else idm, -record.seed)


def _train_minutes(record: RunRecord) -> float | None:
    seconds = (record.metrics or {}).get("train", {}).get("seconds")
    return None if seconds is None else seconds / 60


def summary_rows(records: Iterable[RunRecord], task: str) -> list[SummaryRow]:
    """Per encoding of ``task``: each summary metric over seeds, sorted by OOD exact match
    (best first; encodings without one last)."""
    by_encoding: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.task == task:
            by_encoding.setdefault(r.encoding, []).append(r)
    rows = []
    for encoding, runs in by_encoding.items():
        complete = sorted((r for r in runs if r.status == "complete"), key=lambda r: r.seed)
        stats = {
            key: Stat.of([r.metrics["summary"].get(key) for r in complete]) for key in METRIC_NAMES
        }
        best = max(complete, key=_best_key) if complete else None
        rows.append(
            SummaryRow(
                encoding=encoding,
                seeds=[r.seed for r in complete],
                best_seed=best.seed if best else None,
                best=dict(best.metrics["summary"]) if best else {},
                failed=sorted((r for r in runs if r.status == "failed"), key=lambda r: r.seed),
                unfinished=sum(r.status == "unfinished" for r in runs),
                train_minutes=Stat.of([_train_minutes(r) for r in complete]),
                fit=sum(r.metrics["summary"].get("fits_training_range") is not False for r in complete),
                **stats,
            )
        )

    def order(row: SummaryRow) -> tuple:
        ood, idm = row.ood_exact_match.mean, row.id_exact_match.mean
        return (ood is None, -(ood or 0.0), idm is None, -(idm or 0.0), row.encoding)

    return sorted(rows, key=order)


def tasks_of(records: Iterable[RunRecord]) -> list[str]:
    return sorted({r.task for r in records})


def train_ranges(records: Iterable[RunRecord], task: str) -> list[tuple[int, int]]:
    return sorted(
        {tuple(r.metrics["train_range"]) for r in records if r.task == task and r.metrics}
    )


def format_stat(stat: Stat, digits: int = 3) -> str:
    """``0.873 ± 0.052`` (``0.873`` for one seed, ``–`` for none)."""
    if stat.mean is None:
        return "–"
    text = f"{stat.mean:.{digits}f}"
    return text if stat.ci is None else f"{text} ± {stat.ci:.{digits}f}"


def _value(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


NOT_FIT = "did not fit"


def horizon_text(row: SummaryRow) -> str:
    """The horizon over the runs that fit their training range, saying how many that is when
    not all did; ``did not fit`` when none did (a horizon needs a fitted range to extend)."""
    if row.seeds and row.fit == 0:
        return NOT_FIT
    text = format_stat(row.extrapolation_horizon, 1)
    return text if row.fit == len(row.seeds) else f"{text} ({row.fit} of {len(row.seeds)} fit)"


def best_horizon_text(row: SummaryRow) -> str:
    if row.best.get("fits_training_range") is False:
        return NOT_FIT
    return _value(row.best.get("extrapolation_horizon"))


def status_text(row: SummaryRow) -> str:
    parts = []
    if row.failed:
        parts.append(f"{len(row.failed)} failed")
    if row.unfinished:
        parts.append(f"{row.unfinished} unfinished")
    return ", ".join(parts) or "ok"


TABLE_HEADER = [
    "encoding",
    "seeds",
    "ID exact match",
    "min ID",
    "OOD exact match",
    "extrapolation horizon",
    "best seed",
    "best ID",
    "best OOD",
    "best horizon",
    "train min",
    "status",
]


def table_cells(row: SummaryRow, digits: int = 3) -> list[str]:
    """The cells of a summary-table row, in `TABLE_HEADER` order."""
    b = row.best
    return [
        row.encoding,
        str(len(row.seeds)),
        format_stat(row.id_exact_match, digits),
        _value(row.min_id_exact_match.mean, digits),
        format_stat(row.ood_exact_match, digits),
        horizon_text(row),
        _value(row.best_seed),
        _value(b.get("id_exact_match"), digits),
        _value(b.get("ood_exact_match"), digits),
        best_horizon_text(row),
        format_stat(row.train_minutes, 1),
        status_text(row),
    ]


# ---------------------------------------------------------------- time to accuracy


@dataclass
class StopRow:
    """Runs trained with ``train.stop_at``: how many steps each needed to reach it.

    ``steps`` is over the runs that reached the threshold; ``not_reached`` counts the others
    (they trained their full ``train.steps``, given in ``limit``)."""

    encoding: str
    threshold: float
    steps: Stat
    reached: list[int]  # the step each run that reached it stopped at, by seed
    by_seed: list[int | None]  # every run's step by seed; None: not reached
    not_reached: int
    limit: int | None  # train.steps of the runs that did not reach it (the largest)
    minutes: Stat  # training minutes of every run, reached or not


def _stop_at(record: RunRecord) -> float | None:
    value = ((record.config or {}).get("train") or {}).get("stop_at")
    return None if value is None else float(value)


def stop_rows(records: Iterable[RunRecord], task: str) -> list[StopRow]:
    """Per encoding of ``task`` whose complete runs were trained with ``train.stop_at``:
    steps to the threshold (mean ± 95% CI over the runs that reached it), fastest first;
    empty when no run of the task set it."""
    by_encoding: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.task == task and r.status == "complete" and _stop_at(r) is not None:
            by_encoding.setdefault(r.encoding, []).append(r)
    rows = []
    for encoding, runs in by_encoding.items():
        runs = sorted(runs, key=lambda r: r.seed)
        stopped = [(r.metrics.get("train") or {}).get("stopped_at") for r in runs]
        reached = [int(s) for s in stopped if s is not None]
        limits = [
            (r.metrics.get("train") or {}).get("steps")
            for r, s in zip(runs, stopped, strict=True)
            if s is None
        ]
        rows.append(
            StopRow(
                encoding=encoding,
                threshold=max(_stop_at(r) for r in runs),
                steps=Stat.of(reached),
                reached=reached,
                by_seed=[None if s is None else int(s) for s in stopped],
                not_reached=len(runs) - len(reached),
                limit=max((int(x) for x in limits if x is not None), default=None),
                minutes=Stat.of([_train_minutes(r) for r in runs]),
            )
        )
    return sorted(
        rows, key=lambda x: (x.not_reached, x.steps.mean is None, x.steps.mean or 0, x.encoding)
    )


STOP_HEADER = ["encoding", "reached", "steps to reach (mean)", "each seed", "train min"]


def stop_cells(row: StopRow) -> list[str]:
    """``['rope', '2 of 3', '1500 ± 400', 'not by 3000, 1300, 1700', '4.1 ± 0.3']``: each
    run's step in seed order."""
    total = len(row.reached) + row.not_reached
    steps = "–" if row.steps.mean is None else f"{row.steps.mean:.0f}"
    if row.steps.ci is not None:
        steps += f" ± {row.steps.ci:.0f}"
    missing = "not reached" if row.limit is None else f"not by {row.limit}"
    each = [missing if s is None else str(s) for s in row.by_seed]
    return [
        row.encoding,
        f"{len(row.reached)} of {total}",
        steps,
        ", ".join(each),
        format_stat(row.minutes, 1),
    ]


def _stop_lines(rows: list[StopRow]) -> list[str]:
    if not rows:
        return []
    thresholds = sorted({row.threshold for row in rows})
    lines = [
        "Steps to in-distribution exact match ≥ "
        + " / ".join(f"{t:g}" for t in thresholds)
        + " (`train.stop_at`: reached at two consecutive quick evaluations; the step of the "
        "second; mean ± 95% CI over the runs that reached it):",
        "",
        "| " + " | ".join(STOP_HEADER) + " |",
        "|---|--:|--:|---|--:|",
    ]
    lines += ["| " + " | ".join(_md_escape(c) for c in stop_cells(row)) + " |" for row in rows]
    return lines + [""]


# ---------------------------------------------------------------- published figures


PAPER_AGGREGATIONS = ("mean", "best")


@dataclass
class PaperComparison:
    """A preset's published figures for one task next to ours: Kendall's τ between the two
    orderings of the encodings that have both (scipy's τ-b; None below two encodings)."""

    source: str
    metric: str
    aggregation: str
    n: int = 0
    tau: float | None = None
    p_value: float | None = None


def paper_block(records: Iterable[RunRecord], task: str) -> dict[str, Any] | None:
    """The ``paper:`` block of the runs of ``task`` (from their config.yaml), if any."""
    for r in records:
        block = (r.config or {}).get("paper")
        if r.task == task and isinstance(block, dict):
            return block
    return None


def check_paper_block(block: dict[str, Any]) -> None:
    """Raise a `ConfigError` naming a bad ``paper.metric`` or ``paper.aggregation``."""
    metric = block.get("metric", "ood_exact_match")
    if metric not in METRIC_NAMES and metric != "ood_token_accuracy":
        valid = ", ".join([*METRIC_NAMES, "ood_token_accuracy"])
        raise ConfigError(f"unknown paper.metric {metric!r}; valid choices: {valid}")
    aggregation = block.get("aggregation", "mean")
    if aggregation not in PAPER_AGGREGATIONS:
        raise ConfigError(
            f"unknown paper.aggregation {aggregation!r}; valid choices: "
            + ", ".join(PAPER_AGGREGATIONS)
        )


def aggregate(
    records: Iterable[RunRecord], task: str, encoding: str, metric: str, aggregation: str
) -> float | None:
    """``metric`` of the complete runs of one encoding: mean over seeds, or the best seed's."""
    values = [
        r.metrics["summary"].get(metric)
        for r in records
        if r.task == task and r.encoding == encoding and r.status == "complete" and r.metrics
    ]
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return max(values) if aggregation == "best" else sum(values) / len(values)


def compare_with_paper(
    records: list[RunRecord], task: str, rows: list[SummaryRow]
) -> PaperComparison | None:
    """Fill ``paper`` and ``as_paper`` of each row from the runs' ``paper:`` block; τ."""
    block = paper_block(records, task)
    if block is None:
        return None
    check_paper_block(block)
    metric = block.get("metric", "ood_exact_match")
    aggregation = block.get("aggregation", "mean")
    published = ((block.get("values") or {}).get(task)) or {}
    if not published:  # figures for other tasks only (or none: a preset with a lift only)
        return None
    pairs = []
    for row in rows:
        row.as_paper = aggregate(records, task, row.encoding, metric, aggregation)
        value = published.get(row.encoding)
        row.paper = None if value is None else float(value)
        if row.paper is not None and row.as_paper is not None:
            pairs.append((row.paper, row.as_paper))
    comparison = PaperComparison(str(block.get("source", "paper")), metric, aggregation, len(pairs))
    if len(pairs) >= 2:
        from scipy import stats

        result = stats.kendalltau([p for p, _ in pairs], [o for _, o in pairs])
        if not math.isnan(result.statistic):
            comparison.tau, comparison.p_value = float(result.statistic), float(result.pvalue)
    return comparison


@dataclass
class Lift:
    """A randomized-positions encoding next to its base (Ruoss et al. 2023's comparison)."""

    randomized: str
    base: str
    randomized_value: float | None
    base_value: float | None

    @property
    def lift(self) -> float | None:
        if self.randomized_value is None or self.base_value is None:
            return None
        return self.randomized_value - self.base_value


def _base_of(record: RunRecord) -> str | None:
    """The base encoding of a run with randomized positions (None for any other run)."""
    enc = (record.config or {}).get("encoding") or {}
    if enc.get("name") == "randomized":
        return str(enc.get("base"))
    if record.config is None and record.encoding.startswith("randomized_"):
        return record.encoding.removeprefix("randomized_")
    return None


def randomized_lifts(
    records: list[RunRecord], task: str, metric: str = "ood_exact_match", aggregation: str = "mean"
) -> list[Lift]:
    """Every ``randomized`` encoding of ``task`` whose base was run too, with both values."""
    present = {r.encoding for r in records if r.task == task and r.status == "complete"}
    pairs = sorted(
        {
            (r.encoding, base)
            for r in records
            if r.task == task and (base := _base_of(r)) is not None and base in present
        }
    )
    return [
        Lift(
            name,
            base,
            aggregate(records, task, name, metric, aggregation),
            aggregate(records, task, base, metric, aggregation),
        )
        for name, base in pairs
        if name in present
    ]


# ---------------------------------------------------------------- paired differences


@dataclass
class Difference:
    """OOD exact match of ``encoding`` minus the baseline's, with a 95% bootstrap interval."""

    encoding: str
    baseline: str
    seeds: list[int]  # the seeds both have: the pairs
    mean: float | None
    low: float | None
    high: float | None
    resampled: str  # "seeds × examples", or "seeds" when a run lacks per-example results


BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0


def _ood_examples(record: RunRecord) -> dict[int, Any] | None:
    """{OOD length: 0/1 array per evaluation example}, or None without per-example results."""
    import numpy as np

    hi = record.metrics["train_range"][1]
    out = {}
    for n, scores in record.metrics["per_length"].items():
        if int(n) <= hi:
            continue
        text = scores.get("examples")
        if not isinstance(text, str) or not text:
            return None
        out[int(n)] = np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")
    return out


def paired_difference(
    runs: Sequence[RunRecord],
    base_runs: Sequence[RunRecord],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> Difference | None:
    """Paired bootstrap of the difference in OOD exact match (``runs`` minus ``base_runs``).

    Runs pair by seed (same seed: same training-data stream) and examples by their place
    in the frozen evaluation set (the same examples for every encoding). Each bootstrap
    replicate draws the paired seeds with replacement and, independently at every OOD
    length, the evaluation examples with replacement (the same draw for both encodings),
    and averages the per-example differences over examples, lengths and the drawn seeds,
    as the OOD exact match itself is averaged. The interval is the percentile interval of
    ``samples`` replicates from a generator seeded with ``seed``, drawn as integers and
    computed in exact arithmetic: the same text on every machine, thread count and BLAS. When a
    run has no per-example results (``per_length[n]["examples"]``, older metrics.json),
    only seeds are resampled, from each seed's OOD exact match.
    """
    import numpy as np

    mine = {r.seed: r for r in runs if r.status == "complete" and r.metrics}
    theirs = {r.seed: r for r in base_runs if r.status == "complete" and r.metrics}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    name, base = mine[seeds[0]].encoding, theirs[seeds[0]].encoding
    ood = [
        (
            mine[s].metrics["summary"]["ood_exact_match"],
            theirs[s].metrics["summary"]["ood_exact_match"],
        )
        for s in seeds
    ]
    if any(a is None or b is None for a, b in ood):
        return Difference(name, base, seeds, None, None, None, "none: no OOD lengths")
    per_seed = [a - b for a, b in ood]  # (k,)
    rng = np.random.default_rng(seed)
    k = len(seeds)
    seed_counts = _resample_counts(rng, samples, k)  # (samples, k) int
    examples = [(_ood_examples(mine[s]), _ood_examples(theirs[s])) for s in seeds]
    lengths = sorted(examples[0][0] or {})
    usable = all(
        a is not None and b is not None and sorted(a) == lengths == sorted(b)
        and all(len(a[n]) == len(b[n]) == len(examples[0][0][n]) for n in lengths)
        for a, b in examples
    )  # fmt: skip
    if usable and lengths:
        # Integer counts throughout: replicate = Σ_n Σ_s c_s·Σ_e w_ne·d_sne / (k·N_n·L), each
        # length's sum scaled to the common denominator k·lcm(N)·L. Exact, so the interval
        # is the same on every machine, whatever BLAS or summation order it has.
        sizes = {n: len(examples[0][0][n]) for n in lengths}
        common = math.lcm(*sizes.values())
        total = np.zeros(samples, dtype=np.int64)
        for n in lengths:
            diff = np.stack([a[n].astype(np.int64) - b[n] for a, b in examples])  # (k, N)
            weights = _resample_counts(rng, samples, sizes[n])  # (S, N) int
            per_seed_n = np.einsum("kn,sn->sk", diff, weights)  # (S, k) int: exact
            total += (seed_counts * per_seed_n).sum(axis=1) * (common // sizes[n])
        denominator = k * common * len(lengths)
        replicate = [Fraction(int(t), denominator) for t in total]
        resampled = "seeds × examples"
    else:  # per-seed figures are floats: exact rationals of them, summed exactly
        exact = [Fraction(v) for v in per_seed]
        replicate = [
            sum((int(c) * v for c, v in zip(row, exact, strict=True)), Fraction(0)) / k
            for row in seed_counts
        ]
        resampled = "seeds"
    alpha = (1 - Fraction(str(confidence))) / 2
    low, high = (_quantile(sorted(replicate), q) for q in (alpha, 1 - alpha))
    mean = float(sum((Fraction(v) for v in per_seed), Fraction(0)) / k)
    return Difference(name, base, seeds, mean, float(low), float(high), resampled)


def _resample_counts(rng, samples: int, size: int):
    """(samples, size) int64: how often each of ``size`` items is drawn in each of ``samples``
    draws of ``size`` with replacement. Integer draws only (no floating point), so the stream
    is the same on every machine."""
    import numpy as np

    draws = rng.integers(0, size, size=(samples, size))
    flat = (draws + np.arange(samples)[:, None] * size).ravel()
    return np.bincount(flat, minlength=samples * size).reshape(samples, size)


def _quantile(ordered: Sequence[Fraction], q: Fraction) -> Fraction:
    """The q-quantile of sorted values, linear interpolation between order statistics (numpy's
    default method), in exact arithmetic."""
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    if lo + 1 >= len(ordered):
        return ordered[-1]
    return ordered[lo] + (h - lo) * (ordered[lo + 1] - ordered[lo])


def baseline_differences(records: list[RunRecord], task: str, baseline: str) -> list[Difference]:
    """`paired_difference` of every other encoding of ``task`` against ``baseline``."""
    by_encoding: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.task == task and r.status == "complete":
            by_encoding.setdefault(r.encoding, []).append(r)
    if baseline not in by_encoding:
        return []
    out = []
    for encoding, runs in sorted(by_encoding.items()):
        if encoding != baseline:
            d = paired_difference(runs, by_encoding[baseline])
            if d is not None:
                out.append(d)
    out.sort(key=lambda d: (d.mean is None, -(d.mean or 0.0), d.encoding))
    return out


def check_baseline(records: Iterable[RunRecord], baseline: str) -> None:
    """Raise a `ConfigError` unless some complete run has encoding ``baseline``."""
    names = sorted({r.encoding for r in records if r.status == "complete"})
    if baseline not in names:
        raise ConfigError(
            f"baseline {baseline!r} is not an encoding of this experiment; valid choices: "
            + ", ".join(names)
        )


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _pyplot().close(fig)
    return buf.getvalue()


def accuracy_plot(records: Sequence[RunRecord], task: str, order: Sequence[str]) -> bytes:
    """PNG: exact match and token accuracy against length, one line per encoding (mean over
    seeds) with a min–max band over seeds; the training range is shaded."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    ranges = train_ranges(records, task)
    colours = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    for ax, key, name in zip(
        axes, ("exact_match", "token_accuracy"), ("exact match", "token accuracy"), strict=True
    ):
        for i, (lo, hi) in enumerate(ranges):
            ax.axvspan(
                lo - 0.5, hi + 0.5, color="0.88", label="training lengths" if i == 0 else None
            )
        for i, encoding in enumerate(order):
            runs = [r for r in records if r.task == task and r.encoding == encoding and r.metrics]
            if not runs:
                continue
            lengths = sorted({int(n) for r in runs for n in r.metrics["per_length"]})
            curves = [
                [r.metrics["per_length"].get(str(n), {}).get(key) for r in runs] for n in lengths
            ]
            mean = [sum(v for v in c if v is not None) / max(1, len(c)) for c in curves]
            colour = colours(i % colours.N)
            ax.plot(lengths, mean, marker=".", ms=3, lw=1.4, color=colour, label=encoding)
            if len(runs) > 1:
                ax.fill_between(
                    lengths,
                    [min(v for v in c if v is not None) for c in curves],
                    [max(v for v in c if v is not None) for c in curves],
                    color=colour,
                    alpha=0.18,
                    lw=0,
                )
        ax.set(xlabel="length n", ylabel=name, ylim=(-0.02, 1.02), title=f"{task}: {name}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower left", fontsize=8)
    fig.text(0.99, 0.01, "line: mean over seeds · band: min–max over seeds", ha="right", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def heatmap_plot(records: Sequence[RunRecord], tasks: Sequence[str], encodings: Sequence[str]):
    """PNG: task × encoding heatmap of the mean OOD exact match over seeds."""
    import numpy as np

    plt = _pyplot()
    grid = np.full((len(tasks), len(encodings)), np.nan)
    for i, task in enumerate(tasks):
        for j, encoding in enumerate(encodings):
            stat = Stat.of(
                [
                    r.metrics["summary"].get("ood_exact_match")
                    for r in records
                    if r.task == task and r.encoding == encoding and r.metrics
                ]
            )
            if stat.mean is not None:
                grid[i, j] = stat.mean
    fig, ax = plt.subplots(
        figsize=(max(4.0, 1.1 * len(encodings) + 2), max(2.2, 0.6 * len(tasks) + 1.6))
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(encodings)), encodings, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(len(tasks)):
        for j in range(len(encodings)):
            text = "–" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}"
            light = np.isnan(grid[i, j]) or grid[i, j] > 0.6  # grey cell or bright colour
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="k" if light else "w")
    fig.colorbar(im, ax=ax, label="OOD exact match (mean over seeds)")
    ax.set_title("exact match beyond the training lengths")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    name: str
    records: list[RunRecord]
    tables: dict[str, list[SummaryRow]]
    rows: list[dict[str, Any]]
    plots: dict[str, bytes]  # relative path -> PNG
    papers: dict[str, PaperComparison] = field(default_factory=dict)  # task -> comparison
    lifts: dict[str, list[Lift]] = field(default_factory=dict)  # task -> randomized vs base
    published_lift: dict[str, tuple[str, float]] = field(
        default_factory=dict
    )  # task -> (source, lift)
    baseline: str | None = None
    differences: dict[str, list[Difference]] = field(default_factory=dict)  # task -> rows
    stops: dict[str, list[StopRow]] = field(default_factory=dict)  # task -> time to accuracy

    @property
    def older_summaries(self) -> int:
        """Complete runs whose metrics.json was written under older summary definitions."""
        return sum(
            r.status == "complete" and (r.summary_version or 1) < SUMMARY_VERSION
            for r in self.records
        )

    @property
    def counts(self) -> dict[str, int]:
        out = {"complete": 0, "failed": 0, "unfinished": 0}
        for r in self.records:
            out[r.status] += 1
        return out


def build_report(
    records: list[RunRecord], name: str = "", plots: bool = True, baseline: str | None = None
) -> Report:
    """Every table and plot of a report, in memory. ``baseline``: an encoding to compare
    every other one with (`paired_difference`); a `ConfigError` if no run has it."""
    if baseline is not None:
        check_baseline(records, baseline)
    tasks = tasks_of(records)
    tables = {task: summary_rows(records, task) for task in tasks}
    papers, lifts, published = {}, {}, {}
    for task in tasks:
        comparison = compare_with_paper(records, task, tables[task])
        if comparison is not None:
            papers[task] = comparison
        block = paper_block(records, task) or {}
        metric = block.get("metric", "ood_exact_match")
        found = randomized_lifts(records, task, metric, block.get("aggregation", "mean"))
        if found:
            lifts[task] = found
            if isinstance(block.get("lift"), int | float):
                published[task] = (str(block.get("source", "paper")), float(block["lift"]))
    differences = {}
    if baseline is not None:
        differences = {task: baseline_differences(records, task, baseline) for task in tasks}
    images: dict[str, bytes] = {}
    complete = [r for r in records if r.status == "complete"]
    if plots and complete:
        for task in tasks:
            order = [row.encoding for row in tables[task] if row.seeds]
            if order:
                images[accuracy_plot_name(task)] = accuracy_plot(complete, task, order)
        encodings = _overall_order(tables)
        images[f"{PLOTS}/ood_heatmap.png"] = heatmap_plot(complete, tasks, encodings)
    return Report(
        name,
        records,
        tables,
        results_rows(records),
        images,
        papers,
        lifts,
        published,
        baseline,
        differences,
        {task: rows for task in tasks if (rows := stop_rows(records, task))},
    )


def _overall_order(tables: dict[str, list[SummaryRow]]) -> list[str]:
    """Encodings by mean OOD exact match over tasks, best first."""
    scores: dict[str, list[float]] = {}
    for rows in tables.values():
        for row in rows:
            scores.setdefault(row.encoding, [])
            if row.ood_exact_match.mean is not None:
                scores[row.encoding].append(row.ood_exact_match.mean)
    return sorted(
        scores, key=lambda e: (-(sum(scores[e]) / len(scores[e])) if scores[e] else 1.0, e)
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def accuracy_plot_name(task: str) -> str:
    """The accuracy-versus-length plot of ``task``, relative to the experiment folder."""
    return f"{PLOTS}/accuracy_vs_length_{_slug(task)}.png"


def task_section_lines(
    report: Report, task: str, heading: str | None, plot: str | None
) -> list[str]:
    """One task's part of a report in markdown: its heading (if any), training range,
    summary table (with the paper column when the runs carry one), rank agreement,
    randomized lifts, steps to ``train.stop_at``, differences to the baseline and the plot
    (if any)."""
    rows = report.tables[task]
    ranges = ", ".join(f"{lo}–{hi}" for lo, hi in train_ranges(report.records, task))
    lines = [heading, ""] if heading else []
    if ranges:
        lines += [f"Trained on lengths {ranges}.", ""]
    paper = report.papers.get(task)
    header = TABLE_HEADER + (["ours (as paper)", "paper"] if paper else [])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(TABLE_HEADER) - 2) + ["---"]))
    lines[-1] += "|--:|--:|" if paper else "|"
    for row in rows:
        cells = table_cells(row) + ([_value(row.as_paper), _value(row.paper)] if paper else [])
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines.append("")
    if paper:
        lines += [paper_sentence(paper), ""]
    lines += _lift_lines(report.lifts.get(task), paper_block(report.records, task))
    if task in report.published_lift:
        source, lift = report.published_lift[task]
        lines += [f"Published: {source} report a mean lift of {lift:+.3f}.", ""]
    lines += _stop_lines(report.stops.get(task, []))
    lines += _difference_lines(report.differences.get(task), report.baseline)
    if plot:
        lines += [f"![accuracy versus length on {task}]({plot})", ""]
    return lines


def render_markdown(report: Report) -> str:
    c = report.counts
    lines = [
        f"# Experiment `{report.name}`" if report.name else "# Experiment",
        "",
        f"{len(report.records)} runs: {c['complete']} complete, {c['failed']} failed, "
        f"{c['unfinished']} unfinished · generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "Each metric is the mean over seeds ± the half-width of its 95% Student-t confidence "
        "interval (none for one seed). *ID*: mean exact match over the training lengths; *OOD*: "
        "over the evaluated lengths beyond them; *horizon*: the longest length up to which every "
        "length past the training range reaches the exact-match threshold (`eval.threshold`), "
        "counted up to the first length that does not, for the runs that fit their training "
        "range (exact match at the threshold at every training length; *did not fit* where "
        "none did, *k of n fit* where some did not); *min ID*: the lowest exact match at a "
        "training length (mean over seeds). The *best seed* is the seed with the highest "
        "OOD exact match; its own scores follow it. Rows are sorted by mean OOD exact match.",
        "",
        f"Summaries are recomputed from each run's per-length results (summary definitions "
        f"v{SUMMARY_VERSION}, `posenc.metrics`)"
        + (
            f"; {report.older_summaries} runs were written under older definitions and are "
            "shown under the current ones."
            if report.older_summaries
            else "."
        ),
        "",
    ]
    for task in report.tables:
        plot = accuracy_plot_name(task)
        lines += task_section_lines(
            report, task, heading=f"## {task}", plot=plot if plot in report.plots else None
        )
    heat = f"{PLOTS}/ood_heatmap.png"
    if heat in report.plots:
        lines += ["## Beyond the training lengths, every task", "", f"![OOD heatmap]({heat})", ""]
    failed = [r for r in report.records if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", ""]
        for r in failed:
            lines.append(f"- `{r.path}` ({r.task} · {r.encoding} · seed {r.seed}): {r.error}")
        lines.append("")
    lines += [
        f"Tidy per-length results: [`{RESULTS_CSV}`]({RESULTS_CSV}) "
        f"(columns: {', '.join(CSV_COLUMNS)}).",
        "",
    ]
    return "\n".join(lines)


def paper_sentence(paper: PaperComparison) -> str:
    """One line: where the paper column comes from and how well the orderings agree."""
    how = "mean over seeds" if paper.aggregation == "mean" else "best seed"
    text = (
        f"*paper*: {paper.source}; *ours (as paper)*: our `{paper.metric}`, {how}, computed "
        "as the paper reports it. "
    )
    if paper.tau is None:
        return text + f"Rank agreement: too few encodings with both figures ({paper.n})."
    return text + (
        f"Rank agreement between the two orderings: Kendall's τ = {paper.tau:.2f} "
        f"(p = {paper.p_value:.3g}, {paper.n} encodings)."
    )


def _short(value: float | None) -> str:
    """``.95`` (two digits, no leading zero: narrow table cells); ``1.0``; ``–``."""
    if value is None:
        return "–"
    return "1.0" if value >= 0.995 else f"{value:.2f}".removeprefix("0")


def paper_caption(paper: PaperComparison) -> str:
    how = "mean over seeds" if paper.aggregation == "mean" else "best seed"
    tau = (
        f"Kendall's τ = {paper.tau:.2f}, p = {paper.p_value:.2g} ({paper.n} encodings)"
        if paper.tau is not None
        else f"τ: too few encodings with both figures ({paper.n})"
    )
    return f"{paper.metric}, {how} · {tau}"


def _lift_lines(lifts: list[Lift] | None, block: dict[str, Any] | None) -> list[str]:
    if not lifts:
        return []
    metric = (block or {}).get("metric", "ood_exact_match")
    how = "best seed" if (block or {}).get("aggregation") == "best" else "mean over seeds"
    lines = [
        f"Randomized positions against their base (`{metric}`, {how}; lift = randomized − base):",
        "",
        "| randomized | base | randomized value | base value | lift |",
        "|---|---|--:|--:|--:|",
    ]
    for x in lifts:
        lines.append(
            f"| {x.randomized} | {x.base} | {_value(x.randomized_value)} | "
            f"{_value(x.base_value)} | {_signed(x.lift)} |"
        )
    found = [x.lift for x in lifts if x.lift is not None]
    if found:
        lines += ["", f"Mean lift: {_signed(sum(found) / len(found))} over {len(found)} pairs."]
    return [*lines, ""]


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _difference_lines(diffs: list[Difference] | None, baseline: str | None) -> list[str]:
    if baseline is None:
        return []
    if not diffs:
        return [f"No paired runs with baseline `{baseline}` on this task.", ""]
    lines = [
        f"Difference to `{baseline}` in OOD exact match (encoding − {baseline}; mean over "
        "paired seeds, 95% paired-bootstrap interval):",
        "",
        "| encoding | paired seeds | Δ OOD exact match | 95% CI | resampled |",
        "|---|--:|--:|---|---|",
    ]
    for d in diffs:
        ci = "–" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
        lines.append(
            f"| {_md_escape(d.encoding)} | {len(d.seeds)} | {_signed(d.mean)} | {ci} | "
            f"{d.resampled} |"
        )
    if any(d.resampled == "seeds" for d in diffs):
        lines += [
            "",
            "*seeds*: some runs have no per-example results (`per_length[n].examples`), so "
            "only seeds were resampled for those rows.",
        ]
    return [*lines, ""]


def write_report(report: Report, exp_dir: str | Path) -> list[Path]:
    """Write results.csv, report.md and the plots into ``exp_dir``; returns the paths."""
    root = Path(exp_dir)
    written = [root / RESULTS_CSV, root / REPORT_MD]
    atomic_write_text(root / RESULTS_CSV, results_csv(report.rows))
    for rel, png in report.plots.items():
        atomic_write_bytes(root / rel, png)
        written.append(root / rel)
    atomic_write_text(root / REPORT_MD, render_markdown(report))
    return written


def report_experiment(
    exp_dir: str | Path, plots: bool = True, baseline: str | None = None
) -> tuple[Report, list[Path]]:
    """Load, aggregate and write the report of an experiment folder (nothing is written
    when the baseline or a ``paper:`` block is bad)."""
    records = load_experiment(exp_dir)
    report = build_report(records, Path(exp_dir).resolve().name, plots=plots, baseline=baseline)
    return report, write_report(report, exp_dir)


def rich_tables(report: Report) -> list:
    """The summary tables (paper column, randomized lifts, differences to the baseline, failed
    runs) as rich renderables, narrow enough for 80 columns."""
    from rich import box
    from rich.table import Table

    out = []
    for task, rows in report.tables.items():
        ranges = ", ".join(f"{lo}–{hi}" for lo, hi in train_ranges(report.records, task))
        paper = report.papers.get(task)
        table = Table(
            title=f"[bold]{task}[/]" + (f" · trained on lengths {ranges}" if ranges else ""),
            caption="mean ± 95% CI over seeds · best seed (by OOD): ID/OOD/horizon",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        table.add_column("encoding", no_wrap=True)
        for name in ("seeds", "ID exact", "min ID", "OOD exact", "horizon", "best seed"):
            table.add_column(name, justify="right")
        for row in rows:
            b = row.best
            best = (
                "–"
                if row.best_seed is None
                else f"{row.best_seed}: {_short(b.get('id_exact_match'))}/"
                f"{_short(b.get('ood_exact_match'))}/{best_horizon_text(row)}"
            )
            seeds = str(len(row.seeds))
            if row.failed or row.unfinished:  # "1 of 3": the others failed or are unfinished
                total = len(row.seeds) + len(row.failed) + row.unfinished
                seeds = f"[red]{seeds} of {total}[/]"
            cells = [
                row.encoding,
                seeds,
                format_stat(row.id_exact_match, 2),
                _short(row.min_id_exact_match.mean),
                format_stat(row.ood_exact_match, 2),
                horizon_text(row),
                best,
            ]
            table.add_row(*cells)
        out.append(table)
        if paper:
            paper_table = Table(
                title=f"{task}: ours next to {paper.source}",
                caption=paper_caption(paper),
                box=box.SIMPLE_HEAD,
            )
            paper_table.add_column("encoding", no_wrap=True)
            paper_table.add_column("ours", justify="right")
            paper_table.add_column("paper", justify="right")
            for row in rows:
                paper_table.add_row(row.encoding, _value(row.as_paper, 2), _value(row.paper, 2))
            out.append(paper_table)
        lifts = report.lifts.get(task)
        if lifts:
            block = paper_block(report.records, task) or {}
            caption = f"{block.get('metric', 'ood_exact_match')}, " + (
                "best seed" if block.get("aggregation") == "best" else "mean over seeds"
            )
            if task in report.published_lift:
                source, lift = report.published_lift[task]
                caption += f" · {source}: mean lift {lift:+.3f}"
            lift_table = Table(
                title=f"{task}: randomized positions against their base",
                caption=caption,
                box=box.SIMPLE_HEAD,
            )
            for name in ("randomized", "base", "randomized value", "base value", "lift"):
                lift_table.add_column(
                    name, justify="right" if "value" in name or name == "lift" else "left"
                )
            for x in lifts:
                lift_table.add_row(
                    x.randomized, x.base, _value(x.randomized_value, 3),
                    _value(x.base_value, 3), _signed(x.lift),
                )  # fmt: skip
            out.append(lift_table)
        stops = report.stops.get(task)
        if stops:
            stop_table = Table(
                title=f"{task}: steps to ID exact match ≥ "
                + " / ".join(f"{t:g}" for t in sorted({x.threshold for x in stops})),
                caption="train.stop_at · mean ± 95% CI over the runs that reached it",
                box=box.SIMPLE_HEAD,
            )
            for name in STOP_HEADER:
                stop_table.add_column(name, justify="left" if name == "encoding" else "right")
            for x in stops:
                stop_table.add_row(*stop_cells(x))
            out.append(stop_table)
        diffs = report.differences.get(task)
        if report.baseline is not None and diffs:
            diff_table = Table(
                title=f"{task}: OOD exact match minus {report.baseline}",
                caption="mean over paired seeds · 95% paired bootstrap "
                "(seeds × examples, or seeds only)",
                box=box.SIMPLE_HEAD,
            )
            diff_table.add_column("encoding", no_wrap=True)
            for name in ("seeds", "Δ OOD", "95% CI", "resampled"):
                diff_table.add_column(name, justify="right")
            for d in diffs:
                ci = "–" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
                diff_table.add_row(d.encoding, str(len(d.seeds)), _signed(d.mean), ci, d.resampled)
            out.append(diff_table)
    failed = [r for r in report.records if r.status == "failed"]
    if failed:
        table = Table(title="failed runs", title_style="bold red", box=box.SIMPLE_HEAD)
        table.add_column("run")
        table.add_column("error", overflow="fold")
        for r in failed:
            table.add_row(r.path, r.error or "")
        out.append(table)
    return out
