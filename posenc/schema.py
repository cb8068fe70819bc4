"""The config's types and defaults: one dataclass per section (``model``, ``train``,
``eval``) and one for the root, registered with Hydra's ConfigStore as the schema that
``configs/config.yaml`` composes first, so OmegaConf type-checks every YAML value and every
override itself (``train.steps=abc`` fails while composing).

These dataclasses are where the defaults live. The YAMLs under ``configs/`` repeat them
beside the comments users read, and a test fails if a YAML value and its default disagree.
The ``encoding`` and ``task`` sections stay open (each encoding and task has its own
parameters, plugins included); their values are typed by their own YAML (`posenc.checks`).
Ranges and values that depend on each other (``train.min_len <= train.max_len``) are checked
in `posenc.checks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, get_type_hints  # noqa: UP035  (OmegaConf reads these annotations)

from omegaconf import MISSING, DictConfig, OmegaConf

# The name of the root schema in Hydra's ConfigStore (first in configs/config.yaml's defaults).
SCHEMA_NAME = "posenc_schema"

# auto: the encoding's own (posenc.run.spec.resolve_auto), chosen on test lengths; accepted for
# old configs, never a default (a choices file from `posenc tune` chooses per encoding instead)
EMBED_INITS = ("scaled", "gpt", "auto")
MIXERS = ("attention", "delta")  # delta: DeltaNet (posenc.mixers)


def resolved_embed_init(embed_init: str, token_scale: str) -> str:
    """``model.embed_init`` as trained: ``auto`` is the encoding's own ``token_scale``
    (`PositionalEncoding.token_scale`); the one home of that rule (`posenc.run.spec.resolve_auto`
    and `posenc.model.Transformer` both ask it)."""
    return token_scale if embed_init == "auto" else embed_init


BATCHING = ("by_length", "mixed", "bucketed")
PRECISIONS = ("fp32", "bf16", "auto")  # auto: posenc.precision
SWITCH_OR_AUTO = (True, False, "auto")  # train.compile, train.fused_adamw
# Keys of ``task.*`` that choose the sequence format (`posenc.tasks.format.SequenceFormat`), not data.
FORMAT_KEYS = ("answer", "bos")


@dataclass
class Model:
    """``model.*``: a decoder-only, pre-LayerNorm transformer."""

    d_model: int = 128  # residual width, a multiple of n_heads
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512  # MLP hidden width
    dropout: float = 0.0
    max_len: int = 512  # longest sequence in tokens
    embed_init: str = "scaled"  # scaled: N(0, 1/d)·√d; gpt: N(0, 0.02); auto: the encoding's
    bias: bool = True  # biases in the attention and MLP linear layers
    tie_embeddings: bool = False  # the LM head shares the token-embedding matrix
    # Sequence mixer per layer (MIXERS): one entry for every layer or one per layer; null:
    # attention everywhere. [delta]: DeltaNet everywhere; [delta,delta,delta,attention]: a hybrid.
    mixers: Optional[list[str]] = None  # noqa: UP045


@dataclass
class Train:
    """``train.*``: AdamW, linear warm-up then cosine decay, gradient clipping."""

    steps: int = 3000
    batch_size: int = 64
    min_len: int = 1
    max_len: int = 20
    lr: float = 3.0e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    batching: str = "bucketed"  # one of BATCHING
    buckets: int = 4
    precision: str = "fp32"  # one of PRECISIONS
    # compile and fused_adamw: true, false or auto (SWITCH_OR_AUTO; auto: compile where this
    # machine measured it to pay at the run's threads, posenc.run.spec.resolve_compile); a run
    # records the true or false they became.
    # Both default to false; why: docs/performance.md.
    compile: Any = False  # train through torch.compile
    compile_min_steps: int = 1000  # compile=auto compiles a run of at least this many steps
    fused_adamw: Any = False  # torch's fused AdamW kernel: faster, rounds differently
    stop_at: Optional[float] = None  # noqa: UP045
    until_fit: bool = True  # past `steps`, train on until validation fits (posenc.run.session)
    max_steps: Optional[int] = None  # noqa: UP045  until_fit's ceiling; null: see ceiling()
    log_every: int = 25
    eval_every: int = 500
    eval_lengths: list[int] = field(default_factory=lambda: [10, 20, 30, 40])
    checkpoint_every: int = 500


CEILING_FACTOR = 4  # train.max_steps=null: until_fit trains at most this many times train.steps


def ceiling(train: Any) -> int:
    """The most steps a run trains under ``train.until_fit``: ``train.max_steps``, else
    `CEILING_FACTOR` times ``train.steps``."""
    if train.max_steps is not None:
        return int(train.max_steps)
    return CEILING_FACTOR * int(train.steps)


@dataclass
class Eval:
    """``eval.*``: the final per-length evaluation on frozen sets."""

    min_len: int = 1
    max_len: int = 60
    lengths: Optional[list[int]] = None  # noqa: UP045
    n_samples: int = 100
    batch_size: int = 128
    seed: int = 1234
    greedy: bool = False
    threshold: float = 0.9
    val_share: float = 0.25  # of the lengths past the training range, the first this share validate
    val_samples: int = 50  # validation examples per length, none of them in the test set
    val_seed: int = 4321  # seed of the validation examples (apart from `seed`, the test's)


@dataclass
class Root:
    """The whole config, in the order config.yaml is written."""

    encoding: Any = MISSING  # configs/encoding/NAME.yaml or a plugin's node
    task: Any = MISSING  # configs/task/NAME.yaml or a plugin's node, plus FORMAT_KEYS
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    paper: Any = None  # published figures for the report's paper column (metadata)
    experiment: str = "default"
    seed: int = 0
    run_dir: Optional[str] = None  # noqa: UP045
    runs_root: str = "runs"
    data_dir: str = "${runs_root}/_data"
    overwrite: bool = False
    threads: Optional[int] = None  # noqa: UP045
    device: str = "cpu"
    progress: bool = True
    choices: Any = None  # a choices file (posenc tune); applied, {file, sha256, values}


SECTIONS = {"model": Model, "train": Train, "eval": Eval}


def switches() -> set[str]:
    """The dotted keys whose type is bool (``model.bias``, ``overwrite``, ...)."""
    keys = {f.name for f in fields(Root) if get_type_hints(Root)[f.name] is bool}
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        keys |= {f"{section}.{f.name}" for f in fields(cls) if hints[f.name] is bool}
    return keys


def store() -> None:
    """Register `Root` with Hydra's ConfigStore under `SCHEMA_NAME`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Root)


def with_defaults(saved: DictConfig | dict) -> DictConfig:
    """A config read back from a run folder, on the schema: a key the file lacks takes its
    default, and the typed sections are typed again."""
    cfg = OmegaConf.merge(OmegaConf.structured(Root), saved)
    assert isinstance(cfg, DictConfig)
    return cfg


def encoding_label(enc_cfg: DictConfig) -> str:
    """Folder and table name of an encoding config: its ``label`` if set, else its ``name``."""
    label = enc_cfg.get("label") or enc_cfg.get("name")
    return str(label)


def encoding_params(enc_cfg: DictConfig) -> dict:
    """The encoding's own hyperparameters: everything but ``name`` and ``label``."""
    params = OmegaConf.to_container(enc_cfg, resolve=True)
    assert isinstance(params, dict)
    params.pop("name", None)
    params.pop("label", None)
    return params


def task_params(task_cfg: DictConfig) -> dict:
    """The task's own parameters: everything but ``name`` and the format keys."""
    params = OmegaConf.to_container(task_cfg, resolve=True)
    assert isinstance(params, dict)
    for key in ("name", *FORMAT_KEYS):
        params.pop(key, None)
    return params
