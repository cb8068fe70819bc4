"""Rotary encodings: queries and keys rotated by position-dependent angles (``rotate`` hook)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from posenc.encodings.base import Memo, PositionalEncoding, shared_rows
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def rotary_tables(angle: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Angles (..., T, r/2) -> cos and sin (..., T, r), each half repeated, in ``dtype``."""
    cos, sin = angle.cos(), angle.sin()
    return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((sin, sin), dim=-1).to(dtype)


def rotate_with(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first r dims of ``x`` (..., T, Dh) by tables (..., T, r) of `rotary_tables`.

    Dimension i is paired with i + r/2 (half-split layout); the remaining dims pass through.
    """
    r = cos.shape[-1]
    x1, x2, x_pass = x[..., : r // 2], x[..., r // 2 : r], x[..., r:]
    c, s = cos[..., : r // 2], sin[..., : r // 2]
    # x_rot·cos + (-x2, x1)·sin (GPT-NeoX's rotate_half), half by half, without the copies
    parts = (x1 * c - x2 * s, x2 * c + x1 * s)
    return torch.cat((*parts, x_pass) if x_pass.shape[-1] else parts, dim=-1)


SCALINGS = ("pi", "ntk", "yarn")


@register(
    "rope",
    family="rotary",
    paper="Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding",
    description="rotates query/key pairs by position·θ_i so q·k depends on the offset only",
)
class RoPE(PositionalEncoding):
    """Rotary position embedding (Su et al. 2021), with optional context extension.

    For each rotary pair i < r/2, with θ_i = base^(-2i/r) (r = rotary dims, base 10000), a
    query or key at position m is rotated by the angle m·θ_i:
        (x_i, x_{i+r/2}) <- (x_i cos mθ_i - x_{i+r/2} sin mθ_i, x_i sin mθ_i + x_{i+r/2} cos mθ_i)
    so that <R_m q, R_n k> = <q, R_{n-m} k> depends only on the offset n - m.

    Layout: half-split pairs (i, i + r/2) as in GPT-NeoX and Hugging Face LLaMA; the paper's
    interleaved pairs (2i, 2i+1) are the same up to a fixed permutation of head dims.
    ``rotary_fraction`` < 1 rotates only the first ``rotary_fraction · d_head`` dims
    (partial rotary: 25% in the NoPE paper's code, 50% in x-transformers); default: all.

    Context extension (``scaling``, factor s = ``scaling_factor``), usually switched on at
    evaluation of a model trained without it (``posenc eval RUN encoding.scaling=yarn``):

    - ``pi``, position interpolation (Chen et al. 2023): angle (m/s)·θ_i, i.e. θ_i <- θ_i/s.
    - ``ntk``, NTK-aware scaling (bloc97 2023, as described by Peng et al. 2023):
      base <- base · s^(r/(r-2)), so the lowest frequency is interpolated by s and the
      highest is left alone.
    - ``yarn`` (Peng et al. 2023, "NTK-by-parts" plus a temperature): with the wavelength λ_i = 2π/θ_i and
      ρ_i = L/λ_i (L = ``yarn_original_len``, the longest training sequence), the ramp
      γ_i = clamp((ρ_i - α)/(β - α), 0, 1) blends θ_i <- (1 - γ_i)·θ_i/s + γ_i·θ_i
      (α = ``yarn_alpha``, β = ``yarn_beta``; the paper's 1 and 32), and the logits get the
      temperature 1/t with sqrt(1/t) = 0.1·ln s + 1, applied by multiplying queries and keys
      by sqrt(1/t). The paper's continuous ramp in ρ is used, not the Hugging Face variant
      that rounds the ramp's ends to whole dimensions. The temperature scales whole
      queries and keys, rotary or not, as the paper's softmax(q·k/(t·sqrt(d))) says.

    The default (``scaling: null``, factor 1) is plain RoPE.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
        scaling: str | None = None,
        scaling_factor: float = 1.0,
        yarn_alpha: float = 1.0,
        yarn_beta: float = 32.0,
        yarn_original_len: int | None = None,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not 0.0 < rotary_fraction <= 1.0:
            raise ConfigError(f"encoding.rotary_fraction must be in (0, 1], got {rotary_fraction}")
        if base <= 1:
            raise ConfigError(f"encoding.base must be > 1, got {base}")
        rot = self.d_head * rotary_fraction
        if rot != int(rot) or int(rot) % 2 or int(rot) == 0:
            raise ConfigError(
                f"rotary dimension d_head·rotary_fraction = {self.d_head}·{rotary_fraction} = {rot:g} "
                "must be a positive even integer; choose model.d_model/model.n_heads and "
                "encoding.rotary_fraction accordingly"
            )
        self.rotary_dim = int(rot)
        self.base = float(base)
        self.rotary_fraction = rotary_fraction
        self._check_scaling(scaling, scaling_factor, yarn_original_len, yarn_alpha, yarn_beta)
        self.scaling = None if scaling in (None, "none") else scaling
        self.scaling_factor = float(scaling_factor)
        self.yarn_original_len = yarn_original_len
        self.yarn_alpha, self.yarn_beta = float(yarn_alpha), float(yarn_beta)
        # sqrt(1/t) of YaRN, multiplied into queries and keys; 1 otherwise.
        self.attention_factor = (
            0.1 * math.log(self.scaling_factor) + 1.0 if self.scaling == "yarn" else 1.0
        )
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def _check_scaling(
        self,
        scaling: str | None,
        factor: float,
        yarn_original_len: int | None,
        alpha: float,
        beta: float,
    ) -> None:
        if scaling not in (None, "none", *SCALINGS):
            raise ConfigError(
                f"unknown encoding.scaling {scaling!r}; valid choices: null, {', '.join(SCALINGS)}"
            )
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 1:
            raise ConfigError(f"encoding.scaling_factor must be a number >= 1, got {factor!r}")
        if scaling in (None, "none") and factor != 1:
            raise ConfigError(
                f"encoding.scaling_factor={factor} has no effect without encoding.scaling; "
                f"set encoding.scaling to one of {', '.join(SCALINGS)}"
            )
        if scaling == "ntk" and self.rotary_dim <= 2:
            raise ConfigError("NTK-aware scaling needs more than 2 rotary dimensions")
        if scaling == "yarn":
            if not isinstance(yarn_original_len, int) or yarn_original_len < 1:
                raise ConfigError(
                    "encoding.scaling=yarn needs encoding.yarn_original_len, the longest training "
                    f"sequence in tokens (posenc eval fills it in), got {yarn_original_len!r}"
                )
            if not 0 <= alpha < beta:
                raise ConfigError(
                    f"encoding.yarn_alpha={alpha} and yarn_beta={beta} need 0 <= alpha < beta"
                )

    def frequencies(self) -> Tensor:
        """θ_i = base^(-2i/r), i = 0 .. r/2 - 1, after the context-extension ``scaling``."""
        i = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32)
        s, scaling, base = self.scaling_factor, self.scaling, self.base
        if scaling == "ntk":
            base = base * s ** (self.rotary_dim / (self.rotary_dim - 2))
        theta = base ** (-i / self.rotary_dim)
        if scaling == "pi":
            theta = theta / s
        elif scaling == "yarn":
            ratio = self.yarn_original_len * theta / (2 * math.pi)  # L / λ_i
            ramp = ((ratio - self.yarn_alpha) / (self.yarn_beta - self.yarn_alpha)).clamp(0, 1)
            theta = (1 - ramp) * theta / s + ramp * theta
        return theta

    def angles(self, pos: Tensor) -> Tensor:
        """(B, T) positions -> (B, 1, T, r/2) rotation angles m·θ_i."""
        return pos.to(torch.float32)[:, None, :, None] * self.inv_freq

    def features(self, pos_q: Tensor, pos_k: Tensor) -> Memo:
        """The queries' cos/sin tables (`rotary_tables`), per dtype: the model rotates the
        new queries and keys at the same positions ``pos_q``."""
        rows_q, _ = shared_rows(pos_q, pos_q)
        return Memo(lambda dtype: rotary_tables(self.angles(rows_q), dtype))

    def rotate(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: Memo | None = None,
    ) -> tuple[Tensor, Tensor]:
        # The tables are computed once for queries and keys at the same positions, and once
        # for the batch when its rows share their positions (the usual case): the same values
        # as row by row, a fraction of the sin/cos work. ``features``: the queries' tables,
        # computed once per forward pass.
        same = pos_q is pos_k
        if features is None:
            rows_q, rows_k = shared_rows(pos_q, pos_k)
            tables_q = rotary_tables(self.angles(rows_q), q.dtype)
        else:
            tables_q = features(q.dtype)
            rows_k = pos_k if same else shared_rows(pos_k, pos_k)[0]
        tables_k = tables_q if same else rotary_tables(self.angles(rows_k), k.dtype)
        q, k = rotate_with(q, *tables_q), rotate_with(k, *tables_k)
        if self.attention_factor != 1.0:
            q, k = q * self.attention_factor, k * self.attention_factor
        return q, k


@register(
    "xpos",
    family="rotary",
    paper="Sun et al. 2022, A Length-Extrapolatable Transformer (xPos)",
    description="RoPE whose pair i is also scaled by ζ_i^(n/B) on queries, ζ_i^(-m/B) on keys",
)
class XPos(RoPE):
    """Extrapolatable position embedding, xPos (Sun et al. 2022), causal.

    RoPE (full head, θ_i = base^(-2i/d)) plus an exponential scale per rotary pair i:
    ζ_i = (2i/d + γ)/(1 + γ), γ = 0.4; the query at position n is multiplied by ζ_i^(n/B)
    and the key at position m by ζ_i^(-m/B), B = ``scale_base`` = 512, so that
    q_n·k_m = Σ_i ζ_i^((n-m)/B)·(rotary term): a decay in the offset n - m only. As
    ζ_i < 1 the fastest-rotating pairs (small i) decay fastest.

    The reference code (torchscale) shifts positions by half the sequence length before
    scaling, only to keep the factors near 1; the product depends on n - m either way, and
    with a KV cache a shift would have to be fixed in advance, so raw positions are used:
    keys at position m are multiplied by ζ^(-m/B), at most 0.286^(-m/512), which stays far
    from float32 overflow for any position posenc handles.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        base: float = 10000.0,
        scale_base: float = 512.0,
        gamma: float = 0.4,
    ) -> None:
        super().__init__(
            d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers, base=base
        )
        if scale_base <= 0:
            raise ConfigError(f"encoding.scale_base must be > 0, got {scale_base}")
        if gamma <= 0:
            raise ConfigError(f"encoding.gamma must be > 0, got {gamma}")
        self.scale_base = float(scale_base)
        self.gamma = float(gamma)
        i = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32)
        zeta = (i / self.rotary_dim + self.gamma) / (1 + self.gamma)
        self.register_buffer("zeta", zeta, persistent=False)

    def scales(self, pos: Tensor) -> Tensor:
        """(B, T) positions -> (B, 1, T, d) factors ζ_i^(pos/B), repeated for both halves."""
        s = self.zeta ** (pos.to(torch.float32)[:, None, :, None] / self.scale_base)
        return torch.cat((s, s), dim=-1)

    def rotate(
        self,
        q: Tensor,
        k: Tensor,
        pos_q: Tensor,
        pos_k: Tensor,
        *,
        layer: int = 0,
        features: Memo | None = None,
    ) -> tuple[Tensor, Tensor]:
        q, k = super().rotate(q, k, pos_q, pos_k, layer=layer, features=features)
        return q * self.scales(pos_q).to(q.dtype), k / self.scales(pos_k).to(k.dtype)


@register(
    "p_rope",
    family="rotary",
    paper="Barbero, Vitvitskyi, Perivolaropoulos, Pascanu, Veličković 2025, Round and Round We Go! What makes Rotary Positional Encodings useful? (ICLR)",
    description="RoPE with the lowest (1-p) fraction of its full-head frequencies set to 0",
)
class PRoPE(RoPE):
    """p-RoPE (Barbero et al. 2025; Gemma 3's global layers use it).

    θ_c = base^(-2c/d) for c = 0 .. d/2 - 1 over the FULL head dimension d, as plain RoPE,
    then the ⌊p·d/2⌋ highest frequencies (c < ⌊p·d/2⌋) are kept and the rest set to 0: those
    pairs are not rotated and act as position-free "semantic" channels. Not GPT-NeoX's
    partial rotary (``rope`` with ``rotary_fraction``), whose frequencies are
    base^(-2c/r) over the rotated dims r only. p = 1 is RoPE. Follows the paper's
    ``apply_p_rope`` (``rope_angles = int(p * d // 2)``, the dropped timescales padded with
    ∞), in posenc's half-split pair layout (pair c is dims c and c + d/2).

    ``p`` = 0.75: the paper's best 2B-parameter Gemma run (0.25 was also tried; both beat
    p = 1 on perplexity there). p = 0 would be NoPE; use ``none`` for that.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        base: float = 10000.0,
        p: float = 0.75,
    ) -> None:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
            raise ConfigError(f"encoding.p must be in (0, 1], got {p!r}")
        self.p = float(p)
        super().__init__(
            d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers, base=base
        )
        if int(self.p * self.rotary_dim // 2) == 0:  # it would train as NoPE without a word
            raise ConfigError(
                f"encoding.p={p!r} keeps no frequency of a {self.rotary_dim}-dim head "
                f"(p·d/2 < 1): it would train as NoPE; use p >= {2 / self.rotary_dim:.3g}, "
                "or encoding=none"
            )

    def frequencies(self) -> Tensor:
        theta = super().frequencies()  # base^(-2c/d), c < d/2 (full head: rotary_dim = d)
        kept = int(self.p * self.rotary_dim // 2)
        return torch.where(torch.arange(theta.numel()) < kept, theta, torch.zeros_like(theta))
