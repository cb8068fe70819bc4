"""``train.compile=true``: the model traces into one graph per forward pass (a graph break
splits it at every layer and undoes the fusion compile is for), the compiled step computes
the eager step's numbers, and compiled artifacts go to a persistent cache. ``auto``: the
rule that resolves it (`posenc.run.spec.resolve_compile`) and what a run records.

Traced with ``torch._dynamo.explain`` and run with the ``aot_eager`` backend (forward and
backward graphs, no code generation), so the checks take seconds, not inductor's minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from posenc import encodings
from posenc.config import compose
from posenc.data import TrainStream
from posenc.run.execute import plan
from posenc.run.train import COMPILE_CACHE_ENV, Trainer, use_compile_cache

NEEDS_DIGITS = {"abacus", "coupled"}
# Encodings that break the graph on purpose, and why: what each class declares
# (`PositionalEncoding.graph_break`), which `train.compile=auto` reads too.
BREAKS = {n: encodings.info(n).cls.graph_break for n in encodings.names()}
BREAKS = {n: reason for n, reason in BREAKS.items() if reason}
TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.d_ff=64"]


def model_for(name: str):
    task = ["task=addition", "train.max_len=3", "eval.max_len=4"] if name in NEEDS_DIGITS else []
    return plan(compose([f"encoding={name}", *TINY, *task])).model


@pytest.mark.parametrize("name", encodings.names())
def test_forward_is_one_graph(name):
    if name in BREAKS:
        pytest.skip(BREAKS[name])
    model = model_for(name)
    torch._dynamo.reset()
    inputs = torch.randint(3, 13, (4, 12))
    explained = torch._dynamo.explain(model)(inputs)
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons


def test_listed_breaks_are_real():
    """An encoding that declares a graph break and no longer breaks the graph must drop its
    ``graph_break`` (or ``train.compile=auto`` would keep it eager for nothing)."""
    assert set(BREAKS) == {"transformer_xl"}  # the one known; a new one is a decision
    for name in BREAKS:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model_for(name))(torch.randint(3, 13, (4, 12)))
        assert explained.graph_break_count > 0, name


def test_compiled_step_equals_eager(monkeypatch, tmp_path):
    """Three AdamW steps through the compiled graphs (aot_eager: the graphs inductor would
    fuse, run op by op) give the eager run's losses and weights (to float32 rounding)."""
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path))  # restored after the test
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", **kw)
    )
    cfg = compose(["encoding=rope", *TINY, "train.batch_size=8", "train.max_len=6"])
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        p = plan(cfg)
        train_cfg = OmegaConf.merge(cfg.train, {"compile": compiled})
        trainer = Trainer(p.model, train_cfg)
        stream = TrainStream(p.task, 1, 6, 8, seed=0, batching=cfg.train.batching)
        losses = [trainer.step(stream.next()).loss for _ in range(3)]
        trainer.close()
        results.append((losses, [w.detach().clone() for w in p.model.parameters()]))
    (eager_losses, eager_w), (comp_losses, comp_w) = results
    assert comp_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_w, comp_w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_cache_is_persistent(monkeypatch, tmp_path):
    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert use_compile_cache() == os.path.join(str(tmp_path), "posenc", "torchinductor")
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "mine"))
    assert use_compile_cache() == str(tmp_path / "mine")


def test_torchs_own_temporary_default_is_replaced_but_a_users_folder_is_kept(monkeypatch, tmp_path):
    """Importing torch._dynamo writes torch's default (a /tmp folder) into the variable; that
    value is not a user's choice. A fresh process, as a run is: the model is built first
    (which imports torch._dynamo), then the compiled trainer."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(COMPILE_CACHE_ENV, default_cache_dir())
    assert use_compile_cache() == os.path.join(str(tmp_path), "posenc", "torchinductor")
    script = (
        "import os\n"
        "from omegaconf import OmegaConf\n"
        "from posenc.config import compose\n"
        "from posenc.run.execute import plan\n"
        "from posenc.run.train import Trainer\n"
        "p = plan(compose(['model.n_layers=1', 'model.d_model=32', 'model.n_heads=4']))\n"
        "assert 'torch._dynamo' in __import__('sys').modules  # what set torch's default\n"
        "Trainer(p.model, OmegaConf.merge(p.cfg.train, {'compile': True})).close()\n"
        "from torch._inductor.codecache import FxGraphCache\n"
        "print(FxGraphCache._get_tmp_dir())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != COMPILE_CACHE_ENV}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    expected = tmp_path / "posenc" / "torchinductor" / "fxgraph"
    assert out.stdout.strip().splitlines()[-1] == str(expected)
    env[COMPILE_CACHE_ENV] = str(tmp_path / "mine")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == str(tmp_path / "mine" / "fxgraph")


# ---------------------------------------------------------------- train.compile=auto

LONG = ["train.steps=1000", "train.compile=auto", "train.fused_adamw=auto"]


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """This machine's compile record in a file of the test's own: ``measured({threads:
    eager/compiled step ratio})``, as ``benchmarks/speed.py --rows compile --record`` writes
    it."""
    from posenc import precision

    monkeypatch.setenv(precision.PRECISION_FILE_ENV, str(tmp_path / "record.json"))

    def write(ratios: dict[int, float]) -> None:
        for threads, ratio in ratios.items():
            precision.save_compile_record(ratio, threads)

    return write


def resolved(*overrides):
    cfg = compose(list(overrides))
    return cfg.train.compile, cfg.train.fused_adamw


def test_auto_compiles_where_this_machine_measured_it_pays_at_the_runs_threads(measured, capsys):
    """The 2-core AMD EPYC's figures: compile gained at one thread (a comparison's jobs) and
    lost at two (one posenc train with both cores)."""
    measured({1: 1.11, 2: 0.93})
    assert resolved("encoding=rope", *LONG, "threads=1") == (True, True)
    assert resolved("encoding=alibi", *LONG, "threads=1", "device=auto") == (True, True)
    assert capsys.readouterr().err == ""
    assert resolved("encoding=rope", *LONG, "threads=2") == (False, False)
    assert capsys.readouterr().err.strip() == (
        "note: train.compile=auto trains eagerly: compile measured 0.93x eager at 2 threads "
        "here, below 1.05x"
    )


def test_auto_stays_eager_without_a_measurement_and_says_how_to_make_one(measured, capsys):
    measured({1: 1.3})
    assert resolved("encoding=rope", *LONG, "threads=3") == (False, False)
    assert capsys.readouterr().err.strip() == (
        "note: train.compile=auto trains eagerly: no compile measurement of this machine at 3 "
        "threads (python benchmarks/speed.py --rows compile --record threads=3 makes one)"
    )
    measured({3: 1.049})  # below COMPILE_MIN_SPEEDUP: a cold compile is not repaid
    assert resolved("encoding=rope", *LONG, "threads=3") == (False, False)
    measured({3: 1.05})
    assert resolved("encoding=rope", *LONG, "threads=3") == (True, True)


def test_a_run_without_threads_is_resolved_at_torchs_default(measured, monkeypatch):
    measured({1: 1.2, 4: 0.9})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert resolved("encoding=rope", *LONG) == (False, False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert resolved("encoding=rope", *LONG) == (True, True)


def test_auto_keeps_a_short_run_eager(measured, capsys):
    measured({1: 1.5})
    assert resolved("encoding=rope", *LONG, "threads=1", "train.steps=999") == (False, False)
    assert resolved(
        "encoding=rope", *LONG, "threads=1", "train.compile_min_steps=2000"
    ) == (False, False)  # fmt: skip
    assert resolved("encoding=transformer_xl", *LONG, "train.steps=10") == (False, False)
    assert capsys.readouterr().err == ""  # a short run needs no note, whatever its encoding


def test_a_sweep_resolves_each_run_at_the_threads_its_job_gets(
    measured, monkeypatch, tmp_path, capsys
):
    """`posenc compare` on 2 cores runs 2 jobs of one thread each, where compile paid here;
    ``--jobs 1`` gives its one job both cores, where it lost; a Slurm job trains on a node
    whose measurement the planning machine cannot read, so it stays eager and says so."""
    from posenc.sweep import plan_sweep
    from posenc.sweep import threads as sweep_threads

    measured({1: 1.11, 2: 0.93})
    monkeypatch.setattr(sweep_threads, "cores", lambda: 2)
    base = ["encoding=rope,alibi", "seed=0,1", *LONG, f"runs_root={tmp_path}"]

    def compiled(plan) -> set:
        return {(s.cfg.train.compile, s.cfg.train.fused_adamw) for s in plan.specs}

    assert compiled(plan_sweep([], base=base, jobs=2, experiment="two")) == {(True, True)}
    assert compiled(plan_sweep([], base=base, jobs=1, experiment="one")) == {(False, False)}
    assert compiled(plan_sweep(["threads=1"], base=base, jobs=1, experiment="t")) == {(True, True)}
    capsys.readouterr()
    slurm = plan_sweep([], base=base, launcher="slurm", experiment="s")
    assert compiled(slurm) == {(False, False)}
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == [  # once for the sweep, not once per run
        "note: train.compile=auto trains eagerly when the runs train on other machines: whether "
        "compile pays is measured per machine, on the machine itself; train.compile=true compiles"
    ]
    # threads=1 measured here says nothing of the node's
    slurm = plan_sweep(["threads=1"], base=base, launcher="slurm", experiment="s1")
    assert compiled(slurm) == {(False, False)}
    explicit = plan_sweep(["train.compile=true"], base=base, launcher="slurm", experiment="s2")
    assert compiled(explicit) == {(True, True)}


@pytest.mark.parametrize(
    "overrides, label",
    [
        (["encoding=transformer_xl"], "transformer_xl"),
        (["encoding=combo", "encoding.parts=[rope,transformer_xl]"], "rope+transformer_xl"),
        (["encoding=randomized", "encoding.base=transformer_xl"], "randomized_transformer_xl"),
        (["encoding=per_head", "encoding.heads=[rope,rope,transformer_xl,none]"], "per_head"),
    ],
)
def test_auto_keeps_an_encoding_that_breaks_the_graph_eager_with_a_note(capsys, overrides, label):
    assert resolved(*overrides, *LONG) == (False, False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"note: {label} trains eagerly under train.compile=auto: its forward pass breaks the "
        f"graph ({'' if overrides[0] == 'encoding=transformer_xl' else 'part transformer_xl: '}"
        f"{BREAKS['transformer_xl']})"
    ]


def test_explicit_values_win_and_fused_follows_compile_under_auto(measured, capsys):
    measured({1: 1.2})
    assert resolved("encoding=rope", *LONG, "train.compile=false") == (False, False)
    assert resolved("encoding=rope", *LONG, "threads=1", "train.fused_adamw=false") == (True, False)
    assert resolved(
        "encoding=rope", "train.steps=10", "train.compile=true", "train.fused_adamw=auto"
    ) == (True, True)
    assert resolved("encoding=transformer_xl", *LONG, "train.compile=true") == (True, True)
    assert resolved("encoding=rope", *LONG, "train.compile=false", "train.fused_adamw=true") == (
        False,
        True,
    )
    assert capsys.readouterr().err == ""  # explicit false: no note


def test_a_plugin_encoding_declares_its_graph_break_with_the_class_attribute():
    from posenc.encodings.base import PositionalEncoding
    from posenc.encodings.registry import graph_break, parts_graph_break
    from posenc.run.spec import compile_pays

    class Breaks(PositionalEncoding):
        graph_break = "a Python loop over the data"

    assert Breaks.graph_break_for({}) == "a Python loop over the data"
    assert graph_break("rope") is None and parts_graph_break("not a list") is None
    assert not compile_pays("cpu", 5000, 1000, Breaks.graph_break, 1.5)
    assert compile_pays("cpu", 5000, 1000, None, 1.5)
    assert compile_pays("cuda:1", 1000, 1000, None, 2)
    assert not compile_pays("cpu", 5000, 1000, None, None)  # not measured here
    assert not compile_pays("mps", 5000, 1000, None, 1.5)


def test_the_run_records_the_resolved_values_and_its_identity_uses_them(measured, tmp_path):
    from posenc.run.spec import specify
    from posenc.runfolder import config_identity

    measured({1: 1.2})
    cfg = compose(["encoding=rope", *LONG, "threads=1", f"run_dir={tmp_path / 'run'}"])
    spec = specify(cfg)
    assert spec.cfg.train.compile is True and spec.cfg.train.fused_adamw is True
    explicit = compose(
        ["encoding=rope", "train.steps=1000", "train.compile=true", "train.fused_adamw=true"]
    )
    assert spec.identity == config_identity(explicit)  # auto's run is the explicit run
    eager = compose(["encoding=rope", "train.steps=1000"])
    assert spec.identity != config_identity(eager)  # compiled numbers are not eager numbers
    # compile_min_steps decides only what auto becomes: not part of a run's identity
    other = compose(["encoding=rope", *LONG, "threads=1", "train.compile_min_steps=500"])
    assert config_identity(other) == spec.identity
    written = OmegaConf.to_yaml(spec.cfg)
    assert "compile: true" in written and "fused_adamw: true" in written and "auto" not in written


def test_a_trainer_built_outside_a_run_decides_auto_by_the_same_rule(measured):
    """A `posenc.schema.Train` of a library user's own, ``auto`` included (no compose): its
    few steps stay eager, the model's declared graph break keeps a long one eager too, and
    so does a machine without a measurement at torch's threads."""
    from posenc.run.train import resolved_compile
    from posenc.schema import Train

    rope, xl = model_for("rope"), model_for("transformer_xl")
    long_auto = Train(steps=3000, compile="auto", fused_adamw="auto")
    assert resolved_compile(long_auto, rope, "cpu") == (False, False)  # no measurement
    measured({torch.get_num_threads(): 1.2})
    assert resolved_compile(Train(steps=30, compile="auto", fused_adamw="auto"), rope, "cpu") == (
        False,
        False,
    )
    assert resolved_compile(Train(steps=3000, compile="auto", fused_adamw="auto"), rope, "cpu") == (
        True,
        True,
    )
    assert resolved_compile(Train(steps=3000, compile="auto", fused_adamw="auto"), xl, "cpu") == (
        False,
        False,
    )
    assert resolved_compile(Train(steps=3000, compile=False), rope, "cpu") == (False, False)
