"""The protocol above every table: what a task's runs were trained and judged
under, which parts of the protocol they depart from, and the task's positive control.

Built from the runs themselves (their config.yaml and the ``protocol`` and ``validation``
blocks of metrics.json), so a published table states the protocol it was made under."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from posenc import schema
from posenc.report.protocol import (
    MIN_SEEDS,
    fit_split,
    fits,
    length_window,
    task_differences,
    test_range,
)
from posenc.report.records import RunRecord, train_ranges

if TYPE_CHECKING:
    from posenc.report.build import Report


@dataclass
class Header:
    """One task's protocol lines: ``protocol`` (what was done), ``departures`` (the parts
    of the protocol it departs from, empty when none), ``control`` (its positive control)."""

    protocol: str
    departures: list[str] = field(default_factory=list)
    control: str = ""

    def lines(self) -> list[str]:
        """The paragraphs, in markdown."""
        out = [f"**Protocol.** {self.protocol}"]
        if self.departures:
            out.append("**Departs from the protocol:** " + "; ".join(self.departures) + ".")
        out.append(self.control)
        return out

    def plain(self) -> str:
        """The same in plain text, for the terminal."""
        return "\n".join(line.replace("**", "").replace("`", "") for line in self.lines())


def _setting(record: RunRecord, section: str, key: str) -> Any:
    """A run's config value; None without a config.yaml (not recorded)."""
    from posenc.runfolder import LEGACY_DEFAULTS

    if record.config is None:
        return None
    part = record.config.get(section) or {}
    if key in part:
        return part[key]
    if (section, key) in LEGACY_DEFAULTS:  # older config.yaml files leave these out
        return LEGACY_DEFAULTS[(section, key)]
    return getattr(schema.SECTIONS[section](), key, None)


def _values(runs: list[RunRecord], get) -> list[Any]:
    """The distinct values of ``get(run)``, most common first (ties: as first seen)."""
    counts = Counter("not recorded" if (v := get(r)) is None else str(v) for r in runs)
    return [value for value, _ in counts.most_common()]


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _budget(runs: list[RunRecord]) -> tuple[str, bool]:
    """The training budget in words, and whether every run trained until fit."""
    blocks = [(r.metrics or {}).get("protocol") or {} for r in runs]
    until = [b for b in blocks if b.get("until_fit")]
    unfit = sum(
        1
        for r, b in zip(runs, blocks, strict=True)
        if b.get("until_fit") and not (b.get("steps_to_fit") and fits(r))
    )
    if until:
        ceilings = sorted({int(b["max_steps"]) for b in until if b.get("max_steps")})
        starts = sorted({int(b["steps"]) for b in until if b.get("steps")})
        used = [int(b["steps_trained"]) for b in until if b.get("steps_trained") is not None]
        text = (
            f"until fit (`train.until_fit`): from {' / '.join(map(_num, starts)) or '?'} steps, "
            f"ceiling {' / '.join(map(_num, ceilings)) or '?'} (`train.max_steps`)"
        )
        if used:
            text += f", steps used {_num(min(used))}–{_num(max(used))}"
        if unfit:  # a run that fit at a check and lost it again trains to the ceiling too
            text += f"; {unfit} of {len(until)} runs reached the ceiling without fitting"
        if len(until) < len(runs):
            text += f" ({len(until)} of {len(runs)} runs; the others a fixed budget)"
        return text, len(until) == len(runs)
    steps = _values(
        runs,
        lambda r: (
            _setting(r, "train", "steps") or ((r.metrics or {}).get("train") or {}).get("steps")
        ),
    )
    shown = " / ".join(f"{int(s):,} steps" if s.isdigit() else s for s in steps)
    return f"fixed, {shown} (`train.steps`)", False


def _fit_rule(runs: list[RunRecord], lo_hi: str) -> str:
    thresholds = _values(runs, lambda r: _setting(r, "eval", "threshold") or schema.Eval.threshold)
    splits = Counter(fit_split(r.metrics or {}) for r in runs)
    where = []
    if splits["validation"]:
        lengths = sorted(
            {
                window
                for r in runs
                if (
                    window := length_window(
                        ((r.metrics or {}).get("validation") or {}).get("lengths")
                    )
                )
            }
        )
        held = ", ".join(f"{a}–{b}" if a != b else f"{a}" for a, b in lengths)
        where.append(
            "on validation samples drawn apart from the test sets"
            + (f" (validation lengths {held})" if held else "")
        )
    if splits["test"]:
        where.append(
            f"on the test set ({splits['test']} run{'s' * (splits['test'] != 1)} made before "
            "the protocol)"
        )
    return (
        f"exact match ≥ {' / '.join(thresholds)} at every training length {lo_hi}, "
        + " and ".join(where)
    )


def _choice_values(values: Any) -> str:
    if isinstance(values, dict):
        parts = []
        for key, value in values.items():
            inner = _choice_values(value)
            parts.append(f"{key}: {inner}" if isinstance(value, dict) else f"{key}={inner}")
        return ("; " if any(isinstance(v, dict) for v in values.values()) else ", ").join(parts)
    return str(values)


def _choices(runs: list[RunRecord]) -> tuple[str, bool]:
    """What was chosen on which split, and whether every run's choices came from a file. One
    file is one sha256: runs that recorded its path absolute (older ones) and relative
    (`posenc.choices.recorded_path`) name it once, by the relative path."""
    found: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}  # sha256 (or the path, without one) -> the path shown
    without = 0
    for r in runs:
        choices = ((r.metrics or {}).get("protocol") or {}).get("choices")
        if isinstance(choices, dict) and choices.get("file"):
            values = choices.get("values") or {}
            if isinstance(values.get(r.encoding), dict):  # keyed by encoding
                values = values[r.encoding]
            file, sha = str(choices["file"]), str(choices.get("sha256", ""))
            key = sha or f"path {file}"
            if key not in names or names[key].startswith("/") > file.startswith("/"):
                names[key] = file
            found.setdefault(key, {})[r.encoding] = values  # a run records its encoding's
        else:
            without += 1
    if not found:
        return "none from `posenc tune` (settings as configured)", False
    parts = []
    for key, per_encoding in sorted(found.items(), key=lambda kv: (names[kv[0]], kv[0])):
        file = names[key]
        sha_text = "" if key.startswith("path ") else f", sha256 {key[:12]}"
        shown = "; ".join(
            f"{enc}: {_choice_values(v) if v else 'none chosen'}"
            for enc, v in sorted(per_encoding.items())
        )
        parts.append(f"`{file}`{sha_text}, chosen on validation by `posenc tune`: {shown}")
    text = "; ".join(parts)
    if without:
        text += f" ({without} of {len(runs)} runs without a choices file)"
    return text, without == 0


def _ood_over(runs: list[RunRecord]) -> str:
    """``OOD figures over test lengths 31–60 (horizons too: ...)``: the lengths a table's OOD
    figures and horizons read (`posenc.report.protocol.run_summary`)."""
    windows = sorted({w for r in runs if (w := test_range(r.metrics or {})) is not None})
    old = sum(test_range(r.metrics or {}) is None for r in runs)
    parts = [f"test lengths {a}–{b}" for a, b in windows]
    if windows:
        parts[-1] += " (horizons too: the validation lengths never count)"
    if old:
        parts.append("every evaluated length past the training range (runs before the protocol)")
    return "OOD figures over " + " and ".join(parts)


def _seed_counts(runs: list[RunRecord]) -> list[int]:
    per = Counter(r.encoding for r in runs)
    return sorted(set(per.values()))


def _control(report: Report, task: str, runs: list[RunRecord]) -> tuple[str, bool]:
    control = report.controls.get(task)
    if control is None:
        return (
            f"No positive control shown for {task} (`posenc check-task {task}` makes one).",
            False,
        )
    idm, threshold = control.get("min_id_exact_match"), control.get("threshold")
    figure = "" if not isinstance(idm, int | float) else f"min ID {idm:.3f}"
    if figure and isinstance(threshold, int | float):
        figure += f" {'≥' if control['learned'] else '<'} {threshold:g}"
    if isinstance(control.get("steps"), int):
        figure += f" after {control['steps']:,} steps"
    verb = "learned" if control["learned"] else "did not learn"
    other = _control_task_differences(control, runs)
    note = f"; the control's task differs from the table's: {other}" if other else ""
    return f"Control: {task} {verb} ({figure.strip()}{note}).", bool(control["learned"])


def _control_task_differences(control: dict, runs: list[RunRecord], limit: int = 3) -> str:
    """`task_differences` as text, at most ``limit`` of them."""
    parts = task_differences(control, runs)
    return ", ".join(parts[:limit]) + (", …" if len(parts) > limit else "")


def task_header(report: Report, task: str) -> Header | None:
    """The protocol of ``task``'s complete runs; None when it has none."""
    runs = [r for r in report.records if r.task == task and r.status == "complete"]
    if not runs:
        return None
    ranges = ", ".join(f"{lo}–{hi}" for lo, hi in train_ranges(report.records, task))
    budget, until_fit = _budget(runs)
    choices, chosen = _choices(runs)
    seeds = _seed_counts(runs)
    scales = _values(runs, lambda r: _setting(r, "model", "embed_init"))
    batching = _values(
        runs,
        lambda r: (
            None
            if r.config is None
            else f"{_setting(r, 'train', 'batching')} × {_setting(r, 'train', 'batch_size')}"
        ),
    )
    protocol = (
        f"Budget: {budget}. Fit: {_fit_rule(runs, ranges)}; a run that does not fit is "
        f"listed, never ranked. Choices: {choices}. Seeds: "
        f"{' / '.join(map(str, seeds))} per encoding. Token scale (`model.embed_init`): "
        f"{' / '.join(scales)}. Batching (`train.batching` × `train.batch_size`): "
        f"{' / '.join(batching)}. {_ood_over(runs)}."
    )
    control, learned = _control(report, task, runs)
    departures = []
    old = sum(fit_split(r.metrics or {}) == "test" for r in runs)
    if old:
        departures.append(
            "made before the protocol (no validation split: fit judged on the test set"
            + (")" if old == len(runs) else f", {old} of {len(runs)} runs)")
        )
    if not until_fit:
        departures.append("a fixed training budget (not `train.until_fit`)")
    if not chosen:
        departures.append("settings not chosen on validation by `posenc tune`")
    if min(seeds) < MIN_SEEDS:
        n = min(seeds)
        departures.append(f"{n} seed{'s' * (n != 1)} (the protocol asks for at least {MIN_SEEDS})")
    if not learned:
        departures.append(
            "no positive control shown"
            if task not in report.controls
            else "its control did not learn"
        )
    return Header(protocol, departures, control)
