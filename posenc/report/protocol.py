"""The comparison protocol as a report reads it: which lengths a run is judged on, whether
it fits its training range, and where a task's positive control is.

A run written under the protocol carries two blocks in ``metrics.json``: ``validation`` (the
fit judged on validation samples, drawn apart from the frozen test sets) and ``protocol``
(the training budget, the test lengths, the choices file). A run without them was made
before the protocol: its fit is judged on the test set's training lengths, as it always was,
and its OOD figures are over every evaluated length past the training range.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posenc.metrics import extrapolation_horizon, summarize
from posenc.runfolder import CONTROL_JSON, CONTROLS

if TYPE_CHECKING:
    from posenc.report.records import RunRecord

MIN_SEEDS = 5  # seeds the protocol asks for (Zhou et al. 2024: the spread is the finding)


def test_range(metrics: Mapping[str, Any]) -> tuple[int, int] | None:
    """The test lengths ``(lo, hi)`` a protocol run reports on (``protocol.test_lengths``, a
    range ``[lo, hi]`` or the lengths themselves); None for an older run."""
    return length_window((metrics.get("protocol") or {}).get("test_lengths"))


def length_window(lengths: Any) -> tuple[int, int] | None:
    """``(min, max)`` of a non-empty list of lengths (a ``[lo, hi]`` range reads the same)."""
    if isinstance(lengths, list | tuple) and lengths and all(isinstance(n, int) for n in lengths):
        return min(lengths), max(lengths)
    return None


def ood_lengths(metrics: Mapping[str, Any]) -> list[int]:
    """The lengths a run's OOD figures average over: its test lengths under the protocol (the
    validation lengths chose settings, so they never enter a reported OOD figure), else every
    evaluated length past the training range."""
    hi = int(metrics["train_range"][1])
    lengths = sorted(int(n) for n in metrics["per_length"] if int(n) > hi)
    window = test_range(metrics)
    if window is None:
        return lengths
    return [n for n in lengths if window[0] <= n <= window[1]]


def _validation(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    block = metrics.get("validation")
    if isinstance(block, dict) and isinstance(block.get("fits_training_range"), bool):
        return block
    return None


def fit_split(metrics: Mapping[str, Any]) -> str:
    """Where a run's fit was judged: ``validation`` (the protocol) or ``test`` (older runs)."""
    return "test" if _validation(metrics) is None else "validation"


def run_summary(metrics: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """A run's summary under the current definitions (`posenc.metrics.summarize`) and the
    protocol: fit judged on validation when the run has it, OOD means over the test lengths
    only, ID figures from validation when the test set has no training length, and the
    horizon over the test lengths alone, as the run records it (`posenc.run.record`): the
    validation lengths chose settings, so they never count, and a run whose first test
    length fails has the training maximum whatever it scored on validation."""
    lo, hi = metrics["train_range"]
    per_length = metrics["per_length"]
    summary: dict[str, Any] = dict(summarize(per_length, lo, hi, threshold))
    ood = ood_lengths(metrics)
    scores = {int(n): v for n, v in per_length.items()}
    if test_range(metrics) is not None:
        summary["ood_exact_match"] = _mean([float(scores[n]["exact_match"]) for n in ood])
        summary["ood_token_accuracy"] = _mean([float(scores[n]["token_accuracy"]) for n in ood])
    summary["fit_on"] = fit_split(metrics)
    validation = _validation(metrics)
    if validation is None:
        return summary
    fits = validation["fits_training_range"]
    checked = {int(n): v for n, v in (validation.get("per_length") or {}).items()}
    if summary["id_exact_match"] is None:
        inside = [float(v["exact_match"]) for n, v in checked.items() if lo <= n <= hi]
        summary["id_exact_match"] = _mean(inside)
        summary["min_id_exact_match"] = validation.get(
            "min_id_exact_match", min(inside) if inside else None
        )
    em = {n: float(scores[n]["exact_match"]) for n in ood}
    summary["fits_training_range"] = fits
    summary["extrapolation_horizon"] = extrapolation_horizon(em, hi, threshold) if fits else None
    return summary


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fits(record: RunRecord) -> bool:
    """Whether a complete run fits its training range (unknown, with no training length
    evaluated, counts as fitting, as the horizon does)."""
    return (
        bool(record.metrics) and record.metrics["summary"].get("fits_training_range") is not False
    )


def generalizes(record: RunRecord) -> bool:
    """Whether a run's horizon passes its training range (the robustness column)."""
    if not record.metrics or not fits(record):
        return False
    horizon = record.metrics["summary"].get("extrapolation_horizon")
    return horizon is not None and horizon > record.metrics["train_range"][1]


def control_paths(exp_dir: str | Path, task: str) -> list[Path]:
    """Where a task's positive control can be, in order: a published experiment's own
    ``controls/<task>/control.json``, then ``<runs_root>/controls/<task>/control.json`` beside
    the experiment folder (what ``posenc check-task`` writes); after each, the task's other
    controls in the same folder (``controls/<task>_*``, e.g. ``state_tracking_s5``), by name."""
    root = Path(exp_dir)
    out = []
    for base in (root / CONTROLS, root.resolve().parent / CONTROLS):
        out.append(base / task / CONTROL_JSON)
        if base.is_dir():
            out += sorted(p / CONTROL_JSON for p in base.glob(f"{task}_*") if p.is_dir())
    return out


def task_differences(control: Mapping[str, Any], records: list[RunRecord]) -> list[str]:
    """The task settings where a control's config differs from what every complete run of
    ``records`` shares, e.g. ``group Z5 (the table: S5)``; [] when none or nothing to
    compare."""
    theirs = (control.get("config") or {}).get("task")
    ours = [(r.config or {}).get("task") for r in records if r.status == "complete"]
    if not isinstance(theirs, dict) or not ours or not all(isinstance(t, dict) for t in ours):
        return []
    parts = []
    for key in sorted(set(theirs) & set(ours[0])):
        values = {repr(t.get(key)) for t in ours}
        if len(values) == 1 and ours[0][key] != theirs[key]:
            parts.append(f"{key} {theirs[key]} (the table: {ours[0][key]})")
    return parts


def find_controls(
    exp_dir: str | Path, tasks: list[str], records: list[RunRecord] | None = None
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """task -> (path, control.json) of the control shown with its table: of the readable
    controls of that task (`control_paths`; a damaged or half-written file counts as no
    control), the one whose task settings differ from the table's runs in the fewest keys
    (`task_differences`), the first in `control_paths` order among equals. So a table of S5
    runs shows S5's control (``state_tracking_s5``) rather than the task's own, Z5's."""
    from posenc.errors import UnreadableFileError
    from posenc.io import read_json

    out = {}
    for task in tasks:
        runs = [r for r in records or [] if r.task == task]
        best: tuple[int, Path, dict[str, Any]] | None = None
        for path in control_paths(exp_dir, task):
            if not path.is_file():
                continue
            try:
                data = read_json(path)
            except UnreadableFileError:
                continue
            if not isinstance(data, dict) or not isinstance(data.get("learned"), bool):
                continue
            if data.get("task", task) != task:
                continue
            score = len(task_differences(data, runs))
            if best is None or score < best[0]:
                best = (score, path, data)
        if best is not None:
            out[task] = (best[1], best[2])
    return out


def load_controls(
    exp_dir: str | Path, tasks: list[str], records: list[RunRecord] | None = None
) -> dict[str, dict[str, Any]]:
    """task -> its control.json (`find_controls`), for the tasks that have a readable one."""
    return {task: data for task, (_, data) in find_controls(exp_dir, tasks, records).items()}
