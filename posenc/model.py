"""A small decoder-only, pre-LayerNorm transformer that knows nothing about any encoding.

The model calls the hooks of whatever `PositionalEncoding` it is given (embed, rotate,
bias, and inside attention observe, state_bias, query_scale, attention_weights; see
`posenc.encodings.base`) and never asks which one it has. Positions are
an explicit (B, T) tensor; a KV cache keeps rotated keys and their positions so greedy
decoding costs one token's forward pass per step; it also keeps each layer's encoding
state (``observe``), so cached decoding equals teacher forcing. The hooks see
``encoding.token_positions(tokens, pos)`` of the whole token history (the identity for
encodings that place a token by where it is), so the cache also keeps the tokens and the
drawn positions seen so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc import schema
from posenc.encodings.base import PositionalEncoding, feature_kwargs

# The std of GPT-2's token embeddings (and of every other weight matrix it initialises).
GPT_STD = 0.02


@dataclass(kw_only=True)
class ModelConfig(schema.Model):
    """The ``model.*`` section (`posenc.schema.Model`: sizes, ``embed_init``, ``bias``,
    ``tie_embeddings``) and the vocabulary size the task gives."""

    vocab_size: int

    @classmethod
    def from_config(cls, m, vocab_size: int) -> ModelConfig:
        """The ``model.*`` section of a posenc config, for a vocabulary of ``vocab_size``."""
        return cls(vocab_size=vocab_size, **{f.name: m[f.name] for f in fields(schema.Model)})


@dataclass
class LayerCache:
    """Keys (after rotation), values and key positions seen so far by one layer."""

    k: Tensor  # (B, H, Tk, Dh)
    v: Tensor  # (B, H, Tk, Dh)
    pos: Tensor  # (B, Tk): key positions as the hooks see them
    tokens: Tensor | None = None  # (B, Tk): the tokens seen so far
    drawn: Tensor | None = None  # (B, Tk): their positions before encoding.token_positions
    state: Any = None  # the encoding's per-token state of this layer (encoding.observe)
    hidden: dict | None = None  # encoding.transform's state per site of this layer


def causal_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """(Tq, Tk) bool, True where query i (the last Tq of Tk positions) may see key j."""
    offset = t_k - t_q
    i = torch.arange(t_q, device=device)[:, None] + offset
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i


def attend(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
    """``scaled_dot_product_attention``, in float32 on a CPU under bf16 autocast: there the
    CPU flash kernel's bf16 backward cost 55 ms of a 315 ms step, against a few ms in
    float32 (the profile in docs/performance.md), more than casting q, k, v costs."""
    if q.device.type == "cpu" and q.dtype != torch.float32 and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            mask = kwargs.pop("attn_mask", None)
            if mask is not None and mask.dtype != torch.bool:
                mask = mask.float()
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, **kwargs
            )
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one scaled_dot_product_attention call."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def prepare(
        self,
        x: Tensor,
        pos: Tensor,
        encoding: PositionalEncoding,
        cache: LayerCache | None = None,
        carry: dict | None = None,
        features: Any = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Any]:
        """The attention's inputs: queries (scaled), keys and values of the whole history
        (B, nh, T|Tk, hs), key positions (B, Tk), the summed logit bias (B|1, nh, T, Tk) or
        None, and the encoding's state. ``carry`` receives ``encoding.transform``'s state of
        the ``qkv`` site; ``features``: the encoding's position features of this forward pass
        (`PositionalEncoding.features`), None to let the hooks compute them. Shared with
        `posenc.attention` (attention maps)."""
        B, T, D = x.shape
        past = cache.hidden.get("qkv") if cache is not None and cache.hidden else None
        qkv, qkv_state = encoding.transform(self.qkv(x), "qkv", past, layer=self.layer)
        if carry is not None:
            carry["qkv"] = qkv_state
        q, k, v = qkv.split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # (B, nh, T, hs) each
        state = encoding.observe(x, cache.state if cache is not None else None, layer=self.layer)
        q, k = encoding.rotate(
            q, k, pos, pos, layer=self.layer, **feature_kwargs(encoding, "rotate", features)
        )
        if cache is not None:  # keys were cached after rotation, so only the new ones rotate
            k = torch.cat((cache.k, k), dim=2)
            v = torch.cat((cache.v, v), dim=2)
            pos_k = torch.cat((cache.pos, pos), dim=1)
        else:
            pos_k = pos
        bias = encoding.bias(  # (B|1, nh, T, Tk) or None
            q, k, pos, pos_k, layer=self.layer, **feature_kwargs(encoding, "bias", features)
        )
        from_state = encoding.state_bias(state, T, layer=self.layer)
        if from_state is not None:
            bias = from_state if bias is None else bias + from_state
        scale = encoding.query_scale(T, k.shape[2], layer=self.layer)  # (1, nh, T, 1) or None
        if scale is not None:
            q = q * scale.to(q.dtype)
        return q, k, v, pos_k, bias, state

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        encoding: PositionalEncoding,
        cache: LayerCache | None = None,
        carry: dict | None = None,
        features: Any = None,
    ) -> tuple[Tensor, LayerCache]:
        B, T, D = x.shape
        q, k, v, pos_k, bias, state = self.prepare(
            x, pos, encoding, cache, carry=carry, features=features
        )
        t_k = k.shape[2]
        p = self.dropout if self.training else 0.0
        weights = encoding.attention_weights(q, k, bias, state, layer=self.layer)
        if weights is not None:  # the encoding's own attention (B, nh, T, Tk)
            y = F.dropout(weights, p, self.training).to(v.dtype) @ v
        elif bias is None and T == t_k:
            y = attend(q, k, v, is_causal=True, dropout_p=p)
        else:
            visible = causal_mask(T, t_k, x.device)
            if bias is None:
                mask = visible
            else:
                mask = bias.to(q.dtype).masked_fill(~visible, float("-inf"))
            y = attend(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return F.dropout(self.proj(y), p, self.training), LayerCache(k, v, pos_k, state=state)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


def mixer_of(cfg: ModelConfig, layer: int) -> str:
    """The sequence mixer of ``layer``: ``model.mixers`` (one entry for every layer, or one
    per layer), attention when unset."""
    if not cfg.mixers:
        return "attention"
    return cfg.mixers[0] if len(cfg.mixers) == 1 else cfg.mixers[layer]


class Block(nn.Module):
    """x + mixer(transform(ln1(x))), then x + mlp(transform(ln2(x))): the mixer is attention
    or a recurrent layer (`posenc.mixers`); ``encoding.transform`` may change the hidden
    states at each site (the identity for every scheme but Canon layers)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.ln1 = nn.LayerNorm(cfg.d_model)
        if mixer_of(cfg, layer) == "attention":
            self.attn = CausalSelfAttention(cfg, layer)
        else:
            from posenc.mixers import build_mixer

            self.attn = build_mixer(mixer_of(cfg, layer), cfg, layer, LayerCache)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        encoding: PositionalEncoding,
        cache: LayerCache | None,
        features: Any = None,
    ) -> tuple[Tensor, LayerCache]:
        past = cache.hidden if cache is not None and cache.hidden else {}
        carry: dict = {}
        h, carry["attention_input"] = encoding.transform(
            self.ln1(x), "attention_input", past.get("attention_input"), layer=self.layer
        )
        a, new_cache = self.attn(h, pos, encoding, cache, carry=carry, features=features)
        x = x + a
        h, carry["mlp_input"] = encoding.transform(
            self.ln2(x), "mlp_input", past.get("mlp_input"), layer=self.layer
        )
        x = x + self.mlp(h)
        new_cache.hidden = carry
        return x, new_cache


class Transformer(nn.Module):
    """Token embedding -> encoding.embed -> blocks -> final LayerNorm -> LM head.

    Token embeddings are initialised N(0, 1/d_model) and multiplied by sqrt(d_model), as
    in Vaswani et al. 2017, so they enter the residual stream with unit variance and an
    absolute encoding of comparable size does not swamp them (``embed_init="scaled"``);
    ``embed_init="gpt"`` draws them N(0, 0.02) and leaves them unscaled, as GPT-2 and
    nanoGPT do; ``embed_init="auto"`` takes the encoding's ``token_scale``.
    ``tie_embeddings`` makes the LM head reuse the token-embedding matrix.
    """

    def __init__(self, cfg: ModelConfig, encoding: PositionalEncoding) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoding = encoding
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # Position features once per forward pass, shared by the layers (False: every layer's
        # hooks recompute them; the same numbers, tests/test_features_cache.py).
        self.position_features = True
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        # auto (resolved when a config is composed) may reach here from code that builds a
        # ModelConfig itself
        self.embed_init = schema.resolved_embed_init(cfg.embed_init, encoding.token_scale)
        self.embed_scale = math.sqrt(cfg.d_model) if self.embed_init == "scaled" else 1.0
        self._init_weights()
        token_std = 1.0 if self.embed_init == "scaled" else GPT_STD
        for module in encoding.modules():
            if isinstance(module, PositionalEncoding):
                module.match_token_scale(token_std)

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.startswith("encoding."):
                continue  # each encoding initialises its own parameters
            if name == "tok_emb.weight":  # also the head's, when tied
                std = self.cfg.d_model**-0.5 if self.embed_init == "scaled" else GPT_STD
                nn.init.normal_(p, std=std)
            elif p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        for block in self.blocks:  # GPT-2's scaled init of residual projections
            for p in (block.attn.proj.weight, block.mlp.down.weight):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.cfg.n_layers))

    def forward(
        self,
        tokens: Tensor,
        pos: Tensor | None = None,
        cache: list[LayerCache] | None = None,
    ) -> tuple[Tensor, list[LayerCache]]:
        """tokens (B, T), positions (B, T) -> logits (B, T, V) and the updated cache.

        Without ``pos`` the encoding chooses positions (offset by the cache length). The
        hooks receive ``encoding.token_positions`` of the whole history, of which the last
        T: a token's position may depend on the tokens before it, never on later ones.
        """
        B, T = tokens.shape
        past = cache[0].pos.shape[1] if cache else 0
        if pos is None:
            pos = self.encoding.positions(B, past + T, device=tokens.device)[:, past:]
        if cache:  # (B, past + T) each
            history = torch.cat((cache[0].tokens, tokens), dim=1)
            drawn = torch.cat((cache[0].drawn, pos), dim=1)
        else:
            history, drawn = tokens, pos
        hook_pos = self.encoding.token_positions(history, drawn)[:, past:]  # (B, T, ...)
        x = self.tok_emb(tokens) * self.embed_scale  # (B, T, D)
        x = self.drop(self.encoding.embed(x, hook_pos, tokens))
        features = None
        enc = self.encoding
        # what every layer's hooks compute from positions alone, where a hook reads it
        if self.position_features and (enc.rotate_takes_features or enc.bias_takes_features):
            pos_k = torch.cat((cache[0].pos, hook_pos), dim=1) if cache else hook_pos
            features = self.encoding.features(hook_pos, pos_k)
        new_cache = []
        for layer, block in enumerate(self.blocks):
            layer_cache = cache[layer] if cache else None
            x, c = block(x, hook_pos, self.encoding, layer_cache, features=features)
            c.tokens, c.drawn = history, drawn
            new_cache.append(c)
        return self.head(self.ln_f(x)), new_cache

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        n_new: int,
        *,
        pos: Tensor | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Greedy decoding: prompt (B, Tp) -> the next ``n_new`` tokens (B, n_new).

        ``pos`` (B, Tp + n_new) fixes the positions of the whole sequence up front (the
        encoding draws them otherwise), so randomized and interpolated positions decode
        exactly as they would be scored by teacher forcing. Positions derived from tokens
        follow from the tokens generated so far (the model recomputes them every step).
        """
        B, Tp = prompt.shape
        if pos is None:
            pos = self.encoding.positions(B, Tp + n_new, device=prompt.device)
        out = []
        if use_cache:
            logits, cache = self(prompt, pos[:, :Tp])
            for t in range(n_new):
                nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                out.append(nxt)
                if t + 1 < n_new:
                    logits, cache = self(nxt, pos[:, Tp + t : Tp + t + 1], cache)
        else:
            seq = prompt
            for t in range(n_new):
                logits, _ = self(seq, pos[:, : Tp + t])
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
                seq = torch.cat((seq, nxt), dim=1)
        return torch.cat(out, dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
