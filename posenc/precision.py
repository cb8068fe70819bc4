"""``train.precision=auto``: bf16 only on a machine where it was measured to pay.

posenc never guesses that bf16 is faster from the instruction set: under autocast the step
was slower than fp32 on both CPUs measured, one with AMX and one with AVX2 only (the figures:
docs/performance.md). ``auto`` therefore reads a measurement of *this* machine, written by
the benchmark (``python benchmarks/speed.py --rows bf16 --record``) into
``$XDG_CACHE_HOME/posenc/precision.json`` (``~/.cache/...``), keyed by the machine: device
type, CPU model, the bf16 instruction-set flags and the torch version. It resolves to
``bf16`` only where that record says the bf16 step was at least ``MIN_SPEEDUP`` times the
fp32 one *and* that a 3-seed accuracy check was recorded as passed (``accuracy_checked``,
set by whoever ran the check: the benchmark cannot know), and to ``fp32`` everywhere else,
including any machine without a record. The run records what it used (`metrics.json`,
``train.precision_used``), since ``auto`` alone does not say.

A compiled run (``train.compile``) reads its own ratio: bf16 against fp32, both compiled
(``bf16_speedup_compiled``, written by ``--rows bf16_compile --record``). Compile fuses the
casts and the float32 elementwise work that made eager bf16 lose on the AMX machine
(docs/performance.md), so bf16 can pay compiled where it does not eagerly, or the reverse;
one ratio cannot stand for the other, and a compiled run on a machine without the compiled
ratio trains in fp32.

The same record holds what ``train.compile=auto`` reads (`posenc.run.spec.resolve_compile`):
the eager/compiled step ratio at each thread count measured (``compile_speedup``, keyed by
the threads, written by ``python benchmarks/speed.py --rows compile --record threads=N``).
Compile's gain depends on the threads as much as on the machine: on the 2-core AMD EPYC with
AVX512-BF16 it was 1.1-1.4x at one thread (a comparison's jobs) and 0.89-1.04x at two (one
``posenc train``), docs/performance.md. Torch is imported only to name a CUDA device or
torch's version, so a config can be resolved without it until it asks for ``auto``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISION_FILE_ENV = "POSENC_PRECISION_FILE"
MIN_SPEEDUP = 1.0
# compile_speedup below this keeps train.compile=auto eager: the ratio is measured after
# warm-up, and a cold compile costs about 50 s of a 500 s default run (docs/performance.md),
# so a steady gain of a few percent does not repay it.
COMPILE_MIN_SPEEDUP = 1.05
COMPILE_KEY = "compile_speedup"
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def record_path() -> Path:
    """Where per-machine measurements live (``$POSENC_PRECISION_FILE`` wins)."""
    if PRECISION_FILE_ENV in os.environ:
        return Path(os.environ[PRECISION_FILE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "posenc" / "precision.json"


def _cpu() -> tuple[str, list[str]]:
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, sorted(f for f in BF16_FLAGS if f in flags)


def resolve_device(name: str) -> torch.device:
    """The device of ``device=NAME`` (a name `posenc.checks` accepts) on this machine."""
    import torch

    from posenc.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu")
    return torch.device(name)


def machine_key(device: torch.device | str = "cpu") -> str:
    """What a measurement holds for: the device type and name, bf16 flags, torch version."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"cuda | {name} | torch {torch.__version__}"
    model, flags = _cpu()
    return f"{device.type} | {model} | {','.join(flags) or 'no bf16 flags'} | torch {torch.__version__}"


# Environment settings that change which float kernels run, so a run's numbers (the matmul
# library's reproducibility branch, its instruction sets); torch's own choice,
# ATEN_CPU_CAPABILITY, shows in the capability `kernels` names.
KERNEL_ENV = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def kernels() -> str:
    """Which CPU kernels torch runs here: its dispatch capability (``DEFAULT``, ``AVX2``,
    ``AVX512``, ...: ``torch.backends.cpu.get_cpu_capability()``, which
    ``ATEN_CPU_CAPABILITY`` can lower), and any `KERNEL_ENV` setting, e.g. ``AVX512`` or
    ``AVX2, MKL_CBWR=COMPATIBLE``. The CPU model does not say: an AVX-512 and an AVX2 machine
    can share a model name, and the two capabilities sum in different orders, so the same
    run trains to different weights (docs/reliability.md, reproducing a run)."""
    import torch

    settings = [f"{name}={os.environ[name]}" for name in KERNEL_ENV if os.environ.get(name)]
    return ", ".join([torch.backends.cpu.get_cpu_capability(), *settings])


def run_machine(device: torch.device | str = "cpu") -> str:
    """Where a run trained, as its ``metrics.json`` records it: `machine_key` and, on a
    CPU, its `kernels`. (`machine_key` alone keys the speed records.)"""
    import torch

    key = machine_key(device)
    return f"{key} | kernels {kernels()}" if torch.device(device).type == "cpu" else key


def load_records() -> dict:
    path = record_path()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


SPEEDUP_KEYS = {False: "bf16_speedup", True: "bf16_speedup_compiled"}


def save_record(
    speedup: float,
    *,
    device: torch.device | str = "cpu",
    accuracy_checked: bool = False,
    compiled: bool = False,
) -> Path:
    """Store this machine's measured bf16/fp32 step speed, eager or (``compiled``) both
    steps compiled, keeping whatever else its record holds (written atomically)."""
    previous = load_records().get(machine_key(device), {})
    return _update(
        device,
        {
            SPEEDUP_KEYS[compiled]: round(float(speedup), 3),
            "accuracy_checked": bool(accuracy_checked or previous.get("accuracy_checked", False)),
        },
    )


def save_compile_record(
    speedup: float, threads: int, *, device: torch.device | str = "cpu"
) -> Path:
    """Store this machine's measured eager/compiled step ratio at ``threads`` torch threads,
    keeping the other thread counts' and the bf16 ratios (written atomically)."""
    previous = load_records().get(machine_key(device), {}).get(COMPILE_KEY, {})
    return _update(device, {COMPILE_KEY: {**previous, str(int(threads)): round(float(speedup), 3)}})


def compile_speedup(threads: int, device: torch.device | str = "cpu") -> float | None:
    """The eager/compiled step ratio recorded for this machine at ``threads`` threads, or
    None where none was measured."""
    measured = load_records().get(machine_key(device), {}).get(COMPILE_KEY, {})
    value = measured.get(str(int(threads))) if isinstance(measured, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _update(device: torch.device | str, values: dict) -> Path:
    """This machine's record with ``values`` set, the rest of the file kept."""
    path = record_path()
    records = load_records()
    key = machine_key(device)
    records[key] = {**records.get(key, {}), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def resolve(precision: str, device: torch.device | str = "cpu", compiled: bool = False) -> str:
    """The precision a run trains in: ``fp32`` and ``bf16`` as asked; ``auto`` as this
    machine's record allows for an eager or a ``compiled`` step (module docstring)."""
    if precision != "auto":
        return precision
    record = load_records().get(machine_key(device), {})
    speedup = record.get(SPEEDUP_KEYS[bool(compiled)], 0.0)
    if speedup >= MIN_SPEEDUP and record.get("accuracy_checked"):
        return "bf16"
    return "fp32"
