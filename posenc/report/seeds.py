"""Enough seeds: whether each adjacent pair of a ranking is resolved by the paired bootstrap,
and how many seeds ``posenc compare --seeds auto`` runs next.

The protocol asks for seeds enough to separate neighbours in the ranking, or the report
names the pairs left unresolved; Zhou et al. 2024 ("Transformers Can Achieve Length Generalization
But Not Robustly") show why: the spread over seeds is large and is itself a finding. Pure
functions of run records, without torch, so the decision is tested on hand-made results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from posenc.report.protocol import fits
from posenc.report.records import RunRecord, tasks_of
from posenc.report.stats import Difference, paired_difference
from posenc.report.summary import SummaryRow, summary_rows

AUTO_START = 5  # --seeds auto starts at the protocol's minimum (posenc.report.protocol.MIN_SEEDS)
AUTO_STEP = 1  # seeds added per round: one, so the cap is not overshot by more than needed
MIN_PAIRED = 2  # paired seeds a pair needs before it can count as resolved


@dataclass
class Pair:
    """Two neighbours of a task's ranking (``upper`` ranked above ``lower``) and the paired
    bootstrap of ``upper`` minus ``lower`` over the seeds where both runs fit."""

    task: str
    upper: str
    lower: str
    difference: Difference | None  # None: no seed where both fit

    @property
    def resolved(self) -> bool:
        """The 95% interval excludes zero, over at least two paired seeds (one seed leaves
        only the evaluation examples to resample: no spread over seeds to speak of)."""
        d = self.difference
        if d is None or d.low is None or d.high is None or len(d.seeds) < MIN_PAIRED:
            return False
        return d.low > 0 or d.high < 0

    @property
    def tied(self) -> bool:
        """The same outcome on every paired example of every paired seed (the interval is
        [0, 0]): an order no number of seeds drawn alike would establish, so not one to chase."""
        d = self.difference
        return (
            d is not None
            and len(d.seeds) >= MIN_PAIRED
            and d.low == 0
            and d.high == 0
            and d.resampled == "seeds × examples"
        )

    def text(self) -> str:
        """``alibi vs none (+0.243 [−0.012, +0.509], 5 seeds)``."""
        d = self.difference
        if d is None or d.mean is None or d.low is None:
            return f"{self.upper} vs {self.lower} (no seed where both fit)"
        seeds = f"{len(d.seeds)} seed{'s' * (len(d.seeds) != 1)}"
        return (
            f"{self.upper} vs {self.lower} ({d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}], {seeds})"
        )


def adjacent_pairs(records: Iterable[RunRecord], task: str, rows: list[SummaryRow]) -> list[Pair]:
    """Each pair of neighbours among the ranked rows of ``task`` (`SummaryRow.ranked`: some
    run fits), in ranking order, with its paired bootstrap over the runs that fit."""
    runs: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.task == task and r.status == "complete" and fits(r):
            runs.setdefault(r.encoding, []).append(r)
    ranked = [row.encoding for row in rows if row.ranked]
    return [
        Pair(task, upper, lower, paired_difference(runs[upper], runs[lower]))
        for upper, lower in zip(ranked, ranked[1:], strict=False)
    ]


def unresolved_pairs(records: list[RunRecord]) -> list[Pair]:
    """The adjacent pairs of every task's ranking that the paired bootstrap leaves unresolved
    (tied pairs apart: more seeds are not what they need)."""
    out = []
    for task in tasks_of(records):
        pairs = adjacent_pairs(records, task, summary_rows(records, task))
        out += [p for p in pairs if not p.resolved and not p.tied]
    return out


def next_seed_count(
    records: list[RunRecord], seeds: int, cap: int, step: int = AUTO_STEP
) -> int | None:
    """How many seeds ``--seeds auto`` runs next, after ``seeds`` seeds gave ``records``:
    None (stop) when every adjacent pair of every task is resolved or ``seeds`` reached
    ``cap``, else ``seeds + step`` (at most ``cap``)."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if seeds >= cap or not unresolved_pairs(records):
        return None
    return min(seeds + step, cap)


def start_seeds(seeds: str, max_seeds: int) -> int:
    """The seed count ``--seeds`` starts with: N, or for ``auto`` `AUTO_START` (at most
    ``max_seeds``); a `ConfigError` for anything else."""
    from posenc.errors import ConfigError

    if seeds == "auto":
        if max_seeds < 2:
            raise ConfigError(f"--max-seeds must be >= 2 for --seeds auto, got {max_seeds}")
        return min(AUTO_START, max_seeds)
    try:
        count = int(seeds)
    except ValueError:
        raise ConfigError(f"--seeds takes a count or auto, got {seeds!r}") from None
    if count < 1:
        raise ConfigError(f"--seeds must be >= 1, got {count}")
    return count


def auto_step(records: list[RunRecord], seeds: int, cap: int) -> tuple[int | None, str]:
    """One round of ``--seeds auto`` after ``seeds`` seeds gave ``records``: the seed count
    to run next (None: stop, `next_seed_count`) and the sentence that says why."""
    open_ = unresolved_pairs(records)
    names = "; ".join(f"{p.task}: {p.text()}" for p in open_)
    more = next_seed_count(records, seeds, cap)
    if more is not None:
        return more, (
            f"--seeds auto: {len(open_)} adjacent pairs unresolved at {seeds} seeds ({names}); "
            f"running {more} seeds"
        )
    if open_:
        return (
            None,
            f"--seeds auto: stopped at the cap of {cap} seeds (--max-seeds); unresolved: {names}",
        )
    ranked = [sum(row.ranked for row in summary_rows(records, t)) for t in tasks_of(records)]
    if max(ranked, default=0) < 2:
        return None, (
            f"--seeds auto: no pair to resolve at {seeds} seeds (fewer than two encodings "
            "of a task have a run that fits its training range)"
        )
    return None, f"--seeds auto: no adjacent pair left unresolved at {seeds} seeds"
