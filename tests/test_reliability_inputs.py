"""Bad input refused before anything is allocated or written: every task parameter that sizes
a vocabulary, a table or a sequence, and the values and messages of issue 36."""

from __future__ import annotations

import inspect
import resource
import time

import numpy as np
import pytest

from posenc import tasks
from posenc.config import compose
from posenc.errors import ConfigError
from posenc.run.planning import plan
from tests.conftest import MICRO
from tests.test_fuzz_runfolders import finished  # noqa: F401, F811  (a fixture)

HUGE = 10_000_000_000


def _int_params() -> list[tuple[str, str]]:
    """(task, parameter) for every integer parameter of every registered task."""
    out = []
    for name in tasks.names():
        for p in inspect.signature(tasks.task_class(name).__init__).parameters.values():
            if p.name != "self" and type(p.default) is int:
                out.append((name, p.name))
    return out


@pytest.mark.parametrize(("task", "param"), _int_params())
def test_a_huge_task_parameter_is_refused_in_one_line_before_allocating(tmp_path, task, param):
    """``task.n_keys=10000000000`` filled 23.7 GB before the kernel killed it: now every
    integer task parameter at 10^10 is refused by its bound or by posenc.memory, without growing the process by more than a few hundred MB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as refused:
        plan(compose([*MICRO, f"task={task}", f"task.{param}={HUGE}", f"run_dir={tmp_path}"]))
    assert time.perf_counter() - t0 < 30  # a cold first meta-device build takes seconds
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) < 300_000  # KiB
    assert len(str(refused.value).splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_mqar_counts_its_sequence_length_exactly():
    task = tasks.build("mqar", n_keys=16, n_values=8, fillers=3)
    rng = np.random.default_rng(0)
    for n in (1, 5, 16):
        assert task.max_sequence_length(n, rng) == max(
            len(task.sample(n, rng)[0]) + 2 for _ in range(8)
        )


@pytest.mark.parametrize(
    "override",
    ["encoding=fox encoding.gate_bias_init=1e300", "encoding=ssmax encoding.init_s=1e300",
     "encoding=fox encoding.gate_bias_init=-1e39"],
)  # fmt: skip
def test_a_float_past_float32_is_one_line_not_an_overflow_traceback(tmp_path, override):
    with pytest.raises(ConfigError, match=r"magnitude at most 3\.403e\+38 \(float32\)"):
        plan(compose([*MICRO, *override.split(), f"run_dir={tmp_path}"]))


def test_eval_types_an_encoding_override_by_the_runs_value(tmp_path, finished):  # noqa: F811
    from typer.testing import CliRunner

    from posenc.cli.app import app

    d = finished / "run"
    result = CliRunner().invoke(
        app, ["eval", str(d), "encoding.base=1e300", f"data_dir={finished / 'data'}"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: encoding.base must be a number of magnitude at most 3.403e+38 (float32), got 1e+300"
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # p below 2/d_head rotates no frequency: it trained as NoPE without a word
        ("encoding=p_rope encoding.p=0.05", "encoding.p=0.05 keeps no frequency of a 8-dim head"),
        # a scheme nested in itself built silently as a one-layer (one-head) copy
        ("encoding=per_layer encoding.layers=[rope,per_layer]",
         "encoding.layers[1] is 'per_layer' inside 'per_layer'"),
        ("encoding=per_layer encoding.layers=[rope,{name:per_layer,layers:[rope]}]",
         "encoding.layers[1] is 'per_layer' inside 'per_layer'"),
        ("encoding=per_head encoding.heads=[rope,per_head]",
         "encoding.heads[1] is 'per_head' inside 'per_head'"),
        # known_length drops an EOS that inline answers do not have: it was ignored
        ("task=state_tracking task.answer=known_length",
         "task.answer=known_length does nothing on task 'state_tracking'"),
        # zero (or up to 1) is refused too, so a negative value is told the constructor's
        # own bound, not ">= 0.0"
        ("encoding=ssmax encoding.init_s=-1", "encoding.init_s must be a number > 0, got -1"),
        ("encoding=ssmax encoding.init_s=0", "encoding.init_s must be a number > 0, got 0"),
        ("encoding=fire encoding.init_L=-5", "encoding.init_L must be a number > 0, got -5"),
        ("encoding=rope encoding.base=-1", "encoding.base must be a number > 1, got -1"),
        # an entry's error keeps the entry's path, whether found by the type check or the build
        ("encoding=per_layer encoding.layers=[rope,{name:ssmax,init_s:0}]",
         "encoding.layers[1].init_s must be a number > 0, got 0"),
        ("encoding=per_layer encoding.layers=[rope,{name:rope,scaling:bogus}]",
         "unknown encoding.layers[1].scaling 'bogus'"),
        ("encoding=per_head encoding.heads=[rope,{name:rope,scaling:bogus}]",
         "unknown encoding.heads[1].scaling 'bogus'"),
    ],
)  # fmt: skip
def test_silently_wrong_configs_are_refused_in_one_line(tmp_path, overrides, message):
    two_layers = [o for o in MICRO if not o.startswith("model.n_layers")] + ["model.n_layers=2"]
    with pytest.raises(ConfigError) as refused:
        plan(compose([*two_layers, *overrides.split(), f"run_dir={tmp_path}"]))
    assert message in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1


def test_a_checkpoint_without_its_config_is_not_silently_overwritten(tmp_path):
    from posenc.errors import RunExistsError
    from posenc.run.execute import run
    from tests.test_run import _Interrupt

    d = tmp_path / "run"
    args = [*MICRO, "progress=false", f"run_dir={d}", f"data_dir={tmp_path / 'data'}"]
    with pytest.raises(KeyboardInterrupt):
        run(compose(args), _Interrupt(at=3))
    (d / "config.yaml").unlink()
    saved = (d / "checkpoint.pt").read_bytes()
    with pytest.raises(RunExistsError, match="holds checkpoint.pt but no config.yaml"):
        run(compose(args))
    assert (d / "checkpoint.pt").read_bytes() == saved
    assert run(compose([*args, "overwrite=true"]))["status"] == "complete"


def test_a_corrupt_checkpoints_cause_ends_with_a_sentence_not_mid_word():
    from posenc.run.checkpoint import _cause

    advice = "Weights only load failed. This file can still be loaded, to do so you have " * 4
    assert _cause(RuntimeError(advice)) == "Weights only load failed."
    words = "word " * 60
    cut = _cause(RuntimeError(words))
    assert cut.endswith("word…") and len(cut) <= 161


def test_a_non_ascii_override_value_gets_a_hint_to_quote_it():
    with pytest.raises(ConfigError) as refused:
        compose(["experiment=exp_ü"])
    assert str(refused.value).endswith(
        "a value with non-ASCII characters must be quoted: experiment='exp_ü'"
    )
    assert compose(["experiment='exp ü 1'"]).experiment == "exp ü 1"


def test_the_sweep_passes_quoted_values_on_as_they_were_meant(tmp_path):
    """The child's overrides read back, by Hydra's own parser, to the values the user gave:
    an --experiment with spaces and a non-ASCII runs_root used to lose their quotes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from posenc.sweep.plan import plan_sweep

    root = tmp_path / "ü runs"
    p = plan_sweep(["encoding=rope,alibi", f"runs_root='{root}'"], experiment="exp 'ü' 1")
    lines = [o for o in p.overrides if not o.startswith("--")]  # --config-name: not an override
    values = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(lines)}
    assert values["hydra.sweep.dir"].startswith(str(root / "exp 'ü' 1" / "_sweeps"))
    assert values["specs"].startswith(str(root / "exp 'ü' 1" / "_sweeps"))
    assert p.experiment_dir == root / "exp 'ü' 1"
    for spec in p.specs:  # each job's run, resolved in the parent, keeps the values as given
        assert spec.cfg.experiment == "exp 'ü' 1"
        assert spec.cfg.runs_root == str(root)
        assert spec.run_dir.parent.parent.parent == root / "exp 'ü' 1"


def test_a_sweep_refuses_a_float_past_float32_before_it_launches(tmp_path):
    from posenc.sweep.plan import plan_sweep

    with pytest.raises(ConfigError, match=r"gate_bias_init must be a number of magnitude"):
        plan_sweep(["encoding=fox", "encoding.gate_bias_init=1,1e300", f"runs_root={tmp_path}"])
    assert not any(tmp_path.iterdir())
