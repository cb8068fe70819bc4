"""A run's specification (`posenc.run.spec`): resolved once, its folder and status, and the
file a sweep's job reads."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from posenc.config import compose
from posenc.run.spec import (
    FINISHED,
    FOREIGN,
    NEW,
    RESUME,
    differences,
    read_spec,
    run_status,
    specify,
    write_spec,
)
from posenc.runfolder import CHECKPOINT, CONFIG, METRICS, folder_seed, seed_folder


def _cfg(tmp_path, *overrides):
    return compose(["encoding=alibi", "task=copy", f"runs_root={tmp_path}", *overrides])


def test_a_spec_resolves_auto_names_its_folder_and_labels_a_variant(tmp_path):
    spec = specify(_cfg(tmp_path, "experiment=e", "seed=2", "model.embed_init=auto"), "x=1")
    assert spec.cfg.model.embed_init == "gpt"  # ALiBi's own token scale
    assert spec.label == "alibi@x=1"
    assert spec.run_dir == tmp_path / "e" / "copy" / "alibi@x=1" / "seed2"
    assert spec.status == NEW
    named = specify(_cfg(tmp_path, f"run_dir={tmp_path / 'mine'}"))
    assert named.run_dir == tmp_path / "mine"


def test_the_status_of_a_folder_new_resume_finished_or_another_configs(tmp_path):
    cfg = _cfg(tmp_path)
    d = tmp_path / "run"
    assert run_status(d, cfg) == NEW
    d.mkdir()
    OmegaConf.save(cfg, d / CONFIG)
    assert run_status(d, cfg) == NEW  # a config alone: nothing to resume
    (d / CHECKPOINT).write_bytes(b"x")
    assert run_status(d, cfg) == RESUME
    assert run_status(d, _cfg(tmp_path, "threads=1", "progress=false")) == RESUME  # execution
    (d / METRICS).write_text(json.dumps({"summary": {}}))
    assert run_status(d, cfg) == FINISHED
    other = _cfg(tmp_path, "train.lr=0.01", "seed=4")
    assert run_status(d, other) == FOREIGN
    assert differences(d, other) == "seed: 0 there, 4 here; train.lr: 0.003 there, 0.01 here"
    (d / CONFIG).write_text("{ not yaml")
    assert run_status(d, cfg) == FOREIGN and differences(d, cfg) == ""


def test_a_written_spec_reads_back_as_the_same_run_with_the_jobs_threads(tmp_path):
    spec = specify(
        _cfg(tmp_path, "experiment=e", "encoding=rope", "encoding.base=500"), "train.lr=0.01"
    )
    write_spec(spec, tmp_path / "specs" / "0.yaml")
    back = read_spec(tmp_path / "specs" / "0.yaml", threads=3)
    assert back.run_dir == spec.run_dir and back.label == spec.label
    assert back.identity == spec.identity and back.cfg.threads == 3
    assert back.cfg.encoding.base == 500 and back.status == NEW


def test_the_seed_folder_layout_reads_back():
    assert seed_folder(12) == "seed12" and folder_seed("seed12") == 12
    assert folder_seed("seedling") is None and folder_seed("12") is None
