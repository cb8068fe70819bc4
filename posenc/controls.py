"""Positive controls: for every task, a configuration known to learn it in this pipeline.

A comparison of encodings on a task means something only if the pipeline can learn the task
at all; otherwise a broken generator, loss mask or loss reads as "no encoding learns it"
(issue 34). Each task ``T`` has a control ``configs/control/T.yaml`` (a ``# @package
_global_`` bundle of overrides: the task and its parameters, lengths, model, steps,
encoding) and a quick variant ``configs/control/T_quick.yaml`` (short lengths, a tiny model,
a few seconds on one core: the test suite runs it). A task may have further controls
(``state_tracking_a5``: another group); each names its task in its defaults list.

A control *learned* its task when the minimum exact match over its training lengths, on the
final evaluation, reaches its ``eval.threshold`` (the fit rule of `posenc.metrics.summarize`).
`check` trains one and writes ``<runs_root>/controls/<name>/control.json`` (the quick variant:
``<runs_root>/controls/<name>/quick/control.json``), which the report reads.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from posenc.errors import ConfigError
from posenc.runfolder import CONTROL_JSON, CONTROLS

GROUP = "control"  # the config group of configs/control/
QUICK_SUFFIX = "_quick"


def names() -> list[str]:
    """Every control's name (a task's own control is named after the task)."""
    from posenc.config import group_options

    options = group_options(GROUP)
    return [o for o in options if not o.endswith(QUICK_SUFFIX) and not o.startswith("_")]


def config_name(name: str, quick: bool) -> str:
    """The option of configs/control/ that control ``name`` (or its quick variant) is;
    `ConfigError` with the valid choices for an unknown name."""
    valid = names()
    if name not in valid:
        raise ConfigError(f"no control for task {name!r}; valid choices: {', '.join(valid)}")
    return name + QUICK_SUFFIX if quick else name


def control_folder(runs_root: str | Path, name: str, quick: bool) -> Path:
    """Where a control's run and ``control.json`` go."""
    folder = Path(runs_root) / CONTROLS / name
    return folder / "quick" if quick else folder


def compose_control(name: str, overrides: list[str] | None = None, *, quick: bool = False):
    """The resolved config of control ``name`` with ``overrides`` on top, its run folder
    ``<runs_root>/controls/<name>[/quick]/run`` (a check trains anew: overwrite=true)."""
    from omegaconf import open_dict

    from posenc.config import compose
    from posenc.run.planning import eval_lengths

    cfg = compose([f"+{GROUP}={config_name(name, quick)}", *(overrides or [])])
    tr = cfg.train
    missing = sorted(set(range(tr.min_len, tr.max_len + 1)) - set(eval_lengths(cfg)))
    if missing:
        raise ConfigError(
            f"control {name!r} is judged on its training lengths {tr.min_len}-{tr.max_len}, "
            f"but the evaluation leaves out {', '.join(map(str, missing))}; drop the eval.* "
            "overrides"
        )
    with open_dict(cfg):
        cfg.run_dir = str(control_folder(cfg.runs_root, name, quick) / "run")
        cfg.overwrite = True
    return cfg


def verdict(metrics: dict[str, Any], threshold: float) -> tuple[bool, float]:
    """(learned, min exact match over the training lengths) of a finished run's metrics."""
    lo, hi = metrics["train_range"]
    inside = [
        float(v["exact_match"]) for n, v in metrics["per_length"].items() if lo <= int(n) <= hi
    ]
    if not inside:
        raise ConfigError(f"the run evaluated none of its training lengths {lo}-{hi}")
    low = min(inside)
    return low >= threshold, low


def command_line(name: str, overrides: list[str] | None, quick: bool) -> str:
    """The ``posenc check-task`` command that makes this check."""
    args = [name, *(["--quick"] if quick else []), *(overrides or [])]
    return "posenc check-task " + shlex.join(args)


def check(
    name: str,
    overrides: list[str] | None = None,
    *,
    quick: bool = False,
    reporter=None,
    command: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Train control ``name`` (its quick variant with ``quick``) and judge it.

    Returns (the control record, the run's metrics, the path of ``control.json``). The record
    is ``{"task", "config", "learned", "min_id_exact_match", "threshold", "steps",
    "command"}``, written atomically beside the run folder.
    """
    from omegaconf import OmegaConf

    from posenc.io import atomic_write_json
    from posenc.run.execute import run

    cfg = compose_control(name, overrides, quick=quick)
    metrics = run(cfg, reporter) if reporter is not None else run(cfg)
    threshold = float(cfg.eval.threshold)
    learned, low = verdict(metrics, threshold)
    record = {
        "task": str(cfg.task.name),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "learned": learned,
        "min_id_exact_match": low,
        "threshold": threshold,
        "steps": int(metrics["train"]["steps"]),
        "command": command or command_line(name, overrides, quick),
    }
    path = control_folder(cfg.runs_root, name, quick) / CONTROL_JSON
    atomic_write_json(path, record)
    return record, metrics, path
