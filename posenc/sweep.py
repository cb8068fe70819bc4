"""Multirun sweeps: the Hydra task function that runs one job, and the parent side that
plans, launches and watches a sweep.

A sweep is a Hydra multirun (``@hydra.main`` in a child process, because the Compose API
cannot multirun), so Hydra's launchers work unchanged: joblib on one machine, submitit on
a Slurm cluster. Each job calls `posenc.run.run` and never raises: a finished run is
skipped, an interrupted one resumes from its checkpoint (`posenc.run` does that), and a
failing one leaves ``error.json`` in its run folder so the others go on and the report can
say what went wrong. Each job also keeps ``posenc_job.json`` in its Hydra output folder
(``<sweep dir>/<job number>/``), which is how the parent counts running, finished and
failed jobs while the sweep runs.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from posenc.config import CONFIG_DIR, encoding_label
from posenc.errors import ConfigError
from posenc.io import atomic_write_json, read_json
from posenc.lock import RunLock
from posenc.runfolder import ERROR, EXECUTION_KEYS, METRICS, is_finished, same_config
from posenc.signals import RunStopped

JOB_STATUS = "posenc_job.json"
# Written into a sweep's folder by `posenc compare`/`sweep` to stop the sweep: a training run
# sees it at its next step and saves its checkpoint, a job that has not started a run starts
# none, and a stopped job returns instead of raising (an exception makes joblib abort the pool
# and kill the other workers before they have saved).
STOPPING = "posenc_stopping"
SWEEPS = "_sweeps"  # <runs_root>/<experiment>/_sweeps/<time>/: Hydra's job folders and logs
LAUNCHER_GROUP = "hydra/launcher"
# Keys that name the run folder themselves (or only change how a run executes), so they
# never become part of a variant label; every other swept key does.
NAMING_KEYS = ("encoding", "task", "seed", "experiment", "runs_root", "data_dir", "run_dir")
# Sweeping these would send several jobs to one run folder (or to several experiments).
UNSWEPT_KEYS = ("experiment", "runs_root", "data_dir", "run_dir", *EXECUTION_KEYS)
# Set by the sweep itself (runs_root made absolute, threads from the launcher, no progress bars).
SET_HERE = ("runs_root", "threads", "progress")


# ---------------------------------------------------------------- inside a Hydra job


def run_dir_of(cfg: DictConfig) -> Path:
    from posenc.run import default_run_dir

    return Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)


def apply_variant(cfg: DictConfig, variant: str) -> None:
    """Name the run after its swept hyperparameters: ``rope@model.n_layers=2``.

    Runs that differ only in a swept key such as ``model.n_layers`` would otherwise share
    one run folder; the label names the folder, the table row and the TensorBoard run.
    """
    if not variant:
        return
    with open_dict(cfg):
        cfg.encoding.label = f"{encoding_label(cfg.encoding)}@{variant}".replace("/", "_")


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra task function: run (or skip, or resume) one run; never raises on failure."""
    from hydra.core.hydra_config import HydraConfig

    from posenc.run import run

    hc = HydraConfig.get()
    apply_variant(cfg, hc.job.override_dirname)
    run_dir = run_dir_of(cfg)
    status_path = Path(hc.runtime.output_dir) / JOB_STATUS
    job = {
        "status": "running",
        "run_dir": str(run_dir),
        "task": str(cfg.task.name),
        "encoding": encoding_label(cfg.encoding),
        "seed": int(cfg.seed),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.time(),
    }
    stopping = Path(hc.runtime.output_dir).parent / STOPPING
    if stopping.exists():  # the sweep is being stopped: start nothing
        job.update(status="interrupted", ended=time.time())
        atomic_write_json(status_path, job)
        return {"status": "interrupted"}
    atomic_write_json(status_path, job)

    def waiting(holder: str) -> None:  # another sweep (or posenc train) holds this run
        job.update(status="waiting", holder=holder)
        atomic_write_json(status_path, job)

    try:
        # Two sweeps over the same runs never train one twice: the second waits for the
        # first's lock, then finds the run finished (skip) or interrupted (resume).
        with RunLock(run_dir, wait=True, on_wait=waiting):
            job["status"] = "running"
            if is_finished(run_dir) and not cfg.overwrite:
                if not same_config(run_dir, cfg):
                    raise ConfigError(
                        f"{run_dir} holds a finished run with a different config; choose "
                        "another experiment name or pass overwrite=true"
                    )
                metrics = read_json(run_dir / METRICS)
                job["status"] = "skipped"
            else:
                metrics = run(cfg, lock=False, stop_file=stopping)
                job["status"] = "finished"
            (run_dir / ERROR).unlink(missing_ok=True)
        job["summary"] = metrics["summary"]
        return metrics
    except (KeyboardInterrupt, RunStopped, SystemExit):  # checkpoint saved; a rerun resumes
        job["status"] = "interrupted"
        if stopping.exists():  # the sweep stops every job: let the others save theirs too
            return {"status": "interrupted"}
        raise
    except Exception as exc:  # recorded, so the other jobs go on
        job["status"] = "failed"
        job["error"] = error_message(exc)
        if (run_dir / METRICS).exists():  # the folder's finished run stays valid as it is
            return {"status": "failed", "error": job["error"]}
        atomic_write_json(
            run_dir / ERROR,
            {
                "status": "failed",
                "experiment": str(cfg.experiment),
                "task": job["task"],
                "encoding": job["encoding"],
                "seed": job["seed"],
                "error": job["error"],
                "type": type(exc).__name__,
                "traceback": traceback.format_exc(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
        return {"status": "failed", "error": job["error"]}
    finally:
        job["ended"] = time.time()
        atomic_write_json(status_path, job)


def error_message(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# ---------------------------------------------------------------- the parent side


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


def cores() -> int:
    """Cores this process may use (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Hydra's own launcher configs that need no preset. A preset may not share their names: a
# file in configs/hydra/launcher/ would shadow the plugin's config it extends.
HYDRA_LAUNCHERS = ("basic", "submitit_local")


def launchers() -> list[str]:
    """``--launcher`` choices: our presets (``configs/hydra/launcher/*.yaml``) and Hydra's
    ``basic`` (one job after another) and ``submitit_local`` (submitit without Slurm)."""
    from posenc.config import group_options

    return sorted({*group_options(LAUNCHER_GROUP), *HYDRA_LAUNCHERS})


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"bad override: {first}") from exc


def _sweep_values(o) -> list[str] | None:
    try:
        return list(o.sweep_string_iterator())
    except Exception:  # glob() needs Hydra's config loader; the count is then unknown
        return None


# Compositions checked before a sweep starts: every value of every swept key, with the
# other keys at their first value (a bad combination of two keys is still the job's error).
MAX_VALUE_CHECKS = 64


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
                compose([*first[:i], value, *first[i + 1 :]])
            except ConfigError as exc:
                hint = ""
                if value.startswith("encoding=") and "has no key" in str(exc):
                    hint = (
                        "; an encoding.KEY override applies to every encoding of the sweep: "
                        "run the encodings that take it in their own posenc compare (the "
                        "same --experiment puts them in one report)"
                    )
                raise ConfigError(f"with {value}: {exc}{hint}") from exc


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
    from posenc.config import check_group_overrides, compose

    valid = launchers()
    if launcher not in valid:
        raise ConfigError(f"unknown launcher {launcher!r}; valid choices: {', '.join(valid)}")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")
    for o in _parse(overrides):
        if reserved and o.key_or_group in reserved:
            raise ConfigError(
                f"{o.input_line!r}: {o.key_or_group} is set by {reserved[o.key_or_group]}"
            )
    overrides = [*(base or []), *overrides]
    parsed = _parse(overrides)
    check_group_overrides(overrides)
    for o in parsed:
        key = o.key_or_group
        if key == LAUNCHER_GROUP:
            raise ConfigError(f"{o.input_line!r}: choose the launcher with --launcher")
        if key == "run_dir" and not o.is_delete() and o.value() is not None:
            raise ConfigError("run_dir names one run folder; a sweep gives each run its own")
        if o.is_sweep_override() and key in UNSWEPT_KEYS:
            raise ConfigError(f"{o.input_line!r}: {key} cannot be swept; run one sweep per value")

    # Compose one combination (first value of every sweep) to catch bad keys and read paths.
    first = []
    total: int | None = 1
    axes: list[list[str]] = []  # every job's task overrides: one choice per axis
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
    keys = {o.key_or_group for o in parsed}
    if experiment is not None and "experiment" not in keys:
        first.append(f"experiment={experiment}")
    cfg = compose(first)
    check_every_value(first, axes)
    runs_root = Path(str(cfg.runs_root)).absolute()
    experiment_dir = runs_root / str(cfg.experiment)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = experiment_dir / SWEEPS / stamp
    n = 1
    while sweep_dir.exists():  # two sweeps started in the same second
        n += 1
        sweep_dir = experiment_dir / SWEEPS / f"{stamp}_{n}"

    n_cores = cores()
    if jobs is not None and launcher in ("basic", "submitit_local"):
        raise ConfigError(
            f"--jobs does not apply to --launcher {launcher} ("
            + ("one run after another" if launcher == "basic" else "it starts every run at once")
            + "); use --launcher local --jobs N"
        )
    threads_shown = None
    if launcher == "local":
        jobs = jobs or max(1, min(n_cores, total or n_cores))
        threads = str(max(1, n_cores // jobs))
    elif launcher == "basic":
        threads = str(n_cores)
    elif launcher == "slurm":
        threads = "${hydra:launcher.cpus_per_task}"  # resolved on the node, inside the job
        cpus = [o for o in parsed if o.key_or_group == "hydra.launcher.cpus_per_task"]
        threads_shown = (
            str(cpus[-1].value())
            if cpus
            else str(OmegaConf.load(CONFIG_DIR / LAUNCHER_GROUP / "slurm.yaml").cpus_per_task)
        )
    else:  # submitit_local starts every job at once
        threads = "1"
    user_threads = [o for o in parsed if o.key_or_group == "threads"]
    if user_threads:
        threads = str(user_threads[-1].input_line.split("=", 1)[1])
        threads_shown = None

    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    fixed = sorted({o.key_or_group for o in parsed if not o.is_hydra_override()} - swept)
    exclude = sorted({*NAMING_KEYS, *EXECUTION_KEYS, *fixed})
    child = [
        f"hydra/launcher={launcher}",
        *(
            line
            for line, o in zip(overrides, parsed, strict=True)
            if o.key_or_group not in SET_HERE
        ),
        f"runs_root={runs_root}",
        f"threads={threads}",
        "progress=false",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.job.name=posenc",  # the Slurm job name and Hydra's per-job log file
        "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(exclude) + "]",
    ]
    if experiment is not None and "experiment" not in keys:
        child.append(f"experiment={experiment}")
    if launcher == "local":
        child.append(f"hydra.launcher.n_jobs={jobs}")
    elif launcher == "slurm" and jobs is not None:
        child.append(f"hydra.launcher.array_parallelism={jobs}")
    finished = 0
    if total is not None and total <= MAX_PRECHECK:
        extra = (
            [f"experiment={experiment}"]
            if experiment is not None and "experiment" not in keys
            else []
        )
        swept_names = sorted(set(swept) - {*NAMING_KEYS, *EXECUTION_KEYS})
        finished = count_finished(axes, extra, swept_names, runs_root)
    return SweepPlan(
        child,
        sweep_dir,
        experiment_dir,
        total,
        launcher,
        jobs or 1,
        threads,
        threads_shown or threads,
        finished,
    )


# A sweep up to this size checks its run folders first, so a rerun of finished runs
# launches nothing (no Slurm array of jobs that would only find their runs done).
MAX_PRECHECK = 1000


def count_finished(
    axes: list[list[str]], extra: list[str], swept: list[str], runs_root: Path
) -> int:
    """How many of the sweep's runs are finished with the same config, stopping at the first
    that is not (then the sweep must launch anyway)."""
    import itertools

    from posenc.config import compose

    n = 0
    for combo in itertools.product(*axes):
        cfg = compose([*combo, *extra, f"runs_root={runs_root}"], check=False)
        variant = ",".join(sorted(o for o in combo if o.split("=", 1)[0].lstrip("+~") in swept))
        apply_variant(cfg, variant)
        d = run_dir_of(cfg)
        try:
            same = is_finished(d) and same_config(d, cfg) and bool(read_json(d / METRICS))
        except Exception:  # an unreadable config: the job reports it
            same = False
        if not same:
            return n
        n += 1
    return n


def child_command(plan: SweepPlan) -> list[str]:
    return [sys.executable, "-m", "posenc.sweep", "--multirun", *plan.overrides]


def child_env() -> dict[str, str]:
    """The environment of the sweep process: this one's (the child imports the installed
    posenc and its plugins, and reads ``POSENC_CONFIG_PATH``, as this process does), with
    OpenMP threads that sleep instead of spin-waiting (parallel jobs collapse otherwise)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@dataclass
class SweepProgress:
    total: int | None
    running: int = 0
    finished: int = 0  # trained now
    skipped: int = 0  # finished earlier
    failed: int = 0
    best: tuple[str, float, str] | None = None  # encoding, score, which score
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.finished + self.skipped + self.failed


def sweep_progress(sweep_dir: str | Path, total: int | None = None) -> SweepProgress:
    """Count the jobs of one sweep by their ``posenc_job.json`` files."""
    progress = SweepProgress(total)
    scores: dict[str, list[float]] = {}
    kind = "OOD"
    for path in sorted(Path(sweep_dir).glob(f"*/{JOB_STATUS}")):
        try:
            job = read_json(path)
        except (OSError, ValueError):
            continue
        status = job.get("status")
        if status in ("running", "waiting"):
            progress.running += 1
        elif status in ("finished", "skipped"):
            setattr(progress, status, getattr(progress, status) + 1)
            s = job.get("summary") or {}
            score = s.get("ood_exact_match")
            if score is None:
                score, kind = s.get("id_exact_match"), "ID"
            if score is not None:
                scores.setdefault(job["encoding"], []).append(float(score))
        elif status == "failed":
            progress.failed += 1
            progress.errors.append(
                f"{job.get('task')}/{job.get('encoding')}/seed{job.get('seed')}: {job.get('error')}"
            )
    if scores:
        name = max(scores, key=lambda e: sum(scores[e]) / len(scores[e]))
        progress.best = (name, sum(scores[name]) / len(scores[name]), kind)
    return progress


def main() -> None:
    """``python -m posenc.sweep --multirun OVERRIDES``: the Hydra entry point."""
    import hydra

    from posenc import plugins
    from posenc.config import searchpath_override

    plugins.store_configs()  # installed plugins' encodings and tasks: group options
    sys.argv += searchpath_override()  # POSENC_CONFIG_PATH: the user's config folders
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(run_job)()


if __name__ == "__main__":
    # Run the task function from the importable module, not from __main__, so that the
    # launchers pickle it by reference and their workers import it.
    from posenc.sweep import main as _main

    _main()
