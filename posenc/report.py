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
from pathlib import Path
from typing import Any

from posenc.errors import UnreadableFileError
from posenc.io import atomic_write_bytes, atomic_write_text, read_json

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
    "ood_exact_match": "OOD exact match",
    "extrapolation_horizon": "extrapolation horizon",
}


# ---------------------------------------------------------------- statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t cumulative distribution function."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of `t_cdf` by bisection (monotone, so 200 halvings reach double precision)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None for one value)."""
    if not values:
        raise ValueError("mean_ci needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)


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


def record_from_metrics(metrics: dict[str, Any], path: str = "") -> RunRecord:
    return RunRecord(
        task=str(metrics["task"]),
        encoding=str(metrics["encoding"]),
        seed=int(metrics["seed"]),
        status="complete",
        path=path,
        metrics=metrics,
    )


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
                records.append(record_from_metrics(read_json(d / METRICS), rel))
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
                )
            )
        else:
            records.append(RunRecord(task, encoding, seed, "unfinished", rel))
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
    best_seed: int | None = None
    best: dict[str, Any] = field(default_factory=dict)
    failed: list[RunRecord] = field(default_factory=list)
    unfinished: int = 0
    train_minutes: Stat = field(default_factory=Stat)


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
        format_stat(row.ood_exact_match, digits),
        format_stat(row.extrapolation_horizon, 1),
        _value(row.best_seed),
        _value(b.get("id_exact_match"), digits),
        _value(b.get("ood_exact_match"), digits),
        _value(b.get("extrapolation_horizon")),
        format_stat(row.train_minutes, 1),
        status_text(row),
    ]


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

    @property
    def counts(self) -> dict[str, int]:
        out = {"complete": 0, "failed": 0, "unfinished": 0}
        for r in self.records:
            out[r.status] += 1
        return out


def build_report(records: list[RunRecord], name: str = "", plots: bool = True) -> Report:
    """Every table and plot of a report, in memory."""
    tasks = tasks_of(records)
    tables = {task: summary_rows(records, task) for task in tasks}
    images: dict[str, bytes] = {}
    complete = [r for r in records if r.status == "complete"]
    if plots and complete:
        for task in tasks:
            order = [row.encoding for row in tables[task] if row.seeds]
            if order:
                images[f"{PLOTS}/accuracy_vs_length_{_slug(task)}.png"] = accuracy_plot(
                    complete, task, order
                )
        encodings = _overall_order(tables)
        images[f"{PLOTS}/ood_heatmap.png"] = heatmap_plot(complete, tasks, encodings)
    return Report(name, records, tables, results_rows(records), images)


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
        "length reaches the exact-match threshold. The *best seed* is the seed with the highest "
        "OOD exact match; its own scores follow it. Rows are sorted by mean OOD exact match.",
        "",
    ]
    for task, rows in report.tables.items():
        ranges = ", ".join(f"{lo}–{hi}" for lo, hi in train_ranges(report.records, task))
        lines += [f"## {task}", ""]
        if ranges:
            lines += [f"Trained on lengths {ranges}.", ""]
        lines.append("| " + " | ".join(TABLE_HEADER) + " |")
        lines.append("|" + "|".join(["---"] + ["--:"] * (len(TABLE_HEADER) - 2) + ["---"]) + "|")
        for row in rows:
            lines.append("| " + " | ".join(_md_escape(c) for c in table_cells(row)) + " |")
        lines.append("")
        plot = f"{PLOTS}/accuracy_vs_length_{_slug(task)}.png"
        if plot in report.plots:
            lines += [f"![accuracy versus length on {task}]({plot})", ""]
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


def report_experiment(exp_dir: str | Path, plots: bool = True) -> tuple[Report, list[Path]]:
    """Load, aggregate and write the report of an experiment folder."""
    records = load_experiment(exp_dir)
    report = build_report(records, Path(exp_dir).resolve().name, plots=plots)
    return report, write_report(report, exp_dir)


def rich_tables(report: Report) -> list:
    """The summary tables (and failed runs) as rich renderables, narrow enough for 80 columns."""
    from rich import box
    from rich.table import Table

    out = []
    for task, rows in report.tables.items():
        ranges = ", ".join(f"{lo}–{hi}" for lo, hi in train_ranges(report.records, task))
        table = Table(
            title=f"[bold]{task}[/]" + (f" · trained on lengths {ranges}" if ranges else ""),
            caption="mean ± 95% CI over seeds · best seed (by OOD): ID / OOD / horizon",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        table.add_column("encoding", no_wrap=True)
        for name in ("seeds", "ID exact", "OOD exact", "horizon", "best seed"):
            table.add_column(name, justify="right")
        for row in rows:
            b = row.best
            best = (
                "–"
                if row.best_seed is None
                else f"{row.best_seed}: {_value(b.get('id_exact_match'), 2)} / "
                f"{_value(b.get('ood_exact_match'), 2)} / {_value(b.get('extrapolation_horizon'))}"
            )
            seeds = str(len(row.seeds))
            if row.failed or row.unfinished:  # "1 of 3": the others failed or are unfinished
                total = len(row.seeds) + len(row.failed) + row.unfinished
                seeds = f"[red]{seeds} of {total}[/]"
            cells = [
                row.encoding,
                seeds,
                format_stat(row.id_exact_match, 2),
                format_stat(row.ood_exact_match, 2),
                format_stat(row.extrapolation_horizon, 1),
                best,
            ]
            table.add_row(*cells)
        out.append(table)
    failed = [r for r in report.records if r.status == "failed"]
    if failed:
        table = Table(title="failed runs", title_style="bold red", box=box.SIMPLE_HEAD)
        table.add_column("run")
        table.add_column("error", overflow="fold")
        for r in failed:
            table.add_row(r.path, r.error or "")
        out.append(table)
    return out
