"""How fast posenc is on this machine, row by row against the speed targets (docs/performance.md).

    python benchmarks/speed.py                      # every row (about 20 minutes on 2 cores)
    python benchmarks/speed.py --rows step,bf16     # only some rows
    python benchmarks/speed.py --peer ../shared/peer --rows peer,train

Rows:
- ``machine``: CPU model, the ISA extensions that decide bf16 speed (AVX512-BF16, AMX), torch's
  kernel level, and the matmul peak: the best of several shapes (a square one and the
  model's own), fp32 and bf16.
- ``step``: a bare forward/backward/AdamW loop over batches of the configured batching
  (``train.batching``, the default ``bucketed``): GFLOP/s counted on
  real (non-padding) tokens, as a share of the fp32 peak (after 10 warm-up steps); posenc's
  own loop (`posenc.run.execute`) next to it on the same model, as many steps, both counted
  from the first step: a run's tokens/s includes its warm-up, so the bare loop's does too.
- ``padding``: share of padding token slots under each ``train.batching`` (``bucketed``:
  the slots of its length-sorted pieces).
- ``batching``: milliseconds per training step (the bare loop) under each ``train.batching``,
  interleaved over three rounds, medians.
- ``pieces``: milliseconds per ``bucketed`` step with its pieces computed one after the other
  at the run's threads (``workers=1``) and side by side, one thread each (the default on CPU
  with more than one thread; `posenc.run.train.Trainer`), started largest first (the
  default, `posenc.run.train.largest_first`) and in piece order (shortest first, as before
  it), interleaved over three rounds.
- ``model``: posenc's model against the peer's (``--peer`` folder: its ``model.py``, the same
  layers and width, RoPE) on the same batches (the peer's own mixed-length, padded ones):
  milliseconds per forward/backward/clip/AdamW step, interleaved over three rounds. Tells a
  slower model from a slower loop.
- ``encodings``: milliseconds per training step (the bare loop, configured batching) of each
  scheme that acts inside attention (FoX, PaTH, PaTH-FoX, stick-breaking, SSMax
  alone and with RoPE, p-RoPE, Hard-ALiBi, per-layer, per-head) against RoPE on the same
  model and batches, interleaved over three rounds in rotated orders, medians; which leave the fused
  attention kernel (stick-breaking and PaTH compute their own weights, O(T²) per head).
- ``features``: milliseconds per training step (the bare loop) of RoPE, ALiBi and T5 with the
  position features computed once per forward pass (the default) and by every layer
  (``model.position_features = False``), interleaved over three rounds, medians.
- ``bf16``: the bare loop with ``train.precision=bf16`` (the pieces' forward passes in one
  autocast context, attention in float32 on CPU) against fp32, same batches: the bf16/fp32
  step ratio; ``--record`` stores it for ``train.precision=auto`` on this machine
  (`posenc.precision`). On a CPU without bf16 instructions it only says so.
- ``bf16_compile``: ``train.precision=bf16`` with ``train.compile=true`` (compile fuses the
  casts and the float32 elementwise work around the bf16 matmuls) against the compiled fp32
  step and the eager fp32 one, same batches; ``--record`` stores the compiled ratio, which
  ``train.precision=auto`` reads for a compiled run (opt-in like ``compile``).
- ``fused``: milliseconds per AdamW step on the default model's gradients, ``foreach`` (the
  default) against ``fused=True`` (``train.fused_adamw``), interleaved, medians.
- ``compile``: ``train.compile=true``: cold compile seconds and steady steps/s against eager;
  ``--record`` stores the ratio for ``train.compile=auto`` on this machine at the threads it
  ran at (``threads=N``, else torch's default; `posenc.run.spec.resolve_compile`), so record
  it at each thread count runs use (a comparison's jobs take one each on 2 cores).
- ``compile_pieces``: ``train.compile=true``, bucketed pieces one after the other at the run's
  threads against side by side (one thread each; the default), after a warm-up that
  compiles (opt-in like ``compile``).
- ``decode``: exact match at n = 60 by teacher forcing (the default) and by greedy KV-cache
  decoding (``eval.greedy=true``) on the same examples; asserts they agree example by example.
- ``smoke``, ``train``, ``compare``: wall seconds of ``posenc train preset=smoke``,
  ``posenc train`` and ``posenc compare`` with their defaults, in fresh folders, with the
  in-distribution exact match they reached and the peak memory (RSS) of the train run.
- ``peer``: the plain loop a researcher writes by hand (``--peer`` folder: mixed-length
  batches padded to the longest row), its steps/s for the default model, and its time for
  the 3,000 steps its recipe needs, against ``posenc train``'s wall time.
- ``pair``: two ``posenc train`` started side by side against one alone: combined throughput.
- ``profile``: where a step's time goes: torch's profiler over 30 steps of the configured
  batching (pieces one after the other, at the run's threads) and precision
  (``train.precision=bf16`` profiles the bf16 path): the matmuls' share of the
  time and their GFLOP/s in place, then the costliest other operators.
- ``floor``: the arithmetic floor: the FLOPs of a default run's training steps (counted on
  real tokens, as ``step``, averaged over 300 batches of the configured stream, times
  ``train.steps``) at 100% of the fp32 matmul peak, for ``posenc train`` and for ``posenc
  compare``'s six runs; and the share of the peak a run's training would need to meet the
  train target. Evaluation, start-up and the optimizer are left out, so no run can be faster.
  Run it with ``threads=`` the machine's cores: the peak is read at the run's threads.

Timings on a shared or virtual machine drift by 10-20%; repeated loops report medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As the posenc command does (cli/app.py): sleeping OpenMP threads, set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from posenc.config import compose  # noqa: E402
from posenc.data import TrainStream, length_buckets  # noqa: E402
from posenc.run.execute import plan, run  # noqa: E402
from posenc.run.train import Trainer, bucket_count  # noqa: E402
from posenc.schema import BATCHING  # noqa: E402

ROWS = (
    "machine",
    "step",
    "padding",
    "batching",
    "pieces",
    "model",
    "encodings",
    "features",
    "bf16",
    "bf16_compile",
    "fused",
    "compile",
    "compile_pieces",
    "decode",
    "smoke",
    "train",
    "peer",
    "pair",
    "compare",
    "floor",
    "profile",
)
COMPILING_ROWS = ("compile", "compile_pieces", "bf16_compile")  # opt-in: minutes of compiling
DEFAULT_ROWS = tuple(r for r in ROWS if r not in COMPILING_ROWS)
results: list[tuple[str, str, str]] = []  # (what, measured, target)


def row(what: str, measured: str, target: str = "") -> None:
    results.append((what, measured, target))
    print(f"{what:<58} {measured:<44} {target}", flush=True)


# ------------------------------------------------------------------ the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.4) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def model_shapes(cfg) -> list[tuple[int, int, int]]:
    """A square matmul, then those of a training step of the default model at a typical
    length (n = 10), then one of a quarter of the batch (a `bucketed` piece)."""
    tokens = cfg.train.batch_size * (2 * 10 + 2)
    d, ff = cfg.model.d_model, cfg.model.d_ff
    return [
        (1024, 1024, 1024),
        (tokens, d, 3 * d),
        (tokens, d, ff),
        (tokens, ff, d),
        (tokens // 4, d, ff),
    ]


def peaks(cfg) -> dict[torch.dtype, list[float]]:
    """GFLOP/s of each of `model_shapes` per dtype; the peak is the best of them."""
    return {
        dtype: [matmul_gflops(*shape, dtype) for shape in model_shapes(cfg)]
        for dtype in (torch.float32, torch.bfloat16)
    }


# ------------------------------------------------------------------ in-process loops


def batches(cfg, n: int, seed: int = 0, batching: str | None = None) -> list:
    p = plan(cfg)
    tr = cfg.train
    stream = TrainStream(
        p.task, tr.min_len, tr.max_len, tr.batch_size, seed, batching or tr.batching
    )
    return [stream.next() for _ in range(n)]


def step_flops(model, batch) -> float:
    """FLOPs of one training step counted on real tokens: 6·N per token for the weight
    matmuls, plus QK^T and AV (4·T·d per token forward, x3 with the backward pass)."""
    n_weights = sum(p.numel() for n, p in model.named_parameters() if "emb" not in n)
    real = int((batch.tokens != 0).sum())
    seq = batch.inputs.shape[1]
    return real * (6 * n_weights + 12 * model.cfg.n_layers * seq * model.cfg.d_model)


def make_trainer(
    cfg,
    model,
    steps: int,
    precision="fp32",
    compile=False,
    batching=None,
    workers=None,
    fused_adamw=False,
):
    """The `Trainer` a run of ``cfg`` builds, over ``steps`` steps, with these options."""
    from omegaconf import OmegaConf

    tr = OmegaConf.merge(
        cfg.train,
        {
            "steps": steps,
            "precision": precision,
            "compile": compile,
            "batching": batching or cfg.train.batching,
            "fused_adamw": fused_adamw,
        },
    )
    return Trainer(model, tr, workers=workers)


def bare_loop(
    cfg,
    data: list,
    precision: str = "fp32",
    compile: bool = False,
    batching: str | None = None,
    workers: int | None = None,
    position_features: bool = True,
) -> dict:
    """Forward, backward, clip, AdamW over ``data``: seconds and FLOPs after 10 warm-up steps,
    and the warm-up's seconds and real tokens apart."""
    p = plan(cfg)
    p.model.position_features = position_features
    trainer = make_trainer(cfg, p.model, len(data), precision, compile, batching, workers)
    t0 = time.perf_counter()
    for b in data[:10]:
        trainer.step(b)
    warm = time.perf_counter() - t0
    warm_tokens = sum(int((b.tokens != 0).sum()) for b in data[:10])
    timed = data[10:]
    t0 = time.perf_counter()
    for b in timed:
        trainer.backward(b)
        torch.nn.utils.clip_grad_norm_(p.model.parameters(), cfg.train.grad_clip)
        trainer.optimizer.step()
    seconds = time.perf_counter() - t0
    trainer.close()
    flops = sum(step_flops(p.model, b) for b in timed)
    tokens = sum(int((b.tokens != 0).sum()) for b in timed)
    return {
        "seconds": seconds,
        "steps": len(timed),
        "flops": flops,
        "tokens": tokens,
        "warm": warm,
        "warm_tokens": warm_tokens,
    }


def pieces_loop(cfg, data: list, workers: int | None, in_piece_order: bool) -> dict:
    """`bare_loop` over bucketed ``data`` with ``workers`` piece threads; ``in_piece_order``
    starts concurrent pieces in piece order (shortest first) instead of `largest_first`."""
    from posenc.run import train

    saved = train.largest_first
    if in_piece_order:
        train.largest_first = lambda pieces: list(range(len(pieces)))
    try:
        return bare_loop(cfg, data, batching="bucketed", workers=workers)
    finally:
        train.largest_first = saved


def interleaved_ms(loops: dict, rounds: int = 3) -> dict[str, float]:
    """Median milliseconds per step of each `bare_loop` (a thunk), run in turn ``rounds`` times."""
    runs: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            out = loop()
            runs[name].append(1000 * out["seconds"] / out["steps"])
    return {name: statistics.median(v) for name, v in runs.items()}


def posenc_loop(overrides: list[str], steps: int) -> float:
    """Tokens/s of `posenc.run.execute.run` itself (logging, schedule, batches drawn on the fly)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            [
                *overrides,
                f"train.steps={steps}",
                "train.eval_every=0",
                "train.checkpoint_every=0",
                "eval.lengths=[1]",
                "eval.n_samples=1",
                "progress=false",
                f"run_dir={tmp}/run",
                f"data_dir={tmp}/data",
            ]
        )
        return run(cfg)["train"]["tokens_per_sec"]


# ------------------------------------------------------------------ commands


def posenc_cmd(*args: str, runs_root: Path, env_extra: dict | None = None) -> dict:
    """Run ``posenc ARGS`` in a fresh runs_root: wall seconds, exit code, peak child RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    cmd = [sys.executable, "-m", "posenc.cli", *args, f"runs_root={runs_root}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall": wall, "rss_mib": max(rss, before) / 1024}


def run_metrics(runs_root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(runs_root.rglob("metrics.json"))]


def id_range(metrics: list[dict]) -> str:
    values = [m["summary"]["id_exact_match"] for m in metrics]
    return f"{min(values):.4f}" if len(values) == 1 else f"{min(values):.4f}-{max(values):.4f}"


def start_side_by_side(n: int, overrides: list[str], root: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    t0 = time.perf_counter()
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "posenc.cli",
            "train",
            *overrides,
            f"runs_root={root / str(i)}",
        ]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"posenc train {' '.join(overrides)} failed")
    return time.perf_counter() - t0


def peer_steps_per_s(peer: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "train.py", "--pe", "rope", "--layers", "4", "--bench", "3"]
        cmd += ["--bench_steps", "20", "--threads", "2", "--out", str(out)]
        subprocess.run(cmd, cwd=peer, check=True, capture_output=True)
        return json.loads(out.read_text())["steps_per_s"]


def decode_row(cfg, n: int = 60, batch: int = 128) -> None:
    import numpy as np

    from posenc.run.evaluate import evaluate_pairs

    p = plan(cfg)
    p.model.eval()
    rng = np.random.default_rng(0)
    pairs = [p.task.sample(n, rng) for _ in range(batch)]
    timings, scores = {}, {}
    for name, kwargs in (("forced", {"greedy": False}), ("kv", {"greedy": True})):
        t0 = time.perf_counter()
        scores[name] = evaluate_pairs(p.model, pairs, batch_size=batch, **kwargs)
        timings[name] = time.perf_counter() - t0
    assert scores["forced"]["examples"] == scores["kv"]["examples"]
    row(
        f"scoring n={n}, {batch} sequences: teacher forcing / KV-cache greedy",
        f"{timings['forced']:.2f} s / {timings['kv']:.2f} s",
        "same exact match (asserted)",
    )


def model_row(cfg, peer: Path, steps: int) -> None:
    """posenc's model and the peer's, RoPE, same width and depth, on the peer's batches."""
    if not (peer / "model.py").exists():
        row("model step, posenc / peer", f"skipped: no {peer}/model.py (--peer)")
        return
    import importlib.util

    import torch.nn.functional as F

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"peer_{name}", peer / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    peer_model, peer_task = load("model"), load("task")
    m = cfg.model
    gen = torch.Generator().manual_seed(0)
    data = [
        peer_task.make_batch(cfg.train.batch_size, 1, 20, 16, "copy", gen)[:2]
        for _ in range(steps + 5)
    ]

    def build(which: str):
        torch.manual_seed(0)
        if which == "peer":
            net = peer_model.GPT(18, d=m.d_model, h=m.n_heads, n_layer=m.n_layers, pe="rope")
            return net, lambda x: net(x)
        p = plan(
            compose(
                [
                    "encoding=rope",
                    f"model.n_layers={m.n_layers}",
                    f"model.d_model={m.d_model}",
                    f"model.n_heads={m.n_heads}",
                    f"model.d_ff={4 * m.d_model}",  # the peer's MLP is 4x wide
                ]
            )
        )
        return p.model, lambda x: p.model(x)[0]

    def loop(which: str) -> float:
        net, forward = build(which)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.98))
        for i, (inputs, target) in enumerate(data):
            if i == 5:
                t0 = time.perf_counter()
            logits = forward(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        return 1000 * (time.perf_counter() - t0) / steps

    runs = {"posenc": [], "peer": []}
    for _ in range(3):
        for which in runs:
            runs[which].append(loop(which))
    ours, theirs = (statistics.median(runs[k]) for k in ("posenc", "peer"))
    row(
        "model step on the peer's batches, posenc / peer",
        f"{ours:.0f} ms / {theirs:.0f} ms = {ours / theirs:.2f}x",
        "",
    )


# ------------------------------------------------------------------ main


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


# The schemes that act inside attention, as configs/encoding/ names; "own" marks those that compute their
# own attention weights (no fused kernel).
INSIDE_ATTENTION = {
    "fox": False,
    "path": True,
    "path_fox": True,
    "stick_breaking": True,
    "ssmax": False,
    "combo_rope_ssmax": False,
    "p_rope": False,
    "hard_alibi": False,
    "per_layer": False,
    "per_head": False,
}


def encoding_rows(overrides: list[str], steps: int) -> None:
    """Each attention-level scheme's training step against RoPE's, same model and batches."""
    names = ["rope", *INSIDE_ATTENTION]
    cfgs = {name: compose([*overrides, f"encoding={name}"]) for name in names}
    sample = batches(cfgs["rope"], steps + 10, seed=3)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(3):  # each round in a rotated order, so no scheme always goes first
        for name in names[r:] + names[:r]:
            out = bare_loop(cfgs[name], sample)
            runs[name].append(1000 * out["seconds"] / out["steps"])
    ms = {name: statistics.median(v) for name, v in runs.items()}
    for name in INSIDE_ATTENTION:
        kernel = "own attention weights" if INSIDE_ATTENTION[name] else "fused kernel"
        row(
            f"training step, encoding={name} ({kernel})",
            f"{ms[name]:.0f} ms = {ms[name] / ms['rope']:.2f}x rope's {ms['rope']:.0f} ms",
        )


def features_rows(overrides: list[str], steps: int) -> None:
    """The ``features`` rows: each encoding's step with its position features computed once
    per forward pass against every layer computing them (module docstring)."""
    for name in ("rope", "alibi", "t5"):
        cfg = compose([*overrides, f"encoding={name}"])
        data = batches(cfg, steps + 10, seed=3)
        ways = {"once": True, "per layer": False}
        ms = interleaved_ms(
            {
                way: lambda f=f, c=cfg, d=data: bare_loop(c, d, position_features=f)
                for way, f in ways.items()
            }
        )
        row(
            f"training step, encoding={name}, position features once / per layer",
            f"{ms['once']:.0f} / {ms['per layer']:.0f} ms = {ms['once'] / ms['per layer']:.3f}x",
        )


def fused_row(cfg, data: list, steps: int) -> None:
    """The ``fused`` row: AdamW steps alone, on the gradients of one real backward pass."""
    times: dict[str, list[float]] = {"foreach": [], "fused": []}
    for _ in range(3):
        for way in times:
            p = plan(cfg)
            trainer = make_trainer(cfg, p.model, steps, fused_adamw=way == "fused")
            trainer.backward(data[0])
            for _ in range(5):  # warm-up: the state's first allocation
                trainer.optimizer.step()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.optimizer.step()
            times[way].append(1000 * (time.perf_counter() - t0) / steps)
            trainer.close()
    ms = {way: statistics.median(v) for way, v in times.items()}
    row(
        "AdamW step, foreach / fused=True (train.fused_adamw)",
        f"{ms['foreach']:.2f} / {ms['fused']:.2f} ms = {ms['fused'] / ms['foreach']:.2f}x",
    )


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def op_phase(event) -> str:
    """forward, backward or optimizer: the phase a profiled operator ran in, read from its
    outermost enclosing event (the autograd engine's for the backward pass; the
    ``record_function`` ranges `profile_rows` opens for the others)."""
    top = event
    while top.cpu_parent is not None:
        top = top.cpu_parent
        if top.name.startswith("autograd::engine::evaluate_function"):
            return "backward"
    if top.name in PHASES:
        return top.name
    return "forward"


PHASES = ("forward", "backward", "optimizer")
# Operators that only reshape or alias (no arithmetic, no memory traffic of their own).
VIEWS = {
    "aten::view", "aten::reshape", "aten::t", "aten::transpose", "aten::permute",
    "aten::expand", "aten::as_strided", "aten::select", "aten::slice", "aten::unsqueeze",
    "aten::squeeze", "aten::split", "aten::unflatten", "aten::flatten", "aten::detach",
    "aten::alias", "aten::_unsafe_view", "aten::empty", "aten::empty_like", "aten::zeros",
    "aten::resize_", "aten::empty_strided", "aten::lift_fresh", "aten::unbind", "aten::chunk",
}  # fmt: skip


def copy_bandwidth(nbytes: int = 1 << 20, seconds: float = 0.3) -> float:
    """GB/s of ``copy_`` between two float32 tensors of ``nbytes`` (read + write counted):
    the activations of this model are about that size, so they move at cache, not DRAM,
    speed."""
    a = torch.randn(nbytes // 4)
    b = torch.empty_like(a)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b.copy_(a)
        reps += 1
    return 2 * nbytes * reps / (time.perf_counter() - t0) / 1e9


def dispatch_cost(seconds: float = 0.3) -> float:
    """Microseconds of one eager ``add`` on one-element tensors: the framework's cost of an
    operator call with (next to) no arithmetic, the floor of an eager operator."""
    a, b = torch.ones(1), torch.ones(1)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.add(a, b)
        reps += 1
    return 1e6 * (time.perf_counter() - t0) / reps


def op_bytes(event) -> int:
    """Bytes an operator reads, estimated from its float32 inputs' shapes (written bytes
    are about as many again for elementwise operators)."""
    total = 0
    for shape in event.input_shapes or []:
        if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
            total += 4 * math.prod(shape)
    return total


def profile_rows(cfg, steps: int = 30, peak: float | None = None) -> None:
    """Where a step's time goes, by phase (forward, backward, optimizer with clipping): the
    matmuls (time, rate in place, floor at the fp32 peak), the other operators (time,
    bytes they read, floor at the copy bandwidth of activation-sized tensors), and the
    framework's share (eager operator calls times the cost of an empty one, plus Python time
    between operators). ``steps`` steps of the configured batching, pieces one after the
    other at the run's threads, under torch's profiler (which adds a little per call), in the
    configured ``train.precision`` (``train.precision=bf16`` profiles the bf16 path; its
    matmul floors still read the fp32 peak)."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    p = plan(cfg)
    data = batches(cfg, steps + 10, seed=4)
    trainer = make_trainer(cfg, p.model, len(data), precision=cfg.train.precision, workers=1)
    for b in data[:10]:
        trainer.step(b)
    params = list(p.model.parameters())
    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        t0 = time.perf_counter()
        for b in data[10:]:
            with record_function("forward"):  # the backward pass runs inside it, on the
                trainer.backward(b)  # engine's events, which op_phase tells apart
            with record_function("optimizer"):
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                trainer.optimizer.step()
        wall = time.perf_counter() - t0
    trainer.close()
    ms = 1 / (1000 * steps)  # microseconds over all steps -> milliseconds per step
    stats = {ph: {"mm": 0.0, "flops": 0.0, "other": 0.0, "bytes": 0, "calls": 0} for ph in PHASES}
    others: dict[tuple[str, str], float] = {}
    ranges = ("autograd::", "forward", "optimizer", "Optimizer.")  # not operators
    for e in prof.events():
        if e.name.startswith(ranges):
            continue
        phase = op_phase(e)
        ph = stats[phase]
        if e.cpu_parent is None or e.cpu_parent.name.startswith(ranges):
            ph["calls"] += 1  # an operator called from Python or the engine, not a nested one
        if e.name in MATMULS:
            ph["mm"] += e.self_cpu_time_total
            ph["flops"] += e.flops or 0
        else:  # views and allocations count their (small) time but move no bytes
            ph["other"] += e.self_cpu_time_total
            if e.name not in VIEWS:
                ph["bytes"] += op_bytes(e)
                key = (phase, e.name.removeprefix("aten::"))
                others[key] = others.get(key, 0.0) + e.self_cpu_time_total
    in_ops = sum(s["mm"] + s["other"] for s in stats.values())
    gap_ms = max(0.0, wall * 1e6 - in_ops) * ms
    bandwidth = copy_bandwidth()
    empty_us = dispatch_cost()
    peak = peak or max(matmul_gflops(*s, torch.float32) for s in model_shapes(cfg))
    threads = plural(torch.get_num_threads(), "thread")
    row(
        f"profile ({threads}, {trainer.precision}): a step's wall time; in operators; Python between them",
        f"{wall * 1000 / steps:.0f} ms; {in_ops * ms:.0f} ms; {gap_ms:.0f} ms",
    )
    for name, s in stats.items():
        mm_ms, other_ms = s["mm"] * ms, s["other"] * ms
        rate = s["flops"] / (s["mm"] * 1e-6) / 1e9 if s["mm"] else 0.0
        mm_floor = s["flops"] / steps / (peak * 1e9) * 1000
        mem_floor = 2 * s["bytes"] / steps / (bandwidth * 1e9) * 1000
        calls = s["calls"] / steps
        row(
            f"profile, {name}: matmuls ms (GFLOP/s; floor at peak)",
            f"{mm_ms:.0f} ms ({rate:.0f} GFLOP/s; {mm_floor:.0f} ms)",
        )
        row(
            f"profile, {name}: other operators ms (floor: memory; calls x empty call)",
            f"{other_ms:.0f} ms (memory {mem_floor:.0f} ms; {calls:,.0f} calls x "
            f"{empty_us:.1f} us = {calls * empty_us / 1000:.0f} ms)",
        )
    top = sorted(others.items(), key=lambda kv: -kv[1])[:8]
    row(
        "profile: the costliest other operators, ms per step",
        ", ".join(f"{op} ({ph[0]}) {t * ms:.0f}" for (ph, op), t in top),
    )
    row(
        "profile: peak used for the floors; copy bandwidth; empty operator call",
        f"{peak:.0f} GFLOP/s; {bandwidth:.0f} GB/s (1 MiB tensors); {empty_us:.1f} us",
    )


def floor_rows(cfg, peak: float) -> None:
    """Seconds a default run's training FLOPs take at 100% of the fp32 peak (a lower bound)."""
    import posenc.cli.app  # noqa: F401  (loads cli.experiments, which imports cli.app)
    from posenc.cli.experiments import CORE_ENCODINGS

    model = plan(cfg).model
    sample = batches(cfg, 300, seed=3)
    per_step = statistics.fmean(step_flops(model, b) for b in sample)
    run_flops = per_step * cfg.train.steps
    train_s = run_flops / (peak * 1e9)
    n = len(CORE_ENCODINGS.split(","))
    row(
        f"floor: posenc train, {cfg.train.steps:,} steps x {per_step / 1e9:.2f} GFLOP at peak",
        f"{train_s:.0f} s (training only; {run_flops / 1e12:.1f} TFLOP)",
        "<= 180 s",
    )
    row(
        f"floor: posenc compare, {n} runs at peak",
        f"{n * train_s:.0f} s (training only)",
        "<= 600 s",
    )
    row(
        "share of peak a run's training needs for 180 s",
        f"{train_s / 180:.0%}" + (" (over 100%: out of reach)" if train_s > 180 else ""),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"of {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of the in-process loops")
    parser.add_argument("--peer", default=str(ROOT.parent / "shared" / "peer"))
    parser.add_argument(
        "--runs-root",
        help="keep the smoke/train/compare runs here (default: a temporary folder)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="store the bf16 and bf16_compile rows' speedups for train.precision=auto, and the "
        "compile row's for train.compile=auto at these threads, for this machine",
    )
    parser.add_argument(
        "--accuracy-checked",
        action="store_true",
        help="with --record: a 3-seed check showed bf16 runs reach fp32's accuracy here",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the model under test")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; valid choices: {', '.join(ROWS)}")
    cfg = compose(args.overrides)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    threads = torch.get_num_threads()
    print(
        f"posenc speed benchmark · torch {torch.__version__} · {plural(threads, 'thread')}",
        flush=True,
    )
    rates = (
        peaks(cfg)
        if {"machine", "step", "bf16", "bf16_compile", "floor", "profile"} & set(rows)
        else {}
    )
    peak = {dtype: max(r) for dtype, r in rates.items()}
    if "machine" in rows:
        row("CPU", cpu_model())
        row(
            "ISA",
            f"{', '.join(isa_flags()) or 'none listed'} (torch: {torch.backends.cpu.get_cpu_capability()})",
        )
        shapes = ", ".join("x".join(map(str, s)) for s in model_shapes(cfg))
        row(
            f"matmul peak, best of {shapes}",
            f"fp32 {peak[torch.float32]:.1f}, bf16 {peak[torch.bfloat16]:.1f} GFLOP/s",
        )
        row(
            "fp32 matmul GFLOP/s, each of those shapes",
            ", ".join(f"{r:.1f}" for r in rates[torch.float32]),
        )

    timed_rows = {"step", "bf16", "bf16_compile", "compile"} & set(rows)
    data = batches(cfg, args.steps + 10) if timed_rows else []
    fp32 = bare_loop(cfg, data) if timed_rows else {}
    if "step" in rows:
        achieved = fp32["flops"] / fp32["seconds"] / 1e9
        row(
            "training step, GFLOP/s on real tokens / fp32 peak",
            f"{achieved:.1f} GFLOP/s = {achieved / peak[torch.float32]:.1%}",
            ">= 50%",
        )
        bare_tps = (fp32["tokens"] + fp32["warm_tokens"]) / (fp32["seconds"] + fp32["warm"])
        loops = [posenc_loop(args.overrides, len(data)) for _ in range(3)]
        row(
            "posenc loop / bare loop, tokens/s",
            f"{statistics.median(loops):,.0f} / {bare_tps:,.0f} = {statistics.median(loops) / bare_tps:.2f}",
            ">= 0.95",
        )
    if "padding" in rows:
        for mode in BATCHING:
            sample = batches(cfg, 300, seed=1, batching=mode)
            real = sum(int((b.tokens != 0).sum()) for b in sample)
            pieces = [q for b in sample for q in length_buckets(b, bucket_count(cfg.train, mode))]
            slots = sum(q.tokens.numel() for q in pieces)
            row(
                f"padding share of training token slots, batching={mode}"
                + (f", buckets={cfg.train.buckets}" if mode == "bucketed" else ""),
                f"{1 - real / slots:.1%}",
                "<= 5%" if mode == cfg.train.batching else "",
            )
    if "batching" in rows:
        sample = {mode: batches(cfg, args.steps + 10, seed=2, batching=mode) for mode in BATCHING}
        ms = interleaved_ms(
            {
                mode: lambda mode=mode: bare_loop(cfg, sample[mode], batching=mode)
                for mode in BATCHING
            }
        )
        for mode in BATCHING:
            row(
                f"training step, batching={mode}",
                f"{ms[mode]:.0f} ms = {ms[mode] / ms['mixed']:.2f}x mixed's",
            )
    if "pieces" in rows:
        sample = batches(cfg, args.steps + 10, seed=2, batching="bucketed")
        ways = {
            "one after the other": (1, False),
            "side by side": (None, False),
            "side by side, started shortest first": (None, True),
        }
        ms = interleaved_ms(
            {
                way: lambda w=w, in_order=in_order: pieces_loop(cfg, sample, w, in_order)
                for way, (w, in_order) in ways.items()
            }
        )
        for way in ways:
            row(
                f"bucketed step ({cfg.train.buckets} buckets), pieces {way}",
                f"{ms[way]:.0f} ms = {ms[way] / ms['one after the other']:.2f}x",
            )
    if "model" in rows:
        model_row(cfg, Path(args.peer), args.steps)
    if "encodings" in rows:
        encoding_rows(args.overrides, args.steps)
    if "features" in rows:
        features_rows(args.overrides, args.steps)
    if "bf16" in rows:
        few = data[:30]  # bf16 can be 10x slower where the CPU lacks bf16 instructions
        base = bare_loop(cfg, few)
        bf16 = bare_loop(cfg, few, precision="bf16")
        speedup = base["seconds"] / bf16["seconds"]
        row(
            "bf16 (one autocast per step, fp32 master weights) / fp32 step speed",
            f"{speedup:.2f}x",
            ">= 1.3x or a measured negative result",
        )
        if args.record:  # what train.precision=auto reads on this machine (posenc.precision)
            from posenc.precision import machine_key, save_record

            path = save_record(speedup, accuracy_checked=args.accuracy_checked)
            row("bf16 measurement recorded for train.precision=auto", f"{path} [{machine_key()}]")
    if "bf16_compile" in rows:
        from posenc.run.train import use_compile_cache

        use_compile_cache()
        few = data[:30]  # the first 10 (timed apart) compile
        ms = {
            name: 1000 * out["seconds"] / out["steps"]
            for name, out in (
                ("eager fp32", bare_loop(cfg, few)),
                ("compiled fp32", bare_loop(cfg, few, compile=True)),
                ("compiled bf16", bare_loop(cfg, few, precision="bf16", compile=True)),
            )
        }
        speedup = ms["compiled fp32"] / ms["compiled bf16"]
        row(
            "compiled bf16 / compiled fp32 step speed (ms: eager fp32, compiled fp32, bf16)",
            f"{speedup:.2f}x ({ms['eager fp32']:.0f}, {ms['compiled fp32']:.0f}, "
            f"{ms['compiled bf16']:.0f} ms)",
            ">= 1.5x on AMX",
        )
        if args.record:  # what train.precision=auto reads for a compiled run here
            from posenc.precision import machine_key, save_record

            path = save_record(speedup, accuracy_checked=args.accuracy_checked, compiled=True)
            row("compiled bf16 measurement recorded", f"{path} [{machine_key()}]")
    if "fused" in rows:
        fused_row(cfg, batches(cfg, 1), args.steps)
    if "compile_pieces" in rows:
        from posenc.run.train import use_compile_cache

        use_compile_cache()
        sample = batches(cfg, args.steps + 10, seed=2, batching="bucketed")
        ways = {"one after the other": 1, "side by side": None}
        ms = interleaved_ms(
            {
                way: lambda w=w: bare_loop(
                    cfg, sample, compile=True, batching="bucketed", workers=w
                )
                for way, w in ways.items()
            },
            rounds=2,
        )
        for way in ways:
            row(
                f"compiled bucketed step ({cfg.train.buckets} buckets), pieces {way}",
                f"{ms[way]:.0f} ms = {ms[way] / ms['one after the other']:.2f}x",
            )
    if "compile" in rows:
        from posenc.run.train import use_compile_cache

        cache = use_compile_cache()
        compiled = bare_loop(cfg, data, compile=True)
        torch._dynamo.reset()  # as a new process would: compiled again, from the disk cache
        again = bare_loop(cfg, data[:20], compile=True)
        speedup = fp32["seconds"] / compiled["seconds"]
        row(
            "torch.compile / eager step speed (after warm-up)",
            f"{speedup:.2f}x; first 10 steps {compiled['warm']:.0f} s, "
            f"then {again['warm']:.0f} s from the cache",
            "default off unless it wins incl. compile time",
        )
        row("torch.compile cache", cache)
        if args.record:  # what train.compile=auto reads at these threads (posenc.run.spec)
            from posenc.precision import machine_key, save_compile_record

            path = save_compile_record(speedup, threads)  # the torch threads it ran at
            row(
                f"compile measurement recorded for train.compile=auto at {threads} thread(s)",
                f"{path} [{machine_key()}]",
            )

    if "decode" in rows:
        decode_row(cfg)
    if "profile" in rows:
        profile_rows(cfg, peak=peak.get(torch.float32))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(args.runs_root).resolve() if args.runs_root else Path(tmp)
        if "smoke" in rows:
            out = posenc_cmd("train", "preset=smoke", "progress=false", runs_root=tmp / "smoke")
            row("posenc train preset=smoke, wall", f"{out['wall']:.1f} s", "<= 15 s")
        train_wall = None
        if {"train", "peer"} & set(rows):
            out = posenc_cmd("train", "progress=false", *args.overrides, runs_root=tmp / "train")
            train_wall = out["wall"]
            m = run_metrics(tmp / "train")[0]
            row(
                "posenc train (defaults), wall; ID exact match; peak RSS",
                f"{out['wall']:.0f} s; {m['summary']['id_exact_match']:.4f}; {out['rss_mib']:.0f} MiB",
                "<= 180 s, ID >= 0.99",
            )
        if "peer" in rows:
            peer = Path(args.peer)
            if not (peer / "train.py").exists():
                row("peer loop", f"skipped: no {peer}/train.py (--peer)")
            else:
                rate = peer_steps_per_s(peer)
                peer_seconds = 3000 / rate
                row(
                    "posenc train wall / peer's 3,000 steps",
                    f"{train_wall:.0f} s / {peer_seconds:.0f} s ({rate:.2f} steps/s) = {train_wall / peer_seconds:.2f}x",
                    "<= 0.4x",
                )
        if "pair" in rows:
            short = ["progress=false", "train.steps=400", "train.eval_every=0", "eval.max_len=20"]
            alone = start_side_by_side(1, short, tmp / "alone")
            both = start_side_by_side(2, short, tmp / "both")
            row(
                "two posenc train side by side, combined throughput / one alone",
                f"{2 * alone / both:.2f}x ({alone:.0f} s alone, {both:.0f} s for both)",
                ">= 0.8x",
            )
        if "compare" in rows:
            out = posenc_cmd("compare", runs_root=tmp / "compare")
            row(
                "posenc compare (defaults), wall; ID exact match, every encoding",
                f"{out['wall']:.0f} s; {id_range(run_metrics(tmp / 'compare'))}",
                "<= 600 s, each >= 0.99",
            )

    if "floor" in rows:
        floor_rows(cfg, peak[torch.float32])

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"posenc speed · {cpu_model()} · {plural(threads, 'thread')}")
    for col in ("what", "measured", "target"):
        table.add_column(col)
    for r in results:
        table.add_row(*r)
    Console().print(table)


if __name__ == "__main__":
    main()
