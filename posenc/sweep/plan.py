"""Planning a sweep in the parent process: read and check its overrides, specify every run
the way ``posenc train`` plans one (`posenc.run.spec`, `posenc.run.planning`), stamp its folder,
share the cores and assemble the child's multirun command line, which runs one job per
written specification. Raises `ConfigError` before anything runs."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from posenc.errors import ConfigError, PosencError, first_line
from posenc.run.spec import FINISHED, RunSpec, specify, write_spec
from posenc.runfolder import EXECUTION_KEYS
from posenc.sweep.job import JOB_CONFIG, SPECS, spec_path
from posenc.sweep.threads import LAUNCHER_GROUP, LOCAL_LAUNCHERS, check_launcher, share_threads

SWEEPS = "_sweeps"  # <runs_root>/<experiment>/_sweeps/<time>/: Hydra's job folders and logs
# Keys that name the run folder themselves (or only change how a run executes), so they
# never become part of a variant label; every other swept key does.
NAMING_KEYS = ("encoding", "task", "seed", "experiment", "runs_root", "data_dir", "run_dir")
# Sweeping these would send several jobs to one run folder (or to several experiments).
UNSWEPT_KEYS = EXECUTION_KEYS
# Set by the sweep itself (runs_root made absolute, threads from the launcher, no progress bars).
SET_HERE = ("runs_root", "threads", "progress")
# A sweep up to this size is specified run by run in the parent (each combination composed,
# checked and planned once; a rerun of finished runs launches nothing). A larger one, or one
# with a sweep function, is composed by Hydra in its jobs, and checked here once per value
# of each swept key, with the other keys at their first value (`MAX_VALUE_CHECKS`).
MAX_SPECIFIED = 1000
MAX_VALUE_CHECKS = 64


def hydra_quoted(value: object) -> str:
    """``value`` as one quoted string in Hydra's override grammar, which reads only ASCII
    outside quotes and splits at spaces: ``--experiment "exp ü 1"`` and a runs_root with
    such a name reach the sweep's jobs intact."""
    text = str(value).replace("'", "\\'")
    return f"'{text}'"


@dataclass
class SweepPlan:
    """Everything the CLI needs to launch one multirun and watch it."""

    overrides: list[str]  # the child's command line after ``--multirun``
    sweep_dir: Path  # Hydra's job folders, the launcher log
    experiment_dir: Path  # the runs and the report
    total: int | None  # number of jobs (None when a sweep function hides it)
    launcher: str
    jobs: int
    threads: str  # the child's threads= value
    threads_shown: str = ""  # the same, resolved for the banner
    finished: int = 0  # runs already finished (== total: nothing to launch)
    specs: list[RunSpec] | None = None  # every job's run (None: Hydra composes them)

    def write_specs(self) -> None:
        """Job k's specification as ``<sweep_dir>/specs/<k>.yaml`` (`posenc.sweep.job`)."""
        for k, spec in enumerate(self.specs or []):
            write_spec(spec, spec_path(self.sweep_dir / SPECS, k))


@dataclass
class Axes:
    """The sweep's overrides, one axis of choices per override (one choice if not swept)."""

    first: list[str]  # one combination: the first value of every swept key
    axes: list[list[str]]  # every job's task overrides: one choice per axis
    total: int | None  # number of combinations (None when a sweep function hides it)


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from posenc.config import quote_hint

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"bad override: {first_line(exc)}{quote_hint(overrides)}") from exc


def _sweep_values(o) -> list[str] | None:
    try:
        return list(o.sweep_string_iterator())
    except Exception:  # glob() needs Hydra's config loader; the count is then unknown
        return None


def preset_sweep(parsed: list) -> list[str]:
    """The axes a ``preset=NAME`` override's preset declares (``hydra.sweeper.params``) that
    the overrides do not set, as overrides: what Hydra's sweeper would add in the child, made
    explicit so that the sweep is counted and checked here."""
    from posenc.config import preset_axes

    given = {o.key_or_group for o in parsed}
    preset = next((o for o in parsed if o.key_or_group == "preset"), None)
    if preset is None or preset.is_sweep_override() or preset.value() is None:
        return []
    axes = preset_axes(str(preset.value()))
    return [f"{key}={','.join(values)}" for key, values in axes.items() if key not in given]


def check_overrides(overrides: list[str], parsed: list) -> None:
    """Group names exist; no launcher, ``run_dir`` or swept `UNSWEPT_KEYS` among them."""
    from posenc.config import check_group_overrides

    check_group_overrides(overrides)
    for o in parsed:
        key = o.key_or_group
        if key == LAUNCHER_GROUP:
            raise ConfigError(f"{o.input_line!r}: choose the launcher with --launcher")
        if key == "run_dir" and not o.is_delete() and o.value() is not None:
            raise ConfigError("run_dir names one run folder; a sweep gives each run its own")
        if o.is_sweep_override() and key in UNSWEPT_KEYS:
            raise ConfigError(f"{o.input_line!r}: {key} cannot be swept; run one sweep per value")


def check_label(parsed: list) -> None:
    """One ``encoding.label`` for several swept encodings would put their runs in one folder
    (the label names it): refused here, before the first run trains."""
    encodings = next(
        (o for o in parsed if o.key_or_group == "encoding" and o.is_sweep_override()), None
    )
    label = next((o for o in parsed if o.key_or_group == "encoding.label"), None)
    if encodings is None or label is None or label.is_sweep_override() or label.is_delete():
        return
    names = _sweep_values(encodings) or []
    if len(names) > 1:
        raise ConfigError(
            f"{label.input_line!r} names the runs of every encoding of the sweep "
            f"({', '.join(names)}), which would share one run folder; run each encoding in "
            "its own command with its own label (the same --experiment puts them in one report)"
        )


def expand(parsed: list) -> Axes:
    """The axes of the sweep's task overrides (Hydra's own ``hydra.*`` left out)."""
    first = []
    total: int | None = 1
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_hydra_override():
            continue
        if o.is_sweep_override():
            values = _sweep_values(o)
            if values is None:
                total = None
                continue
            if total is not None:
                total *= len(values)
            first.append(f"{o.get_key_element()}={values[0]}" if values else o.input_line)
            axes.append([f"{o.get_key_element()}={v}" for v in values])
        else:
            first.append(o.input_line)
            axes.append([o.input_line])
    return Axes(first, axes, total)


def check_every_value(first: list[str], axes: list[list[str]]) -> None:
    """Compose the sweep once per value of each swept key, so that a value that fails with
    another key's override (``encoding.max_offset=20`` beside ``encoding=none``) is a
    one-line `ConfigError` before anything runs."""
    from posenc.config import compose

    checked = 0
    for i, axis in enumerate(axes):
        for value in axis[1:]:
            if checked >= MAX_VALUE_CHECKS:
                return
            checked += 1
            try:
                compose([*first[:i], value, *first[i + 1 :]], here=None)
            except ConfigError as exc:
                hint = ""
                if value.startswith("encoding=") and "has no key" in str(exc):
                    hint = (
                        "; an encoding.KEY override applies to every encoding of the sweep: "
                        "run the encodings that take it in their own posenc compare (the "
                        "same --experiment puts them in one report)"
                    )
                raise ConfigError(f"with {value}: {exc}{hint}") from exc


def stamp_sweep_dir(experiment_dir: Path) -> Path:
    """``<experiment>/_sweeps/<time>/``, a new folder even for two sweeps in one second."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = experiment_dir / SWEEPS / stamp
    n = 1
    while sweep_dir.exists():  # two sweeps started in the same second
        n += 1
        sweep_dir = experiment_dir / SWEEPS / f"{stamp}_{n}"
    return sweep_dir


def _inside_swept_group(line: str, o, swept: set[str]) -> str:
    """``encoding.max_offset=30`` beside ``encoding=coupled,abacus`` as ``++encoding.max_offset=30``.

    Hydra composes the multirun's config once before sweeping, with the group at its
    default (``encoding=rope``) and every plain override applied, so a key only the swept
    options have fails there ("Could not override"). Force-adding sets it alike in every job;
    that each job's group has the key was checked here first (`check_every_value`)."""
    from hydra.core.override_parser.types import OverrideType

    group = o.key_or_group.split(".")[0]
    if o.type is OverrideType.CHANGE and not o.is_sweep_override() and "." in o.key_or_group:
        if group in swept and group != o.key_or_group:
            return f"++{line}"
    return line


def child_overrides(
    overrides: list[str],
    parsed: list,
    *,
    launcher: str,
    jobs: int | None,
    threads: str,
    runs_root: Path,
    sweep_dir: Path,
    extra: list[str],
) -> list[str]:
    """The child's command line after ``--multirun`` for a sweep Hydra composes in its jobs:
    the user's overrides, then what the sweep sets itself; runs are named by their swept
    keys other than `NAMING_KEYS` (Hydra's ``override_dirname``)."""
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    fixed = sorted({o.key_or_group for o in parsed if not o.is_hydra_override()} - swept)
    exclude = sorted({*NAMING_KEYS, *EXECUTION_KEYS, *fixed})
    return [
        f"hydra/launcher={launcher}",
        *(
            _inside_swept_group(line, o, swept)
            for line, o in zip(overrides, parsed, strict=True)
            if o.key_or_group not in SET_HERE
        ),
        f"runs_root={hydra_quoted(runs_root)}",
        "progress=false",
        "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(exclude) + "]",
        *extra,
        *_launch_overrides(launcher, jobs, threads, sweep_dir),
    ]


def spec_overrides(
    parsed: list, *, launcher: str, jobs: int | None, threads: str, sweep_dir: Path, total: int
) -> list[str]:
    """The child's command line after ``--multirun`` for a specified sweep: one job per
    written specification (`posenc.sweep.job.JobConfig`), the user's ``hydra.*`` overrides."""
    return [
        f"--config-name={JOB_CONFIG}",
        f"hydra/launcher={launcher}",
        *(o.input_line for o in parsed if o.is_hydra_override()),
        f"specs={hydra_quoted(sweep_dir / SPECS)}",
        "spec=" + ",".join(str(k) for k in range(total)),
        *_launch_overrides(launcher, jobs, threads, sweep_dir),
    ]


def _launch_overrides(launcher: str, jobs: int | None, threads: str, sweep_dir: Path) -> list[str]:
    child = [
        f"threads={threads}",
        f"hydra.sweep.dir={hydra_quoted(sweep_dir)}",
        "hydra.job.name=posenc",  # the Slurm job name and Hydra's per-job log file
    ]
    if launcher == "local":
        child.append(f"hydra.launcher.n_jobs={jobs}")
    elif launcher == "slurm" and jobs is not None:
        child.append(f"hydra.launcher.array_parallelism={jobs}")
    return child


def _combination(combo: tuple[str, ...], swept: set[str]) -> str:
    """The swept values of one combination, for a message: ``encoding=rope, seed=1``."""
    return ", ".join(o for o in combo if o.split("=", 1)[0].lstrip("+~") in swept) or "the run"


def _variant(combo: tuple[str, ...], named_by: list[str]) -> str:
    """The swept keys that name a run beside its encoding (Hydra's ``override_dirname``
    form: sorted ``key=value`` joined by commas)."""
    return ",".join(sorted(o for o in combo if o.split("=", 1)[0].lstrip("+~") in named_by))


def specify_runs(
    axes: list[list[str]], extra: list[str], swept: set[str], threads: str, launcher: str
) -> list[RunSpec]:
    """Every combination of the sweep composed once, checked and specified
    (`posenc.run.spec.specify`): its folder under the absolute ``runs_root``, its label with the
    swept keys other than `NAMING_KEYS`, its status. ``threads``: each job's ``threads=``
    (`share_threads`). Under a launcher whose jobs train on this machine (`LOCAL_LAUNCHERS`)
    with a number of threads, the runs' ``auto`` values are resolved for this machine at
    that many; under any other (Slurm: other nodes, threads known there) they train
    elsewhere (`posenc.run.spec.resolve_compile`)."""
    from omegaconf import open_dict

    named_by = sorted(swept - {*NAMING_KEYS, *EXECUTION_KEYS})
    here = launcher in LOCAL_LAUNCHERS and threads.isdigit()
    specs, folders, composed, references, shown = [], {}, {}, {}, set()
    for combo in itertools.product(*axes):
        try:
            cfg = _compose_once(combo, extra, composed, references)
        except ConfigError as exc:
            raise ConfigError(f"with {_combination(combo, swept)}: {_hint(combo, exc)}") from exc
        with open_dict(cfg):  # runs_root cannot be swept: the same in every combination
            cfg.runs_root = str(Path(str(cfg.runs_root)).absolute())
            cfg.progress = False
            if here:
                cfg.threads = int(threads)
        spec = specify(cfg, _variant(combo, named_by), [*combo, *extra], here=here, shown=shown)
        if spec.run_dir in folders:
            raise ConfigError(
                f"{_combination(combo, swept)} and {folders[spec.run_dir]} would share the run "
                f"folder {spec.run_dir}; give each its own encoding.label or experiment"
            )
        folders[spec.run_dir] = _combination(combo, swept)
        specs.append(spec)
    return specs


def _compose_once(combo: tuple[str, ...], extra: list[str], composed: dict, references: dict):
    """The combination's config. Runs that differ only in their seed are composed once: the
    seed is a plain integer that no other value derives from, so each further seed is a copy
    with its value set (and checked) instead of another Hydra composition."""
    from copy import deepcopy

    from posenc.checks import check_values
    from posenc.config import compose

    seeds = [o for o in combo if o.startswith("seed=")]
    key = tuple(o for o in combo if o not in seeds)
    seed = seeds[-1].split("=", 1)[1] if seeds else None
    if key in composed and seed is not None and seed.isdigit():
        cfg = deepcopy(composed[key])  # flags and types kept
        cfg.seed = int(seed)
        check_values(cfg)
        return cfg
    cfg = compose([*combo, *extra], references=references, here=None)  # compile: specify's
    composed.setdefault(key, deepcopy(cfg))  # kept as composed: specifying changes cfg
    return cfg


def _hint(combo: tuple[str, ...], exc: ConfigError) -> str:
    if any(v.startswith("encoding=") for v in combo) and str(exc).startswith("encoding "):
        return (
            f"{exc}; an encoding.KEY override applies to every encoding of the sweep: run the "
            "encodings that take it in their own posenc compare (the same --experiment puts "
            "them in one report)"
        )
    return str(exc)


def plan_runs(specs: list[RunSpec], launcher: str) -> None:
    """Plan every run as ``posenc train`` plans it (`posenc.run.planning.plan`: the task, the
    encoding, the model and the memory), so that a run its job would refuse stops the sweep
    before any job starts. Runs that differ only in their seed are planned once. A Slurm
    job's device is checked on its node, so the parent plans those on the CPU."""
    import json

    from omegaconf import OmegaConf, open_dict

    from posenc.run.planning import plan

    seen = set()
    for spec in specs:
        if spec.status == FINISHED:
            continue
        cfg = OmegaConf.create(OmegaConf.to_container(spec.cfg, resolve=True))
        with open_dict(cfg):
            cfg.seed = 0
            cfg.threads = None
            if launcher == "slurm":
                cfg.device = "cpu"
        key = json.dumps(OmegaConf.to_container(cfg), sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            try:
                plan(cfg, meta=True)
            except PosencError:
                raise
            except Exception:  # a check that needs real tensors: plan it as train does
                plan(cfg)
        except PosencError as exc:
            where = f"{spec.cfg.task.name}/{spec.label}/seed{spec.cfg.seed}"
            raise ConfigError(f"{where}: {exc}") from exc


def plan_sweep(
    overrides: list[str],
    *,
    base: list[str] | None = None,
    launcher: str = "local",
    jobs: int | None = None,
    experiment: str | None = None,
    reserved: dict[str, str] | None = None,
) -> SweepPlan:
    """Check a sweep's overrides and turn them into the child's multirun command line.

    ``base`` are the caller's own overrides (``posenc compare``'s encoding, task and seed
    lists), placed before the user's ``overrides``; ``reserved`` maps keys the user may not
    set to the option that sets them; ``experiment`` is used unless the overrides name one.
    Raises `ConfigError` before anything runs.
    """
    from posenc.config import compose

    check_launcher(launcher, jobs)
    for o in _parse(overrides):
        if reserved and o.key_or_group in reserved:
            raise ConfigError(
                f"{o.input_line!r}: {o.key_or_group} is set by {reserved[o.key_or_group]}"
            )
    overrides = [*(base or []), *overrides]
    overrides = [*preset_sweep(_parse(overrides)), *overrides]
    parsed = _parse(overrides)
    check_overrides(overrides, parsed)
    check_label(parsed)
    ax = expand(parsed)
    named = experiment is not None and "experiment" not in {o.key_or_group for o in parsed}
    extra = [f"experiment={hydra_quoted(experiment)}"] if named else []
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    specs = None
    # the threads first: a run's train.compile=auto is resolved at the threads it gets
    jobs, threads, threads_shown = share_threads(launcher, jobs, ax.total, parsed)
    if ax.total is not None and 0 < ax.total <= MAX_SPECIFIED:
        specs = specify_runs(ax.axes, extra, swept, threads, launcher)
        plan_runs(specs, launcher)
        cfg = specs[0].cfg
    else:  # Hydra composes each job (train.compile=auto resolved there); each value once here
        first = [*ax.first, *extra]
        cfg = compose(first, here=None)
        check_every_value(first, ax.axes)
    runs_root = Path(str(cfg.runs_root)).absolute()
    experiment_dir = runs_root / str(cfg.experiment)
    sweep_dir = stamp_sweep_dir(experiment_dir)
    if specs is not None:
        child = spec_overrides(
            parsed, launcher=launcher, jobs=jobs, threads=threads, sweep_dir=sweep_dir,
            total=len(specs),
        )  # fmt: skip
    else:
        child = child_overrides(
            overrides,
            parsed,
            launcher=launcher,
            jobs=jobs,
            threads=threads,
            runs_root=runs_root,
            sweep_dir=sweep_dir,
            extra=extra,
        )
    return SweepPlan(
        child,
        sweep_dir,
        experiment_dir,
        ax.total,
        launcher,
        jobs or 1,
        threads,
        threads_shown or threads,
        sum(spec.status == FINISHED for spec in specs or []),
        specs,
    )
