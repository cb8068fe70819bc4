"""Model-level contracts every encoding keeps, shared by the encoding test files: a tiny model
built around one encoding, KV-cache decoding equal to teacher forcing, no look-ahead."""

from __future__ import annotations

import torch

from posenc import encodings
from posenc.model import ModelConfig, Transformer


def model_for(
    name: str, seed: int = 0, n_layers: int = 2, mixers: list[str] | None = None, **params
) -> Transformer:
    """A 2-layer, d_model 32 model around encoding ``name`` (seeded, in eval mode; ``mixers``:
    `posenc.schema.Model.mixers`)."""
    torch.manual_seed(seed)
    enc = encodings.build(name, d_model=32, n_heads=4, max_len=128, n_layers=n_layers, **params)
    cfg = ModelConfig(
        vocab_size=12, d_model=32, n_layers=n_layers, n_heads=4, d_ff=64, max_len=128,
        mixers=mixers,
    )  # fmt: skip
    return Transformer(cfg, enc).eval()


def assert_cached_decoding_equals_teacher_forcing(model: Transformer) -> None:
    """Decoding token by token with the KV cache gives the full forward pass's logits, and
    greedy decoding from a prompt reproduces the teacher-forced argmaxes."""
    tokens = torch.randint(4, 12, (3, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, _ = model(tokens)
        first, cache = model(tokens[:, :5])
        steps = [first]
        for t in range(5, 14):
            logits, cache = model(tokens[:, t : t + 1], torch.full((3, 1), t), cache)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-4, atol=1e-5)
        out = model.generate(tokens[:, :6], 8)
        forced, _ = model(torch.cat((tokens[:, :6], out[:, :-1]), 1))
        assert torch.equal(forced[:, 5:].argmax(-1), out)


def assert_no_look_ahead(model: Transformer) -> None:
    """Changing token j changes no output before j, and does change the outputs from j on."""
    tokens = torch.randint(4, 12, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base, _ = model(tokens)
        for j in (4, 11):
            changed = tokens.clone()
            changed[:, j] = 4 + (changed[:, j] - 4 + 1) % 8
            out, _ = model(changed)
            assert torch.equal(out[:, :j], base[:, :j])
            assert not torch.allclose(out[:, j:], base[:, j:])
