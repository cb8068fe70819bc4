"""Statistics over seeds: the mean with its Student-t interval, and the paired bootstrap of
one encoding against a baseline, computed exactly so a table is the same on every machine.

Seeds are summarised both ways the literature does (Kazemnejad et al. 2023 report the mean
of 3 seeds, Delétang et al. 2023 and Ruoss et al. 2023 the best of 10): mean ± the 95%
Student-t confidence half-width here, and the best seed (`posenc.report.summary`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from posenc.errors import ConfigError
from posenc.report.protocol import fits, ood_lengths
from posenc.report.records import RunRecord


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None for one value)."""
    from scipy import stats

    if not values:
        raise ValueError("mean_ci needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)


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
class Difference:
    """OOD exact match of ``encoding`` minus the baseline's, with a 95% bootstrap interval."""

    encoding: str
    baseline: str
    seeds: list[int]  # the seeds both have: the pairs
    mean: float | None
    low: float | None
    high: float | None
    resampled: str  # "seeds × examples", or "seeds" when a run lacks per-example results


BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0


def _ood_examples(record: RunRecord) -> dict[int, Any] | None:
    """{OOD length: 0/1 array per evaluation example}, or None without per-example results.
    The OOD lengths are those the run's OOD exact match averages (`ood_lengths`)."""
    import numpy as np

    per_length = {int(n): scores for n, scores in record.metrics["per_length"].items()}
    out = {}
    for n in ood_lengths(record.metrics):
        text = per_length[n].get("examples")
        if not isinstance(text, str) or not text:
            return None
        out[int(n)] = np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")
    return out


def paired_difference(
    runs: Sequence[RunRecord],
    base_runs: Sequence[RunRecord],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> Difference | None:
    """Paired bootstrap of the difference in OOD exact match (``runs`` minus ``base_runs``).

    Runs pair by seed (same seed: same training-data stream) and examples by their place
    in the frozen evaluation set (the same examples for every encoding). Each bootstrap
    replicate draws the paired seeds with replacement and, independently at every OOD
    length, the evaluation examples with replacement (the same draw for both encodings),
    and averages the per-example differences over examples, lengths and the drawn seeds,
    as the OOD exact match itself is averaged. The interval is the percentile interval of
    ``samples`` replicates from a generator seeded with ``seed``, drawn as integers and
    computed in exact arithmetic: the same text on every machine, thread count and BLAS. When a
    run has no per-example results (``per_length[n]["examples"]``, older metrics.json),
    only seeds are resampled, from each seed's OOD exact match.
    """
    import numpy as np

    mine = {r.seed: r for r in runs if r.status == "complete" and r.metrics}
    theirs = {r.seed: r for r in base_runs if r.status == "complete" and r.metrics}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    name, base = mine[seeds[0]].encoding, theirs[seeds[0]].encoding
    ood = [
        (
            mine[s].metrics["summary"]["ood_exact_match"],
            theirs[s].metrics["summary"]["ood_exact_match"],
        )
        for s in seeds
    ]
    if any(a is None or b is None for a, b in ood):
        return Difference(name, base, seeds, None, None, None, "none: no OOD lengths")
    per_seed = [a - b for a, b in ood]  # (k,)
    rng = np.random.default_rng(seed)
    k = len(seeds)
    seed_counts = _resample_counts(rng, samples, k)  # (samples, k) int
    examples = [(_ood_examples(mine[s]), _ood_examples(theirs[s])) for s in seeds]
    lengths = sorted(examples[0][0] or {})
    usable = all(
        a is not None and b is not None and sorted(a) == lengths == sorted(b)
        and all(len(a[n]) == len(b[n]) == len(examples[0][0][n]) for n in lengths)
        for a, b in examples
    )  # fmt: skip
    if usable and lengths:
        # Integer counts throughout: replicate = Σ_n Σ_s c_s·Σ_e w_ne·d_sne / (k·N_n·L), each
        # length's sum scaled to the common denominator k·lcm(N)·L. Exact, so the interval
        # is the same on every machine, whatever BLAS or summation order it has.
        sizes = {n: len(examples[0][0][n]) for n in lengths}
        common = math.lcm(*sizes.values())
        total = np.zeros(samples, dtype=np.int64)
        for n in lengths:
            diff = np.stack([a[n].astype(np.int64) - b[n] for a, b in examples])  # (k, N)
            weights = _resample_counts(rng, samples, sizes[n])  # (S, N) int
            per_seed_n = np.einsum("kn,sn->sk", diff, weights)  # (S, k) int: exact
            total += (seed_counts * per_seed_n).sum(axis=1) * (common // sizes[n])
        # One denominator for every replicate: order the integer numerators (what sorting
        # the fractions would give, without comparing 4,000 fractions) and divide after.
        denominator = k * common * len(lengths)
        ordered: list = sorted(int(t) for t in total)
        resampled = "seeds × examples"
    else:  # per-seed figures are floats: exact rationals of them, summed exactly
        exact = [Fraction(v) for v in per_seed]
        ordered = sorted(
            sum((int(c) * v for c, v in zip(row, exact, strict=True)), Fraction(0)) / k
            for row in seed_counts
        )
        denominator = 1
        resampled = "seeds"
    alpha = (1 - Fraction(str(confidence))) / 2
    low, high = (Fraction(_quantile(ordered, q)) / denominator for q in (alpha, 1 - alpha))
    mean = float(sum((Fraction(v) for v in per_seed), Fraction(0)) / k)
    return Difference(name, base, seeds, mean, float(low), float(high), resampled)


def _resample_counts(rng, samples: int, size: int):
    """(samples, size) int64: how often each of ``size`` items is drawn in each of ``samples``
    draws of ``size`` with replacement. Integer draws only (no floating point), so the stream
    is the same on every machine."""
    import numpy as np

    draws = rng.integers(0, size, size=(samples, size))
    flat = (draws + np.arange(samples)[:, None] * size).ravel()
    return np.bincount(flat, minlength=samples * size).reshape(samples, size)


def _quantile(ordered: Sequence[Fraction | int], q: Fraction) -> Fraction | int:
    """The q-quantile of sorted values, linear interpolation between order statistics (numpy's
    default method), in exact arithmetic."""
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    if lo + 1 >= len(ordered):
        return ordered[-1]
    return ordered[lo] + (h - lo) * (ordered[lo + 1] - ordered[lo])


def baseline_differences(records: list[RunRecord], task: str, baseline: str) -> list[Difference]:
    """`paired_difference` of every other encoding of ``task`` against ``baseline``, over the
    runs that fit their training range (a seed pairs only where both runs fit)."""
    by_encoding: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.task == task and r.status == "complete" and fits(r):
            by_encoding.setdefault(r.encoding, []).append(r)
    if baseline not in by_encoding:
        return []
    out: list[Difference] = []
    for encoding, runs in sorted(by_encoding.items()):
        if encoding != baseline:
            d = paired_difference(runs, by_encoding[baseline])
            if d is not None:
                out.append(d)
    out.sort(key=lambda d: (d.mean is None, -(d.mean or 0.0), d.encoding))
    return out


def check_baseline(records: Iterable[RunRecord], baseline: str) -> None:
    """Raise a `ConfigError` unless some complete run has encoding ``baseline``."""
    names = sorted({r.encoding for r in records if r.status == "complete"})
    if baseline not in names:
        raise ConfigError(
            f"baseline {baseline!r} is not an encoding of this experiment; valid choices: "
            + ", ".join(names)
        )
