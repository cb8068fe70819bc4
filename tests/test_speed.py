"""The speed options of issue 38 that change how a step is computed, not what it computes:
fused AdamW (``train.fused_adamw``) and the bf16 path (``train.precision=bf16``), each
against the default fp32 ``foreach`` step on tiny models and a few steps."""

from __future__ import annotations

import pytest
import torch

from posenc import encodings
from posenc.data import TrainStream
from posenc.run.execute import plan
from posenc.run.train import Trainer

NEEDS_DIGITS = {"abacus", "coupled"}


def trained(cfg, steps: int) -> tuple[list[float], dict, Trainer]:
    """Build ``cfg``'s model (seeded) and trainer, take ``steps`` steps on a seeded stream:
    the losses, the final weights and the trainer."""
    torch.manual_seed(0)
    p = plan(cfg)
    trainer = Trainer(p.model, p.cfg.train, device=p.device)
    tr = p.cfg.train
    stream = TrainStream(
        p.task, tr.min_len, tr.max_len, tr.batch_size, seed=0, batching=tr.batching
    )
    try:
        losses = [trainer.step(stream.next()).loss for _ in range(steps)]
    finally:
        trainer.close()
    weights = {  # tensors only: an encoding's extra state (DroPE's switch) is no weight
        k: v.detach().clone()
        for k, v in p.model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    return losses, weights, trainer


def test_fused_adamw_is_the_config_key_and_off_by_default(tiny_cfg):
    _, _, trainer = trained(tiny_cfg(), 1)
    assert not trainer.optimizer.defaults["fused"]
    assert trainer.optimizer.defaults["foreach"]
    _, _, trainer = trained(tiny_cfg("train.fused_adamw=true"), 1)
    assert trainer.optimizer.defaults["fused"]


def test_fused_adamw_matches_foreach_within_float32_rounding(tiny_cfg):
    """Ten steps (warm-up, weight decay on the matrices, clipping): the fused kernel's weights
    stay within float32 rounding of the foreach optimizer's, so it is the same training."""
    losses, weights, _ = trained(tiny_cfg("threads=1"), 10)
    fused_losses, fused_weights, _ = trained(tiny_cfg("threads=1", "train.fused_adamw=true"), 10)
    assert losses[0] == fused_losses[0]  # the first forward pass precedes any update
    torch.testing.assert_close(fused_losses, losses, rtol=1e-5, atol=0)
    for key, value in weights.items():
        torch.testing.assert_close(fused_weights[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture
def one_thread():
    """One torch thread (pieces one after the other), restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def overrides_for(name: str) -> list[str]:
    task = ["task=addition", "train.max_len=3", "eval.max_len=4"] if name in NEEDS_DIGITS else []
    return [f"encoding={name}", "threads=1", "train.buckets=4", *task]


# bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.4%); a tiny model's loss after a few
# steps, computed with bf16 matmuls and float32 reductions, stays within a few of those.
BF16_LOSS_RTOL = 0.02
# The weights' change over those steps: AdamW divides each gradient by its running RMS, so
# bf16's rounding of the gradients moves each update by a few percent (2-4% measured for
# nine encodings); a wrong path (a missing backward term, a bias in the wrong dtype) by more.
BF16_UPDATE_RTOL = 0.1


def assert_bf16_within_rounding(tiny_cfg, name: str, *extra: str) -> Trainer:
    """Three steps in bf16 against the same three in float32 (same seeds and batches, both
    with ``extra`` overrides): every loss within bf16 rounding, the weights' updates within
    a few percent, the weights kept in float32. Returns the bf16 trainer."""
    torch.manual_seed(0)
    start = {  # tensors only: an encoding's extra state (DroPE's switch) is no weight
        k: v.clone()
        for k, v in plan(tiny_cfg(*overrides_for(name))).model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    fp32, fp32_weights, _ = trained(tiny_cfg(*overrides_for(name), *extra), 3)
    bf16, bf16_weights, trainer = trained(
        tiny_cfg(*overrides_for(name), *extra, "train.precision=bf16"), 3
    )
    assert trainer.precision == "bf16" and trainer.workers == 1
    torch.testing.assert_close(bf16, fp32, rtol=BF16_LOSS_RTOL, atol=0)
    floats = [k for k, v in start.items() if v.is_floating_point()]
    assert all(bf16_weights[k].dtype == torch.float32 for k in floats), "fp32 master weights"
    apart = sum(float((bf16_weights[k] - fp32_weights[k]).square().sum()) for k in floats)
    update = sum(float((fp32_weights[k] - start[k]).square().sum()) for k in floats)
    assert apart**0.5 <= BF16_UPDATE_RTOL * update**0.5
    return trainer


@pytest.mark.parametrize("name", encodings.names())
def test_bf16_steps_stay_within_bf16_rounding_of_fp32(tiny_cfg, one_thread, name):
    """Three steps in bf16 (pieces in one autocast context, attention in float32) against
    the same three in float32, same seeds and batches: every loss within bf16 rounding, the
    weights' updates within a few percent."""
    assert_bf16_within_rounding(tiny_cfg, name)


# A rotation, a (learned) bias and a scheme with its own attention weights: the ways an
# encoding enters attention, which is where the compiled bf16 path differs (attention traced
# in float32 inside the autocast region). Three, not the matrix: each traces twice (~10 s).
COMPILED_BF16 = ["rope", "t5", "stick_breaking"]


@pytest.mark.parametrize("name", COMPILED_BF16)
def test_compiled_bf16_steps_stay_within_bf16_rounding_of_compiled_fp32(
    tiny_cfg, one_thread, monkeypatch, tmp_path, name
):
    """``train.compile=true train.precision=bf16``, the combination that fuses the casts on
    a CPU with AMX (docs/performance.md): the autocast region traced into the compiled graph
    gives bf16 rounding of the compiled float32 step. Compiled with ``aot_eager`` (the
    graphs inductor would compile, run op by op), so the check takes seconds."""
    from posenc.run.train import COMPILE_CACHE_ENV

    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "cache"))
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", **kw)
    )
    torch._dynamo.reset()
    trainer = assert_bf16_within_rounding(tiny_cfg, name, "train.compile=true")
    assert trainer.forward is not trainer.model, "the step ran through the compiled module"


def test_bf16_piece_threads_cast_without_autocast_s_shared_cache(tiny_cfg):
    """Pieces side by side in bf16 run each forward pass under autocast with its cache off:
    with it on, ``train.compile=true train.precision=bf16`` with two piece threads deadlocked
    on the cache's lock and the GIL (docs/performance.md, pieces side by side). A race no
    test triggers reliably, so this checks the condition that rules it out."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        p = plan(tiny_cfg("train.precision=bf16", "train.buckets=4"))
        trainer = Trainer(p.model, p.cfg.train, device=p.device)
        assert trainer.workers == 2
        seen = []
        forward = trainer.forward

        def spy(*args, **kwargs):
            seen.append(
                (
                    threading.current_thread().name.startswith("posenc-piece"),
                    torch.is_autocast_enabled("cpu"),
                    torch.is_autocast_cache_enabled(),
                )
            )
            return forward(*args, **kwargs)

        trainer.forward = spy
        tr = p.cfg.train
        stream = TrainStream(p.task, tr.min_len, tr.max_len, tr.batch_size, 0, "bucketed")
        try:
            trainer.step(stream.next())
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 4
    assert set(seen) == {(True, True, False)}
