"""Rich console output of a run: a progress bar while it trains, a table when it ends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Reporter:
    """Silent base: the run calls these hooks; subclasses show something."""

    def start(self, title: str, total_steps: int, done_steps: int) -> None: ...
    def step(self, step: int, loss: float, steps_per_sec: float) -> None: ...
    def message(self, text: str) -> None: ...
    def eval_start(self, n_lengths: int) -> None: ...
    def eval_length(self, n: int, scores: Mapping[str, Any]) -> None: ...
    def finish(self, metrics: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._train = self._eval = None

    def start(self, title: str, total_steps: int, done_steps: int) -> None:
        self.console.rule(title)
        self.progress.start()
        self._train = self.progress.add_task(
            "train", total=total_steps, completed=done_steps, info=""
        )

    def step(self, step: int, loss: float, steps_per_sec: float) -> None:
        self.progress.update(
            self._train, completed=step, info=f"loss {loss:.4f} · {steps_per_sec:.1f} steps/s"
        )

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def eval_start(self, n_lengths: int) -> None:
        self._eval = self.progress.add_task("evaluate", total=n_lengths, info="")

    def eval_length(self, n: int, scores: Mapping[str, Any]) -> None:
        self.progress.update(self._eval, advance=1, info=f"n={n} exact {scores['exact_match']:.2f}")

    def close(self) -> None:
        self.progress.stop()

    def finish(self, metrics: Mapping[str, Any]) -> None:
        self.close()
        self.console.print(results_table(metrics))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def results_table(metrics: Mapping[str, Any], max_rows: int = 24) -> Table:
    """Accuracy per length (every length up to ``max_rows``, else an even sample) and the summary."""
    per_length = {int(n): v for n, v in metrics["per_length"].items()}
    lo, hi = metrics["train_range"]
    lengths = sorted(per_length)
    if len(lengths) > max_rows:
        stride = -(-len(lengths) // max_rows)
        keep = set(lengths[::stride]) | {lo, hi, lengths[-1]}
        lengths = [n for n in lengths if n in keep]
    s = metrics["summary"]
    table = Table(
        title=f"{metrics['task']} · {metrics['encoding']} · seed {metrics['seed']}",
        caption=(
            f"in-distribution exact match {_fmt(s['id_exact_match'])} "
            f"(min {_fmt(s.get('min_id_exact_match'))}) · "
            f"beyond training {_fmt(s['ood_exact_match'])} · "
            + (
                "did not fit the training range (no extrapolation horizon)"
                if s.get("fits_training_range") is False
                else f"extrapolation horizon {_fmt(s['extrapolation_horizon'])}"
            )
        ),
    )
    table.add_column("length", justify="right")
    table.add_column("range")
    table.add_column("exact match", justify="right")
    table.add_column("token accuracy", justify="right")
    table.add_column("samples", justify="right")
    for n in lengths:
        v = per_length[n]
        inside = lo <= n <= hi
        em = v["exact_match"]
        colour = "green" if em >= 0.9 else "yellow" if em >= 0.5 else "red"
        table.add_row(
            str(n),
            "train" if inside else ("beyond" if n > hi else "below"),
            f"[{colour}]{em:.3f}[/]",
            f"{v['token_accuracy']:.3f}",
            str(v["n_samples"]),
        )
    return table
