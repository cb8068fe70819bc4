"""Inside a Hydra job: `run_job`, the task function that ``python -m posenc.sweep --multirun``
calls once per run.

The parent has specified every run (`posenc.run.spec`) and written each job its specification:
the job's own config (`JobConfig`) names the file and the job runs what it reads, composing
nothing. A sweep the parent could not enumerate (a sweep function such as ``range(...)``)
runs on the config Hydra composed for the job, specified here the same way. The job calls
`posenc.run.execute.run` and never raises: a finished run is skipped, an interrupted one
resumes from its checkpoint (`posenc.run.execute` does that), and a failing one leaves ``error.json``
in its run folder so the others go on and the report can say what went wrong. It keeps its
status in ``posenc_job.json`` (`posenc.sweep.status`) for the parent to count.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig

from posenc.config import CONFIG_DIR
from posenc.errors import ConfigError, describe
from posenc.io import atomic_write_json, read_json
from posenc.run.lock import RunLock
from posenc.run.signals import RunStopped
from posenc.run.spec import FINISHED, RunSpec, differences, read_spec, run_status, specify
from posenc.runfolder import ERROR, METRICS, is_finished
from posenc.schema import encoding_label
from posenc.sweep.status import JOB_STATUS, STOPPING

JOB_CONFIG = "posenc_job"  # the child's config name when the parent wrote the specifications
SPECS = "specs"  # <sweep_dir>/specs/<k>.yaml: job k's specification


@dataclass
class JobConfig:
    """A job's whole config when the parent specified the runs: which specification to run,
    and the threads the launcher gives it (resolved on the node, e.g. Slurm's cpus)."""

    specs: str = MISSING  # the folder of the specifications
    spec: int = MISSING  # this job's
    threads: Any = None


def spec_path(specs: Path, k: int) -> Path:
    return Path(specs) / f"{k}.yaml"


def job_spec(cfg: DictConfig, variant: str) -> RunSpec:
    """The run this job runs: the specification the parent wrote, or (a sweep the parent
    could not enumerate) the config Hydra composed, named by its swept keys ``variant``."""
    if "specs" in cfg:
        return read_spec(spec_path(Path(cfg.specs), int(cfg.spec)), threads=cfg.threads)
    return specify(cfg, variant)


def _skip_or_run(cfg: DictConfig, run_dir: Path, job: dict, stopping: Path) -> dict[str, Any]:
    """A finished run with this config is skipped; any other is run (or resumed)."""
    from posenc.run.execute import run

    if is_finished(run_dir) and not cfg.overwrite:
        if run_status(run_dir, cfg) != FINISHED:
            diff = differences(run_dir, cfg)
            raise ConfigError(
                f"{run_dir} holds a finished run with a different config"
                + (f" ({diff})" if diff else "")
                + "; choose another experiment name or pass overwrite=true"
            )
        job["status"] = "skipped"
        return read_json(run_dir / METRICS)
    metrics = run(cfg, lock=False, stop_file=stopping)
    job["status"] = "finished"
    return metrics


def _record_failure(cfg: DictConfig, run_dir: Path, job: dict, exc: Exception) -> None:
    """``error.json`` in the run folder, unless it holds a finished run (that stays valid)."""
    if (run_dir / METRICS).exists():
        return
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


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra task function: run (or skip, or resume) one run; never raises on failure."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    spec = job_spec(cfg, hc.job.override_dirname)
    cfg, run_dir = spec.cfg, spec.run_dir
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
            metrics = _skip_or_run(cfg, run_dir, job, stopping)
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
        job["error"] = describe(exc)
        _record_failure(cfg, run_dir, job, exc)
        return {"status": "failed", "error": job["error"]}
    finally:
        job["ended"] = time.time()
        atomic_write_json(status_path, job)


def main() -> None:
    """``python -m posenc.sweep --multirun OVERRIDES``: the Hydra entry point."""
    import hydra
    from hydra.core.config_store import ConfigStore

    from posenc import plugins, schema
    from posenc.config import searchpath_override

    ConfigStore.instance().store(name=JOB_CONFIG, node=JobConfig)  # --config-name=posenc_job
    schema.store()  # the schema configs/config.yaml composes first
    plugins.store_configs()  # installed plugins' encodings and tasks: group options
    sys.argv += searchpath_override()  # POSENC_CONFIG_PATH: the user's config folders
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(run_job)()
