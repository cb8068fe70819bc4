"""The report's plots: accuracy against length per task, and the task × encoding heatmap."""

from __future__ import annotations

import io
from collections.abc import Sequence

from posenc.report.protocol import fits
from posenc.report.records import RunRecord, train_ranges
from posenc.report.stats import Stat
from posenc.runfolder import PLOTS


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


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def accuracy_plot_name(task: str) -> str:
    """The accuracy-versus-length plot of ``task``, relative to the experiment folder."""
    return f"{PLOTS}/accuracy_vs_length_{_slug(task)}.png"


def accuracy_plot(records: Sequence[RunRecord], task: str, order: Sequence[str]) -> bytes:
    """PNG: exact match and token accuracy against length, one line per encoding (mean over
    the seeds that fit their training range) with a min–max band over them; an encoding
    none of whose seeds fit is drawn dashed over all of them, labelled so; the training
    range is shaded."""
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
            fitting = [r for r in runs if fits(r)]
            if not runs:
                continue
            label, style = encoding, "-"
            if fitting:
                runs = fitting
            else:
                label, style = f"{encoding} (did not fit)", "--"
            lengths = sorted({int(n) for r in runs for n in r.metrics["per_length"]})
            curves = [
                [r.metrics["per_length"].get(str(n), {}).get(key) for r in runs] for n in lengths
            ]
            mean = [sum(v for v in c if v is not None) / max(1, len(c)) for c in curves]
            colour = colours(i % colours.N)
            ax.plot(lengths, mean, style, marker=".", ms=3, lw=1.4, color=colour, label=label)
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
    fig.text(
        0.99,
        0.01,
        "line: mean over the seeds that fit · band: min–max over them · dashed: none fit",
        ha="right",
        fontsize=7,
    )
    fig.tight_layout()
    return _png(fig)


def heatmap_plot(records: Sequence[RunRecord], tasks: Sequence[str], encodings: Sequence[str]):
    """PNG: task × encoding heatmap of the mean OOD exact match over the seeds that fit their
    training range (grey, "no fit": none did; "–": no run)."""
    import numpy as np

    plt = _pyplot()
    grid = np.full((len(tasks), len(encodings)), np.nan)
    unfit = set()
    for i, task in enumerate(tasks):
        for j, encoding in enumerate(encodings):
            runs = [r for r in records if r.task == task and r.encoding == encoding and r.metrics]
            stat = Stat.of([r.metrics["summary"].get("ood_exact_match") for r in runs if fits(r)])
            if stat.mean is not None:
                grid[i, j] = stat.mean
            elif runs:
                unfit.add((i, j))
    fig, ax = plt.subplots(
        figsize=(max(4.0, 1.1 * len(encodings) + 2), max(2.2, 0.6 * len(tasks) + 1.6))
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(encodings)), encodings, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(len(tasks)):
        for j in range(len(encodings)):
            text = f"{grid[i, j]:.2f}"
            if np.isnan(grid[i, j]):
                text = "no fit" if (i, j) in unfit else "–"
            light = np.isnan(grid[i, j]) or grid[i, j] > 0.6  # grey cell or bright colour
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="k" if light else "w")
    fig.colorbar(im, ax=ax, label="OOD exact match\n(mean over runs that fit)")
    ax.set_title("exact match beyond the training lengths")
    fig.tight_layout()
    return _png(fig)
