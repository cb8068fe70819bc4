"""Every registered encoding on every path: each batching (bucketed pieces side by side at 2
threads and one at a time at 1, mixed, by_length), bf16, and greedy KV-cache decoding against
teacher forcing. Parametrized over `encodings.names()`, so an encoding registered later is
tested the day it lands. Tiny models and a few steps: this is about running, not learning.

``POSENC_TEST_DEVICE=cuda`` runs the same matrix on a GPU (benchmarks/gpu.sh); pieces side by
side are a CPU feature, checked on the CPU only.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from posenc import encodings
from posenc.data import TrainStream
from posenc.run.evaluate import evaluate_pairs
from posenc.run.execute import plan
from posenc.run.train import Trainer

DEVICE = os.environ.get("POSENC_TEST_DEVICE", "cpu")
if DEVICE != "cpu" and not torch.cuda.is_available():
    pytest.skip(f"POSENC_TEST_DEVICE={DEVICE} but torch sees no GPU", allow_module_level=True)

# Encodings that only serve a task that writes numbers.
NEEDS_DIGITS = {"abacus", "coupled"}
# Four pieces of two rows at most: every bucketed batch really splits into several pieces.
BATCH = ["train.batch_size=8", "train.buckets=4", "train.min_len=1", "train.max_len=6"]


def overrides_for(name: str) -> list[str]:
    task = ["task=addition", "train.max_len=3", "eval.max_len=4"] if name in NEEDS_DIGITS else []
    return [f"encoding={name}", f"device={DEVICE}", *BATCH, *task]


@pytest.fixture
def threads():
    """Set torch's intra-op threads for the test (restored after)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def steps(cfg, n: int = 2) -> list[float]:
    """Build the run's model and trainer from ``cfg`` and take ``n`` optimizer steps."""
    p = plan(cfg)
    trainer = Trainer(p.model, p.cfg.train, device=p.device)
    stream = TrainStream(
        p.task, p.cfg.train.min_len, p.cfg.train.max_len, p.cfg.train.batch_size,
        seed=0, batching=p.cfg.train.batching,
    )  # fmt: skip
    try:
        losses = [trainer.step(stream.next()).loss for _ in range(n)]
    finally:
        trainer.close()
    assert all(np.isfinite(losses)), losses
    for key, param in p.model.named_parameters():
        assert torch.isfinite(param).all(), key
    return losses, trainer, p


@pytest.mark.parametrize("name", encodings.names())
def test_every_encoding_trains_under_every_batching_and_thread_count(tiny_cfg, threads, name):
    threads(2)
    _, trainer, _ = steps(tiny_cfg(*overrides_for(name), "train.batching=bucketed"))
    assert trainer.workers == (2 if DEVICE == "cpu" else 1), "2 threads: pieces side by side"
    threads(1)
    _, trainer, _ = steps(tiny_cfg(*overrides_for(name), "train.batching=bucketed"))
    assert trainer.workers == 1
    for batching in ("mixed", "by_length"):
        steps(tiny_cfg(*overrides_for(name), f"train.batching={batching}"))


@pytest.mark.parametrize("name", encodings.names())
def test_every_encoding_trains_in_bf16(tiny_cfg, threads, name):
    threads(1)
    steps(tiny_cfg(*overrides_for(name), "train.precision=bf16", "train.batching=bucketed"))


@pytest.mark.parametrize("name", encodings.names())
def test_every_encoding_decodes_with_the_kv_cache_as_it_scores_by_teacher_forcing(
    tiny_cfg, threads, name
):
    """Greedy KV-cache decoding gets exactly the examples right that teacher forcing does, and
    the cached forward pass gives the logits of the whole-sequence forward pass."""
    threads(1)
    _, _, p = steps(tiny_cfg(*overrides_for(name), "train.batching=mixed"), n=3)
    model = p.model.eval()
    rng = np.random.default_rng(0)
    lo, hi = p.cfg.train.min_len, p.cfg.eval.max_len
    pairs = [p.task.sample(n, rng) for n in range(lo, hi + 1) for _ in range(3)]
    gen = torch.Generator().manual_seed(0)
    forced = evaluate_pairs(model, pairs, greedy=False, generator=gen, fmt=p.fmt, device=p.device)
    gen = torch.Generator().manual_seed(0)
    greedy = evaluate_pairs(model, pairs, greedy=True, generator=gen, fmt=p.fmt, device=p.device)
    assert greedy["examples"] == forced["examples"]

    from posenc.data import collate

    tokens = collate([pairs[-1]], p.fmt).tokens.to(p.device)  # (1, T)
    gen = torch.Generator().manual_seed(1)
    pos = model.encoding.positions(1, tokens.shape[1], generator=gen).to(p.device)
    with torch.no_grad():
        whole, _ = model(tokens, pos)
        split = 3
        first, cache = model(tokens[:, :split], pos[:, :split])
        steps_logits = [first]
        for t in range(split, tokens.shape[1]):
            logits, cache = model(tokens[:, t : t + 1], pos[:, t : t + 1], cache)
            steps_logits.append(logits)
    torch.testing.assert_close(torch.cat(steps_logits, dim=1), whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", encodings.names())
def test_every_encoding_passes_the_checks_a_plugin_must_pass(name):
    """posenc's own encodings pass the one-call checks offered to plugin authors
    (`posenc.conformance.check_encoding`: shapes, no look-ahead, KV cache, determinism)."""
    from posenc import conformance

    conformance.check_encoding(encodings.info(name).cls)
