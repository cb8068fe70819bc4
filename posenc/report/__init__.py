"""Aggregate an experiment folder: tidy results, per-task summary tables, plots, report.md.

The package's parts, each with one job:

- `protocol`: the lengths a run is judged on and whether it fits under the protocol;
- `records`: run folders read into `RunRecord`s, and the tidy per-length results.csv;
- `stats`: the mean over seeds with its interval, and the exact paired bootstrap;
- `summary`: per-encoding rows of a task, fit first (metrics over seeds, robustness, best
  seed, steps to a target or to fit);
- `seeds`: adjacent pairs of a ranking, resolved or not, and ``--seeds auto``'s next count;
- `header`: the protocol above every table, its departures and the positive control;
- `published`: a preset's paper figures and randomized-position lifts beside ours;
- `sections`: every section built once as a neutral `table.Table`;
- `table`: that table and its two renderers, markdown and the terminal;
- `markdown` / `terminal`: report.md and the terminal's tables, from the sections;
- `plots`: accuracy against length and the OOD heatmap;
- `build`: the `Report` in memory and on disk.

Everything a caller needs is importable from ``posenc.report`` itself.
"""

from posenc.report.build import Report, build_report, report_experiment, write_report
from posenc.report.header import Header, task_header
from posenc.report.markdown import render_markdown, task_section_lines
from posenc.report.plots import accuracy_plot, accuracy_plot_name, heatmap_plot
from posenc.report.protocol import MIN_SEEDS, fits, generalizes, load_controls, run_summary
from posenc.report.published import (
    Lift,
    PaperComparison,
    aggregate,
    check_paper_block,
    compare_with_paper,
    paper_block,
    randomized_lifts,
)
from posenc.report.records import (
    CSV_COLUMNS,
    RunRecord,
    load_experiment,
    read_run,
    record_from_metrics,
    results_csv,
    results_rows,
    tasks_of,
    train_ranges,
)
from posenc.report.seeds import Pair, adjacent_pairs, next_seed_count, unresolved_pairs
from posenc.report.stats import (
    BOOTSTRAP_SAMPLES,
    BOOTSTRAP_SEED,
    Difference,
    Stat,
    baseline_differences,
    check_baseline,
    mean_ci,
    paired_difference,
)
from posenc.report.summary import (
    METRIC_NAMES,
    NOT_FIT,
    STOP_HEADER,
    TABLE_HEADER,
    StopRow,
    SummaryRow,
    fit_step_rows,
    format_stat,
    horizon_text,
    stop_cells,
    stop_rows,
    summary_rows,
    table_cells,
)
from posenc.report.terminal import rich_tables

__all__ = [
    "MIN_SEEDS",
    "Header",
    "Pair",
    "adjacent_pairs",
    "fit_step_rows",
    "fits",
    "generalizes",
    "load_controls",
    "next_seed_count",
    "run_summary",
    "task_header",
    "unresolved_pairs",
    "BOOTSTRAP_SAMPLES",
    "BOOTSTRAP_SEED",
    "CSV_COLUMNS",
    "METRIC_NAMES",
    "NOT_FIT",
    "STOP_HEADER",
    "TABLE_HEADER",
    "Difference",
    "Lift",
    "PaperComparison",
    "Report",
    "RunRecord",
    "Stat",
    "StopRow",
    "SummaryRow",
    "accuracy_plot",
    "accuracy_plot_name",
    "aggregate",
    "baseline_differences",
    "build_report",
    "check_baseline",
    "check_paper_block",
    "compare_with_paper",
    "format_stat",
    "heatmap_plot",
    "horizon_text",
    "load_experiment",
    "mean_ci",
    "paired_difference",
    "paper_block",
    "randomized_lifts",
    "read_run",
    "record_from_metrics",
    "render_markdown",
    "report_experiment",
    "results_csv",
    "results_rows",
    "rich_tables",
    "stop_cells",
    "stop_rows",
    "summary_rows",
    "table_cells",
    "task_section_lines",
    "tasks_of",
    "train_ranges",
    "write_report",
]
