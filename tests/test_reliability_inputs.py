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
from posenc.planning import plan
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
     "encoding=ssmax encoding.init_s=-1e39"],
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
