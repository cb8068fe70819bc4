"""``train.precision=auto``: bf16 only where this machine's record says it is faster and its
accuracy check passed; fp32 otherwise; the run records what it used."""

from __future__ import annotations

import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from posenc import precision
from posenc.run.execute import run


@pytest.fixture
def record_file(monkeypatch, tmp_path):
    path = tmp_path / "precision.json"
    monkeypatch.setenv(precision.PRECISION_FILE_ENV, str(path))
    return path


def test_explicit_precisions_are_kept(record_file):
    assert precision.resolve("fp32") == "fp32"
    assert precision.resolve("bf16") == "bf16"


@pytest.mark.parametrize(
    ("speedup", "checked", "expected"),
    [
        (None, False, "fp32"),  # no measurement of this machine
        (0.53, True, "fp32"),  # measured slower (the AMX machine's autocast)
        (1.6, False, "fp32"),  # faster, but accuracy not checked
        (1.6, True, "bf16"),
    ],
)
def test_auto_follows_this_machines_record(record_file, speedup, checked, expected):
    if speedup is not None:
        precision.save_record(speedup, accuracy_checked=checked)
    assert precision.resolve("auto") == expected


def test_a_record_of_another_machine_does_not_count(record_file):
    record_file.write_text(
        json.dumps({"cpu | another CPU | amx_bf16 | torch 0": {"bf16_speedup": 2.0,
                                                              "accuracy_checked": True}})
    )  # fmt: skip
    assert precision.resolve("auto") == "fp32"


def test_a_new_measurement_keeps_a_passed_accuracy_check(record_file):
    precision.save_record(1.6, accuracy_checked=True)
    precision.save_record(1.7)
    assert precision.load_records()[precision.machine_key()] == {
        "bf16_speedup": 1.7,
        "accuracy_checked": True,
    }


@pytest.mark.parametrize(
    ("eager", "compiled", "expected_eager", "expected_compiled"),
    [
        (0.55, None, "fp32", "fp32"),  # the AMX machine's eager autocast; compiled not measured
        (0.55, 1.6, "fp32", "bf16"),  # bf16 pays only once compile fuses the casts
        (1.6, 0.9, "bf16", "fp32"),  # or the reverse: one ratio never stands for the other
    ],
)
def test_a_compiled_run_reads_the_compiled_ratio(
    record_file, eager, compiled, expected_eager, expected_compiled
):
    precision.save_record(eager, accuracy_checked=True)
    if compiled is not None:
        precision.save_record(compiled, compiled=True)
    assert precision.resolve("auto") == expected_eager
    assert precision.resolve("auto", compiled=True) == expected_compiled
    assert precision.resolve("bf16", compiled=True) == "bf16"  # explicit values win


def test_each_ratio_is_kept_when_the_other_is_measured_again(record_file):
    precision.save_record(0.55)
    precision.save_record(1.6, compiled=True, accuracy_checked=True)
    precision.save_record(0.6)
    assert precision.load_records()[precision.machine_key()] == {
        "bf16_speedup": 0.6,
        "bf16_speedup_compiled": 1.6,
        "accuracy_checked": True,
    }


def test_compile_ratios_are_kept_per_thread_count_beside_the_bf16_ones(record_file):
    """What ``train.compile=auto`` reads (`posenc.run.spec.resolve_compile`): one eager/compiled
    ratio per thread count, none of them lost when another or a bf16 ratio is measured."""
    assert precision.compile_speedup(1) is None
    precision.save_record(1.13, accuracy_checked=True)
    precision.save_compile_record(1.11, threads=1)
    precision.save_compile_record(0.93, threads=2)
    precision.save_record(1.2)
    precision.save_compile_record(1.08, threads=1)
    assert precision.load_records()[precision.machine_key()] == {
        "bf16_speedup": 1.2,
        "accuracy_checked": True,
        "compile_speedup": {"1": 1.08, "2": 0.93},
    }
    assert (precision.compile_speedup(1), precision.compile_speedup(2)) == (1.08, 0.93)
    assert precision.compile_speedup(4) is None
    record_file.write_text(json.dumps({precision.machine_key(): {"compile_speedup": "fast"}}))
    assert precision.compile_speedup(1) is None  # a damaged entry reads as no measurement


def test_a_compiled_trainer_resolves_auto_by_the_compiled_ratio(
    tiny_cfg, record_file, monkeypatch, tmp_path
):
    """The trainer decides compile first, then the precision for that kind of step (torch
    compiles on the first call, which this test never makes)."""
    from posenc.run.execute import plan
    from posenc.run.train import COMPILE_CACHE_ENV, Trainer

    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "cache"))

    precision.save_record(0.55, accuracy_checked=True)
    precision.save_record(1.6, compiled=True)
    p = plan(tiny_cfg("train.precision=auto"))
    eager = Trainer(p.model, OmegaConf.merge(p.cfg.train, {"compile": False}))
    compiled = Trainer(p.model, OmegaConf.merge(p.cfg.train, {"compile": True}))
    assert (eager.precision, compiled.precision) == ("fp32", "bf16")


def test_an_unreadable_record_means_fp32(record_file):
    record_file.write_text("{not json")
    assert precision.resolve("auto") == "fp32"


def test_a_run_records_the_precision_it_used(tiny_cfg, record_file):
    metrics = run(tiny_cfg("train.precision=auto"))
    assert metrics["train"]["precision_used"] == "fp32"
    # and the machine it ran on: as the precision records key it (CPU model, torch version),
    # and the CPU kernels torch ran
    assert metrics["train"]["machine"] == precision.run_machine("cpu")
    kernels = f" | kernels {torch.backends.cpu.get_cpu_capability()}"
    assert metrics["train"]["machine"].startswith(precision.machine_key("cpu") + kernels)
    assert (
        metrics["train"]["machine"].startswith("cpu | ")
        and torch.__version__ in (metrics["train"]["machine"])
    )


def test_a_run_records_the_cpu_kernels_torch_ran_and_the_matmul_library_s_settings():
    """Torch's dispatch capability, lowered by ATEN_CPU_CAPABILITY, and MKL's reproducibility
    branch: both change a run's numbers, and neither shows in the CPU model."""
    import subprocess
    import sys

    code = "from posenc.precision import run_machine; print(run_machine('cpu'))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}
    for name in precision.KERNEL_ENV[1:]:
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == f"{precision.machine_key('cpu')} | kernels AVX2, MKL_CBWR=COMPATIBLE"
