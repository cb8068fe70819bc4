"""The choices file: per-encoding settings chosen on validation (`posenc tune`), applied to
every run that names it (``choices=FILE``, ``posenc compare --choices FILE``).

A choices file is YAML::

    task: copy
    split: {train: [1, 20], validation: [21, 30]}
    made_by: "posenc tune -e alibi,rope --param model.embed_init=choice(scaled,gpt) ..."
    choices:
      alibi: {model.embed_init: gpt, train.lr: 0.002}
      rope: {model.embed_init: scaled}

`apply_choices` sets the overrides listed under the run's encoding label (an encoding the
file does not list keeps the config's values) and replaces ``choices`` in the config by the
record ``{file, sha256, values}``, so every run's config.yaml and metrics.json say which file
(and which version of it) chose what (``file`` relative to the working directory when the file
lies under it: `recorded_path`). Torch-free: it runs where a config is composed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from posenc.errors import ConfigError, first_line
from posenc.io import atomic_write_json, atomic_write_text
from posenc.schema import encoding_label

KEYS = ("task", "split", "made_by", "choices", "trials")


def read_choices(path: str | Path) -> tuple[dict[str, Any], str]:
    """The choices file at ``path`` as a mapping, checked, and the sha256 of its bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"choices file {path} cannot be read ({first_line(exc)})") from exc
    try:
        tree = OmegaConf.to_container(OmegaConf.create(data.decode()), resolve=True)
    except Exception as exc:
        raise ConfigError(f"choices file {path} is not YAML ({first_line(exc)})") from exc
    if not isinstance(tree, dict) or not isinstance(tree.get("choices"), dict):
        raise ConfigError(
            f"choices file {path} has no 'choices:' mapping of encoding -> {{override: value}} "
            "(posenc tune writes one)"
        )
    for label, values in tree["choices"].items():
        if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
            raise ConfigError(
                f"choices file {path}: choices.{label} must map dotted keys to values, "
                f"e.g. {{model.embed_init: gpt}}, got {values!r}"
            )
    return tree, hashlib.sha256(data).hexdigest()


def apply_choices(cfg: DictConfig, given: list[str] | tuple[str, ...] = ()) -> None:
    """Apply the choices file ``cfg.choices`` names to ``cfg``, in place: the overrides chosen
    for this run's encoding, then ``cfg.choices`` = ``{file, sha256, values}``. A no-op when
    ``choices`` is null or already applied. ``given``: the command line's overrides; one
    that sets a chosen key is refused (the file and the command line would disagree)."""
    source = cfg.get("choices")
    if source is None or isinstance(source, DictConfig):
        return
    tree, sha256 = read_choices(str(source))
    task = tree.get("task")
    if task is not None and str(task) != str(cfg.task.name):
        raise ConfigError(
            f"choices file {source} was made on task {task!r}; this run trains "
            f"{cfg.task.name!r}: tune on it (posenc tune task={cfg.task.name}) or drop choices"
        )
    values = dict(tree["choices"].get(encoding_label(cfg.encoding)) or {})
    set_here = {o.split("=", 1)[0].lstrip("+~") for o in given if "=" in o}
    for key in values:
        if key in set_here:
            raise ConfigError(
                f"{key} is both given and chosen for {encoding_label(cfg.encoding)} by the "
                f"choices file {source}; give one of them"
            )
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"choices file {source}: {key} is not a config key")
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)
        cfg.choices = {"file": recorded_path(source), "sha256": sha256, "values": values}
    from posenc.checks import check_values

    check_values(cfg)  # a chosen value is checked as a given one is


_MISSING = object()


def recorded_path(source: str | Path) -> str:
    """The choices file's path as a run records it: relative to the working directory the
    command was started in when the file lies under it (``docs/choices/compare.yaml``, as
    the documented command names it; ``posenc compare`` hands its jobs an absolute path),
    else absolute. Older runs recorded it absolute; the sha256 beside it identifies the
    content either way, and ``choices`` is no part of a run's identity
    (`posenc.runfolder.METADATA_KEYS`), so neither form changes resume or skip."""
    path = Path(os.path.abspath(source))
    try:
        return path.relative_to(_started_in()).as_posix()
    except ValueError:
        return str(path)


def _started_in() -> Path:
    """The working directory the command started in (Hydra's, inside one of its jobs)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(os.path.abspath(HydraConfig.get().runtime.cwd))
    except Exception:  # no Hydra, or a config without its runtime: this process's own
        pass
    return Path.cwd()


def write_choices(
    path: str | Path,
    *,
    task: str,
    split: dict[str, list[int] | None],
    made_by: str,
    choices: dict[str, dict[str, Any]],
    trials: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """Write a choices file (atomically), in `KEYS` order; ``trials`` (the evidence: every
    trial's settings and validation scores, per encoding, `trial_summary`) when given."""
    from posenc.io import atomic_write_text

    tree: dict[str, Any] = {"task": task, "split": split, "made_by": made_by, "choices": choices}
    if trials is not None:
        tree["trials"] = trials
    atomic_write_text(Path(path), OmegaConf.to_yaml(OmegaConf.create(tree)))


def trial_summary(record: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """One trial's line in a choices file's ``trials``: its settings of ``keys`` (those the
    search chose among), whether it fit its training
    range on validation, its validation minimum ID and OOD exact match, the steps it trained
    and took to fit, and its objective (`posenc.tuning.objective`). A trial trained at several
    seeds (``posenc tune --seeds``) gives the means over them (it fits when every seed does)
    and, under ``seeds``, each seed's own figures."""
    v = record["validation"]

    def rounded(x: Any) -> Any:
        return round(float(x), 4) if isinstance(x, int | float) else None

    line = {
        "settings": {k: v for k, v in record["settings"].items() if k in keys},
        "fits": bool(v["fits_training_range"]),
        "min_id_exact_match": rounded(v.get("min_id_exact_match")),
        "validation_ood_exact_match": rounded(v.get("ood_exact_match")),
        "steps_trained": record.get("steps_trained"),
        "steps_to_fit": record.get("steps_to_fit"),
        "objective": rounded(record["objective"]),
    }
    if "seeds" in record:
        line["seeds"] = [
            {
                "seed": s["seed"],
                "fits": s["fits_training_range"],
                "min_id_exact_match": rounded(s.get("min_id_exact_match")),
                "validation_ood_exact_match": rounded(s.get("ood_exact_match")),
                "steps_trained": s.get("steps_trained"),
                "objective": rounded(s["objective"]),
            }
            for s in record["seeds"]
        ]
    return line


def copy_portable(source: Path, target: Path) -> None:
    """Copy a run's ``metrics.json`` or ``config.yaml`` as `posenc publish` does: with the
    choices file's path the way a run records it now (`recorded_path`): relative to the folder
    ``posenc publish`` runs in when it lies under it. Runs made before that was recorded (and
    any run handed an absolute path) hold it absolute, and a report names the file by what a
    run holds, so an absolute path of the machine the runs were made on
    (``/home/me/posenc/docs/choices/compare.yaml``) would reach the published tables. The path
    is metadata, no part of a run's identity (`posenc.runfolder.METADATA_KEYS`); the file's
    sha256 stays beside it. Every other byte is copied as it is."""
    text = source.read_text()
    if source.name == "metrics.json":
        data = json.loads(text)
        choices = (data.get("protocol") or {}).get("choices")
        if make_portable(choices):
            atomic_write_json(target, data)
            return
    elif source.name == "config.yaml" and "choices:" in text:
        cfg = OmegaConf.create(text)
        if make_config_portable(cfg):
            atomic_write_text(target, OmegaConf.to_yaml(cfg))
            return
    shutil.copyfile(source, target)


def make_config_portable(cfg: DictConfig) -> bool:
    """`make_portable` on a run config's ``choices`` record; whether it changed."""
    if not isinstance(cfg.get("choices"), DictConfig):
        return False
    plain = OmegaConf.to_container(cfg.choices)
    if not make_portable(plain):
        return False
    cfg.choices.file = plain["file"]
    return True


def make_portable(choices: Any) -> bool:
    """Rewrite ``choices["file"]`` in place, when it is an absolute path under the working
    directory, relative to it; whether it changed."""
    if not isinstance(choices, dict) or not isinstance(choices.get("file"), str):
        return False
    if not Path(choices["file"]).is_absolute():
        return False  # relative to the folder its run started in: the folder's to say
    try:  # this process's own folder (`recorded_path` would read a Hydra job's, if one ran)
        choices["file"] = Path(choices["file"]).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return False
    return True
