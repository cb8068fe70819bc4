"""Attention maps recomputed by hooks are the model's own attention, for every encoding."""

from __future__ import annotations

import pytest
import torch

from posenc import attention, encodings
from posenc.model import ModelConfig, Transformer


def tiny_model(name: str) -> Transformer:
    cfg = ModelConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=64)
    torch.manual_seed(0)
    enc = encodings.build(name, d_model=16, n_heads=2, max_len=64, n_layers=2)
    return Transformer(cfg, enc).eval()


@pytest.mark.parametrize("name", encodings.names())
def test_probabilities_times_values_reproduce_each_layer_output(name):
    model = tiny_model(name)
    tokens = torch.randint(4, 12, (2, 9))
    pos = model.encoding.positions(2, 9, generator=torch.Generator().manual_seed(0))
    outputs, recomputed = [], []

    def keep_output(module, args, output):
        outputs.append(output[0])

    def recompute(module, args, output):
        probs, v = attention.attention_probabilities(module, *args)
        y = (probs @ v).transpose(1, 2).reshape(args[0].shape)  # (B, T, D)
        recomputed.append(module.proj(y))

    handles = [b.attn.register_forward_hook(keep_output) for b in model.blocks]
    handles += [b.attn.register_forward_hook(recompute) for b in model.blocks]
    with torch.no_grad():
        model(tokens, pos)
    for h in handles:
        h.remove()
    assert len(outputs) == len(recomputed) == 2
    for out, again in zip(outputs, recomputed, strict=True):
        torch.testing.assert_close(again, out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", encodings.names())
def test_maps_are_causal_distributions_one_per_layer(name):
    model = tiny_model(name)
    tokens = torch.randint(4, 12, (1, 7))
    maps = attention.attention_maps(model, tokens, model.encoding.positions(1, 7))
    assert len(maps) == 2
    for probs in maps:
        assert probs.shape == (2, 7, 7)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 7))
        assert torch.all(probs.triu(diagonal=1) == 0)


def test_capture_follows_kv_cache_decoding():
    model = tiny_model("rope")
    prompt = torch.randint(4, 12, (1, 5))
    with attention.capture(model) as maps:
        model.generate(prompt, 3)
    # prompt pass, then two one-token steps (the last token needs no forward pass): 2 layers each
    assert [tuple(m.shape) for m in maps[::2]] == [(1, 2, 5, 5), (1, 2, 1, 6), (1, 2, 1, 7)]
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


def test_pick_lengths_chooses_a_training_length_and_one_beyond():
    assert attention.pick_lengths(range(1, 61), 1, 20) == {"train": 20, "beyond": 40}
    assert attention.pick_lengths([5, 10, 100], 1, 20) == {"train": 10, "beyond": 100}
    assert attention.pick_lengths([1, 2, 3], 1, 20) == {"train": 3}
