"""Positions derived from the tokens: Abacus and position coupling (``token_positions`` hook).

Both place a digit by its significance within its own number instead of by where it stands
in the sequence, so a digit's position does not grow with the length of the problem. Both
read the task's `DigitLayout` (which token ids are digits, which direction numbers are
written in), given by ``bind_task``; both draw a random offset in training so that ids far
beyond the training lengths are trained too (``offset_per``: one per batch, Abacus's
default, or one per sequence, coupling's), and both are off at evaluation unless
``eval_offset=true``. The offset is drawn by ``positions`` as ``0..T-1 + offset``
(the offset is the drawn position of the first token), so KV-cache decoding keeps it.
Attention is left alone (NoPE); compose with a sequence-level scheme through ``combo``
(``encoding.parts=[abacus,fire]``), as the papers do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posenc.encodings.base import DEFAULT_LAYOUT, DigitLayout, PositionalEncoding
from posenc.encodings.registry import register
from posenc.errors import ConfigError
from posenc.tokens import BOS, PAD


def digit_places(tokens: Tensor, digits: Tensor) -> tuple[Tensor, Tensor]:
    """(B, T) tokens -> (is_digit, place): ``place`` is a digit's 1-based index within its
    maximal run of digit tokens (its number) in the order written, 0 for other tokens.

    ``place`` at t depends on tokens[:, :t+1] only.
    """
    is_digit = torch.isin(tokens, digits)
    idx = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    last_other = torch.where(is_digit, -1, idx).cummax(dim=1).values  # last non-digit <= t
    return is_digit, torch.where(is_digit, idx - last_other, 0)


def run_lengths(is_digit: Tensor) -> Tensor:
    """(B, T) bool -> the length of the digit run each digit belongs to (0 elsewhere).

    Looks ahead to the end of the run: use it only where the whole run is given (a prompt).
    """
    T = is_digit.shape[1]
    idx = torch.arange(T, device=is_digit.device).expand_as(is_digit)
    last_other = torch.where(is_digit, -1, idx).cummax(dim=1).values
    next_other = torch.where(is_digit, T, idx).flip(1).cummin(dim=1).values.flip(1)
    return torch.where(is_digit, next_other - last_other - 1, 0)


OFFSET_PER = ("batch", "sequence")  # encoding.offset_per: one offset per batch or per row
OTHER_IDS = ("zero", "start")  # encoding.other_ids: the id of '+', the separator and EOS


def _check_offset(
    name: str, max_offset, max_position, eval_offset, init_std, offset_per, other_ids
) -> None:
    if not isinstance(max_position, int) or isinstance(max_position, bool) or max_position < 2:
        raise ConfigError(f"encoding.max_position must be an integer >= 2, got {max_position!r}")
    if not isinstance(max_offset, int) or not 0 <= max_offset < max_position - 1:
        raise ConfigError(
            f"encoding.max_offset must be an integer in [0, {max_position - 2}] "
            f"(below encoding.max_position={max_position}), got {max_offset!r}"
        )
    if not isinstance(eval_offset, bool):
        raise ConfigError(f"encoding.eval_offset must be true or false, got {eval_offset!r}")
    if not init_std > 0:
        raise ConfigError(f"encoding.init_std must be > 0, got {init_std!r}")
    if offset_per not in OFFSET_PER:
        raise ConfigError(
            f"unknown encoding.offset_per {offset_per!r}; valid choices: {', '.join(OFFSET_PER)}"
        )
    if other_ids not in OTHER_IDS:
        raise ConfigError(
            f"unknown encoding.other_ids {other_ids!r}; valid choices: {', '.join(OTHER_IDS)}"
        )


class _DigitTable(PositionalEncoding):
    """Shared machinery: a learned table indexed by token-derived ids, a random offset."""

    places_by_token = True
    default_offset_per = "batch"  # Abacus: one offset per batch; coupling: one per sequence
    default_other_ids = "zero"  # Abacus: non-digit tokens id 0; coupling: the start s

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        n_layers: int = 1,
        max_position: int = 512,
        max_offset: int = 100,
        eval_offset: bool = False,
        init_std: float = 1.0,
        offset_per: str | None = None,
        other_ids: str | None = None,
    ) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        offset_per = self.default_offset_per if offset_per is None else offset_per
        other_ids = self.default_other_ids if other_ids is None else other_ids
        _check_offset(
            self.name, max_offset, max_position, eval_offset, init_std, offset_per, other_ids
        )
        self.max_position, self.max_offset, self.eval_offset = max_position, max_offset, eval_offset
        self.offset_per, self.other_ids = offset_per, other_ids
        # ids stay below offset + sequence length, so any sequence this long fits the table
        self.max_positions = max_position - max_offset - 1
        self.table = nn.Embedding(max_position, d_model)
        nn.init.normal_(self.table.weight, std=init_std)
        self.layout = DEFAULT_LAYOUT
        self.register_buffer("digits", torch.tensor(DEFAULT_LAYOUT.digits), persistent=False)

    def bind_task(self, layout: DigitLayout) -> None:
        if not layout.digits:
            raise ConfigError(
                f"encoding {self.name!r} places digits within their numbers, but task "
                f"{layout.task!r} has no digits; valid tasks: {', '.join(layout.valid_tasks)}"
            )
        if layout.interleaved:
            raise ConfigError(
                f"encoding {self.name!r} cannot serve task {layout.task!r} with index hints: it "
                "finds a number's digits as a run of consecutive digit tokens, which hints "
                "break up (every digit would get the same id); set task.index_hints=false"
            )
        self.layout = layout
        self.digits = torch.tensor(layout.digits, device=self.digits.device)

    def positions(
        self,
        batch: int,
        length: int,
        *,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``0..T-1`` plus the offset: drawn from {0..max_offset} in training (and at
        evaluation with ``eval_offset``), once for the batch or once per row
        (``offset_per``), 0 otherwise."""
        pos = super().positions(batch, length, device=device)
        if not (self.training or self.eval_offset) or self.max_offset == 0:
            return pos
        where = generator.device if generator is not None else torch.device("cpu")
        rows = batch if self.offset_per == "sequence" else 1
        k = torch.randint(0, self.max_offset + 1, (rows, 1), generator=generator, device=where)
        return pos + k.to(device)

    def embed(self, x: Tensor, pos: Tensor, tokens: Tensor | None = None) -> Tensor:
        # Checked eagerly only: the data-dependent test would break a compiled graph.
        if (
            not torch.compiler.is_compiling()
            and pos.numel()
            and int(pos.max()) >= self.max_position
        ):
            raise ConfigError(
                f"{self.name} id {int(pos.max())} is beyond its table "
                f"(encoding.max_position={self.max_position}); raise encoding.max_position"
            )
        return x + self.table(pos.long())

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_position={self.max_position}, "
            f"max_offset={self.max_offset}, offset_per={self.offset_per}, "
            f"other_ids={self.other_ids}, eval_offset={self.eval_offset}"
        )


@register(
    "abacus",
    family="absolute",
    paper="McLeish et al. 2024, Transformers Can Do Arithmetic with the Right Embeddings",
    description="a learned vector per digit's place within its own number, randomly offset",
)
class Abacus(_DigitTable):
    """Abacus embeddings (McLeish et al. 2024): x_t <- x_t + E[a_t], E a learned table.

    a_t = k + (1-based index of token t within its run of consecutive digit tokens, in the
    order written) for a digit, and 0 for every other token (row 0 is a learned vector
    too), as in the reference code (``mcleish7/arithmetic``, ``abacus.py``). With numbers
    written least-significant digit first (the paper reverses operands and answer) a_t is
    the digit's significance, so digits of equal significance share an embedding. During
    training k is drawn uniformly from {0, ..., ``max_offset``} once per batch (the paper's
    max_k = 100; ``offset_per=sequence`` draws one per sequence instead, as coupling
    does), so embeddings up to k + the longest training number are trained; at
    evaluation k = 0 unless ``eval_offset``. Table: ``max_position`` rows (1024 in the
    paper), initialised N(0, ``init_std``²) with ``init_std`` = 1 by default: the scale of
    posenc's token embeddings (unit variance, ``model.embed_init=scaled``), as the reference
    code initialises the Abacus table like its token embeddings (both N(0, 1/d), then a
    LayerNorm). A table 50x smaller than the tokens (0.02) left a 2-layer model unable to
    fit 3-4 digit addition here (docs/results.md); with ``model.embed_init=gpt`` use 0.02.
    a_t depends on tokens up to t only.

    ``other_ids=start`` (not the paper's; an ablation knob, docs/results.md) gives the
    non-digit tokens (``+``, the separator, EOS) coupling's id instead of 0: the digits move
    up one, a_t = k + 1 + place, the other tokens get k + 1, BOS and padding 0. With
    ``offset_per=sequence`` too, and numbers written least-significant digit first, the ids
    are position coupling's exactly (tests/test_digits.py), so the two knobs account for
    every difference between the two schemes in that format.
    """

    def token_positions(self, tokens: Tensor, pos: Tensor) -> Tensor:
        _, place = digit_places(tokens, self.digits)
        if self.other_ids == "zero":
            return torch.where(place > 0, place + pos[:, :1], 0)
        start = pos[:, :1] + 1  # (B, 1): coupling's start, the digits above it
        ids = torch.where(place > 0, place + start, start)
        return torch.where((tokens == BOS) | (tokens == PAD), 0, ids)


@register(
    "coupled",
    family="absolute",
    paper="Cho et al. 2024, Position Coupling: Improving Length Generalization of Arithmetic "
    "Transformers Using Task Structure",
    description="digits of equal significance in operands and answer share one learned position id",
)
class Coupled(_DigitTable):
    """Position coupling (Cho et al. 2024): a learned absolute embedding of coupled ids.

    With s the random start (s = 1 + offset): the digit of significance i (0 = least) of
    every number, operands and answer alike, gets id s + 1 + i; ``+``, the separator (``=``)
    and every other non-digit token, EOS included, get id s; BOS (and padding) get 0. This
    is the reference code's ``AdditionDatasetWithCoupledPositions``
    (``HanseulJo/position-coupling``) with a reversed answer, except for EOS, which the
    reference gives id 0 (no scored prediction is made from EOS, so the choice is moot): operands may be written either way (``task.lsb_first``; the paper
    writes them most significant first, zero-padded to equal length: ``task.zero_pad``),
    the answer must be least-significant digit first so that a generated digit's id follows
    from the digits generated before it. In training the offset is drawn uniformly from
    {0, ..., ``max_offset``} per sequence (the paper draws the start so that every id fits
    in ``max_position``; ``offset_per=batch`` draws one for the whole batch, as Abacus
    does); at evaluation s = 1 unless ``eval_offset``. Table:
    ``max_position`` rows, initialised N(0, ``init_std``²), ``init_std`` = 1 by default: the
    scale of posenc's token embeddings, as the reference code (GPT-2 style) draws its position
    and token tables alike (docs/results.md: at 0.02 a 2-layer model did not fit 3-4 digits).
    ``other_ids=zero`` (not the paper's; an ablation knob) gives the non-digit tokens id 0,
    as Abacus does, instead of s.
    """

    default_offset_per = "sequence"
    default_other_ids = "start"

    def bind_task(self, layout: DigitLayout) -> None:
        super().bind_task(layout)
        if not layout.answer_lsb_first:
            raise ConfigError(
                "encoding 'coupled' needs the answer written least-significant digit first "
                "(its ids would depend on the answer's length); set task.lsb_first=true or "
                "task.answer_lsb_first=true"
            )

    def token_positions(self, tokens: Tensor, pos: Tensor) -> Tensor:
        is_digit, place = digit_places(tokens, self.digits)
        in_answer = (tokens == self.layout.sep).long().cumsum(dim=1) > 0
        significance = place - 1
        if not self.layout.prompt_lsb_first:  # prompt numbers are given whole
            msb = run_lengths(is_digit) - place
            significance = torch.where(in_answer, significance, msb)
        start = pos[:, :1] + 1  # (B, 1)
        other = start if self.other_ids == "start" else torch.zeros_like(start)
        ids = torch.where(is_digit, start + 1 + significance, other)
        return torch.where((tokens == BOS) | (tokens == PAD), 0, ids)
