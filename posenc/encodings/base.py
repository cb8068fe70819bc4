"""The positional-encoding interface: three hooks, explicit positions.

A positional encoding can touch a decoder in exactly three places, and every scheme is
some combination of them (docs/design-positions.md says how the interface grew beyond them):

- ``embed(x, pos, tokens=None)``: the token embeddings ``x`` (B, T, D) before layer 0.
- ``rotate(q, k, pos_q, pos_k, layer=0)``: queries (B, H, Tq, Dh) and keys (B, H, Tk, Dh)
  in every attention layer. A rotation must act on each query and each key independently,
  given its own position only, so that keys can be cached after rotation.
- ``bias(q, k, pos_q, pos_k, layer=0)``: a float tensor broadcastable to (B, H, Tq, Tk),
  added to the attention logits *after* the 1/sqrt(d_head) scaling, or ``None``.

Positions are explicit integer tensors of shape (B, T), never implied by ``arange(T)``:
the same mechanism serves KV-cache decoding (an offset), randomized training positions
and position interpolation at evaluation. ``positions(...)`` is where an encoding chooses
them; the default is ``0, 1, ..., T-1``.

Positions derived from the tokens (docs/design-positions.md). Some schemes place a token
by what it *is*: Abacus (a digit's place within its own number) and position coupling
(digits of equal significance share an id). ``token_positions(tokens, pos)`` maps the
tokens seen so far (B, T) and their drawn positions (B, T) to the positions the three hooks
receive; the default returns ``pos`` unchanged. The model calls it on the whole token
history, so under teacher forcing, KV-cache decoding (the history is kept in the cache)
and explicit positions alike a token's positions follow from the tokens up to it and the
prompt, never from a target. Random offsets are drawn once per sequence by ``positions``
(as ``0..T-1`` plus the offset), so a decoding step cannot redraw them. Which tokens are
digits comes from the task, through ``bind_task(layout)`` (a `DigitLayout`), called once
before training; the default layout is decimal addition as `posenc.tasks.addition` writes it.

Attention-level and data-dependent schemes (docs/design-positions.md, "Inside attention").
Four more hooks, all optional, let an encoding act inside attention rather than beside it:

- ``observe(x, past, layer=0)``: reads the layer's input hidden states ``x`` (B, T, D) of the
  new tokens and returns a per-token state for the whole history (``past`` is what it
  returned for the earlier tokens, kept in the KV cache; None at the start). FoX's
  cumulative log forget gates, PaTH's Householder vectors.
- ``state_bias(state, t_q, layer=0)``: a logit bias (B, H, Tq, Tk) computed from that
  state, added like ``bias`` (FoX). A plain bias: the fused attention path stays.
- ``query_scale(t_q, t_k, layer=0)``: a factor (1, H, Tq, 1) on each query, so on its
  content logits q·k (SSMax's s_h·log n). The fused path stays.
- ``attention_weights(q, k, bias, state, layer=0)``: the encoding's own attention weights
  (B, H, Tq, Tk), zero where a key is not visible, replacing softmax (stick-breaking,
  PaTH); None (the default) means softmax, computed by the fused kernel.

Model-level schemes (docs/design-positions.md, "Beyond attention"). Three more optional hooks:

- ``transform(x, site, past, layer=0)``: changes the hidden states at a named ``site`` of a
  block (`HIDDEN_SITES`: the attention's input, its fused q, k, v projection, the MLP's
  input) and returns them with a state for the whole history (``past`` is the state it
  returned for the earlier tokens, kept in the KV cache). Canon layers.
- ``on_step(step)``: the trainer tells every encoding module the 0-based optimizer step it
  is about to take, outside any forward pass (DroPE's switch). Whatever the schedule
  decides must live in the module's state dict, so that a resumed or re-evaluated run
  sees it.
- ``bind_steps(steps)``: the run's number of optimizer steps, once before training (a
  schedule that would not fit raises a `ConfigError`).

Position features, computed once per forward pass (optional). What ``rotate`` and ``bias``
compute from positions alone (RoPE's cos/sin tables, ALiBi's and T5's biases) is the same in
every layer, so an encoding may compute it once: ``features(pos_q, pos_k)`` returns any
object (default None), which the model computes once per forward pass (once per decoding
step with the KV cache: ``pos_q`` the new tokens' positions, ``pos_k`` the whole history's)
and hands to every layer's hooks as the keyword ``features=``. It passes the keyword only to
a hook whose signature accepts it (``rotate_takes_features`` and ``bias_takes_features``,
worked out per class), so encodings without the hook, and subclasses that override a hook
without the keyword, keep working and recompute. A hook given ``features=None`` computes
everything itself, and must give bit for bit what it gives with the features
(tests/test_features_cache.py checks every registered encoding). As in x-transformers
(lucidrains), where the rotary frequencies and the relative bias are computed once per
forward pass and passed to every layer.

The base class is NoPE (Kazemnejad et al. 2023, "The Impact of Positional Encoding on
Length Generalization in Transformers"): every hook is the identity, so a causal decoder
has to infer order from the causal mask alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from posenc.tokens import FIRST_SYMBOL, SEP

# Where a block offers its hidden states to ``transform``: the attention's input (after the
# first LayerNorm), its fused q, k, v projection (B, T, 3·D: queries, keys, values side by
# side, before the heads are split and rotated), and the MLP's input (after the second
# LayerNorm). Allen-Zhu 2025's Canon points A, B and C.
HIDDEN_SITES = ("attention_input", "qkv", "mlp_input")


@dataclass(frozen=True)
class DigitLayout:
    """How a task writes numbers, in token ids: what a token-derived encoding needs to know.

    ``digits``: token ids of the digit symbols (empty: the task writes no numbers).
    ``interleaved``: another token sits between every two digits of a number (index hints).
    ``prompt_lsb_first`` / ``answer_lsb_first``: whether numbers before / after the
    separator ``sep`` are written least-significant digit first.
    """

    digits: tuple[int, ...]
    prompt_lsb_first: bool = True
    answer_lsb_first: bool = True
    sep: int = SEP
    interleaved: bool = False  # digits of a number separated by other tokens (index hints)
    task: str = "addition"
    valid_tasks: tuple[str, ...] = ("addition",)  # tasks that write numbers (for errors)


# Decimal addition with both operands and the sum least-significant digit first: the
# default of `posenc.tasks.addition` (digits 0-9 are its symbols 0-9).
DEFAULT_LAYOUT = DigitLayout(digits=tuple(range(FIRST_SYMBOL, FIRST_SYMBOL + 10)))


class PositionalEncoding(nn.Module):
    """NoPE, and the base class of every encoding: override only the hooks you need.

    ``max_positions`` is the largest number of distinct positions the encoding can
    represent (``None``: unbounded); the model checks it against the longest sequence.
    """

    max_positions: int | None = None
    # Values for parameters a saved config may lack, at those that reproduce the runs saved
    # without them: a config without the key builds the encoding with this value
    # (`registry.from_config`). posenc's own encodings list theirs in
    # `posenc.runfolder.LEGACY_DEFAULTS`, which run identity also reads; this is a plugin's.
    legacy_params: dict = {}
    # The token-embedding init (``model.embed_init``) that ``model.embed_init=auto`` gives
    # this encoding: the scale posenc's experiments found it at its published behaviour
    # (docs/results.md, "Token-embedding scale and the default comparison").
    token_scale: str = "scaled"
    # True when ``token_positions`` derives positions from the tokens (Abacus, coupling).
    places_by_token: bool = False
    # True when ``observe`` reads the hidden states (FoX, PaTH): such an encoding's position
    # signal comes from the content, so randomized positions would not reach it.
    data_dependent: bool = False
    # True when ``rotate`` returns queries and keys wider than the head (PoPE: 2·d_head); the
    # values keep d_head. Composites refuse to mix such a part with parts of the plain width.
    widens_heads: bool = False
    # Why this encoding's forward pass cannot trace as one graph under torch.compile (a
    # graph break per layer undoes the fusion compile is for), or None: it can. Under
    # ``train.compile=auto`` an encoding that gives a reason trains eagerly, with a one-line
    # note saying why (`posenc.run.spec.resolve_compile`); tests/test_compile.py checks that
    # every registered encoding without a reason traces as one graph and every reason is real.
    graph_break: str | None = None

    # Whether ``rotate`` / ``bias`` accept the ``features=`` keyword: set for every subclass
    # from its own hooks' signatures (`__init_subclass__`), so the model passes the features
    # only to hooks that read them.
    rotate_takes_features: bool = False
    bias_takes_features: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.rotate_takes_features = _takes_features(cls.rotate)
        cls.bias_takes_features = _takes_features(cls.bias)

    @classmethod
    def graph_break_for(cls, params: dict[str, Any]) -> str | None:
        """Why the encoding that ``params`` (its config's) configure cannot trace as one graph,
        or None: `graph_break`. A composite asks its parts (`registry.parts_graph_break`)."""
        return cls.graph_break

    def __init__(self, *, d_model: int, n_heads: int, max_len: int, n_layers: int = 1) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.max_len = max_len
        self.n_layers = n_layers

    def positions(
        self,
        batch: int,
        length: int,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Positions for ``batch`` sequences of ``length`` tokens: (B, T) int64."""
        return torch.arange(length, device=device).expand(batch, length)

    def token_positions(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """The positions the hooks receive, from the tokens so far (B, T) and their drawn
        positions ``pos`` (B, T). Default: ``pos`` itself (a token is placed by where it is)."""
        return pos

    def bind_task(self, layout: DigitLayout) -> None:
        """Learn how the task writes numbers; raise a `ConfigError` if the encoding cannot
        serve it. Default: nothing to learn."""

    def match_token_scale(self, std: float) -> None:
        """Learn the std of the token embeddings as they enter the residual stream (1 with
        ``model.embed_init=scaled``, 0.02 with ``gpt``). The model calls it once on every
        encoding module, parts of composite encodings included; an encoding whose added
        vectors have no amplitude of their own sizes them by it. Default: nothing to learn."""

    def constrain_(self) -> None:
        """Project parameters back into their valid range, in place. The trainer calls it on
        every encoding module after each optimizer step, so that the forward pass never
        writes to a parameter (pieces of a batch may run forward concurrently). Default:
        nothing to project."""

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Token embeddings (B, T, D) -> embeddings with position information."""
        return x

    def rotate(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Queries (B, H, Tq, Dh) and keys (B, H, Tk, Dh) -> rotated queries and keys (of one
        width wider than Dh when ``widens_heads``: PoPE's 2·Dh; the values keep Dh)."""
        return q, k

    def bias(
        self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor, *, layer: int = 0
    ) -> Tensor | None:
        """Additive attention-logit bias broadcastable to (B, H, Tq, Tk), or None."""
        return None

    def features(self, pos_q: Tensor, pos_k: Tensor) -> Any:
        """What ``rotate`` and ``bias`` compute from the positions alone, for queries at
        ``pos_q`` (B, Tq) and keys at ``pos_k`` (B, Tk), computed once per forward pass and
        passed to every layer's hooks as ``features=`` (module docstring). Default: None."""
        return None

    def observe(self, x: Tensor, past: Any = None, *, layer: int = 0) -> Any:
        """Layer input (B, T, D) of the new tokens and the state of the earlier ones (None at
        the start) -> the state of the whole history, kept in the KV cache. Default: None.
        Computed afresh on every call and returned, never stored on the module."""
        return None

    def state_bias(self, state: Any, t_q: int, *, layer: int = 0) -> Tensor | None:
        """A logit bias (B, H, Tq, Tk) from ``observe``'s state (the last Tq of Tk tokens are
        the queries), added after the 1/sqrt(d_head) scaling like ``bias``; or None."""
        return None

    def query_scale(self, t_q: int, t_k: int, *, layer: int = 0) -> Tensor | None:
        """A factor broadcastable to (B, H, Tq, 1) multiplying each query (the last Tq of Tk
        tokens) after rotation and after ``bias``; or None."""
        return None

    def attention_weights(
        self, q: Tensor, k: Tensor, bias: Tensor | None, state: Any, *, layer: int = 0
    ) -> Tensor | None:
        """Own attention weights (B, H, Tq, Tk) for queries (B, H, Tq, Dh) and keys
        (B, H, Tk, Dh) (rotated and scaled), the summed logit bias (or None) and
        ``observe``'s state; zero where key j is not visible to query i. None: softmax of
        q·k/sqrt(d_head) + bias over the causal past, on the fused kernel."""
        return None

    def transform(
        self, x: Tensor, site: str, past: Any = None, *, layer: int = 0
    ) -> tuple[Tensor, Any]:
        """Hidden states ``x`` (B, T, C) of the new tokens at ``site`` (`HIDDEN_SITES`) and the
        state of the earlier ones (None at the start) -> changed hidden states (B, T, C) and
        the state of the whole history, kept in the KV cache. Output t may depend on inputs
        <= t only. Default: ``x`` unchanged, no state."""
        return x, None

    def on_step(self, step: int) -> None:
        """The 0-based optimizer step about to be taken, told by the trainer outside any
        forward pass. Default: nothing changes with the step."""

    def bind_steps(self, steps: int) -> None:
        """The run's number of optimizer steps, before training; raise a `ConfigError` if a
        schedule does not fit it. Default: nothing to check."""

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, max_len={self.max_len}"


def _takes_features(hook: Callable) -> bool:
    params = inspect.signature(hook).parameters.values()
    return any(p.name == "features" or p.kind is p.VAR_KEYWORD for p in params)


def feature_kwargs(encoding: PositionalEncoding, hook: str, features: Any) -> dict[str, Any]:
    """``{"features": features}`` for a call of ``encoding``'s ``hook`` ("rotate" or "bias")
    when there are features and that hook reads them, else ``{}`` (the hook recomputes)."""
    if features is None or not getattr(encoding, f"{hook}_takes_features"):
        return {}
    return {"features": features}


class Memo:
    """A position feature computed at most once per key: ``feature(*key)`` calls
    ``make(*key)`` the first time and returns the same value afterwards. The key is what the
    feature still depends on besides the positions: the queries' dtype (a hook casts its
    position-only tensors to it, bf16 under autocast, so the feature is made in that dtype as
    the hook would make it), and for per-layer parameters the layer."""

    def __init__(self, make: Callable[..., Any]) -> None:
        self.make = make
        self.made: dict[tuple, Any] = {}

    def __call__(self, *key: Any) -> Any:
        if key not in self.made:
            self.made[key] = self.make(*key)
        return self.made[key]


class PositionBias(PositionalEncoding):
    """An encoding whose logit bias depends on the positions alone (ALiBi, T5, Hard-ALiBi):
    a subclass defines ``position_bias(pos_q, pos_k, dtype)`` (B|1, H, Tq, Tk), made once per
    forward pass in the queries' dtype (`features`) and shared by every layer (`bias`)."""

    def position_bias(self, pos_q: Tensor, pos_k: Tensor, dtype: torch.dtype) -> Tensor:
        raise NotImplementedError

    def features(self, pos_q: Tensor, pos_k: Tensor) -> Memo:
        return Memo(lambda dtype: self.position_bias(pos_q, pos_k, dtype))

    def bias(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: Memo | None = None,
    ) -> Tensor:
        if features is not None:
            return features(q.dtype)
        return self.position_bias(pos_q, pos_k, q.dtype)


def relative_distance(pos_q: Tensor, pos_k: Tensor) -> Tensor:
    """(B, Tq), (B, Tk) -> (B, 1, Tq, Tk) with entry i - j (query minus key position)."""
    return (pos_q[:, None, :, None] - pos_k[:, None, None, :]).long()


def visible_keys(t_q: int, t_k: int, device: torch.device | str) -> Tensor:
    """(Tq, Tk) bool, True where query i (the last Tq of Tk tokens, the KV cache's
    convention) may see key j <= i."""
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    return torch.arange(t_k, device=device)[None, :] <= i


def softmax_weights(q: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q·kᵀ/sqrt(d_head) + bias) over the causal past: (B, H, Tq, Tk), the weights
    the fused kernel computes, written out (attention maps, per-head mixtures)."""
    logits = q.float() @ k.float().transpose(-2, -1) / q.shape[-1] ** 0.5
    if bias is not None:
        logits = logits + bias.float()
    visible = visible_keys(q.shape[2], k.shape[2], q.device)
    return logits.masked_fill(~visible, float("-inf")).softmax(-1)


def full_precision(x: Tensor):
    """A context in which autocast is off on ``x``'s device: the data-dependent and custom
    attention computations (gates, Householder products, stick-breaking) stay in float32
    under ``train.precision=bf16``, as their reference code computes them."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def shared_rows(pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor]:
    """Keep one row of positions when every row of the batch has the same ones.

    Positions are usually ``arange`` expanded over the batch (randomized positions are
    shared by the batch too), so a position-only bias can be computed once and broadcast.
    """
    if torch.compiler.is_compiling():  # a data-dependent branch would break the graph
        return pos_q, pos_k
    if pos_q.shape[0] > 1 and bool((pos_q == pos_q[:1]).all()) and bool((pos_k == pos_k[:1]).all()):
        return pos_q[:1], pos_k[:1]
    return pos_q, pos_k
