"""Which launcher runs a sweep's jobs, and how many threads each job gets: the cores shared
among the jobs that run at once (``local``), all of them (``basic``: one job after another),
the Slurm task's CPUs (``slurm``, resolved on the node) or one (``submitit_local`` starts
every job at once); a ``threads=N`` override wins."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from posenc.config import CONFIG_DIR
from posenc.errors import ConfigError

LAUNCHER_GROUP = "hydra/launcher"
# Hydra's own launcher configs that need no preset. A preset may not share their names: a
# file in configs/hydra/launcher/ would shadow the plugin's config it extends.
HYDRA_LAUNCHERS = ("basic", "submitit_local")
# Launchers whose jobs train on this machine (any other, Slurm's, sends them to other nodes).
LOCAL_LAUNCHERS = ("local", *HYDRA_LAUNCHERS)


def cores() -> int:
    """Cores this process may use (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def launchers() -> list[str]:
    """``--launcher`` choices: our presets (``configs/hydra/launcher/*.yaml``) and Hydra's
    ``basic`` (one job after another) and ``submitit_local`` (submitit without Slurm)."""
    from posenc.config import group_options

    return sorted({*group_options(LAUNCHER_GROUP), *HYDRA_LAUNCHERS})


def check_launcher(launcher: str, jobs: int | None) -> None:
    """A known launcher, and ``--jobs`` a positive integer."""
    valid = launchers()
    if launcher not in valid:
        raise ConfigError(f"unknown launcher {launcher!r}; valid choices: {', '.join(valid)}")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")


def share_threads(
    launcher: str, jobs: int | None, total: int | None, parsed: list
) -> tuple[int | None, str, str | None]:
    """(jobs, the child's ``threads=`` value, the same resolved for the banner or None when
    it is the value itself) for ``total`` runs under ``launcher``; ``parsed`` are the sweep's
    overrides (a ``threads`` or ``hydra.launcher.cpus_per_task`` among them counts)."""
    n_cores = cores()
    if jobs is not None and launcher in HYDRA_LAUNCHERS:
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
    return jobs, threads, threads_shown
