"""``posenc compare --launcher slurm`` against a real Slurm (scripts/slurm-localhost.sh, which
.ci/run starts): the array runs through Slurm, the report is written, and a rerun of finished
runs submits nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MICRO

ROOT = Path(__file__).resolve().parent.parent


def slurm_is_up() -> str | None:
    """None when sbatch reaches a controller, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch not found (start one with scripts/slurm-localhost.sh; CI does)"
    up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if up.returncode != 0 or not up.stdout.strip():
        return f"no Slurm controller answers: {up.stderr.strip()[:200]}"
    return None


def squeue_job_ids() -> set[str]:
    out = subprocess.run(
        ["scontrol", "show", "jobs", "-o"], capture_output=True, text=True, timeout=30
    ).stdout
    return {w.split("=", 1)[1] for w in out.split() if w.startswith("JobId=")}


@pytest.mark.slurm
@pytest.mark.slow
def test_compare_runs_through_slurm_and_a_rerun_submits_nothing(tmp_path):
    reason = slurm_is_up()
    if reason:
        pytest.skip(reason)
    runs = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "posenc.cli",
        "compare",
        "--launcher",
        "slurm",
        "-e",
        "none,alibi",
        "--experiment",
        "slurm",
        *MICRO,
        f"runs_root={runs}",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10",
    ]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "threads per run: 1" in first.stderr  # the banner resolves the launcher's cores
    exp = runs / "slurm"
    jobs = [json.loads(p.read_text()) for p in exp.glob("_sweeps/*/*/posenc_job.json")]
    assert sorted(j["encoding"] for j in jobs) == ["alibi", "none"]
    assert all(j["status"] == "finished" and j["slurm_job_id"] for j in jobs), jobs
    assert list(exp.glob("_sweeps/*/.submitit/*"))  # submitit's Slurm job folders
    assert (exp / "report.md").exists() and (exp / "results.csv").exists()

    sweeps = sorted(p.name for p in (exp / "_sweeps").iterdir())
    known = squeue_job_ids()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "all 2 runs are finished with this config; nothing to launch" in again.stderr
    assert sorted(p.name for p in (exp / "_sweeps").iterdir()) == sweeps
    assert squeue_job_ids() <= known  # no new Slurm job
