"""Multirun sweeps: ``posenc compare`` and ``posenc sweep``.

A sweep is a Hydra multirun (``@hydra.main`` in a child process, ``python -m posenc.sweep``,
because the Compose API cannot multirun), so Hydra's launchers work unchanged: joblib on one
machine, submitit on a Slurm cluster. The pieces, in the order a sweep meets them:

- `posenc.sweep.plan`: the parent checks the overrides, counts the jobs, stamps the sweep's
  folder and assembles the child's command line (`plan_sweep`);
- `posenc.sweep.threads`: the launcher choices and each job's share of the cores;
- `posenc.sweep.supervisor`: the parent starts the child, follows it and stops it cleanly;
- `posenc.sweep.job`: inside the child, `run_job` runs (or skips, or resumes) one run and
  never raises;
- `posenc.sweep.status`: the job status files through which the two sides talk.
"""

from __future__ import annotations

from posenc.sweep.job import apply_variant, main, run_dir_of, run_job
from posenc.sweep.plan import (
    MAX_PRECHECK,
    NAMING_KEYS,
    SWEEPS,
    SweepPlan,
    check_every_value,
    count_finished,
    plan_sweep,
)
from posenc.sweep.status import JOB_STATUS, STOPPING, SweepProgress, sweep_progress
from posenc.sweep.supervisor import Outcome, child_command, child_env, supervise
from posenc.sweep.threads import HYDRA_LAUNCHERS, LAUNCHER_GROUP, cores, launchers

__all__ = [
    "HYDRA_LAUNCHERS",
    "JOB_STATUS",
    "LAUNCHER_GROUP",
    "MAX_PRECHECK",
    "NAMING_KEYS",
    "STOPPING",
    "SWEEPS",
    "Outcome",
    "SweepPlan",
    "SweepProgress",
    "apply_variant",
    "check_every_value",
    "child_command",
    "child_env",
    "cores",
    "count_finished",
    "launchers",
    "main",
    "plan_sweep",
    "run_dir_of",
    "run_job",
    "supervise",
    "sweep_progress",
]
