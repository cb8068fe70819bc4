"""Re-evaluate a finished run with evaluation-time overrides (``posenc eval RUN_DIR ...``).

The run's ``config.yaml`` and ``checkpoint.pt`` are loaded, overrides such as
``encoding.scaling=yarn encoding.scaling_factor=2`` are applied, the model is rebuilt and
loaded, and every length is scored again on the same frozen evaluation set. The result has
the schema of ``metrics.json`` and goes to ``eval-<tag>.json`` beside it, written
atomically; ``metrics.json`` itself is never touched.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from posenc import tasks
from posenc.checks import inferred
from posenc.config import invalid_value
from posenc.data import by_length, load_eval_set
from posenc.errors import ConfigError, PosencError, first_line
from posenc.io import atomic_write_json
from posenc.report.records import damaged, read_config_dict, read_metrics
from posenc.run.checkpoint import load_weights
from posenc.run.evaluate import evaluate_lengths
from posenc.run.planning import plan
from posenc.run.record import metrics_record
from posenc.runfolder import CHECKPOINT, CONFIG, METRICS, evaluation_file, read_config
from posenc.schema import task_params

# Keys outside ``encoding.*`` that may change at evaluation: none of them changes the model.
EVAL_KEYS = ("eval.batch_size", "eval.greedy", "eval.threshold", "device", "threads", "data_dir")
# Task parameters named ``eval_*`` choose only the frozen evaluation sets (flip_flop's
# ``eval_p_ignore``: the sparse and dense splits), never the training data.
EVAL_TASK_PREFIX = "task.eval_"
_TAG = re.compile(r"^[A-Za-z0-9._+-]+$")


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["encoding.scaling=yarn", ...]`` -> ``[("encoding.scaling", "yarn"), ...]``.

    Values are read by Hydra's override grammar, as ``posenc train`` reads them (``2`` is an
    int, ``null`` None, ``[learned,{name:t5}]`` a list). Only ``encoding.*`` (but not
    ``encoding.name``), `EVAL_KEYS` and a task's ``task.eval_*`` parameters (a new frozen set,
    keyed by them) may be set: anything else would change the model or what it was trained on.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE, e.g. encoding.scaling=pi")
        try:
            (override,) = parser.parse_overrides([item])
        except HydraException as exc:
            raise ConfigError(f"cannot read override {item!r}: {first_line(exc)}") from exc
        key = override.key_or_group
        if override.is_delete() or override.is_sweep_override():
            raise ConfigError(f"override {item!r}: posenc eval takes plain KEY=VALUE overrides")
        if key == "encoding.name":
            raise ConfigError(
                "encoding.name cannot change at evaluation: the checkpoint belongs to the "
                "encoding it was trained with"
            )
        if not (key.startswith(("encoding.", EVAL_TASK_PREFIX)) or key in EVAL_KEYS):
            raise ConfigError(
                f"{key} cannot change at evaluation; allowed: encoding.* (except encoding.name), "
                f"{EVAL_TASK_PREFIX}* (a task's evaluation-only parameters), {', '.join(EVAL_KEYS)}"
            )
        pairs.append((key, override.value()))
    return pairs


def default_tag(pairs: list[tuple[str, Any]]) -> str:
    """``[("encoding.scaling", "yarn"), ("encoding.scaling_factor", 2)]`` ->
    ``scaling-yarn_scaling_factor-2``; ``base`` without overrides. Settings that cannot
    change the scores (threads, device, data_dir, eval.batch_size) are left out."""
    pairs = [
        (k, v) for k, v in pairs if k not in ("threads", "device", "data_dir", "eval.batch_size")
    ]
    if not pairs:
        return "base"
    text = "_".join(f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in pairs)
    return re.sub(r"[^A-Za-z0-9._+-]", "", text) or "custom"


def longest_training_sequence(cfg: DictConfig) -> int:
    """The longest training sequence in tokens (YaRN's original context length L)."""
    task = tasks.build(cfg.task.name, **task_params(cfg.task))
    return task.max_sequence_length(int(cfg.train.max_len), np.random.default_rng(0))


def fill_yarn_length(
    spec: dict, length: Callable[[], int], path: str = "encoding", is_rope: bool | None = None
) -> list[str]:
    """Set ``yarn_original_len`` wherever a RoPE under YaRN scaling lacks it: the encoding
    itself, a combination's parts (``length()``, the longest training sequence) and a
    randomized wrapper's ``base_params`` (its ``max_position``: the positions it was trained
    on span [0, max_position)). Returns the ``key=value`` settings made."""
    made = []
    if is_rope is None:
        is_rope = spec.get("name") == "rope"
    if is_rope and spec.get("scaling") == "yarn" and spec.get("yarn_original_len") is None:
        spec["yarn_original_len"] = length()
        made.append(f"{path}.yarn_original_len={spec['yarn_original_len']}")
    if spec.get("name") == "randomized" and isinstance(spec.get("base_params"), dict):
        # trained on positions drawn from [0, max_position): that is its context in positions
        span = int(spec.get("max_position", 2048))
        made += fill_yarn_length(
            spec["base_params"], lambda: span, f"{path}.base_params", spec.get("base") == "rope"
        )
    for i, part in enumerate(spec.get("parts") or []):
        if isinstance(part, dict):
            made += fill_yarn_length(part, length, f"{path}.parts.{i}")
    return made


def _saved_config(d: Path) -> DictConfig:
    """The run's config.yaml as `read_config` reads it; a damaged one (garbage, truncated, a
    list, no ``encoding:``, ``task:`` or ``model:`` section) is one `UnreadableFileError`
    naming it: its defaults would rebuild some other model."""
    saved = read_config_dict(d)
    for section in ("encoding", "task", "model"):
        if not isinstance((saved or {}).get(section), dict):
            raise damaged(d / CONFIG, f"no {section}: section")
    if not isinstance(saved["encoding"].get("name"), str):  # type: ignore[index]
        raise damaged(d / CONFIG, "no encoding.name")
    try:
        return read_config(d)
    except PosencError:
        raise
    except Exception as exc:  # a value of the wrong type for the schema
        raise damaged(d / CONFIG, first_line(exc)) from exc


def reevaluate(
    run_dir: str | Path,
    overrides: list[str],
    *,
    tag: str | None = None,
    on_length: Callable[[int, dict], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Score a finished run again under ``overrides``; returns the metrics and the file written."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ConfigError(f"run folder {d} does not exist")
    for name in (CONFIG, CHECKPOINT, METRICS):
        if not (d / name).is_file():
            raise ConfigError(f"{d} has no {name}: not a finished posenc run")
    pairs = parse_overrides(overrides)
    tag = default_tag(pairs) if tag is None else tag
    if not _TAG.match(tag):
        raise ConfigError(f"tag {tag!r} may only use letters, digits and . _ + -")

    cfg = _saved_config(d)
    trained = read_metrics(d / METRICS)  # damaged: one line now, not after the evaluation
    for key, value in pairs:
        # typed by the run's own value, as posenc train types it by the YAML's default
        if key.startswith("encoding.") and (check := inferred(OmegaConf.select(cfg, key))):
            check(value, key, {})
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        except Exception as exc:  # a value of the wrong type for a typed key
            raise ConfigError(invalid_value(exc) or f"{key}={value}: {first_line(exc)}") from exc
    applied = [f"{key}={value}" for key, value in pairs]
    enc = OmegaConf.to_container(cfg.encoding)
    filled = fill_yarn_length(enc, lambda: longest_training_sequence(cfg))
    if filled:
        cfg.encoding = OmegaConf.create(enc)
        applied += filled

    p = plan(cfg)
    load_weights(d / CHECKPOINT, p.model, p.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)

    eval_ds = load_eval_set(p.task, p.eval_lengths, cfg.eval.n_samples, cfg.eval.seed, cfg.data_dir)
    generator = torch.Generator(device=p.device).manual_seed(cfg.eval.seed)
    t0 = time.perf_counter()
    per_length = evaluate_lengths(
        p.model,
        by_length(eval_ds),
        batch_size=cfg.eval.batch_size,
        greedy=cfg.eval.greedy,
        device=p.device,
        generator=generator,
        on_length=on_length,
        fmt=p.fmt,
    )
    seconds = time.perf_counter() - t0
    evaluation = {
        "seconds": round(seconds, 3),
        "greedy": bool(cfg.eval.greedy),
        "tag": tag,
        "overrides": applied,
    }
    train = trained.get("train") or {}
    # the run's fit and budget are the trained run's, decided on validation while it trained:
    # a re-evaluation re-scores the test set only
    metrics = metrics_record(
        cfg,
        p.task.name,
        per_length,
        train=train,
        evaluation=evaluation,
        validation=trained.get("validation"),
        protocol=trained.get("protocol"),
    )
    path = d / evaluation_file(tag)
    atomic_write_json(path, metrics)
    return metrics, path
