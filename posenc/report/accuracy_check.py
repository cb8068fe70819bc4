"""The accuracy check a speed option must pass before it may become a default
(``benchmarks/compile_accuracy.sh``: ``train.compile``, ``train.fused_adamw``,
``train.precision=bf16``): a *candidate* comparison (the option on) against a *reference*
one (the option off), the same encodings and recipe, several seeds each.

Every cell is one encoding and one of ID or OOD exact match; each seed contributes its mean
over the cell's lengths (from the experiments' ``results.csv``). Two rules are computed:

- **The range rule** (set before the first check was run, 2026-12-06): in every cell the
  candidate's mean over seeds lies within the reference seeds' [min, max] and the reference
  mean within the candidate seeds' range, and every candidate seed has ID >= 0.99 in a cell
  where every reference seed has. It degenerates where a side's seeds agree exactly (every
  seed at 1.000 ID, or 0 OOD: a zero-width range that any other mean falls outside), and a
  seed a hair under 0.99 fails it alone. It is printed, and no longer decides.
- **The stratified rank test** (van Elteren 1960), which decides. Within each encoding the
  two sides' seed values are ranked together (ties share their mid-rank); the statistic sums
  over encodings the candidate's rank sum minus its expectation, weighted by 1 / (N + 1) for
  N seeds in that encoding. Under the null hypothesis that the option changes nothing but
  the rounding, candidate and reference seeds of an encoding are exchangeable, so the
  statistic's distribution is that of every relabelling within each encoding; it is
  enumerated exactly (the product of C(N, n) per encoding, convolved), and the two-sided
  p-value is an exact fraction: the same on every machine. It pools the encodings, so it
  detects a shift that runs the same way across them (the option costing accuracy) with the
  few seeds a check can afford; ties (zero-width ranges) carry no weight instead of failing.
  One encoding alone cannot be judged with 3 against 5 seeds: its exact two-sided p is at
  least 2/56 even when every candidate seed is below every reference seed. A candidate and a
  reference run of one seed share their initialisation and data order; where the option
  changes little they agree more than two seeds do, which makes the test conservative (it
  rejects less often than its level under the null), never the reverse.

The check **passes** when every candidate run fits its training range (its recorded
``fits_training_range``, on validation under the protocol) in every encoding where every
reference run does, and the rank test rejects for neither ID nor OOD at level 0.05 with
Holm's correction over the two (the smaller p-value against 0.025, the larger against 0.05).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations
from pathlib import Path
from typing import Any

from posenc.errors import ConfigError

ALPHA = Fraction(1, 20)
SIDES = ("ID", "OOD")  # the cells of an encoding: in and out of the training range


@dataclass
class Cells:
    """Per encoding (``task/encoding``): each seed's mean exact match in and out of the
    training range, and whether the run fits."""

    values: dict[str, dict[str, dict[int, float]]]
    fits: dict[str, dict[int, bool]]


def cells_from_rows(rows: Iterable[Mapping[str, Any]]) -> Cells:
    """`Cells` from an experiment's result rows (`posenc.report.results_rows`, or its
    ``results.csv`` read back as text: one row per run and length)."""
    lengths: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    fits: dict[str, dict[int, bool]] = defaultdict(dict)
    for r in rows:
        key, seed = f"{r['task']}/{r['encoding']}", int(r["seed"])
        where = "ID" if str(r["in_train_range"]) == "True" else "OOD"
        lengths[(key, seed, where)].append(float(r["exact_match"]))
        fits[key][seed] = str(r["fits_training_range"]) == "True"
    values: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for (key, seed, where), v in sorted(lengths.items()):
        values[key][where][seed] = statistics.fmean(v)
    return Cells({k: dict(v) for k, v in values.items()}, dict(fits))


def read_cells(results_csv: str | Path) -> Cells:
    """`Cells` from an experiment's ``results.csv``."""
    with open(results_csv, newline="") as f:
        return cells_from_rows(csv.DictReader(f))


def experiment_cells(folder: str | Path) -> Cells:
    """`Cells` from an experiment folder's runs themselves (its metrics.json files, as the
    report reads them), so a table drawn from them follows the runs, not a results.csv."""
    from posenc.report import load_experiment, results_rows

    return cells_from_rows(results_rows(load_experiment(folder)))


def range_rule(reference: Sequence[float], candidate: Sequence[float], where: str) -> bool:
    """The range rule of one cell (module docstring)."""
    ok = min(reference) <= statistics.fmean(candidate) <= max(reference)
    ok = ok and min(candidate) <= statistics.fmean(reference) <= max(candidate)
    if where == "ID" and min(reference) >= 0.99 and min(candidate) < 0.99:
        ok = False
    return ok


def midranks(values: Sequence[float]) -> list[Fraction]:
    """1-based ranks of ``values``, ties sharing the mean of the ranks they span (scipy's
    ``rankdata``; half-integers, so exact as fractions)."""
    from scipy.stats import rankdata

    return [Fraction(float(r)) for r in rankdata(values, method="average")]


@dataclass
class RankTest:
    """The stratified rank test's statistic (> 0: the candidate ranks higher, i.e. is more
    accurate) and its exact two-sided p-value."""

    statistic: Fraction
    p: Fraction
    strata: int  # encodings that carry information (not every value tied)


def _stratum(reference: Sequence[float], candidate: Sequence[float]):
    """(observed term, {term: relabellings giving it}) of one encoding."""
    pooled = [*candidate, *reference]
    n, size = len(candidate), len(pooled)
    ranks = midranks(pooled)
    weight = Fraction(1, size + 1)
    expected = Fraction(n * (size + 1), 2)
    observed = (sum(ranks[:n]) - expected) * weight
    counts: dict[Fraction, int] = defaultdict(int)
    for chosen in combinations(range(size), n):
        counts[(sum(ranks[i] for i in chosen) - expected) * weight] += 1
    return observed, counts


def stratified_rank_test(strata: Sequence[tuple[Sequence[float], Sequence[float]]]) -> RankTest:
    """van Elteren's test over ``strata`` of (reference values, candidate values), its null
    distribution enumerated exactly (module docstring)."""
    total = Fraction(0)
    distribution: dict[Fraction, int] = {Fraction(0): 1}
    informative = 0
    for reference, candidate in strata:
        if not reference or not candidate:
            raise ValueError("every stratum needs values on both sides")
        observed, counts = _stratum(reference, candidate)
        total += observed
        if len(counts) == 1:  # every relabelling alike: every value tied
            continue
        informative += 1
        merged: dict[Fraction, int] = defaultdict(int)
        for a, ca in distribution.items():
            for b, cb in counts.items():
                merged[a + b] += ca * cb
        distribution = merged
    relabellings = sum(distribution.values())
    extreme = sum(c for t, c in distribution.items() if abs(t) >= abs(total))
    return RankTest(total, Fraction(extreme, relabellings), informative)


def holm_rejects(p_values: Sequence[Fraction], alpha: Fraction = ALPHA) -> list[bool]:
    """Holm's step-down procedure at family-wise level ``alpha``: which hypotheses it rejects."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for step, i in enumerate(order):
        if p_values[i] >= alpha / (len(p_values) - step):
            break
        rejected[i] = True
    return rejected


@dataclass
class Cell:
    """One encoding's ID or OOD exact match: each side's seed values and the range rule."""

    key: str
    where: str
    reference: list[float]
    candidate: list[float]
    range_ok: bool


@dataclass
class Verdict:
    passed: bool
    cells: list[Cell]
    tests: dict[str, RankTest]
    rejected: dict[str, bool]
    problems: list[str]

    def range_failures(self) -> list[str]:
        return [f"{c.key} {c.where}" for c in self.cells if not c.range_ok]

    def test_line(self, metric: str) -> str:
        t = self.tests[metric]
        side = "candidate higher" if t.statistic > 0 else "candidate lower"
        side = side if t.statistic else "no shift"
        verdict = "rejects (Holm, 0.05)" if self.rejected[metric] else "no shift found"
        return (
            f"stratified rank test, {metric}: statistic {float(t.statistic):+.3f} ({side}), "
            f"exact p = {float(t.p):.4f} over {t.strata} informative encoding(s): {verdict}"
        )

    def outcome(self) -> str:
        return "PASS" if self.passed else f"FAIL: {'; '.join(self.problems)}"

    def lines(self, label: str = "") -> list[str]:
        """The verdict for a terminal."""
        out = [f"candidate: {label}"] if label else []
        for c in self.cells:
            e, k = c.reference, c.candidate
            out.append(
                f"{c.key:>24} {c.where:>3}: reference {_spread(e)}  candidate {_spread(k)}"
                f"  range rule {'ok' if c.range_ok else 'outside'}"
            )
        failures = self.range_failures()
        out.append(
            "range rule (descriptive): "
            + (f"outside in {', '.join(failures)}" if failures else "every cell within")
        )
        return [*out, *(self.test_line(m) for m in self.tests), self.outcome()]

    def markdown(self) -> list[str]:
        """The verdict as a markdown table and its lines (`posenc tables`)."""
        out = [
            "| encoding | | reference seeds: mean [min, max] | candidate seeds | range rule |",
            "|---|---|---|---|---|",
        ]
        for c in self.cells:
            n_e, n_c = len(c.reference), len(c.candidate)
            out.append(
                f"| {c.key} | {c.where} | {_spread(c.reference)} ({n_e}) | "
                f"{_spread(c.candidate)} ({n_c}) | {'within' if c.range_ok else 'outside'} |"
            )
        out += ["", *(f"- {self.test_line(m)}" for m in self.tests)]
        return [*out, f"- verdict: {self.outcome()}", ""]


def _spread(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def only_seeds(cells: Cells, seeds: Sequence[int]) -> Cells:
    """``cells`` restricted to ``seeds`` (a check judged on seeds made after its rule)."""
    keep = set(seeds)
    values = {
        key: {
            where: {s: v for s, v in by_seed.items() if s in keep}
            for where, by_seed in cell.items()
        }
        for key, cell in cells.values.items()
    }
    fits = {
        key: {s: ok for s, ok in by_seed.items() if s in keep}
        for key, by_seed in cells.fits.items()
    }
    return Cells(values, fits)


def only_encodings(cells: Cells, encodings: Sequence[str]) -> Cells:
    """``cells`` restricted to these encodings (``rope`` or ``copy/rope``)."""
    keep = set(encodings)

    def kept(key: str) -> bool:
        return key in keep or key.split("/", 1)[-1] in keep

    return Cells(
        {k: v for k, v in cells.values.items() if kept(k)},
        {k: v for k, v in cells.fits.items() if kept(k)},
    )


def judge(reference: Cells, candidate: Cells) -> Verdict:
    """Both rules over every encoding of ``reference`` (module docstring)."""
    problems: list[str] = []
    cells: list[Cell] = []
    strata: dict[str, list[tuple[list[float], list[float]]]] = {m: [] for m in SIDES}
    for key in sorted(reference.values):
        ref_fits, cand_fits = reference.fits[key], candidate.fits.get(key, {})
        if not cand_fits:
            problems.append(f"{key}: no candidate runs")
            continue
        if all(ref_fits.values()) and not all(cand_fits.values()):
            unfit = sorted(s for s, ok in cand_fits.items() if not ok)
            problems.append(
                f"{key}: candidate seed(s) {unfit} do not fit where every reference seed fits"
            )
        for where in SIDES:
            e = list(reference.values[key].get(where, {}).values())
            c = list(candidate.values[key].get(where, {}).values())
            if e and c:
                cells.append(Cell(key, where, e, c, range_rule(e, c, where)))
                strata[where].append((e, c))
    tests = {m: stratified_rank_test(strata[m]) for m in SIDES if strata[m]}
    rejected = dict(zip(tests, holm_rejects([t.p for t in tests.values()]), strict=True))
    for m, t in tests.items():
        if rejected[m]:
            side = "higher" if t.statistic > 0 else "lower"
            problems.append(f"{m}: the candidate's seeds rank {side} (p = {float(t.p):.4f})")
    return Verdict(not problems, cells, tests, rejected, problems)


def parse_seeds(text: str) -> list[int]:
    """``3,4`` -> [3, 4]; a one-line ValueError naming the bad value."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"seeds {text!r}: expected integers such as 3,4") from None


@dataclass
class CheckBlock:
    """``check CANDIDATE --reference REFERENCE [--seeds 3,4] [--encodings rope,t5]``: the
    accuracy check of a candidate experiment against a reference one
    (`posenc.report.accuracy_check`)."""

    folder: Path
    reference: Path
    seeds: tuple[int, ...] = ()
    encodings: tuple[str, ...] = ()


def check_block_options(args: str, words: list[str]) -> CheckBlock:
    """The options of a ``check`` block; one-line errors."""
    usage = "'<!-- posenc check CANDIDATE --reference REFERENCE [--seeds 3,4] [--encodings rope,t5] -->'"
    if len(words) < 2:
        raise ConfigError(f"a check block reads {usage}, got '<!-- posenc {args} -->'")
    folder, rest = Path(words[1]), words[2:]
    reference, seeds, encodings = None, (), ()
    while rest:
        option = rest.pop(0)
        if option not in ("--reference", "--seeds", "--encodings") or not rest:
            raise ConfigError(
                f"unknown or incomplete check option {option!r} in '<!-- posenc {args} -->'; "
                "valid: --reference FOLDER, --seeds 3,4, --encodings rope,t5"
            )
        value = rest.pop(0)
        if option == "--reference":
            reference = Path(value)
        elif option == "--encodings":
            encodings = tuple(e for e in value.split(",") if e)
        else:
            try:
                seeds = tuple(parse_seeds(value))
            except ValueError as e:
                raise ConfigError(f"--seeds in '<!-- posenc {args} -->': {e}") from None
    if reference is None:
        raise ConfigError(f"a check block needs --reference: {usage}, got '<!-- posenc {args} -->'")
    return CheckBlock(folder, reference, seeds, encodings)


def render_check(base: Path, block: CheckBlock) -> str:
    """The accuracy check of ``block``'s candidate against its reference, drawn from the two
    experiments' runs: the per-encoding table, the rank tests and the verdict."""
    sides = []
    for folder in (base / block.reference, base / block.folder):
        if not folder.is_dir():
            raise ConfigError(
                f"the experiment folder {folder} of a posenc check block does not exist"
            )
        sides.append(experiment_cells(folder))
    reference, candidate = sides
    if block.encodings:
        reference = only_encodings(reference, block.encodings)
        candidate = only_encodings(candidate, block.encodings)
        if not reference.values:
            raise ConfigError(
                f"--encodings {','.join(block.encodings)}: none of them in {base / block.reference}"
            )
    if block.seeds:
        candidate = only_seeds(candidate, block.seeds)
    if not any(candidate.fits.values()):
        raise ConfigError(
            f"no finished candidate runs under {base / block.folder} for its check block"
        )
    return "\n".join(judge(reference, candidate).markdown()).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="the reference experiment's folder (its results.csv)")
    parser.add_argument("candidate", help="the candidate experiment's folder")
    parser.add_argument("--label", default="", help="what the candidate changes (printed)")
    parser.add_argument(
        "--candidate-seeds",
        default="",
        help="comma-separated: judge only these candidate seeds (e.g. those run after the rule was fixed)",
    )
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.candidate_seeds)
    except ValueError as e:
        print(f"error: --candidate-seeds: {e}", file=sys.stderr)
        return 2
    found = []
    for folder in (args.reference, args.candidate):
        path = Path(folder) / "results.csv"
        if not path.is_file():
            print(
                f"error: no results.csv in {folder} (run or report that experiment first)",
                file=sys.stderr,
            )
            return 2
        found.append(read_cells(path))
    if seeds:
        found[1] = only_seeds(found[1], seeds)
        if not any(found[1].fits.values()):
            print(
                f"error: --candidate-seeds {args.candidate_seeds}: no such seed in {args.candidate}",
                file=sys.stderr,
            )
            return 2
    verdict = judge(*found)
    print("\n".join(verdict.lines(args.label)))
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
