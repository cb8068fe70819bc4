"""A run's specification: everything a run is, worked out once and read by every command.

`specify` turns a composed config into a `RunSpec`: the config with its ``auto`` rules
resolved (`resolve_auto`) and its label set, the run folder (`run_dir`), the identity that
decides resume and skip (`posenc.runfolder.config_identity`) and the folder's status
(`run_status`: new, resume, finished, or another config's). ``posenc train`` plans its one
run from it; a sweep's parent specifies every combination, writes each job its
specification (`write_spec`) and the job runs what it reads (`read_spec`), composing
nothing. Torch-free: ``train.precision=auto`` depends on the machine a run lands on, so the
run resolves it (`posenc.precision`) and records what it became (``precision_used``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from posenc.runfolder import CHECKPOINT, CONFIG, config_identity, is_finished, run_folder
from posenc.schema import encoding_label, resolved_embed_init

NEW = "new"
RESUME = "resume"
FINISHED = "finished"
FOREIGN = "another config's"  # a finished or unfinished run of a different config


@dataclass
class RunSpec:
    """One run, resolved: its config, label, folder and the folder's status when specified."""

    cfg: DictConfig
    run_dir: Path
    status: str

    @property
    def label(self) -> str:
        return encoding_label(self.cfg.encoding)

    @property
    def identity(self) -> dict:
        return config_identity(self.cfg)


def resolve_auto(cfg: DictConfig, given: list[str] | tuple[str, ...] = ()) -> None:
    """The choices file's values and the ``auto`` values a config can hold, resolved in place
    (the one place that does). First the choices file ``choices`` names, if any
    (`posenc.choices.apply_choices`; ``given``: the overrides, none of which may set a chosen
    key).

    ``model.embed_init=auto`` -> the token-embedding init the encoding declares
    (`PositionalEncoding.token_scale`: ``gpt`` for ALiBi, ``scaled`` for the others; Press
    et al. 2022 trained ALiBi with GPT-2's unscaled embeddings), written into the config: a
    run records the scale it trained with, and its identity is that of the same run with the
    scale given explicitly. A composite encoding (``combo``, ``randomized``, the hybrids)
    takes its own class's, ``scaled``."""
    from posenc import encodings, plugins
    from posenc.choices import apply_choices

    apply_choices(cfg, given)  # a choices file's values for this encoding (posenc tune)
    if cfg.model.embed_init != "auto":
        return
    name = str(cfg.encoding.name)
    if plugins.is_plugin("encoding", name):
        plugins.load("encoding")
    with open_dict(cfg):
        cfg.model.embed_init = resolved_embed_init("auto", encodings.info(name).cls.token_scale)


def variant_label(cfg: DictConfig, variant: str) -> str:
    """A sweep's run named after its swept hyperparameters: ``rope@model.n_layers=2``.

    Runs that differ only in a swept key such as ``model.n_layers`` would otherwise share
    one run folder; the label names the folder, the table row and the TensorBoard run."""
    label = encoding_label(cfg.encoding)
    return f"{label}@{variant}".replace("/", "_") if variant else label


def run_dir(cfg: DictConfig) -> Path:
    """The run's folder: ``run_dir`` if set, else the layout of `posenc.runfolder.run_folder`."""
    if cfg.run_dir:
        return Path(str(cfg.run_dir))
    return run_folder(
        cfg.runs_root, cfg.experiment, cfg.task.name, encoding_label(cfg.encoding), cfg.seed
    )


def run_status(folder: Path, cfg: DictConfig) -> str:
    """`NEW`, `RESUME`, `FINISHED` (with this config) or `FOREIGN`. A folder without a saved
    config, or whose config cannot be read, counts as another config's once it holds a
    finished run or a checkpoint; empty or holding neither, it is new."""
    folder = Path(folder)
    finished = is_finished(folder)
    if not finished and not (folder / CHECKPOINT).exists():
        return NEW
    saved = folder / CONFIG
    if not saved.is_file():  # deleted, or never written: whose run it is cannot be told
        return FOREIGN
    try:
        same = config_identity(OmegaConf.load(saved)) == config_identity(cfg)
    except Exception:  # unreadable: not this config's
        same = False
    if not same:
        return FOREIGN
    return FINISHED if finished else RESUME


def differences(folder: Path, cfg: DictConfig, limit: int = 4) -> str:
    """What the config saved in ``folder`` and ``cfg`` set differently, e.g.
    ``encoding.scale: 1.0 there, 2.0 here``; "" when nothing (or the file cannot be read)."""
    try:
        there = _flat(config_identity(OmegaConf.load(Path(folder) / CONFIG)))
    except Exception:
        return ""
    here = _flat(config_identity(cfg))
    keys = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
    missing = "(unset)"
    parts = [f"{k}: {there.get(k, missing)} there, {here.get(k, missing)} here" for k in keys]
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def specify(cfg: DictConfig, variant: str = "", given: list[str] | tuple[str, ...] = ()) -> RunSpec:
    """The run ``cfg`` describes, resolved: choices and ``auto`` values (``given``: the
    overrides that composed it), the label (``variant``: a sweep's swept keys,
    `variant_label`), the folder and its status. Changes ``cfg``."""
    resolve_auto(cfg, given)
    if variant:
        with open_dict(cfg):
            cfg.encoding.label = variant_label(cfg, variant)
    folder = run_dir(cfg)
    return RunSpec(cfg, folder, run_status(folder, cfg))


def write_spec(spec: RunSpec, path: Path) -> None:
    """The job's specification: its resolved config as YAML (atomically)."""
    from posenc.io import atomic_write_text

    atomic_write_text(Path(path), OmegaConf.to_yaml(spec.cfg, resolve=True))


def read_spec(path: Path, **execution: Any) -> RunSpec:
    """A specification `write_spec` wrote, on the schema, with ``execution`` keys (threads,
    set where the job runs) applied; its status read from the folder now."""
    from posenc.schema import with_defaults

    cfg = with_defaults(OmegaConf.load(Path(path)))
    with open_dict(cfg):
        for key, value in execution.items():
            cfg[key] = value
    folder = run_dir(cfg)
    return RunSpec(cfg, folder, run_status(folder, cfg))
