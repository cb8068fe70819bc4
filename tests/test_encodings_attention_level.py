"""Data-dependent and attention-level schemes (FoX, PaTH, PaTH-FoX, stick-breaking,
SSMax, p-RoPE, Hard-ALiBi, per-layer and per-head hybrids).

Each scheme against its formula written out here, independently of the implementation, on
small hand-checkable cases; then the model-level contracts every one of them must keep
(cached decoding equals teacher forcing, no look-ahead, gradients to every parameter,
determinism, the fused kernel for plain biases) and the refusals of bad combinations.
Training under every batching, thread count and bf16 is `tests/test_encoding_matrix.py`'s.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from typer.testing import CliRunner

import posenc.model
from posenc import encodings
from posenc.cli.app import app
from posenc.config import compose, read_preset
from posenc.encodings.gated import householder_logits
from posenc.encodings.normalisers import stick_breaking_weights
from posenc.errors import ConfigError
from posenc.run.execute import plan
from posenc.runfolder import CONFIG, config_identity
from posenc.schema import encoding_label
from tests.conftest import TINY
from tests.contracts import (
    assert_cached_decoding_equals_teacher_forcing,
    assert_no_look_ahead,
    model_for,
)

NEW = [
    "fox", "path", "path_fox", "stick_breaking", "ssmax", "p_rope", "hard_alibi",
    "per_layer", "per_head",
]  # fmt: skip
# Hybrids and combinations that exercise the chaining of the new hooks.
MIXED = [
    ("per_layer", {"layers": ["stick_breaking", "fox"]}),
    ("per_head", {"heads": ["rope", "path", "fox", "ssmax"]}),
    ("per_head", {"heads": ["stick_breaking", "stick_breaking", "hard_alibi", "none"]}),
    ("hard_alibi", {"max_window": 8}),  # hard_alibi_paper: windows 1 and 8 at 4 heads
    ("combo", {"parts": ["rope", "ssmax"]}),
    ("combo", {"parts": ["path", "alibi"]}),
    ("combo", {"parts": ["rope", "fox"]}),
]
CASES = [(n, {}) for n in NEW] + MIXED
ROOT = Path(__file__).resolve().parent.parent
IDS = [f"{n}-{'-'.join(str(v) for v in p.values())}" if p else n for n, p in CASES]


def qkv(B=2, H=4, T=7, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=dtype) for _ in range(3)]


# ------------------------------------------------------------------ FoX


def test_fox_with_a_constant_gate_is_a_per_head_linear_distance_bias():
    enc = encodings.build("fox", d_model=32, n_heads=4, max_len=64)
    gates = torch.tensor([0.9, 0.5, 0.99, 0.1])
    with torch.no_grad():
        enc.gate.weight.zero_()
        enc.gate.bias.copy_(torch.logit(gates)[None])
    x = torch.randn(2, 6, 32)
    bias = enc.state_bias(enc.observe(x), 6)  # (B, H, T, T)
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    expected = (i - j).float()[None] * gates.log()[:, None, None]  # (H, T, T): (i-j)·log f_h
    lower = j <= i
    torch.testing.assert_close(bias[0][:, lower], expected[:, lower])
    torch.testing.assert_close(bias[1][:, lower], expected[:, lower])


@pytest.mark.parametrize("gate_type", ["bias_only", "fixed"])
def test_fox_data_independent_gates_give_the_bias_i_minus_j_times_log_sigmoid_b(gate_type):
    """The reference's fgate_type bias_only and fixed: f_h = σ(b_h) whatever the input, so
    D_ij = (i - j)·log σ(b_h). b = 0: log σ(0) = -ln 2, so D_{3,0} = -3 ln 2 = -2.079."""
    enc = encodings.build(
        "fox", d_model=8, n_heads=2, max_len=16, gate_bias_init=0.0, gate_type=gate_type
    )
    x = torch.randn(1, 4, 8) * 10  # the input must not matter
    bias = enc.state_bias(enc.observe(x), 4)[0]  # (H, T, T)
    torch.testing.assert_close(bias[:, 3, 0], torch.full((2,), -3 * math.log(2)))
    torch.testing.assert_close(bias[:, 2, 1], torch.full((2,), -math.log(2)))
    learned = {name for name, _ in enc.named_parameters()}
    assert learned == ({"gate.bias"} if gate_type == "bias_only" else set())


def test_fox_refuses_an_unknown_gate_type():
    with pytest.raises(ConfigError, match="gate_type"):
        encodings.build("fox", d_model=8, n_heads=2, max_len=16, gate_type="open")


def test_fox_attention_is_the_softmax_of_logits_plus_summed_log_gates():
    """Against the formula: o_i = Σ_j softmax_j(q_i·k_j/√d + Σ_{l=j+1..i} log f_l) v_j, the
    gate sums written as explicit loops."""
    model = model_for("fox")
    attn = model.blocks[0].attn
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        q, k, v, _, bias, state = attn.prepare(x, torch.arange(5)[None], model.encoding)
        log_f = F.logsigmoid(x @ model.encoding.gate.weight[0].t() + model.encoding.gate.bias[0])
        expected = torch.full((1, 4, 5, 5), float("-inf"))
        for i in range(5):
            for j in range(i + 1):
                path = sum((log_f[0, s] for s in range(j + 1, i + 1)), torch.zeros(4))
                expected[0, :, i, j] = (q[0, :, i] * k[0, :, j]).sum(-1) / math.sqrt(8) + path
        got = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
        lower = torch.ones(5, 5, dtype=torch.bool).tril()
        torch.testing.assert_close(got[..., lower], expected[..., lower], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ stick-breaking


def stick_breaking_by_loops(z: torch.Tensor) -> torch.Tensor:
    """A_ij = σ(z_ij) Π_{j<k<i} (1 - σ(z_ik)) for j < i; one (T, T) matrix."""
    T = z.shape[0]
    A = torch.zeros(T, T, dtype=z.dtype)
    for i in range(T):
        for j in range(i):
            A[i, j] = torch.sigmoid(z[i, j])
            for k in range(j + 1, i):
                A[i, j] *= 1 - torch.sigmoid(z[i, k])
    return A


def test_stick_breaking_weights_match_the_product_formula_and_sum_to_at_most_one():
    z = torch.randn(1, 1, 6, 6, dtype=torch.float64) * 3
    w = stick_breaking_weights(z, remainder_to_current=False)
    torch.testing.assert_close(w[0, 0].double(), stick_breaking_by_loops(z[0, 0]))
    assert (w.sum(-1) <= 1 + 1e-6).all()
    assert w[0, 0, 0].sum() == 0  # the first query has nothing to break the stick at
    # the remainder weights the query's own value, so each row then sums to 1
    w2 = stick_breaking_weights(z, remainder_to_current=True)
    torch.testing.assert_close(w2.sum(-1).float(), torch.ones(1, 1, 6))
    torch.testing.assert_close(
        w2.diagonal(dim1=-2, dim2=-1)[0, 0].double(), 1 - w[0, 0].sum(-1).double()
    )


def test_stick_breaking_breaks_the_nearest_key_first():
    """Equal logits: the nearest key gets σ(z), the next σ(z)(1 - σ(z)), ... (a geometric decay)."""
    z = torch.zeros(1, 1, 4, 4)
    w = stick_breaking_weights(z, remainder_to_current=False)[0, 0, 3]
    torch.testing.assert_close(w, torch.tensor([0.125, 0.25, 0.5, 0.0]))


def test_stick_breaking_with_a_kv_cache_uses_the_last_queries_rows():
    z = torch.randn(1, 2, 7, 7)
    whole = stick_breaking_weights(z)
    torch.testing.assert_close(stick_breaking_weights(z[:, :, 4:]), whole[:, :, 4:])


# ------------------------------------------------------------------ PaTH


def path_logits_by_products(q, k, w, beta):
    """q_iᵀ (H_i H_{i-1} ... H_{j+1}) k_j with the D×D matrices multiplied out, j <= i."""
    B, H, T, D = q.shape
    out = torch.zeros(B, H, T, T, dtype=q.dtype)
    eye = torch.eye(D, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                P = eye.clone()
                for j in range(i, -1, -1):
                    out[b, h, i, j] = q[b, h, i] @ P @ k[b, h, j]
                    P = P @ (eye - beta[b, h, j] * torch.outer(w[b, h, j], w[b, h, j]))
    return out


def test_path_logits_equal_the_product_of_householder_matrices():
    q, k, w = qkv(B=1, H=2, T=9, D=4)
    w = w / w.norm(dim=-1, keepdim=True)
    beta = 2 * torch.rand(1, 2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        householder_logits(q, k, w, beta), path_logits_by_products(q, k, w, beta)
    )


def test_path_with_beta_zero_is_nope():
    q, k, w = qkv()
    lower = torch.ones(7, 7, dtype=torch.bool).tril()
    plain = (q @ k.transpose(-1, -2)).masked_fill(~lower, 0)
    torch.testing.assert_close(
        householder_logits(q, k, w, torch.zeros(2, 4, 7, dtype=q.dtype)), plain
    )
    # in the model: β = 2σ(bias) = 0 gives the NoPE model with the same weights
    path, nope = model_for("path"), model_for("none")
    nope.load_state_dict(
        {k: v for k, v in path.state_dict().items() if not k.startswith("encoding.")}
    )
    with torch.no_grad():
        path.encoding.beta_weight.zero_()
        path.encoding.beta_bias.fill_(-1e4)
    tokens = torch.randint(4, 12, (2, 10))
    torch.testing.assert_close(path(tokens)[0], nope(tokens)[0], rtol=1e-5, atol=1e-5)


def test_path_with_beta_two_and_one_direction_reflects_the_keys():
    """H = I - 2wwᵀ with the same unit w everywhere: H² = I, so a key two steps back is
    unchanged and one step back is reflected."""
    q, k, _ = qkv(B=1, H=1, T=3, D=4)
    w = torch.zeros(1, 1, 3, 4, dtype=q.dtype)
    w[..., 0] = 1
    A = householder_logits(q, k, w, torch.full((1, 1, 3), 2.0, dtype=q.dtype))
    reflect = torch.tensor([-1.0, 1, 1, 1], dtype=q.dtype)
    torch.testing.assert_close(A[0, 0, 2, 0], q[0, 0, 2] @ k[0, 0, 0])
    torch.testing.assert_close(A[0, 0, 2, 1], q[0, 0, 2] @ (reflect * k[0, 0, 1]))


def test_path_fox_scales_the_gate_with_the_logits_as_the_reference_kernel():
    """fla's parallel PaTH kernel: softmax((A_ij + g_i - g_j) · scale)."""
    model = model_for("path_fox")
    enc, attn = model.encoding, model.blocks[0].attn
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        q, k, v, _, bias, state = attn.prepare(x, torch.arange(6)[None], enc)
        weights = enc.attention_weights(q, k, bias, state)
        A = path_logits_by_products(
            q.double(), k.double(), state["w"].double(), state["beta"].double()
        )
        c = state["gates"].double()
        logits = (A + c[..., :, None] - c[..., None, :]) / math.sqrt(8)
        lower = torch.ones(6, 6, dtype=torch.bool).tril()
        expected = logits.masked_fill(~lower, float("-inf")).softmax(-1)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-6)


def test_path_direction_is_the_l2_normalised_short_convolution_of_a_low_rank_projection():
    enc = encodings.build("path", d_model=32, n_heads=4, max_len=64)
    x = torch.randn(1, 5, 32)
    state = enc.observe(x)
    u = x @ enc.w_down[0].t() @ enc.w_up[0].t()  # (1, T, 32)
    conv = enc.conv[0]  # (32, 3): out_t = Σ_m conv[:, m] u_{t-2+m}
    padded = torch.cat((torch.zeros(1, 2, 32), u), 1)
    out = torch.stack([sum(conv[:, m] * padded[:, t + m] for m in range(3)) for t in range(5)], 1)
    w = F.silu(out).view(1, 5, 4, 8).transpose(1, 2)
    unit = w / torch.sqrt((w**2).sum(-1, keepdim=True) + 1e-6)  # fla's l2_norm, eps 1e-6
    torch.testing.assert_close(state["w"], unit, rtol=1e-4, atol=1e-5)
    beta = 2 * torch.sigmoid(x @ enc.beta_weight[0].t() + enc.beta_bias[0])
    torch.testing.assert_close(state["beta"], beta.transpose(1, 2))


# ------------------------------------------------------------------ SSMax


def test_ssmax_with_s_log_n_equal_to_one_is_the_plain_softmax():
    ssmax, nope = model_for("ssmax"), model_for("none")
    nope.load_state_dict(
        {k: v for k, v in ssmax.state_dict().items() if not k.startswith("encoding.")}
    )
    T = 9
    with torch.no_grad():
        ssmax.encoding.s.fill_(1 / math.log(T))  # s·log n = 1 for the last query (n = T)
    tokens = torch.randint(4, 12, (2, T))
    torch.testing.assert_close(
        ssmax(tokens)[0][:, -1], nope(tokens)[0][:, -1], rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(ssmax(tokens)[0][:, -3], nope(tokens)[0][:, -3])


def test_ssmax_scales_query_i_by_s_times_log_of_the_keys_it_sees():
    enc = encodings.build("ssmax", d_model=32, n_heads=4, max_len=64, n_layers=2)
    with torch.no_grad():
        enc.s.copy_(torch.tensor([[0.5, 1.0, 2.0, 0.25], [1, 1, 1, 1.0]]))
    scale = enc.query_scale(3, 10, layer=0)  # the last 3 of 10 tokens: n = 8, 9, 10
    expected = torch.tensor([0.5, 1.0, 2.0, 0.25])[:, None] * torch.tensor([8.0, 9, 10]).log()
    torch.testing.assert_close(scale[0, :, :, 0], expected)


# ------------------------------------------------------------------ p-RoPE


def test_p_rope_with_p_one_is_rope():
    p_rope = encodings.build("p_rope", d_model=32, n_heads=4, max_len=64, p=1.0)
    rope = encodings.build("rope", d_model=32, n_heads=4, max_len=64)
    q, k, _ = qkv(dtype=torch.float32)
    pos = torch.arange(7).expand(2, 7) + 3
    for a, b in zip(p_rope.rotate(q, k, pos, pos), rope.rotate(q, k, pos, pos), strict=True):
        torch.testing.assert_close(a, b)


def test_p_rope_drops_the_lowest_frequencies_of_the_full_head():
    enc = encodings.build("p_rope", d_model=64, n_heads=4, max_len=64, p=0.5)  # d_head 16
    c = torch.arange(8, dtype=torch.float32)
    full = 10000.0 ** (-2 * c / 16)
    expected = torch.where(c < 4, full, torch.zeros(8))  # ⌊0.5·16/2⌋ = 4 kept
    torch.testing.assert_close(enc.inv_freq, expected)
    # the frequency-0 pairs (dims 4..7 and 12..15) are not rotated
    q = torch.randn(1, 1, 5, 16)
    pos = torch.arange(5)[None] * 7
    rotated, _ = enc.rotate(q, q, pos, pos)
    torch.testing.assert_close(rotated[..., 4:8], q[..., 4:8])
    torch.testing.assert_close(rotated[..., 12:16], q[..., 12:16])
    assert not torch.allclose(rotated[..., :4], q[..., :4])


@pytest.mark.parametrize("p", [0.0, -0.5, 1.5])
def test_p_outside_zero_one_is_refused(p):
    with pytest.raises(ConfigError, match=r"encoding.p must be in \(0, 1\]"):
        encodings.build("p_rope", d_model=32, n_heads=4, max_len=64, p=p)


# ------------------------------------------------------------------ Hard-ALiBi


def test_hard_alibi_windows_are_those_of_the_official_code():
    """The reference: for head i < num_masked_heads, unmask the distances j = 0..i."""
    enc = encodings.build("hard_alibi", d_model=64, n_heads=8, max_len=64, masked_fraction=0.5)
    T = 6
    pos = torch.arange(T)[None]
    bias = enc.bias(torch.zeros(1, 8, T, 8), torch.zeros(1, 8, T, 8), pos, pos)[0]
    for head in range(8):
        expected = torch.full((T, T), float("-inf"))
        if head < 4:
            for j in range(head + 1):
                expected[range(j, T), range(0, T - j)] = 0
        else:
            expected = torch.zeros(T, T)
        lower = torch.ones(T, T, dtype=torch.bool).tril()
        assert torch.equal(bias[head][lower], expected[lower]), head


def hard_alibi_seen(enc, T: int) -> list[set[int]]:
    """The distances i - j each head of ``enc`` lets through (bias 0), over T positions."""
    pos = torch.arange(T)[None]
    H = enc.n_heads
    bias = enc.bias(torch.zeros(1, H, T, 4), torch.zeros(1, H, T, 4), pos, pos)[0]
    seen = []
    for head in range(H):
        lower = torch.ones(T, T, dtype=torch.bool).tril()
        assert set(bias[head][lower].tolist()) <= {0.0, float("-inf")}
        i, j = torch.nonzero((bias[head] == 0) & lower, as_tuple=True)
        seen.append(set((i - j).tolist()))
    return seen


@pytest.mark.parametrize(
    "n_heads, windows",
    [(4, [1, 8]), (8, [1, 3, 6, 8]), (6, [1, 5, 8]), (16, [1, 2, 3, 4, 5, 6, 7, 8]), (2, [1])],
)
def test_hard_alibi_max_window_spreads_the_windows_over_1_to_it(n_heads, windows):
    """w_h = 1 + floor(h·7/(m - 1) + 1/2) by hand: 4 heads (2 masked) 1, 8; 8 heads 1, 3
    (2.33), 6 (5.67), 8; 6 heads 1, 5 (4.5 up), 8; 16 heads the code's 1..8; one head 1.
    Masked head h sees the distances 0..w_h - 1, the NoPE heads every distance."""
    d = 4 * n_heads
    enc = encodings.build("hard_alibi", d_model=d, n_heads=n_heads, max_len=64, max_window=8)
    assert enc.windows == windows
    T = 12
    every = set(range(T))
    expected = [set(range(w)) for w in windows] + [every] * (n_heads - len(windows))
    assert hard_alibi_seen(enc, T) == expected


def test_hard_alibi_at_16_heads_and_max_window_8_is_the_official_default():
    """The code's --heads 16 --num_masked_heads 8: max_window 8 equals the default's h + 1."""
    paper = encodings.build("hard_alibi", d_model=64, n_heads=16, max_len=64, max_window=8)
    default = encodings.build("hard_alibi", d_model=64, n_heads=16, max_len=64)
    assert torch.equal(paper.reach, default.reach)


@pytest.mark.parametrize("n_heads", [1, 2, 4, 8, 16])
def test_hard_alibi_default_is_unchanged(n_heads):
    """Without max_window (null, the yaml's), head h < m has reach h exactly as before."""
    enc = encodings.build("hard_alibi", d_model=64, n_heads=n_heads, max_len=64)
    m = round(0.5 * n_heads)
    expected = [float(h) if h < m else float("inf") for h in range(n_heads)]
    assert torch.equal(enc.reach, torch.tensor(expected))
    null = encodings.build("hard_alibi", d_model=64, n_heads=n_heads, max_len=64, max_window=None)
    assert torch.equal(null.reach, enc.reach)


def test_hard_alibi_paper_yaml_gives_windows_1_and_8_at_the_attention_level_preset():
    cfg = compose(["encoding=hard_alibi_paper", "preset=attention_level", "task=copy"])
    assert encoding_label(cfg.encoding) == "hard_alibi_paper"
    enc = plan(cfg).model.encoding
    assert enc.n_heads == 4 and enc.windows == [1, 8]
    sweep = read_preset("attention_level")["hydra"]["sweeper"]["params"]["encoding"]
    assert "hard_alibi_paper" in sweep.split(",") and "hard_alibi" not in sweep.split(",")


def test_hard_alibi_runs_saved_without_max_window_still_match():
    """A run folder saved before max_window existed computes what max_window null computes."""
    saved = OmegaConf.load(ROOT / "docs/experiments/attention_level/copy/hard_alibi/seed0" / CONFIG)
    assert "max_window" not in saved.encoding
    now = saved.copy()
    now.encoding.max_window = None
    assert config_identity(saved) == config_identity(now)


def test_fox_runs_saved_without_gate_type_still_match():
    """A FoX run folder saved before gate_type existed computes what gate_type full computes,
    and another gate type is another config."""
    saved = OmegaConf.load(ROOT / "docs/experiments/attention_level/copy/fox/seed0" / CONFIG)
    assert "gate_type" not in saved.encoding
    now = saved.copy()
    now.encoding.gate_type = "full"
    assert config_identity(saved) == config_identity(now)
    now.encoding.gate_type = "fixed"
    assert config_identity(saved) != config_identity(now)


@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True, [1, 8]])
def test_hard_alibi_bad_max_window_is_refused(value):
    with pytest.raises(ConfigError) as err:
        encodings.build("hard_alibi", d_model=32, n_heads=4, max_len=64, max_window=value)
    message = str(err.value)
    assert "\n" not in message and repr(value) in message
    assert message.startswith("encoding.max_window must be an integer >= 1")
    assert "or null" in message


# ------------------------------------------------------------------ hybrids


def test_per_layer_runs_each_layers_own_encoding():
    enc = encodings.build(
        "per_layer", d_model=32, n_heads=4, max_len=64, n_layers=2, layers=["rope", "none"]
    )
    rope = encodings.build("rope", d_model=32, n_heads=4, max_len=64)
    q, k, _ = qkv(dtype=torch.float32)
    pos = torch.arange(7).expand(2, 7)
    torch.testing.assert_close(enc.rotate(q, k, pos, pos, layer=0), rope.rotate(q, k, pos, pos))
    assert enc.rotate(q, k, pos, pos, layer=1) == (q, k)


def test_per_layer_default_is_llama4_nope_every_fourth_layer():
    enc = encodings.build("per_layer", d_model=32, n_heads=4, max_len=64, n_layers=8)
    assert enc.part_names == ["rope", "rope", "rope", "none"] * 2


def test_per_head_rotates_only_its_rope_heads():
    enc = encodings.build("per_head", d_model=32, n_heads=4, max_len=64)  # [rope, rope, none, none]
    rope2 = encodings.build("rope", d_model=16, n_heads=2, max_len=64)
    q, k, _ = qkv(dtype=torch.float32)
    pos = torch.arange(7).expand(2, 7)
    rq, rk = enc.rotate(q, k, pos, pos)
    eq, ek = rope2.rotate(q[:, :2], k[:, :2], pos, pos)
    torch.testing.assert_close(rq[:, :2], eq)
    torch.testing.assert_close(rk[:, :2], ek)
    assert torch.equal(rq[:, 2:], q[:, 2:]) and torch.equal(rk[:, 2:], k[:, 2:])


def test_per_head_mixes_own_weights_with_softmax_heads():
    enc = encodings.build(
        "per_head",
        d_model=32,
        n_heads=4,
        max_len=64,
        heads=["stick_breaking", "stick_breaking", "alibi", "alibi"],
    )
    q, k, _ = qkv(dtype=torch.float32)
    pos = torch.arange(7).expand(2, 7)
    bias = enc.bias(q, k, pos, pos)
    assert torch.equal(bias[:, :2], torch.zeros_like(bias[:, :2]))
    w = enc.attention_weights(q, k, bias, None)
    z = q[:, :2] @ k[:, :2].transpose(-1, -2) / math.sqrt(8)
    torch.testing.assert_close(w[:, :2], stick_breaking_weights(z))
    alibi = encodings.build("alibi", d_model=16, n_heads=2, max_len=64)
    logits = q[:, 2:] @ k[:, 2:].transpose(-1, -2) / math.sqrt(8) + alibi.bias(
        q[:, 2:], k[:, 2:], pos, pos
    )
    lower = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(w[:, 2:], logits.masked_fill(~lower, float("-inf")).softmax(-1))


@pytest.mark.parametrize(
    "name, params, message",
    [
        (
            "per_layer",
            {"layers": ["rope", "none", "rope"]},
            "encoding.layers has 3 entries but model.n_layers=2",
        ),
        (
            "per_head",
            {"heads": ["rope", "none"]},
            "encoding.heads has 2 entries but model.n_heads=4",
        ),
        ("per_layer", {"layers": ["learned", "none"]}, "acts on the whole model"),
        (
            "combo",
            {"parts": ["path", "stick_breaking"]},
            "more than one part that computes its own attention",
        ),
        ("randomized", {"base": "fox"}, "need a base that reads positions"),
        (
            "randomized",
            {"base": "combo", "base_params": {"parts": ["rope", "fox"]}},
            "data-dependent",
        ),
    ],
)
def test_bad_combinations_are_refused(name, params, message):
    with pytest.raises(ConfigError, match=message):
        encodings.build(name, d_model=32, n_heads=4, max_len=64, n_layers=2, **params)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["encoding=randomized", "encoding.base=fox"], "randomized positions need a base"),
        (
            [
                "encoding=randomized",
                "encoding.base=combo",
                "+encoding.base_params.parts=[rope,path]",
            ],
            "data-dependent",
        ),
        (["encoding=p_rope", "encoding.p=1.5"], "encoding.p must be in (0, 1]"),
        (["encoding=p_rope", "encoding.p=0.0"], "encoding.p must be in (0, 1]"),
        (
            ["encoding=per_layer", "encoding.layers=[rope,rope,none]"],
            "encoding.layers has 3 entries but model.n_layers=2",
        ),
        (
            ["encoding=hard_alibi_paper", "encoding.max_window=0"],
            "encoding.max_window must be an integer >= 1",
        ),
    ],
)
def test_bad_combinations_from_the_cli_are_one_line_exit_2_and_write_nothing(
    tmp_path, args, expected
):
    run_dir = tmp_path / "r"
    result = CliRunner().invoke(
        app, ["train", *TINY, *args, f"run_dir={run_dir}", f"data_dir={tmp_path / 'd'}"]
    )
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not run_dir.exists() and not (tmp_path / "d").exists()


# ------------------------------------------------------------------ model-level contracts


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_cached_decoding_equals_teacher_forcing(name, params):
    assert_cached_decoding_equals_teacher_forcing(model_for(name, **params))


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_no_information_flows_from_later_tokens(name, params):
    assert_no_look_ahead(model_for(name, **params))


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, params):
    model = model_for(name, **params).train()
    tokens = torch.randint(4, 12, (2, 10), generator=torch.Generator().manual_seed(4))
    logits, _ = model(tokens)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    missing = [
        k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing


@pytest.mark.parametrize("name", NEW)
def test_deterministic_under_a_seed(name):
    def two_steps():
        model = model_for(name, seed=5).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        tokens = torch.randint(4, 12, (2, 10), generator=torch.Generator().manual_seed(6))
        for _ in range(2):
            opt.zero_grad()
            logits, _ = model(tokens)
            F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
            opt.step()
        return model(tokens)[0]

    assert torch.equal(two_steps(), two_steps())


PLAIN_BIAS = ["fox", "ssmax", "p_rope", "hard_alibi", "per_layer", "per_head"]


@pytest.mark.parametrize("name", PLAIN_BIAS)
def test_plain_bias_schemes_keep_the_fused_kernel(name, monkeypatch):
    calls = []
    fused = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(posenc.model.F, "scaled_dot_product_attention", counting)
    model = model_for(name)
    with torch.no_grad():
        model(torch.randint(4, 12, (2, 9)))
    assert len(calls) == 2  # one fused call per layer


@pytest.mark.parametrize("name", NEW)
def test_encoding_state_is_never_stored_on_the_module(name):
    """Pieces run side by side in threads: a forward pass must leave the module as it was."""
    model = model_for(name)
    before = {k: v.clone() for k, v in model.encoding.state_dict(keep_vars=False).items()}
    attrs = set(vars(model.encoding))
    with torch.no_grad():
        model(torch.randint(4, 12, (2, 9)))
    assert set(vars(model.encoding)) == attrs
    for k, v in model.encoding.state_dict().items():
        assert torch.equal(v, before[k]), k
