"""Per-encoding rows of a task: each summary metric over seeds, the best seed, and the steps
each run needed to reach ``train.stop_at``; and how their cells read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from posenc.report.protocol import fits, generalizes
from posenc.report.records import RunRecord
from posenc.report.stats import Stat

METRIC_NAMES = {
    "id_exact_match": "ID exact match",
    "min_id_exact_match": "min ID exact match",
    "ood_exact_match": "OOD exact match",
    "extrapolation_horizon": "extrapolation horizon",
}


@dataclass
class SummaryRow:
    """One encoding on one task, fit first: the ID figures are over every complete run, the
    OOD exact match and the horizon over the runs that fit their training range only. The
    best seed is the fitting run with the highest OOD exact match (ties: higher ID exact
    match, then lower seed; when none fit, the run with the highest ID exact match);
    ``best`` holds that run's summary."""

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
    robust: int = 0  # complete runs whose horizon passes the training range
    unfit: list[int] = field(default_factory=list)  # seeds of the complete runs that did not fit

    @property
    def ranked(self) -> bool:
        """Whether the row takes part in the OOD ranking: some run fits and has an OOD figure."""
        return self.fit > 0 and self.ood_exact_match.mean is not None


def _best_key(record: RunRecord) -> tuple[float, float, int]:
    s = record.metrics["summary"] if record.metrics else {}
    ood, idm = s.get("ood_exact_match"), s.get("id_exact_match")
    return (-1.0 if ood is None else ood, -1.0 if idm is None else idm, -record.seed)


def _train_minutes(record: RunRecord) -> float | None:
    seconds = (record.metrics or {}).get("train", {}).get("seconds")
    return None if seconds is None else seconds / 60


def summary_rows(records: Iterable[RunRecord], task: str) -> list[SummaryRow]:
    """Per encoding of ``task``: each summary metric over seeds, fit first. Rows with a run
    that fits come first, by the OOD exact match of those runs (best first); then rows where
    no run fit, by ID exact match (listed, never ranked by OOD); then rows without a
    complete run."""
    by_encoding: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.task == task:
            by_encoding.setdefault(r.encoding, []).append(r)
    rows = []
    for encoding, runs in by_encoding.items():
        complete = sorted((r for r in runs if r.status == "complete"), key=lambda r: r.seed)
        fitting = [r for r in complete if fits(r)]

        def stat(key: str, group: list[RunRecord]) -> Stat:
            return Stat.of([r.metrics["summary"].get(key) for r in group])

        best = (
            max(fitting, key=_best_key)
            if fitting
            else max(complete, key=_id_key)
            if complete
            else None
        )
        rows.append(
            SummaryRow(
                encoding=encoding,
                seeds=[r.seed for r in complete],
                id_exact_match=stat("id_exact_match", complete),
                min_id_exact_match=stat("min_id_exact_match", complete),
                ood_exact_match=stat("ood_exact_match", fitting),
                extrapolation_horizon=stat("extrapolation_horizon", fitting),
                best_seed=best.seed if best else None,
                best=dict(best.metrics["summary"]) if best else {},
                failed=sorted((r for r in runs if r.status == "failed"), key=lambda r: r.seed),
                unfinished=sum(r.status == "unfinished" for r in runs),
                train_minutes=Stat.of([_train_minutes(r) for r in complete]),
                fit=len(fitting),
                robust=sum(generalizes(r) for r in complete),
                unfit=[r.seed for r in complete if not fits(r)],
            )
        )

    def order(row: SummaryRow) -> tuple:
        ood, idm = row.ood_exact_match.mean, row.id_exact_match.mean
        return (
            not row.ranked,
            -(ood or 0.0) if row.ranked else 0.0,
            idm is None,
            -(idm or 0.0),
            row.encoding,
        )

    return sorted(rows, key=order)


def _id_key(record: RunRecord) -> tuple[float, int]:
    idm = record.metrics["summary"].get("id_exact_match") if record.metrics else None
    return (-1.0 if idm is None else idm, -record.seed)


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


def _short(value: float | None) -> str:
    """``.95`` (two digits, no leading zero: narrow table cells); ``1.0``; ``–``."""
    if value is None:
        return "–"
    return "1.0" if value >= 0.995 else f"{value:.2f}".removeprefix("0")


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


NOT_FIT = "did not fit"


def horizon_text(row: SummaryRow) -> str:
    """The horizon over the runs that fit their training range; ``did not fit`` when none
    did (a horizon needs a fitted range to extend)."""
    if row.seeds and row.fit == 0:
        return NOT_FIT
    return format_stat(row.extrapolation_horizon, 1)


def ood_text(row: SummaryRow, digits: int = 3) -> str:
    """The OOD exact match over the runs that fit; ``did not fit`` when none did."""
    if row.seeds and row.fit == 0:
        return NOT_FIT
    return format_stat(row.ood_exact_match, digits)


def fit_text(row: SummaryRow) -> str:
    """``2/3``: the complete runs that fit their training range; ``–`` without one."""
    return f"{row.fit}/{len(row.seeds)}" if row.seeds else "–"


def robust_text(row: SummaryRow) -> str:
    """``3/5``: the complete runs whose horizon passes the training range (Zhou et al. 2024:
    how often an encoding generalizes is itself the finding); ``–`` without one."""
    return f"{row.robust}/{len(row.seeds)}" if row.seeds else "–"


def best_horizon_text(row: SummaryRow) -> str:
    if row.best.get("fits_training_range") is False:
        return NOT_FIT
    return _value(row.best.get("extrapolation_horizon"))


def best_ood_text(row: SummaryRow, digits: int = 3) -> str:
    if row.best.get("fits_training_range") is False:
        return "–"  # a run that did not fit has no OOD figure to rank
    return _value(row.best.get("ood_exact_match"), digits)


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
    "fit",
    "ID exact match",
    "min ID",
    "OOD exact match",
    "extrapolation horizon",
    "robust",
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
        fit_text(row),
        format_stat(row.id_exact_match, digits),
        _value(row.min_id_exact_match.mean, digits),
        ood_text(row, digits),
        horizon_text(row),
        robust_text(row),
        _value(row.best_seed),
        _value(b.get("id_exact_match"), digits),
        best_ood_text(row, digits),
        best_horizon_text(row),
        format_stat(row.train_minutes, 1),
        status_text(row),
    ]


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


def fit_step_rows(records: Iterable[RunRecord], task: str) -> list[StopRow]:
    """Per encoding of ``task`` whose complete runs trained until fit (``protocol.until_fit``
    in metrics.json): the steps each took to fit its training range (``steps_to_fit``; None:
    it reached the ceiling ``max_steps`` without fitting, or fit at a check and did not at
    the end), fastest first; empty when no run of the task trained until fit."""
    by_encoding: dict[str, list[RunRecord]] = {}
    for r in records:
        block = (r.metrics or {}).get("protocol") or {}
        if r.task == task and r.status == "complete" and block.get("until_fit"):
            by_encoding.setdefault(r.encoding, []).append(r)
    rows = []
    for encoding, runs in by_encoding.items():
        runs = sorted(runs, key=lambda r: r.seed)
        blocks = [r.metrics["protocol"] for r in runs]
        # a run counts by its final decision: runs recorded before steps_to_fit became the
        # final fitting streak keep a lost early fit's step there (a diverging run)
        by_seed = [
            int(b["steps_to_fit"]) if b.get("steps_to_fit") is not None and fits(r) else None
            for r, b in zip(runs, blocks, strict=True)
        ]
        reached = [s for s in by_seed if s is not None]
        ceilings = [int(b["max_steps"]) for b in blocks if b.get("max_steps") is not None]
        thresholds = [((r.config or {}).get("eval") or {}).get("threshold") for r in runs]
        rows.append(
            StopRow(
                encoding=encoding,
                threshold=max((float(t) for t in thresholds if t is not None), default=0.9),
                steps=Stat.of(reached),
                reached=reached,
                by_seed=by_seed,
                not_reached=len(runs) - len(reached),
                limit=max(ceilings, default=None),
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


def aggregation_words(aggregation: str) -> str:
    """How a paper aggregates seeds, in words: ``mean over seeds`` or ``best seed``."""
    return "best seed" if aggregation == "best" else "mean over seeds"
