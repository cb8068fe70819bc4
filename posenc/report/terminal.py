"""The report in the terminal: the same sections as report.md, rendered by rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from posenc.report.sections import (
    compact_summary_table,
    difference_table,
    failures_table,
    fit_steps_table,
    lift_table,
    paper_table,
    stop_table,
)
from posenc.report.table import terminal

if TYPE_CHECKING:
    from posenc.report.build import Report


def rich_tables(report: Report) -> list:
    """Per task the protocol, the summary (narrow enough for 80 columns), the runs that did
    not fit, the unresolved pairs, the paper column, randomized lifts, steps to
    ``train.stop_at`` and differences to the baseline; then failed runs."""
    from rich.text import Text

    from posenc.report.header import task_header
    from posenc.report.sections import pairs_note, unfit_note

    out: list = []
    for task in report.tables:
        if (header := task_header(report, task)) is not None:
            out.append(Text(header.plain()))
        out.append(terminal(compact_summary_table(report, task)))
        for note in (unfit_note(report.tables[task]), pairs_note(report, task)):
            if note is not None:
                out.append(Text(note.replace("`", "")))
        for build in (paper_table, lift_table, fit_steps_table, stop_table, difference_table):
            if (table := build(report, task)) is not None:
                out.append(terminal(table))
    if (failures := failures_table(report)) is not None:
        out.append(terminal(failures))
    return out
