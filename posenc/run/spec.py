"""A run's specification: everything a run is, worked out once and read by every command.

`specify` turns a composed config into a `RunSpec`: the config with its ``auto`` rules
resolved (`resolve_auto`) and its label set, the run folder (`run_dir`), the identity that
decides resume and skip (`posenc.runfolder.config_identity`) and the folder's status
(`run_status`: new, resume, finished, or another config's). ``posenc train`` plans its one
run from it; a sweep's parent specifies every combination, writes each job its
specification (`write_spec`) and the job runs what it reads (`read_spec`), composing
nothing. Torch-free: ``train.precision=auto`` depends on the machine a run lands on, so the
run resolves it (`posenc.precision`) and records what it became (``precision_used``).
``train.compile=auto`` and ``train.fused_adamw=auto`` depend on the config alone, so they are
resolved here (`resolve_compile`) and the config records the true or false they became.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from posenc.runfolder import CHECKPOINT, CONFIG, config_identity, is_finished, run_folder
from posenc.schema import encoding_label, encoding_params, resolved_embed_init

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
    takes its own class's, ``scaled``.

    ``train.compile=auto`` and ``train.fused_adamw=auto`` -> true or false (`resolve_compile`),
    with a one-line note on stderr where the encoding keeps the run eager."""
    from posenc import encodings
    from posenc.choices import apply_choices

    apply_choices(cfg, given)  # a choices file's values for this encoding (posenc tune)
    note = resolve_compile(cfg)
    if note:
        print(note, file=sys.stderr)
    if cfg.model.embed_init != "auto":
        return
    name = _load_encoding(cfg)
    with open_dict(cfg):
        cfg.model.embed_init = resolved_embed_init("auto", encodings.info(name).cls.token_scale)


def _load_encoding(cfg: DictConfig) -> str:
    """The config's encoding name, its plugin loaded if it is one."""
    from posenc import plugins

    name = str(cfg.encoding.name)
    if plugins.is_plugin("encoding", name):
        plugins.load("encoding")
    return name


# Devices where ``train.compile=auto`` may compile (``device=auto`` lands on one of them).
COMPILE_DEVICES = ("cpu", "cuda", "auto")


def resolve_compile(cfg: DictConfig) -> str:
    """``train.compile=auto`` and ``train.fused_adamw=auto`` resolved in place; the one-line
    note to show when the encoding keeps an auto run eager ("" otherwise). Explicit true and
    false stay. ``compile=auto`` becomes true only where compiling pays:

    - the device is a CPU or CUDA (`COMPILE_DEVICES`);
    - ``train.steps >= train.compile_min_steps`` (1000): a cold compile takes about two
      minutes on one core and a cached one seconds (docs/performance.md), a small share of
      such a run; the few steps of tests and smoke runs stay eager;
    - the encoding traces as one graph: one that declares a graph break
      (`PositionalEncoding.graph_break`, a plugin's too; a composite's parts count) trains
      eagerly, and the note says why.

    ``fused_adamw=auto`` becomes what ``compile`` became: the accuracy check covers the pair.
    The run's config records the booleans, and its identity is theirs."""
    # a partial config (e.g. the model and encoding alone): nothing to resolve
    if "train" not in cfg:
        return ""
    train, note = cfg.train, ""
    with open_dict(cfg):
        if isinstance(train.compile, str) and train.compile == "auto":
            train.compile, note = _compile_pays(cfg)
        if isinstance(train.fused_adamw, str) and train.fused_adamw == "auto":
            train.fused_adamw = train.compile is True
    return note


def compile_pays(device: str, steps: int, min_steps: int, graph_break: str | None) -> bool:
    """`resolve_compile`'s rule, the one home of it: a CPU or CUDA device, at least
    ``min_steps`` steps, and no graph break."""
    on_device = str(device).split(":")[0] in COMPILE_DEVICES
    return on_device and int(steps) >= int(min_steps) and not graph_break


def _compile_pays(cfg: DictConfig) -> tuple[bool, str]:
    """(compile?, the note when the encoding alone says no)."""
    from posenc.encodings.registry import graph_break

    tr = cfg.train
    if not compile_pays(cfg.device, tr.steps, tr.compile_min_steps, None):
        return False, ""
    reason = graph_break({**encoding_params(cfg.encoding), "name": _load_encoding(cfg)})
    if reason:
        label = encoding_label(cfg.encoding)
        note = f"note: {label} trains eagerly under train.compile=auto: its forward pass breaks the graph ({reason})"
        return False, note
    return True, ""


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
