"""report.md, and one task's section of it (which `posenc tables` also writes into docs)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from posenc.metrics import SUMMARY_VERSION
from posenc.report.header import task_header
from posenc.report.plots import accuracy_plot_name
from posenc.report.records import CSV_COLUMNS
from posenc.report.sections import (
    _ranges,
    difference_absent,
    difference_table,
    fit_steps_table,
    lift_table,
    stop_table,
    summary_table,
)
from posenc.report.table import markdown
from posenc.runfolder import PLOTS, RESULTS_CSV

if TYPE_CHECKING:
    from posenc.report.build import Report

HOW_TO_READ = (
    "Fit first: a run *fits* when its exact match reaches the threshold (`eval.threshold`) "
    "at every training length (on validation samples under the protocol, on the test set "
    "for runs made before it); *fit* counts the runs that do. ID figures are over every "
    "run; OOD figures, horizons, the best seed and the paired comparisons only over the runs "
    "that fit, and a row where none fit is listed below the ranked ones (*did not fit*). "
    "Each metric is the mean over seeds ± the half-width of its 95% Student-t confidence "
    "interval (none for one seed). *ID*: mean exact match over the training lengths; *min "
    "ID*: the lowest of them (mean over seeds); *OOD*: over the test lengths beyond them; "
    "*horizon*: the longest length up to which every length past the training range reaches "
    "the threshold, counted up to the first length that does not; *robust*: the runs whose "
    "horizon passes the training range, of all complete runs (Zhou et al. 2024). The *best "
    "seed* is the fitting seed with the highest OOD exact match; its own scores follow it. "
    "Ranked rows are sorted by mean OOD exact match; under each table, the adjacent pairs "
    "the paired bootstrap leaves unresolved."
)


def inline_scoring(task: str) -> str | None:
    """What exact match and token accuracy count for a task with inline answers (None for
    the others, which answer after ``<sep>``, or a task this install does not know)."""
    from posenc import tasks
    from posenc.errors import ConfigError

    try:
        cls = tasks.task_class(task)
    except ConfigError:
        return None
    if not cls.inline:
        return None
    return (
        f"Answers inline, scored where the paper scores them: {cls.scored}. Exact match: "
        "every answer of a sequence right; token accuracy: the share of answers right."
    )


def task_section_lines(
    report: Report, task: str, heading: str | None, plot: str | None
) -> list[str]:
    """One task's part of a report in markdown: its heading (if any), training range, the
    protocol it was made under (with its departures and positive control), summary table (with the paper column when the runs carry one), rank agreement,
    randomized lifts, steps to ``train.stop_at``, differences to the baseline and the plot
    (if any)."""
    ranges = _ranges(report, task)
    lines = [heading, ""] if heading else []
    if ranges:
        lines += [f"Trained on lengths {ranges}.", ""]
    if (scoring := inline_scoring(task)) is not None:
        lines += [scoring, ""]
    if (header := task_header(report, task)) is not None:
        for line in header.lines():
            lines += [line, ""]
    lines += markdown(summary_table(report, task))
    for build in (lift_table, fit_steps_table, stop_table, difference_table):
        table = build(report, task)
        if table is not None:
            lines += markdown(table)
    if (absent := difference_absent(report, task)) is not None:
        lines += [absent, ""]
    if plot:
        lines += [f"![accuracy versus length on {task}]({plot})", ""]
    return lines


def render_markdown(report: Report) -> str:
    c = report.counts
    older = report.older_summaries
    lines = [
        f"# Experiment `{report.name}`" if report.name else "# Experiment",
        "",
        f"{len(report.records)} runs: {c['complete']} complete, {c['failed']} failed, "
        f"{c['unfinished']} unfinished · generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        HOW_TO_READ,
        "",
        f"Summaries are recomputed from each run's per-length results (summary definitions "
        f"v{SUMMARY_VERSION}, `posenc.metrics`)"
        + (
            f"; {older} runs were written under older definitions and are "
            "shown under the current ones."
            if older
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
