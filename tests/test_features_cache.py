"""Position features once per forward pass (`PositionalEncoding.features`): the model computes
what the hooks derive from positions alone once and hands it to every layer. With and
without it the logits are the same bit for bit, in training (forward and gradients) and in
KV-cache decoding, for every registered encoding; hooks that do not take the keyword keep
working. Parametrized over `encodings.names()`, so a new encoding is checked the day it lands.
"""

from __future__ import annotations

import pytest
import torch

from posenc import encodings
from posenc.config import compose
from posenc.encodings.base import Memo, feature_kwargs
from posenc.encodings.rotary import RoPE
from posenc.model import ModelConfig, Transformer
from posenc.run.execute import plan
from tests.conftest import tiny_model

NEEDS_DIGITS = {"abacus", "coupled"}
TINY = ["model.n_layers=3", "model.d_model=32", "model.n_heads=4", "model.d_ff=64"]


def model_for(name: str) -> Transformer:
    task = ["task=addition", "train.max_len=3", "eval.max_len=4"] if name in NEEDS_DIGITS else []
    torch.manual_seed(0)
    return plan(compose([f"encoding={name}", *TINY, *task])).model


def inputs_for(model: Transformer, batch: int = 3, length: int = 9) -> tuple:
    """Tokens and positions drawn once (randomized encodings draw them), reused by both runs."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, model.cfg.vocab_size, (batch, length), generator=generator)
    pos = model.encoding.positions(batch, length, generator=generator)
    return tokens, pos


def forward_and_grads(model: Transformer, tokens, pos, position_features: bool):
    model.position_features = position_features
    model.zero_grad(set_to_none=True)
    logits, _ = model(tokens, pos)
    logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("name", encodings.names())
def test_training_logits_equal_with_and_without_features(name):
    model = model_for(name).train()
    tokens, pos = inputs_for(model)
    logits, grads = forward_and_grads(model, tokens, pos, True)
    logits_recomputed, grads_recomputed = forward_and_grads(model, tokens, pos, False)
    assert torch.equal(logits, logits_recomputed)
    assert grads.keys() == grads_recomputed.keys()
    for key in grads:
        # a shared feature's gradient is summed over the layers before it reaches the
        # parameter, rather than layer by layer into it: the same sum, another order
        torch.testing.assert_close(grads[key], grads_recomputed[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", encodings.names())
def test_cached_decoding_logits_equal_with_and_without_features(name):
    model = model_for(name).eval()
    tokens, pos = inputs_for(model, length=8)
    runs = []
    for position_features in (True, False):
        model.position_features = position_features
        with torch.no_grad():
            logits, cache = model(tokens[:, :5], pos[:, :5])
            steps = [logits]
            for t in range(5, 8):
                logits, cache = model(tokens[:, t : t + 1], pos[:, t : t + 1], cache)
                steps.append(logits)
        runs.append(steps)
    for with_features, recomputed in zip(*runs, strict=True):
        assert torch.equal(with_features, recomputed)


@pytest.mark.parametrize(
    "name", ["rope", "alibi", "t5", "kerple_log", "fire", "hard_alibi", "shaw", "transformer_xl"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hooks_given_features_equal_hooks_alone(name, dtype):
    """The hooks themselves, in each dtype the queries arrive in (bf16 under autocast)."""
    enc = encodings.build(name, d_model=32, n_heads=4, max_len=64, n_layers=2)
    q, k = (torch.randn(2, 4, 7, 8).to(dtype) for _ in range(2))
    pos = torch.arange(7).expand(2, 7)
    features = enc.features(pos, pos)
    assert features is not None
    for layer in range(2):
        rotated = enc.rotate(q, k, pos, pos, layer=layer, **feature_kwargs(enc, "rotate", features))
        alone = enc.rotate(q, k, pos, pos, layer=layer)
        for a, b in zip(rotated, alone, strict=True):
            assert torch.equal(a, b)
        given = enc.bias(q, k, pos, pos, layer=layer, **feature_kwargs(enc, "bias", features))
        recomputed = enc.bias(q, k, pos, pos, layer=layer)
        assert (given is None) == (recomputed is None)
        if given is not None:
            assert given.dtype == recomputed.dtype
            assert torch.equal(given, recomputed)


def test_rope_tables_are_computed_once_per_forward(monkeypatch):
    from posenc.encodings import rotary

    calls = []
    real = rotary.rotary_tables

    def counted(angle, dtype):
        calls.append(angle.shape)
        return real(angle, dtype)

    monkeypatch.setattr(rotary, "rotary_tables", counted)
    model = model_for("rope")
    tokens, pos = inputs_for(model)
    model(tokens, pos)
    assert len(calls) == 1, "one table for the 3 layers"
    calls.clear()
    model.position_features = False
    model(tokens, pos)
    assert len(calls) == 3, "one per layer"


def test_memo_makes_each_key_once():
    made = []
    memo = Memo(lambda *key: made.append(key) or len(made))
    assert memo(torch.float32) == memo(torch.float32) == 1
    assert memo(0, torch.bfloat16) == 2
    assert made == [(torch.float32,), (0, torch.bfloat16)]


class _OldStyleRoPE(RoPE):
    """A plugin written before the features hook: it overrides rotate without the keyword."""

    def rotate(self, q, k, pos_q, pos_k, *, layer=0):
        return super().rotate(q, k, pos_q, pos_k, layer=layer)


def test_a_hook_without_the_keyword_keeps_working():
    assert not _OldStyleRoPE.rotate_takes_features
    assert RoPE.rotate_takes_features
    cfg = ModelConfig(vocab_size=12, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64)
    torch.manual_seed(0)
    old = Transformer(cfg, _OldStyleRoPE(d_model=32, n_heads=4, max_len=64, n_layers=2))
    torch.manual_seed(0)
    new = Transformer(cfg, RoPE(d_model=32, n_heads=4, max_len=64, n_layers=2))
    tokens = torch.randint(3, 12, (2, 6))
    assert torch.equal(old(tokens)[0], new(tokens)[0])


@pytest.mark.parametrize(
    "name, params",
    [
        ("per_head", {"heads": ["rope", "alibi", "t5", "shaw"]}),
        ("combo", {"parts": ["rope", "alibi", "fire"]}),
        ("randomized", {"base": "t5"}),
    ],
)
def test_composites_pass_their_parts_features(name, params):
    """Composites hand each part its own features, with the same logits as without."""
    model = tiny_model(name, **params).train()
    tokens = torch.randint(3, 12, (3, 9))
    pos = model.encoding.positions(3, 9, generator=torch.Generator().manual_seed(0))
    features = model.encoding.features(pos, pos)
    assert features is not None
    logits, _ = forward_and_grads(model, tokens, pos, True)
    recomputed, _ = forward_and_grads(model, tokens, pos, False)
    assert torch.equal(logits, recomputed)
