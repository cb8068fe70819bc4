"""A run's specification: everything a run is, worked out once and read by every command.

`specify` turns a composed config into a `RunSpec`: the config with its ``auto`` rules
resolved (`resolve_auto`) and its label set, the run folder (`run_dir`), the identity that
decides resume and skip (`posenc.runfolder.config_identity`) and the folder's status
(`run_status`: new, resume, finished, or another config's). ``posenc train`` plans its one
run from it; a sweep's parent specifies every combination, writes each job its
specification (`write_spec`) and the job runs what it reads (`read_spec`), composing
nothing. ``train.precision=auto`` depends on the machine a run lands on, so the run resolves it
(`posenc.precision`) and records what it became (``precision_used``). ``train.compile=auto``
and ``train.fused_adamw=auto`` are part of a run's identity, so they are resolved here
(`resolve_compile`), from the config and a measurement of the machine the run trains on, and
the config records the true or false they became. Torch-free but for that measurement's key
(a config that asks for ``train.compile=auto`` on a long run).
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


def resolve_auto(
    cfg: DictConfig,
    given: list[str] | tuple[str, ...] = (),
    *,
    here: bool | None = True,
    shown: set[str] | None = None,
) -> None:
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

    ``train.compile=auto`` and ``train.fused_adamw=auto`` -> true or false (`resolve_compile`;
    ``here``: whether the run trains on this machine, at ``cfg.threads``; None leaves them
    ``auto`` for a later call that knows), with a one-line note on stderr where ``auto``
    keeps a long run eager. ``shown``: notes already printed
    (a sweep's runs share them), not printed again."""
    from posenc import encodings
    from posenc.choices import apply_choices

    apply_choices(cfg, given)  # a choices file's values for this encoding (posenc tune)
    note = resolve_compile(cfg, here=here)
    if note and (shown is None or note not in shown):
        print(note, file=sys.stderr)
        if shown is not None:
            shown.add(note)
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
MEASURE_COMPILE = "python benchmarks/speed.py --rows compile --record threads={threads}"


def resolve_compile(cfg: DictConfig, *, here: bool | None = True) -> str:
    """``train.compile=auto`` and ``train.fused_adamw=auto`` resolved in place; the one-line
    note to show when ``auto`` keeps a long run eager ("" otherwise). Explicit true and false
    stay. ``compile=auto`` becomes true only where compiling was measured to pay:

    - the device is a CPU or CUDA (`COMPILE_DEVICES`);
    - ``train.steps >= train.compile_min_steps`` (1000): a cold compile takes one to two minutes
      on one core and a cached one seconds (docs/performance.md), a small share of such a
      run; the few steps of tests and smoke runs stay eager, without a note;
    - the encoding traces as one graph: one that declares a graph break
      (`PositionalEncoding.graph_break`, a plugin's too; a composite's parts count) trains
      eagerly;
    - this machine's record (`posenc.precision.compile_speedup`, written by
      `MEASURE_COMPILE`) shows the compiled step at least
      `posenc.precision.COMPILE_MIN_SPEEDUP` times as fast as the eager one at the run's
      threads (``cfg.threads``, else torch's default, `run_threads`): on the 2-core AMD
      EPYC compile gained 1.1-1.4x at one thread and at most 1.04x at two
      (docs/performance.md), so a comparison's one-thread jobs and a two-thread ``posenc
      train`` decide apart. posenc ships no record: a machine without one trains eagerly.
      ``here=False`` (a run that trains on another machine, e.g. a Slurm node the parent
      plans for) trains eagerly: the measurement that decides is the node's, which the
      planning machine cannot read.
      ``here=None`` leaves both ``auto``: a sweep's parent composes before it knows a run's
      threads, and resolves when it specifies the run (or the job, on its machine).

    ``fused_adamw=auto`` becomes what ``compile`` became: the accuracy check covers the pair.
    The run's config records the booleans, and its identity is theirs."""
    # a partial config (e.g. the model and encoding alone): nothing to resolve
    if "train" not in cfg or here is None:
        return ""
    train, note = cfg.train, ""
    with open_dict(cfg):
        if isinstance(train.compile, str) and train.compile == "auto":
            train.compile, note = _compile_pays(cfg, here)
        if isinstance(train.fused_adamw, str) and train.fused_adamw == "auto":
            train.fused_adamw = train.compile is True
    return note


def compile_pays(
    device: str, steps: int, min_steps: int, graph_break: str | None, speedup: float | None
) -> bool:
    """`resolve_compile`'s rule, the one home of it: a CPU or CUDA device, at least
    ``min_steps`` steps, no graph break, and a measured step ``speedup`` (eager/compiled, at
    the run's threads) of at least `posenc.precision.COMPILE_MIN_SPEEDUP`."""
    from posenc.precision import COMPILE_MIN_SPEEDUP

    measured = speedup is not None and speedup >= COMPILE_MIN_SPEEDUP
    return (
        _long_run_on_a_compiling_device(device, steps, min_steps) and not graph_break and measured
    )


def _long_run_on_a_compiling_device(device: str, steps: int, min_steps: int) -> bool:
    return str(device).split(":")[0] in COMPILE_DEVICES and int(steps) >= int(min_steps)


def run_threads(threads: int | None) -> int:
    """The torch threads a run on this machine gets: ``threads``, else torch's default (what
    ``compile_speedup`` is keyed by, measured and read)."""
    if threads is not None:
        return int(threads)
    import torch

    return torch.get_num_threads()


def _compile_pays(cfg: DictConfig, here: bool) -> tuple[bool, str]:
    """(compile?, the note when a long run stays eager)."""
    from posenc.encodings.registry import graph_break

    tr = cfg.train
    if not _long_run_on_a_compiling_device(cfg.device, tr.steps, tr.compile_min_steps):
        return False, ""  # no note
    label = encoding_label(cfg.encoding)
    reason = graph_break({**encoding_params(cfg.encoding), "name": _load_encoding(cfg)})
    if reason:
        return False, (
            f"note: {label} trains eagerly under train.compile=auto: its forward pass breaks "
            f"the graph ({reason})"
        )
    if not here:
        return False, (
            "note: train.compile=auto trains eagerly when the runs train on other machines: "
            "whether compile pays is measured per machine, on the machine itself; "
            "train.compile=true compiles"
        )
    from posenc.precision import COMPILE_MIN_SPEEDUP, compile_speedup, resolve_device

    threads = run_threads(cfg.threads)
    speedup = compile_speedup(threads, resolve_device(str(cfg.device)))
    if compile_pays(cfg.device, tr.steps, tr.compile_min_steps, None, speedup):
        return True, ""
    where = f"at {threads} thread{'s' if threads != 1 else ''}"
    if speedup is None:
        why = (
            f"no compile measurement of this machine {where} "
            f"({MEASURE_COMPILE.format(threads=threads)} makes one)"
        )
    else:
        why = f"compile measured {speedup:.2f}x eager {where} here, below {COMPILE_MIN_SPEEDUP}x"
    return False, f"note: train.compile=auto trains eagerly: {why}"


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


def specify(
    cfg: DictConfig,
    variant: str = "",
    given: list[str] | tuple[str, ...] = (),
    *,
    here: bool | None = True,
    shown: set[str] | None = None,
) -> RunSpec:
    """The run ``cfg`` describes, resolved: choices and ``auto`` values (``given``: the
    overrides that composed it; ``here`` and ``shown``: `resolve_auto`'s), the label
    (``variant``: a sweep's swept keys, `variant_label`), the folder and its status. Changes
    ``cfg``."""
    resolve_auto(cfg, given, here=here, shown=shown)
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
