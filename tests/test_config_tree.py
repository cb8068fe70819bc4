"""The config tree and its schema agree: every YAML value that repeats a default of
`posenc.schema` equals it, and every preset, encoding and task config composes and passes
every check (`posenc.checks`) with the defaults. Nothing is trained."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from posenc import checks, schema
from posenc.config import CONFIG_DIR, compose, group_options, preset_axes, read_preset

SECTION_YAMLS = {
    "model": "model/default.yaml",
    "train": "train/default.yaml",
    "eval": "eval/default.yaml",
}


def _defaults(cls) -> dict:
    return {
        f.name: f.default_factory() if callable(f.default_factory) else f.default
        for f in dataclasses.fields(cls)
    }


@pytest.mark.parametrize("section", sorted(SECTION_YAMLS))
def test_section_yaml_repeats_the_schema_defaults_exactly(section):
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / SECTION_YAMLS[section]))
    assert yaml == _defaults(schema.SECTIONS[section])


def test_root_yaml_values_are_the_schema_defaults():
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))
    yaml.pop("defaults")
    yaml.pop("task")  # the sequence format, merged into the chosen task (an open section)
    root = _defaults(schema.Root)
    assert yaml == {
        k: v for k, v in root.items() if k not in ("encoding", "task", *schema.SECTIONS)
    }


def test_the_composed_default_config_is_the_schema_with_the_default_groups():
    cfg = compose([])
    for section, cls in schema.SECTIONS.items():
        defaults = _defaults(cls)
        composed = OmegaConf.to_container(cfg[section])
        for key in ("compile", "fused_adamw") if section == "train" else ():
            if defaults[key] == "auto":  # compose resolves it (posenc.run.spec.resolve_compile)
                assert isinstance(composed[key], bool), key
                defaults[key] = composed[key]
        assert composed == defaults
    assert list(cfg) == [f.name for f in dataclasses.fields(schema.Root)]


@pytest.mark.parametrize("group", ["encoding", "task"])
def test_every_encoding_and_task_config_composes_and_passes_every_check(group):
    for name in group_options(group):
        cfg = compose([f"{group}={name}"])
        checks.check_values(cfg)


PRESETS = group_options("preset")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_each_run_of_its_sweep(preset):
    axes = preset_axes(preset)
    for encoding in axes.get("encoding", ["rope"]):
        for task in axes.get("task", ["copy"]):
            cfg = compose([f"preset={preset}", f"encoding={encoding}", f"task={task}"])
            checks.check_values(cfg)
            if "experiment" in read_preset(preset):
                assert cfg.experiment == read_preset(preset)["experiment"]
    assert set(axes) <= {"encoding", "task", "seed"}, "posenc compare --preset reads these"


def test_a_preset_declares_no_compare_block():
    for preset in PRESETS:
        assert "compare" not in read_preset(preset), preset


def test_a_config_yaml_without_newer_keys_reads_back_on_the_schema(tmp_path):
    from posenc.runfolder import read_config

    old = OmegaConf.to_container(compose([]), resolve=True)
    for section, key in (("train", "batching"), ("train", "buckets"), ("model", "embed_init")):
        del old[section][key]
    del old["task"]["answer"]
    for key in ("val_share", "val_samples", "val_seed"):  # saved before validation lengths
        del old["eval"][key]
    old["compare"] = {"encodings": ["rope"], "tasks": ["copy"], "seeds": 3, "experiment": "x"}
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    cfg = read_config(tmp_path)
    assert (cfg.train.batching, cfg.train.buckets) == ("mixed", 4)  # legacy, then default
    assert cfg.model.embed_init == "scaled" and cfg.task.answer == "eos"
    # no validation lengths, as it was trained: every evaluated length stays a test length
    assert (cfg.eval.val_share, cfg.eval.val_samples, cfg.eval.val_seed) == (0.0, 50, 4321)
    assert "compare" not in cfg
    checks.check_values(cfg)


def test_an_old_compare_block_says_what_replaced_it(tmp_path, monkeypatch):
    """A user's preset that still has the retired ``compare:`` block is refused in one line
    that says where its runs go now."""
    import pytest as _pytest

    from posenc.config import compose
    from posenc.errors import ConfigError

    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "old_style.yaml").write_text(
        "# @package _global_\ncompare:\n  encodings: [rope]\n  seeds: 3\n"
    )
    monkeypatch.setenv("POSENC_CONFIG_PATH", str(tmp_path))
    with _pytest.raises(ConfigError, match=r"unknown key compare: .*hydra\.sweeper\.params"):
        compose(["preset=old_style"])


@pytest.mark.parametrize("key", ["experiment", "seed", "train.steps"])
def test_deleting_a_key_every_run_needs_is_one_line(key):
    from posenc.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{key} cannot be deleted: every run needs a value$"):
        compose([f"~{key}"])
