"""``train.compile=true`` with bucketed pieces side by side: the piece threads share the one
compiled graph, and the step is the compiled sequential step's, bit for bit, at one intra-op
thread per piece (as tests/test_run.py checks eagerly). Compiled with the ``aot_eager``
backend (the graphs, run op by op), so the check takes seconds, not inductor's minutes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from posenc.config import compose
from posenc.data import TrainStream
from posenc.run.execute import plan
from posenc.run.train import COMPILE_CACHE_ENV, Trainer

TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.d_ff=64"]


@pytest.mark.slow
def test_compiled_pieces_side_by_side_equal_one_after_the_other(monkeypatch, tmp_path):
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path))  # restored after the test
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", **kw)
    )
    cfg = compose(["encoding=alibi", *TINY, "train.batch_size=8", "train.max_len=6"])
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):  # 1: one piece at a time; 2: two pieces, one thread each
            torch.set_num_threads(threads)
            torch._dynamo.reset()
            torch.manual_seed(0)
            p = plan(cfg)
            trainer = Trainer(p.model, OmegaConf.merge(cfg.train, {"compile": True}))
            assert trainer.workers == threads
            stream = TrainStream(p.task, 1, 6, 8, seed=0, batching="bucketed")
            losses = [trainer.step(stream.next()).loss for _ in range(2)]
            trainer.close()
            results.append((losses, [w.detach().clone() for w in p.model.parameters()]))
    finally:
        torch.set_num_threads(before)
    (seq_losses, seq_w), (side_losses, side_w) = results
    assert seq_losses == side_losses
    assert all(torch.equal(a, b) for a, b in zip(seq_w, side_w, strict=True))


def test_trainer_points_inductor_at_the_persistent_cache(monkeypatch, tmp_path):
    """A compiled trainer sets the cache folder before the first compile, and it is where
    inductor's FX-graph cache (on, as AOT-autograd's) reads and writes."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    from torch._inductor.codecache import FxGraphCache

    monkeypatch.setenv(COMPILE_CACHE_ENV, "unset")  # so that the test restores the variable
    monkeypatch.delenv(COMPILE_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = compose(["encoding=rope", *TINY])
    p = plan(cfg)
    trainer = Trainer(p.model, OmegaConf.merge(cfg.train, {"compile": True}))
    trainer.close()
    expected = tmp_path / "posenc" / "torchinductor"
    assert FxGraphCache._get_tmp_dir() == str(expected / "fxgraph")
    assert inductor_config.fx_graph_cache and functorch_config.enable_autograd_cache
