"""The extended encodings: each formula restated independently at hand-picked
positions, the relative schemes' dependence on i - j, every YAML, a tiny training run per
registered encoding, and ``posenc eval`` end to end."""

from __future__ import annotations

import cmath
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

from posenc import encodings, schema
from posenc.cli.app import app
from posenc.config import compose, group_options
from posenc.data import TrainStream
from posenc.encodings.absolute import sinusoidal_table
from posenc.encodings.contextual import cope_positions
from posenc.errors import ConfigError
from posenc.model import ModelConfig, Transformer
from posenc.run.execute import plan, run
from posenc.run.reevaluate import default_tag, fill_yarn_length, parse_overrides, reevaluate
from posenc.run.train import Trainer
from posenc.schema import encoding_label

D, H = 32, 2  # d_head 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny models here only lose from more, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, n_layers: int = 2, max_len: int = 256, **params):
    torch.manual_seed(0)
    return encodings.build(name, d_model=D, n_heads=H, max_len=max_len, n_layers=n_layers, **params)


def qk(t_q: int, t_k: int, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, H, t_q, D // H, generator=g)
    k = torch.randn(batch, H, t_k, D // H, generator=g)
    return q, k


def rows(*positions: int) -> torch.Tensor:
    return torch.tensor([positions])


# --- Kerple ----------------------------------------------------------------------------


def test_kerple_log_values_at_hand_picked_distances():
    enc = build("kerple_log", layer_shared=False).eval()
    with torch.no_grad():
        enc.r1[1].copy_(torch.tensor([0.5, 1.5]))
        enc.r2[1].copy_(torch.tensor([0.2, 0.9]))
    q, k = qk(5, 5)
    b = enc.bias(q, k, rows(0, 1, 2, 3, 4), rows(0, 1, 2, 3, 4), layer=1)
    for h, (r1, r2) in enumerate([(0.5, 0.2), (1.5, 0.9)]):
        for i, j in [(0, 0), (3, 1), (4, 0), (4, 4)]:
            assert b[0, h, i, j].item() == pytest.approx(-r1 * math.log(1 + r2 * (i - j)), abs=1e-6)


def test_kerple_power_values_and_clamping():
    enc = build("kerple_power").eval()
    with torch.no_grad():
        enc.r1[0].copy_(torch.tensor([0.7, 0.001]))  # r1 below 0.01 is read as 0.01
        enc.r2[0].copy_(torch.tensor([1.5, 3.0]))  # r2 above 2 is read as 2
    q, k = qk(7, 7)
    b = enc.bias(q, k, rows(*range(7)), rows(*range(7)))
    for i, j in [(2, 0), (6, 1), (5, 5)]:
        assert b[0, 0, i, j].item() == pytest.approx(-0.7 * (i - j) ** 1.5, abs=1e-5)
        assert b[0, 1, i, j].item() == pytest.approx(-0.01 * (i - j) ** 2, abs=1e-6)
    enc.train()  # the forward pass never writes to them; the projection after a step does
    enc.bias(q, k, rows(*range(7)), rows(*range(7)))
    assert enc.r1[0].tolist() == pytest.approx([0.7, 0.001])
    enc.constrain_()  # what the reference's clamp does to the stored values
    assert enc.r1[0].tolist() == pytest.approx([0.7, 0.01])
    assert enc.r2[0].tolist() == pytest.approx([1.5, 2.0])


def test_kerple_init_ranges_follow_the_reference_code():
    log = build("kerple_log", n_layers=8, layer_shared=False)
    power = build("kerple_power", n_layers=8, layer_shared=False)
    r = lambda ps: torch.stack(list(ps))  # noqa: E731
    assert 0 <= r(log.r1).min() and r(log.r1).max() <= 2 and r(log.r2).max() <= 1
    assert r(power.r1).max() <= 1 and r(power.r2).max() <= 2 and r(power.r2).max() > 1


def test_kerple_power_gradient_is_finite_at_distance_zero():
    enc = build("kerple_power").train()
    q, k = qk(4, 4)
    enc.bias(q, k, rows(*range(4)), rows(*range(4))).sum().backward()
    assert torch.isfinite(enc.r2[0].grad).all() and enc.r2[0].grad.abs().sum() > 0


# --- FIRE ------------------------------------------------------------------------------


def test_fire_psi_normalisation_below_and_above_the_threshold():
    enc = build("fire")
    c = 0.1
    x = enc.normalized_distance(rows(3, 10), rows(0, 1, 2, 3, 10))
    # L = 512 > every i: ψ(i - j) / ψ(512)
    for a, i in enumerate((3, 10)):
        for b, j in enumerate((0, 1, 2, 3)):
            expected = math.log(c * (i - j) + 1) / (math.log(c * 512 + 1) + 1e-6)
            assert x[0, 0, a, b].item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        enc.L_multiplier[0] = 5 / 512  # threshold L = 5: the query at 10 normalises by ψ(10)
    x = enc.normalized_distance(rows(3, 10), rows(0, 1, 2, 3, 10))
    assert x[0, 0, 0, 0].item() == pytest.approx(math.log(1.3) / (math.log(1.5) + 1e-6), rel=1e-5)
    assert x[0, 0, 1, 0].item() == pytest.approx(1.0, rel=1e-5)  # ψ(10)/ψ(10)
    assert x[0, 0, 1, 4].item() == 0.0


def test_fire_bias_is_the_mlp_of_the_normalised_distance():
    enc = build("fire")
    q, k = qk(4, 4)
    b = enc.bias(q, k, rows(*range(4)), rows(*range(4)), layer=1)
    x = math.log(0.1 * 3 + 1) / (math.log(0.1 * 512 + 1) + 1e-6)
    expected = enc.mlp[1](torch.tensor([[x]]))[0]
    torch.testing.assert_close(b[0, :, 3, 0], expected, rtol=1e-5, atol=1e-6)
    assert b.shape == (1, H, 4, 4)


# --- xPos ------------------------------------------------------------------------------


def test_xpos_zeta_and_the_dot_product_written_out():
    enc = build("xpos", n_layers=1)
    r = D // H
    assert enc.zeta.tolist() == pytest.approx([(2 * i / r + 0.4) / 1.4 for i in range(r // 2)])
    q, k = qk(1, 1)
    n, m = 300, 41
    qr, kr = enc.rotate(q, k, rows(n), rows(m))
    got = (qr * kr).sum(-1)[0, :, 0]
    for h in range(H):  # pair i = (dim i, dim i + r/2) as a complex number
        total = 0.0
        for i in range(r // 2):
            theta = 10000 ** (-2 * i / r)
            zq = complex(q[0, h, 0, i], q[0, h, 0, i + r // 2]) * cmath.exp(1j * n * theta)
            zk = complex(k[0, h, 0, i], k[0, h, 0, i + r // 2]) * cmath.exp(1j * m * theta)
            zeta = (2 * i / r + 0.4) / 1.4
            total += (zq * zk.conjugate()).real * zeta ** ((n - m) / 512)
        assert got[h].item() == pytest.approx(total, rel=1e-4, abs=1e-5)


def test_xpos_scales_queries_up_and_keys_down_by_position():
    enc = build("xpos", n_layers=1)
    q = torch.ones(1, 1, 1, D // H)
    # rotation preserves each pair's norm; the scale ζ_i^(±n/B) sets it
    qr, kr = enc.rotate(q, q, rows(1024), rows(1024))
    half = D // H // 2
    pair_norm = lambda x: (x[..., :half] ** 2 + x[..., half:] ** 2).sqrt()[0, 0, 0]  # noqa: E731
    zeta = enc.zeta
    torch.testing.assert_close(pair_norm(qr), math.sqrt(2) * zeta**2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair_norm(kr), math.sqrt(2) * zeta**-2, rtol=1e-5, atol=1e-6)


# --- CoPE ------------------------------------------------------------------------------


def test_cope_positions_on_a_hand_made_gate_pattern():
    gates = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [1.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 1.0, 0.5],
        ]
    )
    p = cope_positions(gates, max_position=100)
    assert p[3].tolist() == [2.5, 1.5, 1.5, 0.5]  # Σ_{t=j..3} g_3t
    assert p[2].tolist() == [2.0, 1.0, 1.0, 0.0]
    assert cope_positions(gates, max_position=2)[3].tolist() == [2.0, 1.5, 1.5, 0.5]


def test_cope_bias_interpolates_between_integer_positions():
    enc = build("cope", n_layers=1, npos_max=8, scale_position_term=False)  # the term as is
    dh = D // H
    with torch.no_grad():  # e[p] = p·u with u = (1, 0, ...): q·e[p] = p·q_0
        enc.pos_emb.zero_()
        enc.pos_emb[0, 0] = torch.arange(8.0)
    q = torch.zeros(1, H, 4, dh)
    q[..., 0] = 2.0
    k = torch.zeros(1, H, 4, dh)  # q·k = 0: every gate σ(0) = 1/2
    b = enc.bias(q, k, rows(*range(4)), rows(*range(4)))
    for i in range(4):
        for j in range(i + 1):
            p = 0.5 * (i - j + 1)  # j..i, half a count each
            assert b[0, 0, i, j].item() == pytest.approx(2.0 * p, abs=1e-6)
    assert (b[0, :, 0, 1:] == 0).all()  # future keys: no gates, position 0
    # the same positions with a KV cache: the last query alone against all keys
    last = enc.bias(q[:, :, 3:], k, rows(3), rows(*range(4)))
    torch.testing.assert_close(last, b[:, :, 3:])


def test_cope_ignores_absolute_positions():
    enc = build("cope")
    with torch.no_grad():
        enc.pos_emb.normal_()
    q, k = qk(5, 5)
    a = enc.bias(q, k, rows(*range(5)), rows(*range(5)))
    b = enc.bias(q, k, rows(7, 90, 91, 300, 301), rows(7, 90, 91, 300, 301))
    assert torch.equal(a, b)


# --- randomized positions --------------------------------------------------------------


def test_randomized_positions_sorted_unique_and_in_range():
    enc = build("randomized", base="t5", max_position=100).train()
    for _ in range(20):
        pos = enc.positions(3, 40)
        assert pos.shape == (3, 40) and pos.dtype == torch.int64
        row = pos[0]
        assert (row[1:] > row[:-1]).all()  # sorted and unique
        assert 0 <= row.min() and row.max() < 100
        assert (pos == row).all()  # one subset per batch, as in the reference code
    draws = {tuple(enc.positions(1, 5)[0].tolist()) for _ in range(10)}
    assert len(draws) > 1


def test_randomized_evaluation_modes():
    enc = build("randomized", base="rope", max_position=64).eval()
    a = enc.positions(2, 10, generator=torch.Generator().manual_seed(3))
    b = enc.positions(2, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a[0], torch.arange(10))  # seeded draws
    contiguous = build("randomized", base="rope", max_position=64, eval_mode="contiguous")
    assert torch.equal(contiguous.eval().positions(2, 10), torch.arange(10).expand(2, 10))
    assert not torch.equal(contiguous.train().positions(1, 10)[0], torch.arange(10))


def test_randomized_forwards_hooks_and_sizes_the_base():
    enc = build("randomized", base="learned", max_position=300, max_len=64)
    assert enc.base.table.weight.shape == (300, D) and enc.max_positions == 300
    x = torch.randn(1, 3, D)
    pos = rows(5, 200, 299)
    torch.testing.assert_close(enc.embed(x, pos), x + enc.base.table(pos))
    t5 = build("randomized", base="t5", base_params={"num_buckets": 8, "max_distance": 64})
    assert t5.base.num_buckets == 8
    q, k = qk(3, 3)
    assert torch.equal(t5.bias(q, k, pos, pos), t5.base.bias(q, k, pos, pos))
    with pytest.raises(ConfigError, match="needs 41 distinct positions"):
        build("randomized", max_position=40).positions(1, 41)


@pytest.mark.parametrize("base", ["none", "cope", "randomized"])
def test_randomized_refuses_bases_without_positions(base):
    with pytest.raises(ConfigError, match="reads positions"):
        build("randomized", base=base)


# --- Shaw and Transformer-XL -----------------------------------------------------------


def test_shaw_term_is_q_dot_clipped_offset_vector():
    enc = build("shaw", max_distance=3)
    with torch.no_grad():
        enc.table.normal_()
    q, k = qk(8, 8)
    b = enc.bias(q, k, rows(*range(8)), rows(*range(8)), layer=1)
    for i, j in [(0, 0), (5, 4), (7, 4), (7, 0), (6, 1), (2, 5)]:
        a = enc.table[1, max(-3, min(3, j - i)) + 3]
        expected = (q[0, :, i] @ a) / math.sqrt(D // H)
        torch.testing.assert_close(b[0, :, i, j], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(b[0, :, 7, 0], b[0, :, 7, 1])  # offsets -7 and -6 both clip to -3


def test_transformer_xl_term_written_out():
    enc = build("transformer_xl")
    q, k = qk(6, 6)
    pos = rows(*range(6))
    b = enc.bias(q, k, pos, pos, layer=1)
    dh = D // H
    for i, j in [(0, 0), (3, 1), (5, 0), (5, 5)]:
        r = sinusoidal_table(torch.tensor(float(i - j)), D) @ enc.w_r[1]  # W_R R_(i-j)
        for h in range(H):
            content = enc.u[h] @ k[0, h, j]
            position = (q[0, h, i] + enc.v[h]) @ r[h * dh : (h + 1) * dh]
            expected = (content + position).item() / math.sqrt(dh)
            assert b[0, h, i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    "name", ["shaw", "transformer_xl", "kerple_log", "kerple_power", "fire", "xpos"]
)
def test_relative_terms_depend_on_i_minus_j_only(name):
    """Same queries and keys, every position shifted: the same bias (or q·k after rotation).

    FIRE normalises by ψ(max(i, L)): invariant as long as every query stays below L = 512,
    as the paper defines it; xPos: its rotary part and its decay both depend on n - m."""
    enc = build(name)
    if name == "shaw":
        with torch.no_grad():
            enc.table.normal_()
    q, k = qk(9, 9, batch=2)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 2, 3, 7, 11, 12, 20, 30, 31]])

    def term(p: torch.Tensor) -> torch.Tensor:
        if name == "xpos":
            qr, kr = enc.rotate(q, k, p, p)
            return qr @ kr.transpose(-1, -2)
        return enc.bias(q, k, p, p, layer=1)

    base = term(pos)
    visible = torch.ones(9, 9).tril().bool()
    for c in (1, 13, 400):
        torch.testing.assert_close(
            term(pos + c)[..., visible], base[..., visible], rtol=1e-4, atol=1e-4
        )
    assert not torch.allclose(term(pos.flip(-1))[..., visible], base[..., visible])


def test_fire_depends_on_the_query_position_beyond_the_threshold():
    enc = build("fire", init_L=4.0)
    q, k = qk(6, 6)
    pos = rows(*range(6))
    a, b = enc.bias(q, k, pos, pos), enc.bias(q, k, pos + 50, pos + 50)
    assert not torch.allclose(a[..., 5, 4], b[..., 5, 4])


# --- RoPE context extension ------------------------------------------------------------


def test_rope_default_frequencies_are_unchanged():
    enc = build("rope")
    r = D // H
    assert enc.inv_freq.tolist() == pytest.approx([10000 ** (-2 * i / r) for i in range(r // 2)])
    assert enc.attention_factor == 1.0


def test_position_interpolation_divides_every_frequency():
    plain, pi = build("rope"), build("rope", scaling="pi", scaling_factor=4.0)
    torch.testing.assert_close(pi.inv_freq, plain.inv_freq / 4)
    q, k = qk(1, 1)  # position 40 under PI is position 10 of the plain model
    torch.testing.assert_close(
        pi.rotate(q, k, rows(40), rows(40)), plain.rotate(q, k, rows(10), rows(10))
    )


def test_ntk_aware_scaling_raises_the_base():
    s, r = 3.0, D // H
    ntk = build("rope", scaling="ntk", scaling_factor=s)
    base = 10000 * s ** (r / (r - 2))
    assert ntk.inv_freq.tolist() == pytest.approx(
        [base ** (-2 * i / r) for i in range(r // 2)], rel=1e-5
    )
    assert ntk.inv_freq[0].item() == pytest.approx(1.0)  # the highest frequency is untouched
    assert ntk.inv_freq[-1].item() == pytest.approx(10000 ** (-(r - 2) / r) / s, rel=1e-5)


def test_yarn_frequencies_and_temperature():
    s, L, r = 2.0, 512, D // H
    yarn = build("rope", scaling="yarn", scaling_factor=s, yarn_original_len=L)
    theta = [10000 ** (-2 * i / r) for i in range(r // 2)]
    expected = []
    for t in theta:
        turns = L / (2 * math.pi / t)  # r(d) = L / λ_d
        gamma = min(1.0, max(0.0, (turns - 1) / (32 - 1)))
        expected.append((1 - gamma) * t / s + gamma * t)
    assert yarn.inv_freq.tolist() == pytest.approx(expected, rel=1e-5)
    # all three regimes at L = 512: pair 0 turns 81 times (kept), pairs 1-3 between 1 and
    # 32 times (blended), pairs 4-7 less than once (interpolated like PI)
    got = yarn.inv_freq.tolist()
    assert got[0] == pytest.approx(theta[0])
    assert all(t / s < g < t for g, t in zip(got[1:4], theta[1:4], strict=True))
    assert got[4:] == pytest.approx([t / s for t in theta[4:]], rel=1e-5)
    q, k = qk(1, 1)
    qr, kr = yarn.rotate(q, k, rows(0), rows(0))  # angle 0: only the temperature acts
    factor = 0.1 * math.log(s) + 1
    torch.testing.assert_close(qr, q * factor)
    torch.testing.assert_close((qr * kr).sum(), (q * k).sum() * factor**2)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"scaling": "linear"}, "unknown encoding.scaling"),
        ({"scaling": "pi", "scaling_factor": 0.5}, "must be a number >= 1"),
        ({"scaling_factor": 2.0}, "has no effect without encoding.scaling"),
        ({"scaling": "yarn", "scaling_factor": 2.0}, "needs encoding.yarn_original_len"),
    ],
)
def test_rope_scaling_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        build("rope", **params)


# --- polynomial and exponential --------------------------------------------------------


def test_polynomial_is_legendre_of_the_scaled_position():
    enc = build("polynomial", degree=6, span=20.0)
    t = torch.tensor([0.0, 5.0, 13.0, 20.0, 35.0])
    pe = enc.table(t)
    assert pe.shape == (5, D) and (pe[:, 6:] == 0).all()
    for a, pos in enumerate([0, 5, 13, 20, 20]):  # 35 > span is clamped to span
        s = 2 * pos / 20 - 1
        for n in range(1, 7):
            coef = [0] * n + [1]
            assert pe[a, n - 1].item() == pytest.approx(
                np.polynomial.legendre.legval(s, coef), abs=1e-5
            )
    grow = build("polynomial", degree=6, span=20.0, beyond="extend").table(torch.tensor([40.0]))
    assert grow[0, 5].item() == pytest.approx(
        np.polynomial.legendre.legval(3.0, [0] * 6 + [1]), rel=1e-5
    )
    assert grow[0, 5].item() > 100  # P_6(3) = 8989: far outside [-1, 1]


def test_exponential_decays_written_out_and_saturating():
    enc = build("exponential", min_timescale=2.0, max_timescale=200.0)
    pe = enc.table(torch.tensor([0, 3, 50, 10**6]))
    assert pe[0].tolist() == pytest.approx([1.0] * D)
    for k in (0, 7, D - 1):
        tau = 2.0 * 100 ** (k / (D - 1))
        for a, t in ((1, 3), (2, 50)):
            assert pe[a, k].item() == pytest.approx(2 * math.exp(-t / tau) - 1, abs=1e-6)
    assert pe[3].tolist() == pytest.approx([-1.0] * D)  # far positions all look alike
    assert (pe[1:] <= pe[:-1]).all()  # monotone in t


# --- combinations ----------------------------------------------------------------------


def test_combination_chains_the_parts():
    combo = build("combo", parts=["learned", {"name": "t5", "num_buckets": 16}, "rope"])
    learned, t5, rope = combo.parts
    assert t5.num_buckets == 16 and combo.max_positions == 256
    x, pos = torch.randn(1, 5, D), rows(*range(5))
    torch.testing.assert_close(combo.embed(x, pos), learned.embed(x, pos))
    q, k = qk(5, 5)
    torch.testing.assert_close(combo.rotate(q, k, pos, pos), rope.rotate(q, k, pos, pos))
    torch.testing.assert_close(combo.bias(q, k, pos, pos), t5.bias(q, k, pos, pos))
    both = build("combo", parts=["alibi", "t5"])
    torch.testing.assert_close(
        both.bias(q, k, pos, pos),
        both.parts[0].bias(q, k, pos, pos) + both.parts[1].bias(q, k, pos, pos),
    )


def test_combination_takes_positions_from_its_randomized_part():
    combo = build(
        "combo", parts=[{"name": "randomized", "base": "learned", "max_position": 500}, "t5"]
    )
    pos = combo.train().positions(2, 30)
    assert pos.max() >= 30 and (pos[0, 1:] > pos[0, :-1]).all()
    assert combo.max_positions == 500


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (["t5"], "at least two encodings"),
        ("learned", "at least two encodings"),
        (["learned", "nope"], "unknown encoding 'nope'"),
        (["learned", {"base": "t5"}], "mapping with a 'name' key"),
        (["learned", {"name": "t5", "buckets": 4}], "no parameter 'buckets'"),
        ([{"name": "randomized"}, {"name": "randomized", "base": "t5"}], "more than one part"),
    ],
)
def test_combination_errors(parts, message):
    with pytest.raises(ConfigError, match=message):
        build("combo", parts=parts)


# --- configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", group_options("encoding"))
def test_every_encoding_yaml_composes_and_builds(name):
    registered = compose([f"encoding={name}"]).encoding.name  # a variant's file names its base
    task = "addition" if encodings.info(registered).cls.places_by_token else "copy"  # digits
    cfg = compose([f"encoding={name}", f"task={task}", "threads=1"])
    p = plan(cfg)
    assert p.model.encoding.name == cfg.encoding.name  # the file's name, or a variant's
    assert cfg.encoding.name == name or name.startswith(f"{cfg.encoding.name}_")
    params = set(encodings.parameters(cfg.encoding.name))
    assert set(cfg.encoding) - {"name", "label"} <= params


@pytest.mark.parametrize("base", ["learned", "sinusoidal"])
def test_randomized_variant_yamls_wrap_their_base(base):
    cfg = compose([f"encoding=randomized_{base}"])
    assert encoding_label(cfg.encoding) == f"randomized_{base}"
    assert plan(cfg).model.encoding.base.name == base


def test_every_registered_encoding_has_a_yaml():
    assert set(encodings.names()) <= set(group_options("encoding"))


def test_labels_of_combinations_and_randomized_variants():
    cfg = compose(["encoding=combo", "encoding.parts=[learned,{name:t5,num_buckets:16}]"])
    assert encoding_label(cfg.encoding) == "learned+t5"
    assert plan(cfg).model.encoding.parts[1].num_buckets == 16
    cfg = compose(
        ["encoding=randomized", "encoding.base=learned", "+encoding.base_params.init_std=0.1"]
    )
    assert encoding_label(cfg.encoding) == "randomized_learned"
    enc = plan(cfg).model.encoding
    assert enc.base.table.weight.shape[0] == 2048 and enc.max_positions == 2048


def test_plan_checks_sequences_against_max_position():
    cfg = compose(["encoding=randomized", "encoding.max_position=100", "eval.max_len=60"])
    with pytest.raises(ConfigError, match="has 100 positions"):
        plan(cfg)


# --- every registered encoding learns --------------------------------------------------


@pytest.mark.parametrize("name", encodings.names())
def test_a_tiny_training_run_lowers_the_loss(name):
    from posenc import tasks

    torch.manual_seed(0)
    enc = encodings.build(name, d_model=32, n_heads=2, max_len=64, n_layers=2)
    cfg = ModelConfig(vocab_size=12, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64)
    model = Transformer(cfg, enc)
    stream = TrainStream(tasks.build("copy", vocab_size=8), 1, 6, 16, seed=0, batching="by_length")
    train = schema.Train(steps=30, lr=1e-2, warmup_steps=3, weight_decay=0.0, batching="by_length")
    trainer = Trainer(model, train)
    losses = [trainer.step(stream.next()).loss for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, losses


# --- posenc eval -----------------------------------------------------------------------

TINY_RUN = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64",
    "train.steps=20", "train.batch_size=8", "train.max_len=6", "train.warmup_steps=2",
    "train.eval_every=0", "train.checkpoint_every=0", "eval.max_len=9", "eval.n_samples=6",
    "progress=false", "threads=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = compose(
        [*TINY_RUN, "encoding=rope", f"run_dir={root / 'rope'}", f"data_dir={root / 'data'}"]
    )
    run(cfg)
    return root / "rope"


def test_eval_without_overrides_reproduces_metrics_json(rope_run):
    metrics, path = reevaluate(rope_run, [])
    assert path == rope_run / "eval-base.json"
    trained = json.loads((rope_run / "metrics.json").read_text())
    assert metrics["per_length"] == trained["per_length"]
    assert set(metrics) == set(trained) and set(metrics["eval"]) >= set(trained["eval"])


def test_eval_of_a_run_saved_before_validation_lengths_scores_every_length_it_was_scored_on(
    tmp_path,
):
    """A config.yaml without ``eval.val_share`` is a run trained and scored with no
    validation lengths: re-evaluated, it keeps all of them as test lengths (it lost 7-9 here,
    the default share's validation lengths, before ``read_config`` gave eval its legacy
    values)."""
    cfg = compose(
        [*TINY_RUN, "eval.val_share=0", f"run_dir={tmp_path / 'old'}", f"data_dir={tmp_path}"]
    )
    trained = run(cfg)
    assert sorted(map(int, trained["per_length"])) == list(range(1, 10))
    saved = tmp_path / "old" / "config.yaml"
    config = OmegaConf.load(saved)
    for key in ("val_share", "val_samples", "val_seed"):
        del config.eval[key]
    saved.write_text(OmegaConf.to_yaml(config))
    metrics, _ = reevaluate(tmp_path / "old", [])
    assert metrics["per_length"] == trained["per_length"]


def test_eval_with_position_interpolation_writes_its_own_file(rope_run):
    before = (rope_run / "metrics.json").read_bytes()
    metrics, path = reevaluate(rope_run, ["encoding.scaling=pi", "encoding.scaling_factor=2"])
    assert path.name == "eval-scaling-pi_scaling_factor-2.json"
    assert json.loads(path.read_text()) == metrics
    assert (rope_run / "metrics.json").read_bytes() == before
    trained = json.loads(before)  # the test lengths: 1-9 less the validation lengths
    assert sorted(map(int, metrics["per_length"])) == sorted(map(int, trained["per_length"]))
    assert 7 not in map(int, metrics["per_length"])
    assert metrics["eval"]["overrides"] == ["encoding.scaling=pi", "encoding.scaling_factor=2"]
    assert not list(rope_run.glob(".*tmp"))


def test_eval_yarn_fills_in_the_training_length(rope_run):
    metrics, path = reevaluate(
        rope_run, ["encoding.scaling=yarn", "encoding.scaling_factor=2"], tag="yarn2"
    )
    assert path.name == "eval-yarn2.json"
    assert "encoding.yarn_original_len=15" in metrics["eval"]["overrides"]  # 6 + 6 + 3 tokens


def test_eval_command_prints_the_table(rope_run):
    result = CliRunner().invoke(
        app, ["eval", str(rope_run), "encoding.scaling=ntk", "encoding.scaling_factor=2"]
    )
    assert result.exit_code == 0, result.output
    assert "rope · eval scaling-ntk_scaling_factor-2" in result.output
    assert (
        "exact match" in result.output and "eval-scaling-ntk_scaling_factor-2.json" in result.output
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/run"], "does not exist"),
        (["encoding.scaling=linear"], "unknown encoding.scaling 'linear'"),
        (["model.d_model=64"], "model.d_model cannot change at evaluation"),
        (["encoding.name=alibi"], "encoding.name cannot change"),
        (["encoding.bse=2"], "has no parameter 'bse'"),
        (["scaling"], "is not KEY=VALUE"),
        (["--tag", "../x"], "may only use letters"),
    ],
)
def test_eval_command_errors(rope_run, args, message):
    if not args[0].startswith("/"):
        args = [str(rope_run), *args]
    result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0  # one line


def test_eval_refuses_unfinished_runs_and_mismatched_checkpoints(rope_run, tmp_path):
    (tmp_path / "config.yaml").write_text((rope_run / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="has no checkpoint.pt"):
        reevaluate(tmp_path, [])
    cfg = compose([*TINY_RUN, "train.steps=1", "encoding=shaw", f"run_dir={tmp_path / 'shaw'}",
                   f"data_dir={rope_run.parent / 'data'}"])  # fmt: skip
    run(cfg)
    with pytest.raises(ConfigError, match="does not fit the model"):
        reevaluate(tmp_path / "shaw", ["encoding.max_distance=4"])


def test_eval_overrides_use_the_train_grammar():
    pairs = parse_overrides(
        ["encoding.parts=[learned,{name:t5,num_buckets:16}]", "eval.greedy=false"]
    )
    assert pairs == [
        ("encoding.parts", ["learned", {"name": "t5", "num_buckets": 16}]),
        ("eval.greedy", False),
    ]
    assert (
        default_tag([("encoding.scaling", "pi"), ("encoding.scaling_factor", 2)])
        == "scaling-pi_scaling_factor-2"
    )
    assert (
        default_tag([("encoding.scaling", "ntk"), ("threads", 1), ("device", "cpu")])
        == "scaling-ntk"
    )
    assert default_tag([("threads", 1)]) == "base"
    with pytest.raises(ConfigError, match="plain KEY=VALUE"):
        parse_overrides(["encoding.scaling=pi,ntk"])


def test_yarn_length_is_filled_in_wherever_a_rope_sits():
    spec = {
        "name": "combo",
        "parts": [
            "learned",
            {"name": "rope", "scaling": "yarn", "scaling_factor": 2},
            {
                "name": "randomized",
                "base": "rope",
                "max_position": 99,
                "base_params": {"scaling": "yarn"},
            },
            {"name": "rope", "scaling": "yarn", "yarn_original_len": 7},
        ],
    }
    made = fill_yarn_length(spec, lambda: 19)
    assert made == [
        "encoding.parts.1.yarn_original_len=19",
        "encoding.parts.2.base_params.yarn_original_len=99",  # its positions span [0, 99)
    ]
    assert spec["parts"][3]["yarn_original_len"] == 7
    build("combo", parts=spec["parts"])  # now a valid encoding


def test_plan_seeds_the_encodings_initial_parameters():
    """Learned encodings draw their initial values in plan(): same seed, same values, whatever
    the global RNG did before (torch seeds itself at random in every new process)."""
    cfg = compose(["encoding=combo", "encoding.parts=[learned,kerple_log,fire]", "seed=3"])
    a = plan(cfg).model.encoding.state_dict()
    torch.rand(7)
    b = plan(cfg).model.encoding.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = plan(compose(["encoding=combo", "encoding.parts=[learned,kerple_log,fire]", "seed=4"]))
    assert not torch.equal(c.model.encoding.state_dict()["parts.1.r1.0"], a["parts.1.r1.0"])


@pytest.mark.parametrize("name", ["rope", "xpos", "p_rope"])
def test_rotary_tables_shared_by_the_batch_give_the_row_by_row_rotation_bit_for_bit(name):
    """The rotation tables are computed once when the batch shares its positions (and once
    for queries and keys at the same positions): exactly the row-by-row rotation."""
    enc = build(name)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, H, 7, D // H, generator=g), torch.randn(3, H, 7, D // H, generator=g)
    pos = rows(*range(2, 9)).expand(3, 7)
    shared = enc.rotate(q, k, pos, pos)
    for b in range(3):  # one row at a time: nothing to share
        alone = enc.rotate(q[b : b + 1], k[b : b + 1], pos[b : b + 1], pos[b : b + 1].clone())
        assert torch.equal(shared[0][b], alone[0][0]) and torch.equal(shared[1][b], alone[1][0])
