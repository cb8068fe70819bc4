"""Absolute encodings: a vector per position added to the token embeddings (``embed`` hook)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posenc.encodings.base import PositionalEncoding
from posenc.encodings.registry import register
from posenc.errors import ConfigError


def sinusoidal_table(pos: Tensor, d_model: int, base: float = 10000.0) -> Tensor:
    """PE(pos, 2i) = sin(pos·ω_i), PE(pos, 2i+1) = cos(pos·ω_i), ω_i = base^(-2i/d).

    ``pos`` may be any real-valued tensor; the result has shape ``pos.shape + (d_model,)``.
    Interleaved as in the paper (even dims sine, odd dims cosine).
    """
    i = torch.arange(0, d_model, 2, device=pos.device, dtype=torch.float32)
    omega = base ** (-i / d_model)  # (d/2,)
    angle = pos.to(torch.float32)[..., None] * omega  # (..., d/2)
    pe = torch.stack((angle.sin(), angle.cos()), dim=-1)  # (..., d/2, 2)
    return pe.flatten(-2)


@register(
    "sinusoidal",
    family="absolute",
    paper="Vaswani et al. 2017, Attention Is All You Need",
    description="fixed sine/cosine vectors of the absolute position added to the embeddings",
)
class Sinusoidal(PositionalEncoding):
    """Fixed sinusoidal absolute encoding (Vaswani et al. 2017, §3.5).

    x_t <- x_t + PE(t), PE(t, 2i) = sin(t / base^(2i/d)), PE(t, 2i+1) = cos(t / base^(2i/d)),
    base 10000, interleaved as in the paper. Defined for every real position, so it never
    runs out of table; whether the *model* generalizes beyond trained positions is another
    matter (it usually does not).

    ``amplitude`` multiplies PE. The paper adds PE at amplitude 1 to token embeddings of unit
    variance (they multiply them by sqrt(d_model)); it leaves open how the two compare at
    other token scales. posenc's ``amplitude=null`` (the default) sets it to the std of the
    token embeddings (`match_token_scale`): 1 with ``model.embed_init=scaled``, the paper's
    setting, and 0.02 with ``gpt``, where PE at amplitude 1 would be 35x the tokens and
    sits on the loss plateau (docs/results.md). A number fixes it whatever the tokens.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        base: float = 10000.0,
        amplitude: float | None = None,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if d_model % 2:
            raise ConfigError(f"sinusoidal encoding needs an even model.d_model, got {d_model}")
        if base <= 1:
            raise ConfigError(f"encoding.base must be > 1, got {base}")
        if amplitude is not None and (
            isinstance(amplitude, bool) or not isinstance(amplitude, int | float) or amplitude <= 0
        ):
            raise ConfigError(f"encoding.amplitude must be > 0 or null, got {amplitude}")
        self.base = float(base)
        self.fixed_amplitude = amplitude
        self.amplitude = 1.0 if amplitude is None else float(amplitude)

    def match_token_scale(self, std: float) -> None:
        if self.fixed_amplitude is None:
            self.amplitude = float(std)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        pe = sinusoidal_table(pos, self.d_model, self.base)
        if self.amplitude != 1.0:
            pe = pe * self.amplitude
        return x + pe.to(x.dtype)


@register(
    "learned",
    family="absolute",
    paper="Gehring et al. 2017; Radford et al. 2018 (GPT)",
    description="a trained vector per absolute position (a table of max_len rows)",
)
class Learned(PositionalEncoding):
    """Learned absolute position embeddings: x_t <- x_t + P[t], P a trained (max_len, d) table.

    As in GPT (Radford et al. 2018) and convolutional seq2seq (Gehring et al. 2017). Rows
    beyond the longest training sequence never receive a gradient, so the encoding cannot
    extrapolate; positions >= max_len are an error, raised before training starts.
    Initialised N(0, init_std²).
    """

    def __init__(
        self, *, d_model: int, n_heads: int, max_len: int, n_layers: int = 1, init_std: float = 0.02
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if max_len <= 0:
            raise ConfigError(f"learned encoding needs model.max_len > 0, got {max_len}")
        self.max_positions = max_len
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=init_std)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        # Checked eagerly (a compiled graph would break on the data-dependent test; a run's
        # training positions are within model.max_len, which the config checks).
        if not torch.compiler.is_compiling() and pos.numel() and int(pos.max()) >= self.max_len:
            raise ConfigError(
                f"position {int(pos.max())} is beyond the learned table (model.max_len={self.max_len})"
            )
        return x + self.table(pos.long())


def legendre_features(s: Tensor, degree: int) -> Tensor:
    """P_1(s), ..., P_degree(s) (Legendre polynomials) stacked on a new last axis.

    Bonnet's recursion (n + 1)·P_(n+1) = (2n + 1)·s·P_n - n·P_(n-1), P_0 = 1, P_1 = s.
    """
    prev, cur = torch.ones_like(s), s
    out = [cur]
    for n in range(1, degree):
        prev, cur = cur, ((2 * n + 1) * s * cur - n * prev) / (n + 1)
        out.append(cur)
    return torch.stack(out, dim=-1)


BEYOND = ("clamp", "extend")


@register(
    "polynomial",
    family="absolute",
    paper="defined in posenc: fixed Legendre polynomials of the scaled position",
    description="fixed Legendre-polynomial features P_1..P_K of the position scaled to [-1, 1]",
)
class Polynomial(PositionalEncoding):
    """A fixed polynomial absolute encoding: orthogonal-polynomial features of the position.

    With s(t) = 2t/``span`` - 1, which maps positions 0..span onto [-1, 1]:
        x_t <- x_t + [P_1(s), P_2(s), ..., P_K(s), 0, ..., 0],  K = ``degree``,
    P_n the Legendre polynomials (orthogonal on [-1, 1], |P_n(s)| <= 1 there, P_n(1) = 1),
    in the first K dims; the other d_model - K dims get nothing. Low degrees give a coarse,
    smooth code of where in [0, span] a token sits, high degrees finer detail.

    Beyond ``span`` (``beyond``): ``clamp`` (default) holds s at 1, so every position
    >= span gets the vector of position span; ``extend`` evaluates the polynomials at
    s > 1, where they grow like s^n (P_16(3) ≈ 2.5e11): the encoding then swamps the tokens
    and a model cannot be expected to cope. Keep span at least the longest evaluated
    sequence (default 128 tokens > 123, the default eval.max_len=60 on copy).
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        degree: int = 16,
        span: float = 128.0,
        beyond: str = "clamp",
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not isinstance(degree, int) or not 1 <= degree <= d_model:
            raise ConfigError(
                f"encoding.degree must be an integer in [1, model.d_model={d_model}], got {degree!r}"
            )
        if span <= 0:
            raise ConfigError(f"encoding.span must be > 0, got {span}")
        if beyond not in BEYOND:
            raise ConfigError(
                f"unknown encoding.beyond {beyond!r}; valid choices: {', '.join(BEYOND)}"
            )
        self.degree, self.span, self.beyond = degree, float(span), beyond

    def table(self, pos: Tensor) -> Tensor:
        """Positions (...) -> encodings (..., d_model)."""
        s = 2 * pos.to(torch.float64) / self.span - 1
        if self.beyond == "clamp":
            s = s.clamp(max=1.0)
        features = legendre_features(s, self.degree)  # (..., K)
        pad = self.d_model - self.degree
        return torch.nn.functional.pad(features, (0, pad)).to(torch.float32)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        return x + self.table(pos).to(x.dtype)


@register(
    "exponential",
    family="absolute",
    paper="defined in posenc: fixed multi-timescale exponential decays of the position",
    description="fixed decays 2·exp(-t/τ_k) - 1 over geometric timescales τ_k",
)
class Exponential(PositionalEncoding):
    """A fixed exponential absolute encoding: one decay per dimension, many timescales.

        x_t <- x_t + E(t),  E(t)_k = 2·exp(-t/τ_k) - 1,
        τ_k = τ_min·(τ_max/τ_min)^(k/(d-1)),  k = 0..d-1 (d = d_model),

    τ_min = ``min_timescale``, τ_max = ``max_timescale``: a geometric ladder like the
    sinusoidal frequencies, but with monotone decays instead of oscillations. Each entry
    runs from +1 at t = 0 towards -1; dimension k resolves positions up to a few τ_k.

    Beyond the training range the code never blows up: it saturates. Dimensions with
    τ_k well below t already sit at -1, so far positions are told apart only by the slow
    dimensions, and as t -> ∞ every position tends to the same vector (-1, ..., -1); with
    the default τ_max = 1024 that happens far beyond any length posenc evaluates.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        min_timescale: float = 1.0,
        max_timescale: float = 1024.0,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not 0 < min_timescale <= max_timescale:
            raise ConfigError(
                f"need 0 < encoding.min_timescale <= encoding.max_timescale, got "
                f"{min_timescale} and {max_timescale}"
            )
        k = torch.arange(d_model, dtype=torch.float64) / max(d_model - 1, 1)
        tau = min_timescale * (max_timescale / min_timescale) ** k
        self.register_buffer("timescales", tau.to(torch.float32), persistent=False)

    def table(self, pos: Tensor) -> Tensor:
        """Positions (...) -> encodings (..., d_model)."""
        return 2 * torch.exp(-pos.to(torch.float32)[..., None] / self.timescales) - 1

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        return x + self.table(pos).to(x.dtype)
