"""KERPLE and CoPE as their authors' code has them, the configs they refuse, and published
tables that come out the same on every machine."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from posenc import encodings
from posenc.data import TrainStream
from posenc.errors import ConfigError
from posenc.run.execute import plan
from posenc.run.train import Trainer
from posenc.runfolder import legacy_values
from tests.test_publish import DOCS_WITH_TABLES

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- KERPLE


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_shares_r1_r2_across_layers_as_the_reference_code(name):
    """One `rpe_emb` instance handed to every layer (chijames/KERPLE): one (r1, r2) per head."""
    enc = encodings.build(name, d_model=16, n_heads=4, max_len=32, n_layers=3)
    assert [tuple(p.shape) for p in enc.parameters()] == [(4,), (4,)]
    pos = torch.arange(6)[None]
    q = k = torch.zeros(1, 4, 6, 4)
    assert torch.equal(enc.bias(q, k, pos, pos, layer=0), enc.bias(q, k, pos, pos, layer=2))
    per_layer = encodings.build(
        name, d_model=16, n_heads=4, max_len=32, n_layers=3, layer_shared=False
    )
    assert len(list(per_layer.parameters())) == 6
    assert not torch.equal(
        per_layer.bias(q, k, pos, pos, layer=0), per_layer.bias(q, k, pos, pos, layer=2)
    )


def test_kerple_log_bias_is_the_papers_formula():
    enc = encodings.build("kerple_log", d_model=8, n_heads=2, max_len=16)
    with torch.no_grad():
        enc.r1[0].copy_(torch.tensor([1.5, 0.5]))
        enc.r2[0].copy_(torch.tensor([0.25, 2.0]))
    pos = torch.arange(4)[None]
    b = enc.bias(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), pos, pos)
    for h, (r1, r2) in enumerate([(1.5, 0.25), (0.5, 2.0)]):
        for i in range(4):
            for j in range(4):
                assert b[0, h, i, j].item() == pytest.approx(-r1 * math.log(1 + r2 * abs(i - j)))


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power"])
def test_kerple_forward_never_writes_its_parameters_and_the_step_projects_them(tiny_cfg, name):
    p = plan(tiny_cfg(f"encoding={name}", "train.batching=mixed"))
    enc = p.model.encoding
    with torch.no_grad():
        enc.r1[0][0] = -1.0  # pushed out of range, as an optimizer step may
        enc.r2[0][1] = 5.0
    versions = [param._version for param in enc.parameters()]
    p.model.train()
    batch = TrainStream(p.task, 1, 6, 8, seed=0, batching="mixed").next()
    p.model(batch.inputs)
    assert [param._version for param in enc.parameters()] == versions
    trainer = Trainer(p.model, p.cfg.train)
    trainer.step(batch)
    assert bool((enc.r1[0] >= 0.01).all()) and bool((enc.r2[0] >= 0.01).all())
    assert enc.r1[0][0].item() == pytest.approx(0.01)  # restarted from the boundary
    if name == "kerple_power":
        assert bool((enc.r2[0] <= 2.0).all())


@pytest.mark.parametrize("name", ["kerple_log", "kerple_power", "cope", "fire"])
def test_learned_bias_gradient_with_pieces_side_by_side_equals_one_thread(tiny_cfg, name):
    """The bucketed batch's pieces computed in two threads give the gradient of the
    sequential pieces at one thread, to float rounding (KERPLE's parameters are never written in the forward pass)."""
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            p = plan(tiny_cfg(f"encoding={name}", "train.batching=bucketed", "train.buckets=4"))
            trainer = Trainer(p.model, p.cfg.train)
            assert trainer.workers == threads
            batch = TrainStream(p.task, 1, 6, 16, seed=1, batching="bucketed").next()
            trainer.backward(batch)
            trainer.close()
            grads.append({k: v.grad.clone() for k, v in p.model.encoding.named_parameters()})
    finally:
        torch.set_num_threads(before)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-7)


def test_a_kerple_run_saved_before_layer_shared_still_builds_per_layer(tiny_cfg):
    """Old config.yaml files have no encoding.layer_shared: they had one set per layer, and
    their checkpoints must load into the same shapes."""
    cfg = tiny_cfg("encoding=kerple_log")
    old = copy.deepcopy(cfg)
    with open_dict(old):
        del old.encoding["layer_shared"]
    enc = encodings.from_config(old, legacy_values("encoding"))  # as planning builds it
    assert len(list(enc.parameters())) == 2 * cfg.model.n_layers
    assert len(list(encodings.from_config(cfg).parameters())) == 2


# ---------------------------------------------------------------- CoPE


def cope_reference_logits(q, k, emb, npos, nodiv):
    """facebookresearch/RAM projects/cope ContextPosSelfAttn, restated with loops on one head:
    gates σ(q·k/√d) over the causal past, p_ij = Σ_{t=j..i} g_it clamped to npos - 1,
    q·e interpolated at ⌊p⌋, ⌈p⌉; then (q·k + pos)/√d, or q·k/√d + pos with --cope-nodiv."""
    T, d = q.shape
    out = torch.full((T, T), float("-inf"), dtype=torch.float64)
    for i in range(T):
        gates = [torch.sigmoid(q[i] @ k[t] / math.sqrt(d)) for t in range(i + 1)]
        for j in range(i + 1):
            p = min(sum(gates[j : i + 1]), npos - 1)
            lo, hi = math.floor(p), math.ceil(p)
            w = p - lo
            pos = (q[i] @ emb[:, hi]) * w + (q[i] @ emb[:, lo]) * (1 - w)
            qk = q[i] @ k[j]
            out[i, j] = qk / math.sqrt(d) + pos if nodiv else (qk + pos) / math.sqrt(d)
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_cope_logits_equal_the_reference_formula(scale):
    torch.manual_seed(0)
    enc = encodings.build(
        "cope", d_model=8, n_heads=2, max_len=16, npos_max=4, scale_position_term=scale
    ).double()
    with torch.no_grad():
        enc.pos_emb.normal_()
    q, k = torch.randn(2, 1, 2, 5, 4, dtype=torch.float64).unbind(0)
    pos = torch.arange(5)[None]
    logits = q @ k.transpose(-1, -2) / math.sqrt(4) + enc.bias(q, k, pos, pos)
    for h in range(2):
        ref = cope_reference_logits(q[0, h], k[0, h], enc.pos_emb[0].detach(), 4, nodiv=not scale)
        visible = torch.ones(5, 5).tril().bool()
        torch.testing.assert_close(logits[0, h][visible], ref[visible])


def test_cope_defaults_to_the_reference_default_path():
    assert encodings.parameters("cope")["scale_position_term"] is True
    assert OmegaConf.load(ROOT / "configs/encoding/cope.yaml").scale_position_term is True


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["coupled", "abacus"])
def test_token_derived_positions_refuse_index_hints(tiny_cfg, tmp_path, name):
    with pytest.raises(ConfigError, match="index hints") as err:
        plan(tiny_cfg(f"encoding={name}", "task=addition", "task.index_hints=true"))
    assert "\n" not in str(err.value)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "posenc.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


@pytest.mark.parametrize("value", ["2", "0", "-0.5"])
def test_eval_threshold_outside_0_1_is_refused_in_one_line(tmp_path, value):
    r = cli("train", f"eval.threshold={value}", f"runs_root={tmp_path / 'runs'}", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert f"eval.threshold must be a number in (0, 1], got {value}" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "-1"], "--count must be an integer >= 1, got -1"),
        (["--count", "x"], "'--count'"),
        (["--bogus"], "No such option: --bogus"),
    ],
)
def test_data_show_option_errors_are_one_line(tmp_path, args, message):
    r = cli("data", "show", "copy", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert message in r.stderr


# ---------------------------------------------------------------- tables on every machine


def test_paired_bootstrap_is_exact_whatever_the_order_of_seeds_and_lengths():
    """The ALiBi ablation's intervals from the committed runs, and again with every run's
    lengths and the runs themselves in reverse order: identical to the last digit."""
    from posenc import report

    records = report.load_experiment(ROOT / "docs/experiments/alibi_ablation")
    task = report.tasks_of(records)[0]
    first = report.baseline_differences(records, task, "alibi_mixed")
    for r in records:
        if r.metrics:
            r.metrics["per_length"] = dict(reversed(list(r.metrics["per_length"].items())))
    again = report.baseline_differences(list(reversed(records)), task, "alibi_mixed")
    key = lambda d: d.encoding  # noqa: E731
    assert sorted(first, key=key) == sorted(again, key=key)
    assert any(d.low is not None and d.low != d.high for d in first)


# numpy's SIMD kernels above its x86-64-v2 baseline (AVX2/FMA, AVX-512): switched off, numpy
# sums and multiplies with the baseline's kernels, as on a machine of another kind.
NO_SIMD = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR AVX2 FMA3 AVX512F AVX512_SKX"


@pytest.mark.parametrize(("threads", "simd"), [("1", ""), ("3", NO_SIMD)])
def test_published_tables_regenerate_identically_on_another_machine(threads, simd):
    """`posenc tables --check` on the committed docs with one BLAS/OpenMP thread, and with
    three and numpy's SIMD kernels off (another summation order): the same text, or the check
    fails."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "NPY_DISABLE_CPU_FEATURES": simd,
    }
    r = subprocess.run(
        [sys.executable, "-m", "posenc.cli", "tables", "--check", *DOCS_WITH_TABLES],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
