"""The 2026 attention-level rows (issue 39): PoPE, DAPE, DAPE v2, CABLE and Wall attention.

Each scheme against its formula written out here, independently of the implementation, on
small hand-checkable cases; against its authors' code where that runs on the CPU (PoPE-pytorch
and x-transformers: skipped when not installed) or, where it does not install (DAPE's GPT-NeoX
fork, CABLE's training script, fla's Triton-backed package), against its forward pass
transcribed here line by line; then the model-level contracts (cached decoding equals teacher
forcing, no look-ahead, gradients to every parameter, determinism, state never on the
module) and the refusals. Training under every batching, thread count and bf16 is
`tests/test_encoding_matrix.py`'s, which covers every registered encoding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import posenc.model
from posenc import encodings
from posenc.cli.app import app
from posenc.encodings.wall import wall_logits
from posenc.errors import ConfigError
from posenc.model import Transformer
from tests.conftest import TINY
from tests.contracts import (
    assert_cached_decoding_equals_teacher_forcing,
    assert_no_look_ahead,
    model_for,
)

NEW = ["pope", "dape", "dape_v2", "cable", "wall"]
MIXED = [
    ("dape", {"base": "alibi"}),
    ("dape_v2", {"base": "rope"}),
    ("dape_v2", {"base": "fox"}),
    ("combo", {"parts": ["wall", "fox"]}),
    ("combo", {"parts": ["rope", "cable"]}),
    ("per_head", {"heads": ["cable", "cable", "wall", "none"]}),
    ("per_layer", {"layers": ["pope", "dape_v2"]}),
    ("wall", {"chunk_size": 3}),
]
CASES = [(n, {}) for n in NEW] + MIXED
IDS = [f"{n}-{'-'.join(str(v) for v in p.values())}" if p else n for n, p in CASES]


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def layer_logits(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """Layer 0's logits q·k/sqrt(width) + bias as the fused kernel sees them (B, H, T, T)."""
    T = x.shape[1]
    pos = torch.arange(T).expand(x.shape[0], T)
    q, k, _, _, bias, _ = model.blocks[0].attn.prepare(x, pos, model.encoding)
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return logits if bias is None else logits + bias


# ------------------------------------------------------------------ PoPE


def test_pope_logits_are_softplus_magnitudes_times_cosine_of_phase_difference():
    """logit_ij = Σ_c softplus(q_ic) softplus(k_jc) cos((i - j)θ_c - δ_hc) / sqrt(d), written
    as an explicit sum, θ_c = 10000^(-c/d) (d frequencies, not d/2)."""
    enc = encodings.build("pope", d_model=8, n_heads=2, max_len=16)
    with torch.no_grad():
        enc.phase_bias.copy_(torch.tensor([[0.0, -0.5, -1.0, -3.0], [-6.0, 0.0, -0.1, -2.0]]))
    d, T = 4, 5
    q, k = (
        randn(1, 2, T, d, seed=1, dtype=torch.float64),
        randn(1, 2, T, d, seed=2, dtype=torch.float64),
    )
    pos = torch.arange(T)[None]
    qr, kr = enc.rotate(q, k, pos, pos)
    assert qr.shape == (1, 2, T, 2 * d) and kr.shape == (1, 2, T, 2 * d)
    scale = enc.query_scale(T, T)
    got = (qr * scale) @ kr.transpose(-1, -2) / (2 * d) ** 0.5
    theta = [10000 ** (-c / d) for c in range(d)]
    delta = enc.phase_bias.detach().double()
    for h in range(2):
        for i in range(T):
            for j in range(T):
                want = sum(
                    F.softplus(q[0, h, i, c]) * F.softplus(k[0, h, j, c])
                    * math.cos((i - j) * theta[c] - delta[h, c])
                    for c in range(d)
                ) / math.sqrt(d)  # fmt: skip
                torch.testing.assert_close(got[0, h, i, j], want)


def test_pope_phase_bias_is_clamped_to_minus_two_pi_and_zero():
    enc = encodings.build("pope", d_model=8, n_heads=2, max_len=16)
    q, k = randn(1, 2, 3, 4, seed=3), randn(1, 2, 3, 4, seed=4)
    pos = torch.arange(3)[None]
    with torch.no_grad():
        enc.phase_bias.fill_(1.5)  # above 0: acts as 0
    above = enc.rotate(q, k, pos, pos)[1]
    with torch.no_grad():
        enc.phase_bias.zero_()
    torch.testing.assert_close(above, enc.rotate(q, k, pos, pos)[1])
    with torch.no_grad():
        enc.phase_bias.fill_(-9.0)  # below -2π: acts as -2π
    below = enc.rotate(q, k, pos, pos)[1]
    with torch.no_grad():
        enc.phase_bias.fill_(-2 * math.pi)
    torch.testing.assert_close(below, enc.rotate(q, k, pos, pos)[1])


def test_pope_layer_output_is_the_softmax_of_its_logits_over_values_of_head_width():
    """q, k of width 2·d_head, v of d_head through the fused kernel: the layer's output
    equals softmax(formula logits) @ v, projected."""
    model = model_for("pope", n_layers=1)
    attn = model.blocks[0].attn
    x = randn(2, 6, 32, seed=5)
    logits = layer_logits(model, x)
    visible = torch.ones(6, 6, dtype=torch.bool).tril()
    weights = logits.masked_fill(~visible, float("-inf")).softmax(-1)
    v = attn.qkv(x).split(32, dim=2)[2].view(2, 6, 4, 8).transpose(1, 2)
    want = attn.proj((weights @ v).transpose(1, 2).reshape(2, 6, 32))
    got, cache = attn(x, torch.arange(6).expand(2, 6), model.encoding)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert cache.k.shape[-1] == 16 and cache.v.shape[-1] == 8


def test_pope_equals_pope_pytorch():
    pope_pytorch = pytest.importorskip("PoPE_pytorch")
    torch.manual_seed(0)
    ref = pope_pytorch.PoPE(8, heads=2)  # its bias_uniform_init fails on a leaf (0.2.1)
    enc = encodings.build("pope", d_model=16, n_heads=2, max_len=32)
    with torch.no_grad():
        ref.bias.uniform_(-2 * math.pi, 0.0)
        enc.phase_bias.copy_(ref.bias)
    q, k = randn(2, 2, 6, 8, seed=6), randn(2, 2, 6, 8, seed=7)
    ref_q, ref_k = pope_pytorch.apply_pope_to_qk(ref(6), q, k)
    pos = torch.arange(6).expand(2, 6)
    our_q, our_k = enc.rotate(q, k, pos, pos)
    ref_logits = ref_q @ ref_k.transpose(-1, -2) * 8**-0.5  # its softmax_scale: the head's width
    ours = our_q * enc.query_scale(6, 6) @ our_k.transpose(-1, -2) / 16**0.5
    torch.testing.assert_close(ours, ref_logits, rtol=1e-5, atol=1e-5)


def test_pope_equals_x_transformers_polar_embedding():
    xt = pytest.importorskip("x_transformers.x_transformers")
    torch.manual_seed(0)
    ref = xt.PolarEmbedding(8, 2)
    enc = encodings.build("pope", d_model=16, n_heads=2, max_len=32)
    with torch.no_grad():
        ref.learned_bias.uniform_(-2 * math.pi, 0.0)
        enc.phase_bias.copy_(ref.learned_bias[:, 0])
    q, k = randn(2, 2, 6, 8, seed=8), randn(2, 2, 6, 8, seed=9)
    freqs, bias = ref(torch.arange(6))
    ref_q = xt.apply_polar_pos_emb(q, freqs[:, None])
    ref_k = xt.apply_polar_pos_emb(k, freqs[:, None] + bias)
    pos = torch.arange(6).expand(2, 6)
    our_q, our_k = enc.rotate(q, k, pos, pos)
    torch.testing.assert_close(our_q, ref_q)  # the same [μ cos, μ sin] layout
    torch.testing.assert_close(our_k, ref_k)


# ------------------------------------------------------------------ DAPE


def set_network(enc, layer, w1, b1, w2, b2):
    """Load 2H -> width -> H weights (as nn.Linear stores them) into DAPE's convolutions."""
    conv1, conv2 = enc.nets[layer]
    with torch.no_grad():
        conv1.weight.copy_(w1.reshape(conv1.weight.shape[0], conv1.weight.shape[1], 1, -1))
        conv1.bias.copy_(b1)
        conv2.weight.copy_(w2.reshape(conv2.weight.shape[0], conv2.weight.shape[1], 1, -1))
        conv2.bias.copy_(b2)


def test_dape_logits_are_scores_plus_bias_plus_an_mlp_across_heads():
    """A_ij,h = S_ij,h + B_ij,h + Σ_u W2[h,u] leaky(Σ_c W1[u,c] [S;B]_ij,c + b1_u) + b2_h, at
    every (i, j) separately, written as loops; then the causal softmax."""
    enc = encodings.build("dape", d_model=8, n_heads=2, max_len=16, mlp_width=3, base="alibi")
    w1, b1, w2, b2 = randn(3, 4, seed=1), randn(3, seed=2), randn(2, 3, seed=3), randn(2, seed=4)
    set_network(enc, 0, w1, b1, w2, b2)
    T = 4
    q, k = randn(1, 2, T, 4, seed=5), randn(1, 2, T, 4, seed=6)
    pos = torch.arange(T)[None]
    bias = enc.bias(q, k, pos, pos)
    weights = enc.attention_weights(q, k, bias, None)
    S = q @ k.transpose(-1, -2) / 2.0
    B = bias.expand_as(S)
    for i in range(T):
        logits = []
        for j in range(i + 1):
            feats = [S[0, 0, i, j], S[0, 1, i, j], B[0, 0, i, j], B[0, 1, i, j]]
            hidden = [
                F.leaky_relu(sum(w1[u, c] * feats[c] for c in range(4)) + b1[u], 0.01)
                for u in range(3)
            ]
            logits.append(
                [
                    S[0, h, i, j]
                    + B[0, h, i, j]
                    + sum(w2[h, u] * hidden[u] for u in range(3))
                    + b2[h]
                    for h in range(2)
                ]  # fmt: skip
            )
        want = torch.tensor(logits).T.softmax(-1)  # (H, i+1)
        torch.testing.assert_close(weights[0, :, i, : i + 1], want, rtol=1e-5, atol=1e-6)
        assert (weights[0, :, i, i + 1 :] == 0).all()


def test_dape_with_a_silent_network_is_its_base():
    """Zero the last layer of every network: DAPE-Kerple computes exactly KERPLE's attention
    (per-layer r1, r2: DAPE builds its base per layer where the base can be, as the reference)."""
    dape, base = model_for("dape"), model_for("kerple_log", layer_shared=False)
    for layer in range(2):
        with torch.no_grad():
            dape.encoding.nets[layer][1].weight.zero_()
            dape.encoding.nets[layer][1].bias.zero_()
    dape.load_state_dict(
        {**base.state_dict(), **{k: v for k, v in dape.state_dict().items() if "nets" in k}},
        strict=False,
    )
    with torch.no_grad():
        dape.encoding.base.load_state_dict(base.encoding.state_dict())
    tokens = torch.randint(4, 12, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dape(tokens)[0], base(tokens)[0], rtol=1e-5, atol=1e-5)


def reference_alibi_dape(x, a, mlp2):
    """chuanyang-Zheng/DAPE ``DAPE.py``, ``AliBi_DAPE.forward`` after the bias is built:
    x the scaled logits (b, np, sq, sk), a the bias (np, sq, sk), mlp2 its Sequential."""
    x_a_bias = torch.cat((x, torch.tile(a, (x.shape[0], 1, 1, 1))), dim=1)
    x_a_bias = torch.permute(x_a_bias, (0, 2, 3, 1))
    x_a_bias = mlp2(x_a_bias)
    x_a_bias = torch.permute(x_a_bias, (0, 3, 1, 2))
    return x + a + x_a_bias


def reference_alibi_dapev2(x, a, mlp2):
    """chuanyang-Zheng/DAPE ``megatron/model/positional_embeddings.py``,
    ``Alibi_DAPEV2.forward`` after the bias is built."""
    x_a_bias = torch.cat((x, torch.tile(a, (x.shape[0], 1, 1, 1))), dim=1)
    x_a_bias = mlp2(torch.tril(x_a_bias))
    return x + a + x_a_bias


def test_dape_equals_the_reference_forward():
    torch.manual_seed(0)
    H, T, width = 4, 7, 32
    mlp2 = nn.Sequential(nn.Linear(2 * H, width), nn.LeakyReLU(), nn.Linear(width, H))
    enc = encodings.build("dape", d_model=32, n_heads=H, max_len=16, base="alibi")
    set_network(enc, 0, mlp2[0].weight, mlp2[0].bias, mlp2[2].weight, mlp2[2].bias)
    q, k = randn(2, H, T, 8, seed=1), randn(2, H, T, 8, seed=2)
    pos = torch.arange(T)[None]
    bias = enc.bias(q, k, pos, pos)  # ALiBi's -m·(i - j) (1, H, T, T)
    x = q @ k.transpose(-1, -2) / 8**0.5
    want = reference_alibi_dape(x, bias[0], mlp2)
    visible = torch.ones(T, T, dtype=torch.bool).tril()
    want = want.masked_fill(~visible, float("-inf")).softmax(-1)
    torch.testing.assert_close(enc.attention_weights(q, k, bias, None), want, rtol=1e-5, atol=1e-6)


def test_dape_v2_equals_the_reference_forward_on_every_row_but_the_last():
    """The reference pads its convolutions with zeros at the right edge of the T×T matrix, so
    its last row alone sees padding where every other row sees convolved zeros; posenc
    extends the zeros (the same for every row, so a decoding step equals teacher forcing)."""
    torch.manual_seed(0)
    H, T, width = 4, 7, 8
    mlp2 = nn.Sequential(
        nn.Conv2d(2 * H, width, (1, 3), (1, 1), (0, 1), (1, 1)),
        nn.LeakyReLU(),
        nn.Conv2d(width, H, (1, 3), (1, 1), (0, 1), (1, 1)),
    )
    enc = encodings.build(
        "dape_v2", d_model=32, n_heads=H, max_len=16, base="alibi", mlp_width=width
    )
    with torch.no_grad():
        enc.nets[0][0].load_state_dict(mlp2[0].state_dict())
        enc.nets[0][1].load_state_dict(mlp2[2].state_dict())
    q, k = randn(2, H, T, 8, seed=3), randn(2, H, T, 8, seed=4)
    pos = torch.arange(T)[None]
    bias = enc.bias(q, k, pos, pos)
    x = q @ k.transpose(-1, -2) / 8**0.5
    visible = torch.ones(T, T, dtype=torch.bool).tril()
    want = reference_alibi_dapev2(x, bias[0], mlp2)
    want = want.masked_fill(~visible, float("-inf")).softmax(-1)
    got = enc.attention_weights(q, k, bias, None)
    torch.testing.assert_close(got[:, :, :-1], want[:, :, :-1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[:, :, -1], want[:, :, -1])


def test_dape_v2_row_of_a_query_does_not_depend_on_later_tokens_existing():
    enc = encodings.build("dape_v2", d_model=32, n_heads=4, max_len=16, base="alibi")
    q, k = randn(1, 4, 9, 8, seed=5), randn(1, 4, 9, 8, seed=6)
    pos = torch.arange(9)[None]
    full = enc.attention_weights(q, k, enc.bias(q, k, pos, pos), None)
    for t in (1, 4, 9):  # query t-1 as the last of t tokens (a decoding step)
        qs, ks, ps = q[:, :, t - 1 : t], k[:, :, :t], pos[:, :t]
        step = enc.attention_weights(qs, ks, enc.bias(qs, ks, ps[:, -1:], ps), None)
        torch.testing.assert_close(step[:, :, 0], full[:, :, t - 1, :t])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"base": "stick_breaking"}, "computes its own attention weights"),
        ({"base": "pope"}, "head's width"),
        ({"mlp_width": 0}, "mlp_width >= 1"),
    ],
)
def test_dape_refuses_bases_it_cannot_rewrite(params, message):
    with pytest.raises(ConfigError, match=message):
        encodings.build("dape", d_model=32, n_heads=4, max_len=16, **params)


# ------------------------------------------------------------------ CABLE


def test_cable_bias_is_minus_the_summed_softplus_steps_between_key_and_query():
    enc = encodings.build("cable", d_model=8, n_heads=2, max_len=16)
    with torch.no_grad():
        enc.weight.copy_(randn(1, 2, 8, seed=1))
        enc.bias_.copy_(torch.tensor([[0.5, -1.0]]))
    x = randn(2, 6, 8, seed=2)
    bias = enc.state_bias(enc.observe(x), 6)
    for b in range(2):
        for h in range(2):
            step = [F.softplus(x[b, t] @ enc.weight[0, h] + enc.bias_[0, h]) for t in range(6)]
            for i in range(6):
                for j in range(i + 1):
                    want = -sum(step[s] for s in range(j + 1, i + 1)) if i > j else 0.0
                    torch.testing.assert_close(bias[b, h, i, j], torch.as_tensor(want).float())


def test_cable_with_constant_steps_is_an_alibi_like_linear_bias():
    enc = encodings.build("cable", d_model=8, n_heads=2, max_len=16)
    with torch.no_grad():
        enc.weight.zero_()
        enc.bias_.copy_(torch.tensor([[0.0, 2.0]]))
    bias = enc.state_bias(enc.observe(randn(1, 5, 8)), 5)[0]
    dist = (torch.arange(5)[:, None] - torch.arange(5)[None]).float()
    lower = dist >= 0
    for h, c in enumerate((0.0, 2.0)):
        torch.testing.assert_close(bias[h][lower], (-F.softplus(torch.tensor(c)) * dist)[lower])


def reference_cable_scores(q, k, b):
    """axiomlab/Cable ``src/Cable.py``, ``CausalSelfAttention.forward``: q, k (B, nh, T, hs)
    and b = cumsum(-softplus(h_attn(x))) (B, nh, T) -> att_scores before the softmax."""
    B, nh, T, hs = q.shape
    C = n_embd = nh * hs
    causal_mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
    Bias = (b.unsqueeze(3) - b.unsqueeze(2)) + causal_mask
    bt = Bias.reshape(B * nh, T, T)
    qt, kt = q.reshape(B * nh, T, hs), k.reshape(B * nh, T, hs).transpose(1, 2)
    scores = torch.baddbmm(bt, qt / math.sqrt(C / n_embd), kt / math.sqrt(C / n_embd))
    return scores.reshape(B, nh, T, T)


def test_cable_with_unscaled_logits_equals_the_reference_scores():
    model = model_for("cable", n_layers=1, unscaled_logits=True)
    x = randn(2, 6, 32, seed=3)
    attn, enc = model.blocks[0].attn, model.encoding
    q, k, _ = (t.view(2, 6, 4, 8).transpose(1, 2) for t in attn.qkv(x).split(32, dim=2))
    b = torch.cumsum(-F.softplus(x @ enc.weight[0].t() + enc.bias_[0]), dim=1).permute(0, 2, 1)
    want = reference_cable_scores(q, k, b)
    visible = torch.ones(6, 6, dtype=torch.bool).tril()
    got = layer_logits(model, x)
    torch.testing.assert_close(got[..., visible], want[..., visible], rtol=1e-5, atol=1e-5)


def test_cable_keeps_the_fused_kernel(monkeypatch):
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(
        posenc.model.F,
        "scaled_dot_product_attention",
        lambda *a, **kw: calls.append(1) or fused(*a, **kw),
    )
    for name in ("cable", "pope"):
        calls.clear()
        with torch.no_grad():
            model_for(name)(torch.randint(4, 12, (2, 9)))
        assert len(calls) == 2, name  # one fused call per layer


# ------------------------------------------------------------------ Wall


def test_wall_logits_weigh_each_channel_by_its_gate_product():
    """Σ_n q_in k_jn Π_{l=j+1..i} γ_ln, the gates multiplied out, for chunks of 1, 2 and 64."""
    B, H, T, d = 1, 2, 6, 3
    q, k = (
        randn(B, H, T, d, seed=1, dtype=torch.float64),
        randn(B, H, T, d, seed=2, dtype=torch.float64),
    )
    gates = torch.sigmoid(randn(B, H, T, d, seed=3, dtype=torch.float64) * 2)
    P = gates.log().cumsum(2)
    want = torch.zeros(B, H, T, T, dtype=torch.float64)
    for h in range(H):
        for i in range(T):
            for j in range(i + 1):
                decay = torch.ones(d, dtype=torch.float64)
                for s in range(j + 1, i + 1):
                    decay = decay * gates[0, h, s]
                want[0, h, i, j] = (q[0, h, i] * k[0, h, j] * decay).sum()
    lower = torch.ones(T, T, dtype=torch.bool).tril()
    for chunk in (1, 2, 64):
        got = wall_logits(q, k, P, P, chunk)
        torch.testing.assert_close(got[..., lower], want[..., lower])


def test_wall_stays_finite_where_the_unanchored_form_overflows():
    """Gates near 0 (log decay -60 per token): exp(-P_j) alone overflows float32 within two
    tokens; the chunk-anchored form stays finite and its softmax is a distribution."""
    enc = encodings.build(
        "wall", d_model=8, n_heads=2, max_len=64, gate_init_bias=-60.0, chunk_size=1
    )
    x = randn(1, 12, 8, seed=4)
    state = enc.observe(x)
    assert not torch.isfinite(torch.exp(-state)).all()
    q, k = randn(1, 2, 12, 4, seed=5), randn(1, 2, 12, 4, seed=6)
    weights = enc.attention_weights(q, k, None, state)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 12))


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_wall_stays_finite_and_exact_when_gates_close_inside_a_chunk(chunk):
    """Gates closing inside one chunk (log decay -60 a token on some channels, ~0 on the
    others): every factor of the chunked form stays <= 1, so the logits equal the direct
    float64 sum wherever a query sees the key, and the loss's gradients are finite (an
    anchor at the chunk's first key overflowed here: exp(+60·(i - s)))."""
    B, H, T, d = 2, 2, 20, 4
    g = torch.zeros(B, H, T, d, dtype=torch.float64)
    g[..., :2] = -60.0
    g[..., 2:] = -0.01
    P = g.cumsum(2)
    q = randn(B, H, T, d, seed=11, dtype=torch.float64)
    k = randn(B, H, T, d, seed=12, dtype=torch.float64)
    diff = (P[:, :, :, None] - P[:, :, None]).clamp(max=0.0)
    want = (q[:, :, :, None] * k[:, :, None] * diff.exp()).sum(-1)
    lower = torch.ones(T, T, dtype=torch.bool).tril()
    qf, kf = q.float().requires_grad_(), k.float().requires_grad_()
    got = wall_logits(qf, kf, P.float(), P.float(), chunk)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[..., lower].double(), want[..., lower], rtol=1e-5, atol=1e-5)
    loss = got.masked_fill(~lower, float("-inf")).log_softmax(-1)[..., lower].sum()
    loss.backward()
    assert torch.isfinite(qf.grad).all() and torch.isfinite(kf.grad).all()
    # decoding: the last query alone against every key, as the KV cache calls it
    last = wall_logits(q[:, :, -1:], k, P[:, :, -1:], P, chunk)
    torch.testing.assert_close(last, want[:, :, -1:], rtol=1e-9, atol=1e-9)


def test_wall_with_open_gates_is_plain_softmax_attention():
    """Gates σ(b) -> 1 (b large): no decay, so Wall equals NoPE with the same weights."""
    wall, nope = model_for("wall", gate_init_bias=40.0), model_for("none")
    nope.load_state_dict(
        {k: v for k, v in wall.state_dict().items() if not k.startswith("encoding")}
    )
    tokens = torch.randint(4, 12, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(wall(tokens)[0], nope(tokens)[0], rtol=1e-5, atol=1e-5)


def reference_naive_wall_scores(q, k, g, scale):
    """fla ``fla/ops/wall_attn/naive.py`` ``naive_wall_attn``, up to its softmax, with
    ``chunk_global_cumsum(g, scale=RCP_LN2)`` written as a cumsum times 1/ln 2; q, k, g are
    (B, T, H, K) as fla lays them out. Returns the natural-base logits (B, H, T, T)."""
    rcp_ln2 = 1.0 / math.log(2.0)
    P = torch.cumsum(g, dim=1) * rcp_ln2
    diff = P.unsqueeze(2).float() - P.unsqueeze(1).float()
    scores = (q.unsqueeze(2).float() * k.unsqueeze(1).float() * torch.exp2(diff)).sum(-1)
    scores = scores.permute(0, 3, 1, 2)
    T = q.shape[1]
    valid = torch.arange(T)[None, :] <= torch.arange(T)[:, None]
    scores = scores.masked_fill(~valid, float("-inf")) * (scale * rcp_ln2)
    return scores / rcp_ln2  # exp2(s) = exp(s · ln 2): back to the natural base


def test_wall_equals_the_naive_reference_logits():
    model = model_for("wall", n_layers=1, gate_init_bias=1.0)
    x = randn(2, 7, 32, seed=7)
    attn, enc = model.blocks[0].attn, model.encoding
    q, k, _ = attn.qkv(x).split(32, dim=2)
    g = F.logsigmoid(x @ enc.gate_weight[0].t() + enc.gate_bias[0])
    fla = lambda t: t.view(2, 7, 4, 8)  # noqa: E731  (B, T, H, K)
    want = reference_naive_wall_scores(fla(q), fla(k), fla(g), 8**-0.5)
    pos = torch.arange(7).expand(2, 7)
    qq, kk, _, _, bias, state = attn.prepare(x, pos, enc)
    got = wall_logits(qq, kk, state, state, enc.chunk_size) / 8**0.5
    lower = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(got[..., lower], want[..., lower], rtol=1e-5, atol=1e-5)
    weights = enc.attention_weights(qq, kk, bias, state)
    torch.testing.assert_close(weights, want.softmax(-1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("per_head", {"heads": ["pope", "pope", "rope", "rope"]}, "share one width"),
        ("combo", {"parts": ["pope", "rope"]}, "list it last"),
        ("wall", {"chunk_size": 0}, "chunk_size >= 1"),
        ("randomized", {"base": "cable"}, "data-dependent|reads positions"),
    ],
)
def test_bad_uses_are_refused(name, params, message):
    with pytest.raises(ConfigError, match=message):
        encodings.build(name, d_model=32, n_heads=4, max_len=16, **params)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["encoding=per_head", "encoding.heads=[pope,pope,rope,rope]"], "share one width"),
        (["encoding=dape", "encoding.base=stick_breaking"], "own attention weights"),
        (["encoding=dape_v2", "encoding.base=learned"], "inside attention"),
        (["encoding=wall", "encoding.chunk_size=0"], "chunk_size"),
    ],
)
def test_bad_uses_from_the_cli_are_one_line_exit_2_and_write_nothing(tmp_path, args, expected):
    run_dir = tmp_path / "r"
    result = CliRunner().invoke(
        app, ["train", *TINY, *args, f"run_dir={run_dir}", f"data_dir={tmp_path / 'd'}"]
    )
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not run_dir.exists() and not (tmp_path / "d").exists()


def test_pope_on_every_head_or_after_rope_is_allowed():
    encodings.build("per_head", d_model=32, n_heads=4, max_len=16, heads=["pope"] * 4)
    encodings.build("combo", d_model=32, n_heads=4, max_len=16, parts=["rope", "pope"])


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
    if name == "pope":  # a phase bias at the clamp's edge 0 still learns; move it inside
        with torch.no_grad():
            model.encoding.phase_bias.fill_(-0.5)
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


@pytest.mark.parametrize("name", NEW)
def test_encoding_state_is_never_stored_on_the_module(name):
    """Pieces run side by side in threads: a forward pass must leave the module as it was."""
    model = model_for(name)
    before = {k: v.clone() for k, v in model.encoding.state_dict().items()}
    attrs = set(vars(model.encoding))
    with torch.no_grad():
        model(torch.randint(4, 12, (2, 9)))
    assert set(vars(model.encoding)) == attrs
    for k, v in model.encoding.state_dict().items():
        assert torch.equal(v, before[k]), k
