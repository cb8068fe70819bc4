"""Multirun sweeps: ``posenc compare`` and ``posenc sweep``.

A sweep is a Hydra multirun (``@hydra.main`` in a child process, ``python -m posenc.sweep``,
because the Compose API cannot multirun), so Hydra's launchers work unchanged: joblib on one
machine, submitit on a Slurm cluster. The pieces, in the order a sweep meets them:

- `posenc.sweep.plan`: the parent checks the overrides, specifies every run
  (`posenc.run.spec`) and plans it as ``posenc train`` would, stamps the sweep's folder and
  assembles the child's command line (`plan_sweep`);
- `posenc.sweep.threads`: the launcher choices and each job's share of the cores;
- `posenc.sweep.supervisor`: the parent starts the child, follows it and stops it cleanly;
- `posenc.sweep.job`: inside the child, `run_job` reads its run's specification, runs (or
  skips, or resumes) it and never raises;
- `posenc.sweep.status`: the job status files through which the two sides talk.
"""

from __future__ import annotations

from posenc.sweep.plan import SweepPlan, plan_sweep
from posenc.sweep.status import SweepProgress, sweep_progress
from posenc.sweep.supervisor import supervise

# What the command line uses; the rest is imported from its module.
__all__ = ["SweepPlan", "SweepProgress", "plan_sweep", "supervise", "sweep_progress"]
