"""A report in memory (`build_report`) and on disk (`write_report`): pure functions over run
records, so every number can be checked on hand-made metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posenc.io import atomic_write_bytes, atomic_write_text
from posenc.metrics import SUMMARY_VERSION
from posenc.report.markdown import render_markdown
from posenc.report.plots import accuracy_plot, accuracy_plot_name, heatmap_plot
from posenc.report.protocol import load_controls
from posenc.report.published import (
    Lift,
    PaperComparison,
    compare_with_paper,
    paper_block,
    randomized_lifts,
)
from posenc.report.records import RunRecord, load_experiment, results_csv, results_rows, tasks_of
from posenc.report.seeds import Pair, adjacent_pairs
from posenc.report.stats import Difference, baseline_differences, check_baseline
from posenc.report.summary import StopRow, SummaryRow, fit_step_rows, stop_rows, summary_rows
from posenc.runfolder import PLOTS, REPORT_MD, RESULTS_CSV


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
    pairs: dict[str, list[Pair]] = field(default_factory=dict)  # task -> adjacent in ranking
    controls: dict[str, dict] = field(default_factory=dict)  # task -> its control.json
    fit_steps: dict[str, list[StopRow]] = field(default_factory=dict)  # task -> until fit

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
    records: list[RunRecord],
    name: str = "",
    plots: bool = True,
    baseline: str | None = None,
    controls: dict[str, dict] | None = None,
) -> Report:
    """Every table and plot of a report, in memory. ``baseline``: an encoding to compare
    every other one with (`paired_difference`); a `ConfigError` if no run has it.
    ``controls``: task -> its positive control's control.json (`load_controls`)."""
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
        # beside a paper's figures, computed the paper's way (every run); else fit first
        found = randomized_lifts(
            records, task, metric, block.get("aggregation", "mean"), fit_only=not block
        )
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
        pairs={task: adjacent_pairs(records, task, tables[task]) for task in tasks},
        controls={task: controls[task] for task in tasks if task in (controls or {})},
        fit_steps={task: rows for task in tasks if (rows := fit_step_rows(records, task))},
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
    controls = load_controls(exp_dir, tasks_of(records), records)
    report = build_report(
        records, Path(exp_dir).resolve().name, plots=plots, baseline=baseline, controls=controls
    )
    return report, write_report(report, exp_dir)
