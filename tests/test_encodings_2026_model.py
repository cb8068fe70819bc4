"""Model-level rows of issue 39: Canon layers, DroPE, and DeltaNet as a layer mixer.

Each against its formula written out here on hand-checkable cases, against its reference
code where that runs on the CPU (fla's naive delta rule, when fla is installed; the
reference's ``nn.Conv1d`` for Canon), then the contracts the model keeps: cached decoding
equals teacher forcing (Canon's and DeltaNet's states in the KV cache), no look-ahead,
exact resume across DroPE's switch, and the refusals. Training under every batching,
thread count and bf16 is `tests/test_encoding_matrix.py`'s for the registered encodings;
the DeltaNet mixer gets its own short pass here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from posenc import encodings
from posenc.cli.app import app
from posenc.config import compose
from posenc.console import Reporter
from posenc.data import TrainStream
from posenc.encodings.canon import causal_conv
from posenc.errors import ConfigError
from posenc.mixers import delta_rule
from posenc.model import ModelConfig, Transformer
from posenc.run.execute import plan, run
from posenc.run.train import Trainer
from tests.conftest import TINY
from tests.contracts import model_for


def same_weights(dst: Transformer, src: Transformer) -> None:
    """Copy every parameter but the encoding's from ``src`` into ``dst``."""
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("encoding.")}
    missing, unexpected = dst.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("encoding.") for k in missing)


def cached_equals_whole(model: Transformer, T: int = 11, split: int = 4) -> None:
    tokens = torch.randint(4, 12, (2, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole, _ = model(tokens)
        out, cache = model(tokens[:, :split])
        outs = [out]
        for t in range(split, T):
            logits, cache = model(tokens[:, t : t + 1], cache=cache)
            outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, rtol=1e-5, atol=1e-5)


def no_look_ahead(model: Transformer, j: int = 5, T: int = 9) -> None:
    tokens = torch.randint(4, 12, (1, T), generator=torch.Generator().manual_seed(4))
    changed = tokens.clone()
    changed[0, j] = 4 + (int(tokens[0, j]) - 3) % 8
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=0)
    assert not torch.allclose(a[:, j:], b[:, j:])


# ------------------------------------------------------------------ Canon layers


def test_canon_convolution_of_a_hand_sequence():
    """y_t = Σ_i w_i x_{t-3+i}, zeros before the start: w = (.1, .2, .3, .4), x = 1, 2, 3, 4."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1)
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    y, state = causal_conv(x, w, None)
    expected = [0.4, 0.3 + 0.8, 0.2 + 0.6 + 1.2, 0.1 + 0.4 + 0.9 + 1.6]
    torch.testing.assert_close(y.flatten(), torch.tensor(expected, dtype=torch.float64))
    assert state.flatten().tolist() == [2.0, 3.0, 4.0]  # the last K-1 inputs
    # continuing from the state: x_5 = 5 sees 2, 3, 4, 5
    y5, _ = causal_conv(torch.tensor([[[5.0]]], dtype=torch.float64), w, state)
    assert y5.item() == pytest.approx(0.1 * 2 + 0.2 * 3 + 0.3 * 4 + 0.4 * 5)


@pytest.mark.parametrize("site", ["attention_input", "qkv", "mlp_input"])
def test_canon_equals_the_reference_depthwise_conv1d_plus_residual(site):
    """The reference (PhysicsLM4 ``ShortConvolution`` without its CUDA kernel): ``nn.Conv1d``
    with groups = channels, padding K-1, cut to T, added to its input (canon_residual)."""
    enc = encodings.build("canon", d_model=8, n_heads=2, max_len=32, n_layers=2)
    width = 24 if site == "qkv" else 8
    x = torch.randn(3, 7, width)
    conv = torch.nn.Conv1d(width, width, 4, groups=width, padding=3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(enc.weights[site][1][:, None, :])
        reference = x + conv(x.transpose(1, 2))[..., :7].transpose(1, 2)
    out, _ = enc.transform(x, site, layer=1)
    torch.testing.assert_close(out, reference)


def test_canon_kernels_start_as_the_references_conv1d_init():
    """nn.Conv1d's default init (Kaiming-uniform, a = √5: U(-1/√K, 1/√K)), which the reference
    model keeps: under one seed, our first kernel is the one nn.Conv1d draws."""
    torch.manual_seed(7)
    enc = encodings.build("canon", d_model=8, n_heads=2, max_len=32, n_layers=1, points="A")
    torch.manual_seed(7)
    conv = torch.nn.Conv1d(8, 8, 4, groups=8, bias=False)
    torch.testing.assert_close(enc.weights["attention_input"][0], conv.weight[:, 0, :])
    assert enc.weights["attention_input"].abs().max() <= 0.5


def test_canon_with_zero_kernels_is_nope_and_each_point_changes_the_model():
    base = model_for("none")
    canon = model_for("canon")
    same_weights(canon, base)
    tokens = torch.randint(4, 12, (2, 9))
    with torch.no_grad():
        for w in canon.encoding.weights.values():
            w.zero_()
        torch.testing.assert_close(canon(tokens)[0], base(tokens)[0], rtol=0, atol=0)
        for site, w in canon.encoding.weights.items():
            w.normal_()
            assert not torch.allclose(canon(tokens)[0], base(tokens)[0]), site
            w.zero_()


@pytest.mark.parametrize(
    ("name", "params", "mixers"),
    [
        ("canon", {}, None),
        ("canon", {"points": "B", "kernel": 2, "activation": True}, None),
        ("combo", {"parts": ["canon", "rope"]}, None),
        ("none", {}, ["delta"]),
        ("canon", {}, ["delta", "attention"]),
        ("combo", {"parts": ["rope", "fox"]}, ["attention", "delta"]),
    ],
    ids=["canon", "canon-B-k2-silu", "canon+rope", "delta", "canon-hybrid", "rope+fox-hybrid"],
)
def test_cached_decoding_equals_teacher_forcing_and_nothing_looks_ahead(name, params, mixers):
    model = model_for(name, mixers=mixers, **params)
    cached_equals_whole(model)
    no_look_ahead(model)


def test_canon_refuses_bad_points_and_kernels():
    for params in ({"points": "AD"}, {"points": ""}, {"kernel": 1}, {"kernel": 2.5}):
        with pytest.raises(ConfigError, match="encoding"):
            encodings.build("canon", d_model=8, n_heads=2, max_len=32, **params)


def test_per_layer_refuses_a_hidden_state_part():
    with pytest.raises(ConfigError, match="transform"):
        encodings.build(
            "per_layer", d_model=8, n_heads=2, max_len=32, n_layers=2, layers=["canon", "rope"]
        )


# ------------------------------------------------------------------ DeltaNet


def test_delta_rule_state_update_on_a_2x2_example():
    """S_t = (I - β k kᵀ) S_{t-1} + β k vᵀ, o_t = S_tᵀ q_t / √2, worked by hand:
    S1 = [[.5, 1], [0, 0]], S2 = [[.5, 1], [3, 4]], S3 = [[1, 1], [3, 4]]."""
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).view(1, 1, 3, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 1.0]]).view(1, 1, 3, 2)
    q = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]).view(1, 1, 3, 2)
    beta = torch.tensor([0.5, 1.0, 1.0]).view(1, 1, 3)
    o, S = delta_rule(q, k, v, beta, None)
    torch.testing.assert_close(S[0, 0], torch.tensor([[1.0, 1.0], [3.0, 4.0]]))
    expected = torch.tensor([[0.0, 0.0], [3.5, 5.0], [1.0, 1.0]]) / math.sqrt(2)
    torch.testing.assert_close(o[0, 0], expected)
    # the same from the state after the first token
    _, S1 = delta_rule(q[:, :, :1], k[:, :, :1], v[:, :, :1], beta[..., :1], None)
    torch.testing.assert_close(S1[0, 0], torch.tensor([[0.5, 1.0], [0.0, 0.0]]))
    o23, S3 = delta_rule(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], beta[..., 1:], S1)
    torch.testing.assert_close(o23, o[:, :, 1:])
    torch.testing.assert_close(S3, S)


def _fla_naive():
    """fla's ``fla/ops/delta_rule/naive.py``, loaded from the installed package by path (the
    package's own __init__ needs triton; the naive reference needs torch and einops only)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or spec.origin is None or importlib.util.find_spec("einops") is None:
        pytest.skip("fla (pip install fla-core) is not installed")
    path = Path(spec.origin).parent / "ops" / "delta_rule" / "naive.py"
    module_spec = importlib.util.spec_from_file_location("fla_delta_rule_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_delta_rule_equals_flas_naive_recurrence():
    naive = _fla_naive()
    g = torch.Generator().manual_seed(0)
    B, H, T, d = 2, 3, 9, 8
    q, k = (
        torch.nn.functional.normalize(torch.randn(B, H, T, d, generator=g), dim=-1) for _ in "qk"
    )
    v = torch.randn(B, H, T, d, generator=g)
    beta = torch.rand(B, H, T, generator=g)
    S0 = torch.randn(B, H, d, d, generator=g)
    ours, S = delta_rule(q, k, v, beta, S0)
    theirs, S_ref = naive.delta_rule_recurrence(q, k, v, beta, initial_state=S0.clone())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, S_ref, rtol=1e-5, atol=1e-5)


def test_deltanet_layer_equals_flas_layer_spelled_out_with_its_naive_recurrence():
    """fla's ``DeltaNet.forward`` with its defaults, written out with the reference's own
    pieces: three ``ShortConvolution``s (nn.Conv1d, depthwise, padding K-1, SiLU), heads,
    β = σ(b_proj x), q and k L2-normalised (``use_qk_l2norm_in_kernel``), the naive delta
    rule, a per-head RMSNorm (eps 1e-5), o_proj."""
    naive = _fla_naive()
    from posenc.mixers import DeltaNet
    from posenc.model import LayerCache

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=12, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64)
    layer = DeltaNet(cfg, 0, LayerCache)
    with torch.no_grad():
        layer.conv.normal_(std=0.3)
        layer.norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 16)
    W_q, W_k, W_v = layer.qkv.weight.split(16)
    convs = []
    for rows in layer.conv.split(16):
        conv = torch.nn.Conv1d(16, 16, 4, groups=16, padding=3, bias=False)
        conv.weight.data.copy_(rows[:, None, :])
        convs.append(conv)

    def short_conv(conv, h):  # (B, T, C), the reference's path without causal_conv1d
        return torch.nn.functional.silu(conv(h.transpose(1, 2))[..., : h.shape[1]].transpose(1, 2))

    def heads(h):  # 'b t (h d) -> b h t d'
        return h.view(2, 7, 2, 8).transpose(1, 2)

    with torch.no_grad():
        q, k, v = (
            heads(short_conv(c, x @ W.T)) for c, W in zip(convs, (W_q, W_k, W_v), strict=True)
        )
        q, k = (t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6) for t in (q, k))
        beta = torch.sigmoid(x @ layer.beta.weight.T).transpose(1, 2)
        o, _ = naive.delta_rule_recurrence(q, k, v, beta)
        o = o.transpose(1, 2)  # (B, T, H, d)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm_weight
        reference = o.reshape(2, 7, 16) @ layer.proj.weight.T
        ours, _ = layer(
            x,
            torch.arange(7).expand(2, 7),
            encodings.build("none", d_model=16, n_heads=2, max_len=64),
        )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_deltanet_is_position_free_and_hybrids_keep_the_encoding():
    """All-DeltaNet layers ignore positions even under RoPE; a hybrid's attention layer
    does not (positions spread apart: RoPE sees other distances)."""
    tokens = torch.randint(4, 12, (2, 8))
    pos = torch.arange(8).expand(2, 8)
    for mixers, moves in ((["delta"], False), (["delta", "attention"], True)):
        model = model_for("rope", mixers=mixers)
        with torch.no_grad():
            a, _ = model(tokens, pos)
            b, _ = model(tokens, pos * 3)
        assert torch.allclose(a, b, atol=1e-6) != moves, mixers


def test_deltanet_hybrid_layout_and_attention_maps():
    from posenc.attention import attention_maps
    from posenc.mixers import DeltaNet
    from posenc.model import CausalSelfAttention

    model = model_for("none", mixers=["delta", "attention"])
    assert isinstance(model.blocks[0].attn, DeltaNet)
    assert isinstance(model.blocks[1].attn, CausalSelfAttention)
    maps = attention_maps(model, torch.randint(4, 12, (1, 6)), torch.arange(6)[None])
    assert len(maps) == 1 and maps[0].shape == (4, 6, 6)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _steps(cfg, n: int = 2):
    p = plan(cfg)
    trainer = Trainer(p.model, p.cfg.train, device=p.device)
    stream = TrainStream(
        p.task, p.cfg.train.min_len, p.cfg.train.max_len, p.cfg.train.batch_size, seed=0,
        batching=p.cfg.train.batching,
    )  # fmt: skip
    try:
        losses = [trainer.step(stream.next()).loss for _ in range(n)]
    finally:
        trainer.close()
    assert all(np.isfinite(losses)), losses
    return p, trainer, losses


MATRIX = ["train.batch_size=8", "train.buckets=4", "train.min_len=1", "train.max_len=6"]


def test_deltanet_hybrid_trains_under_every_batching_thread_count_and_bf16(tiny_cfg, threads):
    hybrid = ["encoding=canon", "model.mixers=[delta,attention]", *MATRIX]
    threads(2)
    _, trainer, _ = _steps(tiny_cfg(*hybrid, "train.batching=bucketed"))
    assert trainer.workers == 2
    threads(1)
    for extra in ("train.batching=mixed", "train.batching=by_length", "train.precision=bf16"):
        _steps(tiny_cfg(*hybrid, extra))


def test_mixers_refusals(tiny_cfg):
    with pytest.raises(ConfigError, match="model.mixers has 3 entries"):
        plan(tiny_cfg("model.mixers=[delta,attention,delta]"))
    with pytest.raises(ConfigError, match="model.mixers"):
        plan(tiny_cfg("model.mixers=[mamba]"))
    for encoding in ("rope", "randomized"):  # randomized: its base (rope) is judged
        with pytest.raises(ConfigError, match="no attention layer.*would never act"):
            plan(tiny_cfg(f"encoding={encoding}", "model.mixers=[delta]"))
    plan(tiny_cfg("encoding=canon", "model.mixers=[delta]"))  # acts outside attention: kept
    plan(tiny_cfg("encoding=combo", "encoding.parts=[canon,sinusoidal]", "model.mixers=[delta]"))
    plan(tiny_cfg("encoding=rope", "model.mixers=[delta,attention]"))


# ------------------------------------------------------------------ DroPE


def test_drope_is_rope_before_the_drop_and_nope_after():
    drope = model_for("drope", drop_at=3)
    rope, nope = model_for("rope"), model_for("none")
    for other in (rope, nope):
        same_weights(other, drope)
    tokens, pos = torch.randint(4, 12, (2, 9)), torch.arange(9).expand(2, 9)
    with torch.no_grad():
        for step, reference in ((0, rope), (2, rope), (3, nope), (10, nope)):
            drope.encoding.on_step(step)
            torch.testing.assert_close(drope(tokens, pos)[0], reference(tokens, pos)[0])


def test_drope_softmax_scale_replaces_one_over_root_d_after_the_drop():
    base = model_for("drope", drop_at=1)
    scaled = model_for("drope", drop_at=1, softmax_scale=1 / math.sqrt(8))  # d_head = 8
    same_weights(scaled, base)
    tokens = torch.randint(4, 12, (2, 9))
    base.encoding.on_step(1), scaled.encoding.on_step(1)
    with torch.no_grad():
        torch.testing.assert_close(scaled(tokens)[0], base(tokens)[0])
        scaled.encoding.softmax_scale = 1.0
        assert not torch.allclose(scaled(tokens)[0], base(tokens)[0])


def test_drope_fraction_resolves_against_train_steps_and_refuses_a_drop_past_the_end():
    enc = encodings.build("drope", d_model=8, n_heads=2, max_len=32, drop_at=0.75)
    enc.bind_steps(20)
    assert enc.drop_step == 15
    for drop_at, steps in ((20, 20), (0.99, 20)):
        with pytest.raises(ConfigError, match="drop_at"):
            encodings.build("drope", d_model=8, n_heads=2, max_len=32, drop_at=drop_at).bind_steps(
                steps
            )
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="drop_at"):
            encodings.build("drope", d_model=8, n_heads=2, max_len=32, drop_at=bad)


def test_drope_drop_past_the_end_is_one_line_from_the_cli(tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", *TINY, "encoding=drope", "encoding.drop_at=50", f"runs_root={tmp_path}"],
    )
    assert result.exit_code == 2, result.output
    assert "encoding.drop_at=50" in result.output
    assert "Traceback" not in result.output
    assert not any(tmp_path.rglob("config.yaml"))


def test_drope_switches_inside_training_and_resumes_exactly_across_it(tiny_cfg):
    cfg = tiny_cfg("encoding=drope", "encoding.drop_at=3", "train.steps=6")

    def fresh():
        p = plan(cfg)
        trainer = Trainer(p.model, p.cfg.train, device=p.device)
        stream = TrainStream(p.task, 1, p.cfg.train.max_len, 8, seed=0, batching="mixed")
        return p.model, trainer, stream

    model, trainer, stream = fresh()
    seen = []
    for _ in range(5):
        trainer.step(stream.next())
        seen.append(model.encoding.dropped)
    assert seen == [False, False, False, True, True]
    whole = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}

    model, trainer, stream = fresh()  # 2 steps, then a checkpoint's worth of state
    batches = [stream.next() for _ in range(5)]
    for b in batches[:2]:
        trainer.step(b)
    saved = (model.state_dict(), trainer.state_dict())
    model, trainer, _ = fresh()
    model.load_state_dict(saved[0])
    trainer.load_state_dict(saved[1])
    for b in batches[2:]:
        trainer.step(b)
    for key, value in model.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(value, whole[key], rtol=0, atol=0, msg=key)
    # evaluation, e.g. posenc eval: a model built afresh takes the post-drop state with the weights
    evaluated, _, _ = fresh()
    assert not evaluated.encoding.dropped
    evaluated.load_state_dict(model.state_dict())
    assert evaluated.encoding.dropped


class _Interrupt(Reporter):
    def __init__(self, at: int) -> None:
        self.at = at

    def step(self, step, loss, steps_per_sec):
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_drope_run_interrupted_before_the_drop_resumes_to_the_same_numbers(tiny_cfg, tmp_path):
    """A real run (checkpoint, Ctrl-C, the same command again) across the switch: the same
    final loss and evaluation as the uninterrupted run, and the checkpoint is post-drop."""
    overrides = ("encoding=drope", "encoding.drop_at=7")  # TINY trains 12 steps
    reference = run(tiny_cfg(*overrides, f"run_dir={tmp_path / 'ref'}"))
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*overrides), _Interrupt(at=5))
    resumed = run(tiny_cfg(*overrides))
    assert "resumed from step 5" in (tmp_path / "run" / "train.log").read_text()
    assert resumed["train"]["final_loss"] == reference["train"]["final_loss"]
    assert resumed["per_length"] == reference["per_length"]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["model"]["encoding._extra_state"] == {"dropped": True}


def test_combo_chains_transform_one_state_per_part():
    enc = encodings.build("combo", d_model=8, n_heads=2, max_len=32, parts=["canon", "rope"])
    x = torch.randn(1, 5, 8)
    out, state = enc.transform(x, "attention_input")
    alone, own = enc.parts[0].transform(x, "attention_input")
    torch.testing.assert_close(out, alone)
    assert state[1] is None and torch.equal(state[0], own)
    assert compose(["encoding=combo_canon_rope"]).encoding.parts == ["canon", "rope"]
