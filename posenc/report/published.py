"""Published figures next to ours: a preset's ``paper:`` block (the paper column and the rank
agreement, Kendall's τ) and randomized positions against their base (Ruoss et al. 2023)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from posenc.errors import ConfigError
from posenc.report.protocol import fits
from posenc.report.records import RunRecord
from posenc.report.summary import METRIC_NAMES, SummaryRow

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
    records: Iterable[RunRecord],
    task: str,
    encoding: str,
    metric: str,
    aggregation: str,
    fit_only: bool = False,
) -> float | None:
    """``metric`` of the complete runs of one encoding: mean over seeds, or the best seed's;
    ``fit_only``: over the runs that fit their training range only."""
    values = [
        r.metrics["summary"].get(metric)
        for r in records
        if r.task == task
        and r.encoding == encoding
        and r.status == "complete"
        and r.metrics
        and (fits(r) or not fit_only)
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
    records: list[RunRecord],
    task: str,
    metric: str = "ood_exact_match",
    aggregation: str = "mean",
    fit_only: bool = True,
) -> list[Lift]:
    """Every ``randomized`` encoding of ``task`` whose base was run too, with both values:
    over the runs that fit (fit first, as the summary table's OOD figures), or, with
    ``fit_only`` false, over every run, as a paper that did not set runs aside computes it."""
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
            aggregate(records, task, name, metric, aggregation, fit_only),
            aggregate(records, task, base, metric, aggregation, fit_only),
        )
        for name, base in pairs
        if name in present
    ]
