"""Train a finished run again from its own config and say whether it came out the same
(``posenc reproduce RUN_DIR``).

A run folder (a published one under ``docs/experiments/`` too) holds the config it trained
with (``config.yaml``) and its numbers (``metrics.json``). `reproduction` reads that config
(`posenc.runfolder.read_config`: options it lacks at the values that reproduce it) and points
it at a folder of its own, under ``RUNS_ROOT/_reproduce/`` by default (a report passes over
folders starting with ``_``): the same seeds, threads, buckets and precision (an ``auto``
precision pinned to what the run used), every execution key but the folders kept. The new
run trains with `posenc.run.execute.run`, as ``posenc train`` would, so an interrupted
reproduction resumes when the command is run again and a finished one is only compared.

`compare_runs` then puts the two ``metrics.json`` side by side: every frozen test example
(the 0/1 string ``per_length`` keeps per length), every validation length's exact match, the
final training loss and the steps trained and to fit. The same everywhere is a reproduction
bit for bit. Anything else is reported figure by figure, with the machine each side
trained on (``train.machine``: the CPU kernels included, `posenc.precision.run_machine`),
since float kernels differ between machine kinds: torch's AVX2 and AVX-512 kernels sum in
different orders, and a run trained on one differs from the same run on the other
(docs/reliability.md, reproducing a run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from posenc.errors import ConfigError, first_line
from posenc.report.records import read_config_dict, read_metrics
from posenc.runfolder import CONFIG, METRICS, read_config, run_folder
from posenc.schema import encoding_label

SUMMARY_FIGURES = ("ID exact match", "OOD exact match", "extrapolation horizon")
FOLDER = "_reproduce"  # under the runs root: a report passes over folders starting with "_"


@dataclass
class Source:
    """The finished run to reproduce: its folder, config and metrics."""

    folder: Path
    cfg: DictConfig
    metrics: dict[str, Any]


@dataclass
class Comparison:
    """What differs between a run and its reproduction (`compare_runs`)."""

    # (figure, the run's, the reproduction's, the same? None: not judged)
    rows: list[tuple[str, str, str, bool | None]] = field(default_factory=list)
    lengths: int = 0  # test lengths compared
    examples: int = 0  # test examples compared
    differing_lengths: list[int] = field(default_factory=list)
    differing_examples: int = 0
    unmatched_lengths: list[int] = field(default_factory=list)  # scored on one side only
    machine_there: str | None = None
    machine_here: str | None = None
    threads_there: int | None = None
    threads_here: int | None = None

    summary_versions: tuple[int, int] | None = None  # (there, here) when they differ

    @property
    def same(self) -> bool:
        return all(same is not False for *_, same in self.rows) and not self.differing_lengths


def source_run(folder: str | Path) -> Source:
    """The finished run in ``folder``; `ConfigError` (one line, exit 2) if it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder} is not a run folder; give a finished run's folder, the one holding "
            f"{CONFIG} and {METRICS} (e.g. docs/experiments/compare_protocol/copy/rope/seed0)"
        )
    if read_config_dict(folder) is None:
        raise ConfigError(f"{folder} holds no {CONFIG}: which run it is cannot be told")
    if not (folder / METRICS).is_file():
        raise ConfigError(
            f"{folder} holds no {METRICS}: not a finished run (to finish it, run its command "
            "again: it resumes)"
        )
    metrics = read_metrics(folder / METRICS)
    if metrics.get("status") != "complete":
        raise ConfigError(
            f"{folder / METRICS} has status {metrics.get('status')!r}, not 'complete': only a "
            "finished run can be reproduced"
        )
    try:
        cfg = read_config(folder)
    except Exception as exc:  # noqa: BLE001 - whatever the schema refuses, in one line
        raise ConfigError(
            f"{folder / CONFIG} cannot be read as a run's config: {first_line(exc)}"
        ) from exc
    return Source(folder, cfg, metrics)


def runs_under(folder: str | Path) -> list[Path]:
    """The finished runs in an experiment folder (a published one too): every folder below
    holding ``config.yaml`` and ``metrics.json``, but those under a folder whose name starts
    with ``_`` or ``.`` (a sweep's logs, a reproduction's own folder), in path order."""
    from posenc.report.records import _skipped  # the report's rule for such folders

    folder = Path(folder)
    found = [m.parent for m in folder.rglob(METRICS) if (m.parent / CONFIG).is_file()]
    return sorted(run for run in found if not _skipped(run, folder))


def default_folder(source: Source, runs_root: str | Path) -> Path:
    """``RUNS_ROOT/_reproduce/<experiment>/<task>/<label>/seed<N>``."""
    cfg = source.cfg
    return run_folder(
        Path(runs_root) / FOLDER,
        cfg.experiment,
        cfg.task.name,
        encoding_label(cfg.encoding),
        cfg.seed,
    )


def reproduction(
    source: Source, into: str | Path, runs_root: str | Path, *, progress: bool
) -> DictConfig:
    """The source run's config, training into ``into``: its frozen evaluation sets cached
    under ``runs_root`` (the source's ``data_dir`` is the making machine's path), never
    replacing a finished run there, and a precision of ``auto`` pinned to what the source
    used (``auto`` reads this machine's records, which may choose otherwise), as are
    ``threads=null`` (torch's default: the cores of whichever machine) to the threads it
    recorded."""
    if Path(into).resolve() == source.folder.resolve():  # it would "reproduce" itself
        raise ConfigError(f"--into {into} is the run itself; give a folder of its own")
    cfg = source.cfg.copy()
    used = (source.metrics.get("train") or {}).get("precision_used")
    with open_dict(cfg):
        cfg.run_dir = str(into)
        cfg.runs_root = str(runs_root)
        cfg.data_dir = str(Path(runs_root) / "_data")
        cfg.overwrite = False
        cfg.progress = progress
        if cfg.train.precision == "auto" and used in ("fp32", "bf16"):
            cfg.train.precision = used
        threads = recorded_threads(source.metrics)
        if cfg.threads is None and threads is not None:
            cfg.threads = threads  # torch's default there: the making machine's cores
    return cfg


def recorded_threads(metrics: dict[str, Any]) -> int | None:
    """The torch threads the run trained with, where every attempt records the same count
    (runs before 2026-12-08 record none)."""
    attempts = (metrics.get("train") or {}).get("attempts") or []
    counts = {a.get("threads") for a in attempts if isinstance(a, dict)}
    (count,) = counts if len(counts) == 1 else (None,)
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _same_number(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _shown(value: Any, exact: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return repr(value) if exact else f"{value:.4f}"
    return str(value)


def compare_runs(there: dict[str, Any], here: dict[str, Any]) -> Comparison:
    """Figure by figure, ``there`` (the source's metrics) against ``here`` (the
    reproduction's): the frozen test examples length by length (their exact match where a
    length keeps no examples), the validation lengths' exact match, the final loss, steps
    trained and to fit, and the summary figures the report ranks by."""
    out = Comparison(
        machine_there=(there.get("train") or {}).get("machine"),
        machine_here=(here.get("train") or {}).get("machine"),
        threads_there=recorded_threads(there),
        threads_here=recorded_threads(here),
    )
    a_lengths, b_lengths = there.get("per_length") or {}, here.get("per_length") or {}
    for n in sorted(a_lengths.keys() | b_lengths.keys(), key=int):
        a, b = a_lengths.get(n) or {}, b_lengths.get(n) or {}
        out.lengths += 1
        a_ex, b_ex = a.get("examples"), b.get("examples")
        if isinstance(a_ex, str) and isinstance(b_ex, str) and len(a_ex) == len(b_ex):
            out.examples += len(a_ex)
            wrong = sum(x != y for x, y in zip(a_ex, b_ex, strict=True))
            out.differing_examples += wrong
            # the same examples right, other tokens wrong: not the same model either
            if wrong or a.get("token_accuracy") != b.get("token_accuracy"):
                out.differing_lengths.append(int(n))
        elif a.get("exact_match") != b.get("exact_match") or a_ex != b_ex:
            out.differing_lengths.append(int(n))  # no examples to compare, or one side only
            if not (a and b):
                out.unmatched_lengths.append(int(n))
    a_val = (there.get("validation") or {}).get("per_length") or {}
    b_val = (here.get("validation") or {}).get("per_length") or {}
    val_wrong = sorted(
        (int(n) for n in (a_val.keys() | b_val.keys() if a_val else ())
         if (a_val.get(n) or {}).get("exact_match") != (b_val.get(n) or {}).get("exact_match")),
    )  # fmt: skip
    a_tr, b_tr = there.get("train") or {}, here.get("train") or {}
    a_pr, b_pr = there.get("protocol") or {}, here.get("protocol") or {}
    a_sum, b_sum = there.get("summary") or {}, here.get("summary") or {}
    figures = [
        ("final training loss", a_tr.get("final_loss"), b_tr.get("final_loss")),
        ("steps trained", a_tr.get("steps"), b_tr.get("steps")),
        ("steps to fit", a_pr.get("steps_to_fit"), b_pr.get("steps_to_fit")),
        ("ID exact match", a_sum.get("id_exact_match"), b_sum.get("id_exact_match")),
        ("OOD exact match", a_sum.get("ood_exact_match"), b_sum.get("ood_exact_match")),
        ("extrapolation horizon", a_sum.get("extrapolation_horizon"),
         b_sum.get("extrapolation_horizon")),
    ]  # fmt: skip
    # A summary written under older definitions (`posenc.run.record.SUMMARY_VERSION`) is
    # shown, not judged: the examples and the loss decide, and the report recomputes it.
    versions = (there.get("summary_version", 1), here.get("summary_version", 1))
    out.summary_versions = versions if versions[0] != versions[1] else None
    for name, a, b in figures:  # the loss in full: a reproduction is bit for bit or not
        exact = name == "final training loss"
        judged = not (out.summary_versions and name in SUMMARY_FIGURES)
        same = _same_number(a, b) if judged else None
        out.rows.append((name, _shown(a, exact), _shown(b, exact), same))
    if a_val:  # a run saved before validation lengths has none to compare
        shown = ", ".join(map(str, val_wrong[:8])) + (" …" if len(val_wrong) > 8 else "")
        out.rows.append(
            ("validation exact match", f"{len(a_val)} lengths",
             f"differs at {shown}" if val_wrong else f"{len(b_val)} lengths", not val_wrong)
        )  # fmt: skip
    return out


def verdict(c: Comparison) -> str:
    """One line: reproduced bit for bit, or what differs and where each side trained."""
    if c.same:
        return (
            f"reproduced bit for bit: all {c.examples:,} test examples at {c.lengths} lengths, "
            "the validation scores, the final loss and the steps are the same"
        )

    def listed(lengths: list[int]) -> str:
        return ", ".join(map(str, lengths[:8])) + (" …" if len(lengths) > 8 else "")

    scored = [n for n in c.differing_lengths if n not in c.unmatched_lengths]
    parts = []
    if scored:
        parts.append(
            f"{c.differing_examples:,} of {c.examples:,} test examples differ, at lengths "
            f"{listed(scored)}"
        )
    if c.unmatched_lengths:
        parts.append(f"lengths scored on one side only: {listed(c.unmatched_lengths)}")
    where = "; ".join(parts) or "every test example is the same"
    return f"not reproduced bit for bit; {where}"


def machines_line(c: Comparison, attempts: list | None = None) -> str:
    """Where each side trained, and what that can explain of a difference (``attempts``:
    the source's, when it records them)."""

    def threads(count: int | None) -> str:
        return f" ({count} thread{'s' if count != 1 else ''})" if count is not None else ""

    there = c.machine_there or "not recorded (runs made before 2026-12-07 do not say)"
    line = (
        f"trained on: {there}{threads(c.threads_there)}; "
        f"reproduced on: {c.machine_here}{threads(c.threads_here)}"
    )
    if c.same:
        return line
    kernels = (
        "float kernels differ between machine kinds (torch's AVX2 and AVX-512 kernels, the "
        "matmul library's code paths) and sum in different orders, so a run need not come "
        "out the same on another machine; the seeds' spread is the measure of such a "
        "difference (docs/reliability.md, reproducing a run)"
    )
    machines = {a.get("machine") for a in attempts or [] if isinstance(a, dict)}
    if len(attempts or []) > 1 and len(machines) > 1:
        return f"{line}. The run was resumed on another machine; {kernels}"
    here = c.machine_here or ""
    if c.machine_there and here.startswith(f"{c.machine_there} | kernels "):
        return (
            f"{line}. The same machine kind, but the run does not record its CPU kernels "
            f"(runs before 2026-12-08), which ATEN_CPU_CAPABILITY can change; {kernels}"
        )
    if not c.machine_there:
        return (
            f"{line}. Where it trained is not known, nor whether code since the commit that "
            f"made it computes otherwise (git log names it); {kernels}"
        )
    if c.machine_there != c.machine_here:
        return f"{line}. {kernels[0].upper()}{kernels[1:]}"
    return (
        f"{line}. The same machine record, so not the kernels: was the source made by other "
        "code (git log names the commit that published it)?"
    )
