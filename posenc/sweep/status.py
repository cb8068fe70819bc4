"""A sweep's status files: each job keeps ``posenc_job.json`` in its Hydra output folder
(``<sweep dir>/<job number>/``), which is how the parent counts running, finished and failed
jobs while the sweep runs; ``posenc_stopping`` in the sweep folder asks every job to stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from posenc.io import read_json

JOB_STATUS = "posenc_job.json"
# Written into a sweep's folder by `posenc compare`/`sweep` to stop the sweep: a training run
# sees it at its next step and saves its checkpoint, a job that has not started a run starts
# none, and a stopped job returns instead of raising (an exception makes joblib abort the pool
# and kill the other workers before they have saved).
STOPPING = "posenc_stopping"


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


def job_pids(sweep_dir: Path) -> set[int]:
    """The processes of this sweep's jobs that have not said they are done."""
    import json

    pids = set()
    for path in sweep_dir.glob(f"*/{JOB_STATUS}"):
        try:
            job = json.loads(path.read_text())
        except (OSError, ValueError):  # being rewritten: read it next time
            continue
        if job.get("status") in ("running", "waiting") and isinstance(job.get("pid"), int):
            pids.add(job["pid"])
    return pids
