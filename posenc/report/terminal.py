"""The report in the terminal: the same sections as report.md, rendered by rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from posenc.report.sections import (
    compact_summary_table,
    difference_table,
    failures_table,
    lift_table,
    paper_table,
    stop_table,
)
from posenc.report.table import terminal

if TYPE_CHECKING:
    from posenc.report.build import Report


def rich_tables(report: Report) -> list:
    """Per task the summary (narrow enough for 80 columns), the paper column, randomized
    lifts, steps to ``train.stop_at`` and differences to the baseline; then failed runs."""
    tables = []
    for task in report.tables:
        tables.append(compact_summary_table(report, task))
        for build in (paper_table, lift_table, stop_table, difference_table):
            tables.append(build(report, task))
    tables.append(failures_table(report))
    return [terminal(t) for t in tables if t is not None]
