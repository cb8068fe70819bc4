"""Fast paths keep the numbers: each is checked bit for bit against the plain computation."""

from __future__ import annotations

import torch

from posenc.data import TrainStream
from posenc.run.execute import plan
from posenc.run.train import Trainer


def test_foreach_adamw_takes_the_per_parameter_steps_bit_for_bit(tiny_cfg):
    """The trainer's AdamW (foreach) against torch's per-parameter loop, over five steps of a
    real model with both weight-decay groups."""
    weights = []
    for foreach in (True, False):
        torch.manual_seed(0)
        p = plan(tiny_cfg("train.batching=mixed"))
        trainer = Trainer(p.model, p.cfg.train)
        assert trainer.optimizer.defaults["foreach"] is True
        for group in trainer.optimizer.param_groups:
            group["foreach"] = foreach
        stream = TrainStream(p.task, 1, 6, 8, seed=0, batching="mixed")
        for _ in range(5):
            trainer.step(stream.next())
        weights.append([q.detach().clone() for q in p.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
