"""Properties every registered encoding must have, and the six core schemes' formulas.

Parametrized over the registry, so an encoding is tested the day it is registered.
"""

from __future__ import annotations

import math

import pytest
import torch

from posenc import encodings
from posenc.encodings.absolute import sinusoidal_table
from posenc.encodings.bias import alibi_slopes, t5_bucket
from posenc.errors import ConfigError
from tests.conftest import tiny_model

ALL = encodings.names()
# Encodings whose outputs depend on positions only through differences i - j: shifting
# every position by a constant must leave the model's outputs unchanged.
SHIFT_INVARIANT = {
    "none", "rope", "alibi", "t5", "shaw", "transformer_xl", "kerple_log", "kerple_power",
    "xpos", "cope",
    # data-dependent and attention-level schemes read no absolute position; the
    # hybrids' defaults are RoPE and NoPE parts
    "fox", "path", "path_fox", "stick_breaking", "ssmax", "p_rope", "hard_alibi",
    "per_layer", "per_head",
    # Canon's causal convolution reads no position; DroPE is RoPE, then NoPE
    "canon", "drope",
    # 2026 attention-level rows: PoPE's phases differ by (i - j)θ; DAPE's network reads the
    # logits and a relative bias (kerple_log); CABLE and Wall read the hidden states only
    "pope", "dape", "dape_v2", "cable", "wall",
}  # fmt: skip
# Registered position-aware schemes that are deliberately not shift invariant, and why.
NOT_SHIFT_INVARIANT = {
    "sinusoidal": "absolute",
    "learned": "absolute",
    "polynomial": "absolute",
    "exponential": "absolute",
    "fire": "normalises i - j by the query position max(i, L)",
    "combo": "depends on its parts",
    "randomized": "depends on its base",
    "abacus": "absolute: a digit's place within its number, offset by the first position",
    "coupled": "absolute: a digit's significance, offset by the first position",
}


def test_every_encoding_is_classified_for_shift_invariance():
    unclassified = set(ALL) - SHIFT_INVARIANT - set(NOT_SHIFT_INVARIANT)
    assert not unclassified, f"classify {unclassified} in SHIFT_INVARIANT or NOT_SHIFT_INVARIANT"


def test_core_six_are_registered():
    assert {"none", "sinusoidal", "learned", "rope", "alibi", "t5"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_no_look_ahead(name):
    """Changing token j never changes the outputs at positions < j."""
    model = tiny_model(name)
    torch.manual_seed(1)
    tokens = torch.randint(4, 12, (2, 16))
    pos = torch.arange(16).expand(2, 16)
    base, _ = model(tokens, pos)
    for j in (3, 9, 15):
        changed = tokens.clone()
        changed[:, j] = 4 + (changed[:, j] - 4 + 1) % 8
        out, _ = model(changed, pos)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-5)
        assert not torch.allclose(out[:, j:], base[:, j:]), "the change should be visible from j on"


@pytest.mark.parametrize("name", ALL)
def test_kv_cache_decoding_equals_recomputation(name):
    model = tiny_model(name)
    prompt = torch.randint(4, 12, (3, 7), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(7 + 12).expand(3, -1)
    with_cache = model.generate(prompt, 12, pos=pos, use_cache=True)
    without = model.generate(prompt, 12, pos=pos, use_cache=False)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("name", ALL)
def test_cached_logits_match_full_forward(name):
    model = tiny_model(name)
    tokens = torch.randint(4, 12, (2, 10), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(10).expand(2, 10)
    full, _ = model(tokens, pos)
    first, cache = model(tokens[:, :6], pos[:, :6])
    rest, _ = model(tokens[:, 6:], pos[:, 6:], cache)
    torch.testing.assert_close(torch.cat((first, rest), 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_a_seed(name):
    tokens = torch.randint(4, 12, (2, 9), generator=torch.Generator().manual_seed(4))
    a, _ = tiny_model(name, seed=7)(tokens)
    b, _ = tiny_model(name, seed=7)(tokens)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(SHIFT_INVARIANT & set(ALL)))
def test_relative_schemes_depend_only_on_offsets(name):
    """Shift every position by c: the whole model's outputs stay the same."""
    model = tiny_model(name)
    tokens = torch.randint(4, 12, (2, 12), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(12).expand(2, 12)
    base, _ = model(tokens, pos)
    for c in (1, 17, 40):
        shifted, _ = model(tokens, pos + c)
        torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["sinusoidal", "learned"])
def test_absolute_schemes_see_the_absolute_position(name):
    model = tiny_model(name)
    if name == "learned":  # a fresh N(0, 0.02) table is nearly invisible; make it count
        torch.nn.init.normal_(model.encoding.table.weight, std=1.0)
    tokens = torch.randint(4, 12, (1, 8), generator=torch.Generator().manual_seed(6))
    pos = torch.arange(8)[None]
    a, _ = model(tokens, pos)
    b, _ = model(tokens, pos + 5)
    assert not torch.allclose(a, b, atol=1e-3)


# --- formulas of the core schemes, restated independently -----------------------------


def test_alibi_slopes_match_paper_for_8_heads():
    assert alibi_slopes(8) == [1 / 2**h for h in range(1, 9)]


def test_alibi_slopes_match_paper_for_12_heads():
    expected = [2 ** (-h) for h in range(1, 9)] + [
        2 ** (-0.5),
        2 ** (-1.5),
        2 ** (-2.5),
        2 ** (-3.5),
    ]
    assert alibi_slopes(12) == pytest.approx(expected)
    assert [round(s, 3) for s in alibi_slopes(12)[8:]] == [0.707, 0.354, 0.177, 0.088]


def test_alibi_bias_is_minus_slope_times_distance():
    enc = encodings.build("alibi", d_model=32, n_heads=4, max_len=64)
    pos = torch.arange(6)[None]
    q = torch.zeros(1, 4, 6, 8)
    b = enc.bias(q, q, pos, pos)
    slopes = [2 ** (-2 * h) for h in range(1, 5)]  # 2^(-8h/4)
    for h in range(4):
        for i in range(6):
            for j in range(i + 1):
                assert b[0, h, i, j].item() == pytest.approx(-slopes[h] * (i - j))


def _t5_bucket_reference(n: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    exact = num_buckets // 2
    if n < exact:
        return n
    v = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return min(v, num_buckets - 1)


def test_t5_buckets_written_out():
    table = {
        0: 0,
        1: 1,
        15: 15,
        16: 16,
        20: 17,
        23: 18,
        32: 21,
        64: 26,
        100: 30,
        127: 31,
        128: 31,
        5000: 31,
    }
    for n, bucket in table.items():
        assert _t5_bucket_reference(n) == bucket
        assert t5_bucket(torch.tensor(n)).item() == bucket
    ns = torch.arange(0, 400)
    assert t5_bucket(ns).tolist() == [_t5_bucket_reference(int(n)) for n in ns]
    assert t5_bucket(torch.tensor([-5])).item() == 0  # future keys: masked anyway, bucket 0


def test_t5_table_is_shared_by_all_layers():
    enc = encodings.build("t5", d_model=32, n_heads=4, max_len=64, n_layers=3)
    pos = torch.arange(5)[None]
    q = torch.randn(1, 4, 5, 8)
    assert torch.equal(enc.bias(q, q, pos, pos, layer=0), enc.bias(q, q, pos, pos, layer=2))
    assert enc.table.weight.shape == (32, 4)


def test_rope_preserves_norms_and_depends_on_offset_only():
    enc = encodings.build("rope", d_model=64, n_heads=4, max_len=64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 1, 16, generator=g), torch.randn(1, 4, 1, 16, generator=g)

    def dot(m: int, n: int) -> torch.Tensor:
        qr, kr = enc.rotate(q, k, torch.tensor([[m]]), torch.tensor([[n]]))
        torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
        return (qr * kr).sum(-1)

    torch.testing.assert_close(dot(3, 1), dot(103, 101), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dot(7, 7), (q * k).sum(-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dot(3, 1), dot(3, 2))


def test_rope_rotates_pair_i_with_i_plus_half_by_theta_i():
    enc = encodings.build("rope", d_model=8, n_heads=1, max_len=64)  # r = 8, pairs (i, i+4)
    x = torch.zeros(1, 1, 1, 8)
    x[..., 1] = 1.0  # unit vector on dim 1, paired with dim 5, θ_1 = 10000^(-2/8)
    out, _ = enc.rotate(x, x, torch.tensor([[3]]), torch.tensor([[3]]))
    theta = 10000 ** (-2 / 8)
    assert out[0, 0, 0, 1].item() == pytest.approx(math.cos(3 * theta), abs=1e-6)
    assert out[0, 0, 0, 5].item() == pytest.approx(math.sin(3 * theta), abs=1e-6)


def test_partial_rope_leaves_the_other_dims_alone():
    enc = encodings.build("rope", d_model=64, n_heads=4, max_len=64, rotary_fraction=0.25)
    assert enc.rotary_dim == 4
    q = torch.randn(1, 4, 3, 16)
    out, _ = enc.rotate(q, q, torch.tensor([[5, 6, 7]]), torch.tensor([[5, 6, 7]]))
    assert torch.equal(out[..., 4:], q[..., 4:])
    assert not torch.allclose(out[..., :4], q[..., :4])


def test_rope_rejects_an_odd_rotary_dimension():
    with pytest.raises(ConfigError, match="must be a positive even integer"):
        encodings.build("rope", d_model=12, n_heads=4, max_len=64)  # d_head 3


def test_sinusoidal_values_at_known_positions():
    d = 8
    pe = sinusoidal_table(torch.tensor([0, 1, 50]), d)
    assert pe[0].tolist() == pytest.approx([0, 1] * 4)
    for i in range(d // 2):
        w = 10000 ** (-2 * i / d)
        assert pe[1, 2 * i].item() == pytest.approx(math.sin(w), abs=1e-6)
        assert pe[1, 2 * i + 1].item() == pytest.approx(math.cos(w), abs=1e-6)
        assert pe[2, 2 * i].item() == pytest.approx(math.sin(50 * w), abs=1e-5)


def _model(name: str, embed_init: str, **params):
    from posenc.model import ModelConfig, Transformer

    enc = encodings.build(name, d_model=8, n_heads=2, max_len=16, **params)
    cfg = ModelConfig(vocab_size=5, d_model=8, n_layers=1, n_heads=2, d_ff=8, max_len=16,
                      embed_init=embed_init)  # fmt: skip
    return Transformer(cfg, enc)


def test_a_model_built_with_auto_takes_the_encodings_token_scale():
    assert _model("alibi", "auto").embed_init == "gpt"
    assert _model("rope", "auto").embed_init == "scaled"
    assert _model("sinusoidal", "auto").encoding.amplitude == 1.0


@pytest.mark.parametrize("embed_init, amplitude", [("scaled", 1.0), ("gpt", 0.02)])
def test_sinusoidal_amplitude_follows_the_token_embeddings(embed_init, amplitude):
    # amplitude=null: PE at the tokens' std, so PE(0) = [0, A, 0, A, ...]
    model = _model("sinusoidal", embed_init)
    assert model.encoding.amplitude == amplitude
    x = torch.zeros(1, 2, 8)
    out = model.encoding.embed(x, torch.tensor([[0, 1]]))
    assert out[0, 0].tolist() == pytest.approx([0, amplitude] * 4)
    assert out[0, 1, 0].item() == pytest.approx(amplitude * math.sin(1.0))
    # the token embeddings' std is what the model says it is
    tok = model.tok_emb.weight * model.embed_scale
    assert tok.std().item() == pytest.approx(amplitude, rel=0.5)


def test_sinusoidal_amplitude_given_is_kept_and_reaches_a_randomized_base():
    assert _model("sinusoidal", "gpt", amplitude=0.5).encoding.amplitude == 0.5
    wrapped = _model("randomized", "gpt", base="sinusoidal").encoding
    assert wrapped.base.amplitude == 0.02
    with pytest.raises(ConfigError, match="encoding.amplitude must be > 0 or null, got 0"):
        encodings.build("sinusoidal", d_model=8, n_heads=2, max_len=8, amplitude=0)


def test_learned_table_refuses_positions_beyond_it():
    enc = encodings.build("learned", d_model=8, n_heads=2, max_len=10)
    x = torch.zeros(1, 11, 8)
    with pytest.raises(ConfigError, match="beyond the learned table"):
        enc.embed(x, torch.arange(11)[None])


def test_build_rejects_unknown_names_and_parameters():
    with pytest.raises(ConfigError, match="unknown encoding 'nope'; valid choices: .*rope"):
        encodings.build("nope", d_model=8, n_heads=2, max_len=8)
    with pytest.raises(
        ConfigError, match="no parameter 'bse'; valid parameters: base, rotary_fraction"
    ):
        encodings.build("rope", d_model=8, n_heads=2, max_len=8, bse=3)
    with pytest.raises(ConfigError, match="multiple of model.n_heads"):
        encodings.build("none", d_model=10, n_heads=4, max_len=8)


def test_every_encoding_documents_formula_and_paper():
    for name in ALL:
        info = encodings.info(name)
        assert info.paper and info.description
        assert len((info.cls.__doc__ or "").strip()) > 80, (
            f"{name} needs a docstring with its formula"
        )
