"""``train.compile=true``: the model traces into one graph per forward pass (a graph break
splits it at every layer and undoes the fusion compile is for), the compiled step computes
the eager step's numbers, and compiled artifacts go to a persistent cache.

Traced with ``torch._dynamo.explain`` and run with the ``aot_eager`` backend (forward and
backward graphs, no code generation), so the checks take seconds, not inductor's minutes.
"""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from posenc import encodings
from posenc.config import compose
from posenc.data import TrainStream
from posenc.run.execute import plan
from posenc.run.train import COMPILE_CACHE_ENV, Trainer, use_compile_cache

NEEDS_DIGITS = {"abacus", "coupled"}
# Encodings that break the graph on purpose, and why.
BREAKS = {
    "transformer_xl": "torch.unique over the distances that occur (a data-dependent shape)",
}
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
    """A name in BREAKS that no longer breaks the graph must leave the list."""
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
