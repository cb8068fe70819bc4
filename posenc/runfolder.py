"""A run folder's file names, in one torch-free module that the run, the sweep, the report
and the command line share.

``runs/<experiment>/<task>/<encoding>/seed<k>/`` holds ``config.yaml`` (the resolved config),
``checkpoint.pt`` (the last checkpoint), ``metrics.json`` (written last: its presence marks the
run finished), ``error.json`` (a failed run in a sweep), ``eval-<tag>.json`` (re-evaluations),
``train.log`` and TensorBoard events.
An experiment folder holds the report: ``results.csv``, ``report.md`` and ``plots/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
ERROR = "error.json"
LOG = "train.log"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
PLOTS = "plots"
EVALUATION = "eval-{tag}.json"  # one per `posenc eval --tag TAG` of a finished run
SEED_FOLDER = "seed{seed}"  # the last level of the layout: seed0, seed1, ...
CONTROLS = (
    "controls"  # <runs_root>/controls/<name>/control.json: a positive control (posenc check-task)
)
CONTROL_JSON = "control.json"


def run_folder(runs_root, experiment, task: str, label: str, seed: int) -> Path:
    """``<runs_root>/<experiment>/<task>/<label>/seed<k>``: a run's folder when no
    ``run_dir`` names one (`posenc.run.spec.run_dir`)."""
    return Path(str(runs_root)) / str(experiment) / str(task) / str(label) / seed_folder(seed)


def evaluation_file(tag: str) -> str:
    return EVALUATION.format(tag=tag)


def seed_folder(seed: int | str) -> str:
    return SEED_FOLDER.format(seed=seed)


def folder_seed(name: str) -> int | None:
    """The seed a `seed_folder` name holds (``seed3`` -> 3), or None for another name."""
    prefix, _, suffix = SEED_FOLDER.partition("{seed}")
    digits = name.removeprefix(prefix).removesuffix(suffix)
    return int(digits) if name.startswith(prefix) and digits.isdigit() else None


# Settings that change how a run is executed or shown, or where it is written, not what it
# computes. ``experiment`` names the folder under runs_root: a finished run copied into
# another experiment's folder is the same run there (the default comparison reuses the runs
# of its parametrisations' own experiments: docs/results.md).
EXECUTION_KEYS = (
    "overwrite", "progress", "threads", "device", "run_dir", "runs_root", "data_dir", "experiment"
)  # fmt: skip
# Metadata carried into config.yaml for the report: never numbers (``choices``: which file
# chose the values the config holds, `posenc.choices`).
METADATA_KEYS = ("paper", "choices")
# Keys a config.yaml may hold that the config does not have: ``compare``, a copy of the
# preset's runs (which presets declare as ``hydra.sweeper.params``). Ignored on reading.
# Each with what replaced it, for the one-line error a user's old YAML gets (posenc.checks).
RETIRED_KEYS = {
    "compare": "a preset declares its runs as hydra.sweeper.params (encoding, task, seed) and "
    "experiment: NAME now; move the compare: block there (docs/experiments.md)",
}
# Options that a config.yaml may lack, at the values that reproduce a run saved without
# them: a config without the option still matches one that has it at this value, and reads
# back with it (`read_config`; encodings that take the parameter, `posenc.encodings.registry`).
LEGACY_DEFAULTS: dict[tuple[str, str], Any] = {
    ("task", "answer"): "eos",
    ("task", "bos"): True,
    ("model", "embed_init"): "scaled",
    ("model", "bias"): True,
    ("model", "tie_embeddings"): False,
    ("model", "mixers"): None,  # attention in every layer
    ("train", "decay_embeddings"): False,
    ("train", "batching"): "mixed",
    ("train", "precision"): "fp32",
    ("train", "compile"): False,
    ("train", "fused_adamw"): False,
    ("train", "stop_at"): None,
    ("train", "until_fit"): False,  # trained exactly train.steps
    ("train", "max_steps"): None,  # (until_fit's ceiling)
    ("eval", "val_share"): 0.0,  # no validation lengths: every length a test length
    ("eval", "val_samples"): 50,  # (validation examples: a run saved without them had none)
    ("eval", "val_seed"): 4321,
    ("encoding", "layer_shared"): False,  # KERPLE: one (r1, r2) per layer
    ("encoding", "scale_position_term"): False,  # CoPE: q·e[p] added after the 1/√d
    ("encoding", "amplitude"): None,  # sinusoidal: sized to the token embeddings
    ("encoding", "max_window"): None,  # Hard-ALiBi: window h + 1 for masked head h
    ("encoding", "gate_type"): "full",  # FoX: the gate reads the input (w·x + b)
}

# The same for options of one task or encoding, whose value for old runs depends on which
# (section, name, key): Abacus drew its offset per batch, coupling per sequence; Abacus gave
# the non-digit tokens id 0, coupling the start.
NAMED_LEGACY_DEFAULTS: dict[tuple[str, str, str], Any] = {
    ("task", "addition", "independent_lengths"): False,  # operands of n digits (or variable_digits)
    ("encoding", "abacus", "offset_per"): "batch",
    ("encoding", "coupled", "offset_per"): "sequence",
    ("encoding", "abacus", "other_ids"): "zero",
    ("encoding", "coupled", "other_ids"): "start",
}


def _named_legacy(tree: dict) -> list[tuple[str, str, Any]]:
    """(section, key, value) of the `NAMED_LEGACY_DEFAULTS` entries for the task and the
    encoding that ``tree`` (a config as a dict) names."""
    return [
        (section, key, value)
        for (section, name, key), value in NAMED_LEGACY_DEFAULTS.items()
        if isinstance(tree.get(section), dict) and tree[section].get("name") == name
    ]


def config_identity(cfg) -> dict:
    """The part of a config (a DictConfig) that determines the numbers, for resume and skip
    checks: no execution or metadata keys, no option at its `LEGACY_DEFAULTS` (or, for its
    task and encoding, `NAMED_LEGACY_DEFAULTS`) value, no
    ``train.buckets``: like ``threads``, it decides how a batch is computed (the pieces'
    gradients sum to the whole batch's), not what is trained; and no
    ``train.compile_min_steps``: it decides only what ``train.compile=auto`` becomes, and
    the ``train.compile`` it became (true or false, `posenc.run.spec.resolve_compile`) is
    in the identity, since a compiled step rounds differently from an eager one."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    for key in (*EXECUTION_KEYS, *METADATA_KEYS, *RETIRED_KEYS):
        tree.pop(key, None)
    legacy = [(s, k, v) for (s, k), v in LEGACY_DEFAULTS.items()] + _named_legacy(tree)
    for section, key, value in legacy:
        part = tree.get(section)
        if isinstance(part, dict) and key in part and part[key] == value:
            del part[key]
    train = tree.get("train")
    if isinstance(train, dict):
        train.pop("buckets", None)
        train.pop("compile_min_steps", None)
    return tree


def legacy_values(section: str) -> dict[str, Any]:
    """The `LEGACY_DEFAULTS` of one section: ``{"layer_shared": False, ...}``."""
    return {key: value for (part, key), value in LEGACY_DEFAULTS.items() if part == section}


def read_config(run_dir: Path):
    """The config a run folder was trained with, as a DictConfig on the schema: without
    `RETIRED_KEYS`, an option it lacks at its `LEGACY_DEFAULTS` (`NAMED_LEGACY_DEFAULTS`)
    value, and any other key it lacks at its default (`posenc.schema`)."""
    from omegaconf import OmegaConf, open_dict

    from posenc.schema import with_defaults

    saved = OmegaConf.load(Path(run_dir) / CONFIG)
    with open_dict(saved):
        for key in RETIRED_KEYS:
            saved.pop(key, None)
        sections = ("task", "model", "train", "eval")  # encoding's: by encoding, below
        missing = [(s, k, v) for s in sections for k, v in legacy_values(s).items()]
        tree = OmegaConf.to_container(saved, resolve=False)
        missing += _named_legacy(tree)  # encoding options too: they differ by encoding
        for section, key, value in missing:
            if section in saved and key not in saved[section]:
                saved[section][key] = value
    return with_defaults(saved)


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (its metrics.json is written last)."""
    return (Path(run_dir) / METRICS).is_file()


def same_config(run_dir: Path, cfg) -> bool:
    """Whether the config saved in ``run_dir`` computes what ``cfg`` computes (False without
    one). Raises what reading it raises."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / CONFIG
    return path.is_file() and config_identity(OmegaConf.load(path)) == config_identity(cfg)
