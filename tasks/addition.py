"""Addition of two numbers written digit by digit, optionally least-significant digit first."""

from __future__ import annotations

import numpy as np

from posenc.errors import ConfigError
from posenc.tasks.base import Numbers, Task, check_bool, check_int, register


@register
class Addition(Task):
    """Add two numbers: ``a + b`` -> the digits of a + b.

    Length n: the number of digits of the longer operand. With ``variable_digits=false``
    both operands have exactly n digits; with ``true`` one operand (chosen at random) has n
    digits and the other a uniform number of digits in [1, n], so the input length varies
    within one n (2n+1 at most). An operand of more than one digit never starts with 0; the
    sum is written without leading zeros (n or n+1 digits).

    ``independent_lengths=true`` (Cho et al. 2024's reference code, which draws each
    operand's digit count on its own) draws the two operands' digit counts independently,
    each uniform in [1, n], in training: n is then an upper bound on both, not the length
    of the longer (which may be shorter than n). With ``train.min_len = train.max_len = L``
    this is Cho et al.'s training distribution (each operand 1..L digits); with a range of
    n (posenc's default batching draws n per batch or per example) it weights short
    operands more. The frozen evaluation and validation sets (`sample_eval`) stay the
    default's: both operands n digits, the very examples of ``independent_lengths=false``,
    so a length in a report still means "n-digit + n-digit" and the two settings are scored
    on the same sets. Not with ``variable_digits=true`` (two ways of varying the lengths).

    Vocabulary: the ``base`` digits (ids 0..base-1, shown as hex digits) and ``+``
    (id ``base``); the ``<sep>`` token plays the part of ``=``.

    ``lsb_first=true`` writes both operands and the sum least-significant digit first, so
    the answer can be produced in the order carries propagate: the standard trick for
    length generalization (Lee et al. 2023; Zhou et al. 2024, "Transformers Can Achieve
    Length Generalization But Not Robustly"). Example (base 10, n = 3, LSB first) for
    857 + 586 = 1443: ``<bos> 7 5 8 + 6 8 5 <sep> 3 4 4 1 <eos>``; with ``lsb_first=false``:
    ``<bos> 8 5 7 + 5 8 6 <sep> 1 4 4 3 <eos>``. Addition is a task of Kazemnejad et al. 2023;
    ``base=2`` gives the operand layout of Delétang et al. 2023's binary addition.

    Options for the formats of the length-generalization papers (all off by default):

    - ``zero_pad=true`` pads both operands with leading zeros to n digits and the sum to
      n + 1 digits (Cho et al. 2024 pad operands to equal length and the answer to one
      more digit); with fixed digits only the sum changes. With ``independent_lengths``
      the width is the longer operand's, not n, as in Cho et al.
    - ``reverse_answer=true`` writes the answer in the other digit order from the
      operands: with ``lsb_first=false`` this is Cho et al.'s format (operands most
      significant digit first, answer reversed), e.g. 857 + 586 = 1443 as
      ``8 5 7 + 5 8 6 <sep> 3 4 4 1``.
    - ``index_hints=true`` (Zhou et al. 2024, "Transformers Can Achieve Length
      Generalization But Not Robustly"; Zhou et al. 2023) puts a hint symbol before every
      digit, operands and answer alike: the digit of significance i gets hint h(s+i), so
      digits of equal significance carry the same hint and the model must also write the
      hints of its answer. The hints are an ordered set of 64 symbols ``h0 .. h63``; the
      start s is drawn uniformly per example from [0, 63 - n] (in training data and in the
      frozen evaluation sets alike, from the same seeded generator), so every hint is
      trained even when the training numbers are short. Example (LSB first, s = 2) for
      857 + 586: ``h2 7 h3 5 h4 8 + h2 6 h3 8 h4 5 <sep> h2 3 h3 4 h4 4 h5 1``. Lengths up to
      63 digits.
    """

    name = "addition"
    description = "add two n-digit numbers (optionally least-significant digit first)"
    n_hints = 64  # size of the ordered set of index hints

    def __init__(
        self,
        base: int = 10,
        lsb_first: bool = True,
        variable_digits: bool = False,
        zero_pad: bool = False,
        reverse_answer: bool = False,
        index_hints: bool = False,
        independent_lengths: bool = False,
    ):
        check_int(self.name, "base", base, 2, 16)
        for param, value in (
            ("lsb_first", lsb_first),
            ("variable_digits", variable_digits),
            ("zero_pad", zero_pad),
            ("reverse_answer", reverse_answer),
            ("index_hints", index_hints),
            ("independent_lengths", independent_lengths),
        ):
            check_bool(self.name, param, value)
        if variable_digits and independent_lengths:
            raise ConfigError(
                f"task {self.name!r} takes task.variable_digits=true or "
                "task.independent_lengths=true, not both; set one of them to false"
            )
        self.base = base
        self.lsb_first = lsb_first
        self.variable_digits = variable_digits
        self.zero_pad = zero_pad
        self.reverse_answer = reverse_answer
        self.index_hints = index_hints
        self.independent_lengths = independent_lengths
        if index_hints:  # the answer has up to n + 1 digits, each with its own hint
            self.max_length = self.n_hints - 1

    @property
    def answer_lsb_first(self) -> bool:
        return self.lsb_first != self.reverse_answer

    def numbers(self) -> Numbers:
        return Numbers(
            tuple(range(self.base)),
            self.lsb_first,
            self.answer_lsb_first,
            interleaved=self.index_hints,
        )

    def hint(self, k: int) -> int:
        """The symbol id of index hint ``k``."""
        return self.base + 1 + k

    @property
    def plus(self) -> int:
        return self.base

    @property
    def symbols(self) -> list[str]:
        hints = [f"h{k}" for k in range(self.n_hints)] if self.index_hints else []
        return [format(d, "x") for d in range(self.base)] + ["+"] + hints

    def _number(self, digits: int, rng: np.random.Generator) -> list[int]:
        """A uniform number with exactly ``digits`` digits, most significant first."""
        if digits == 1:
            return [int(rng.integers(0, self.base))]
        lead = int(rng.integers(1, self.base))
        return [lead, *rng.integers(0, self.base, size=digits - 1).tolist()]

    def _write(self, lsb_first: list[int], start: int, lsb_out: bool) -> list[int]:
        """Digits least significant first -> as written: with hints h(start + i) before
        the digit of significance i, in the given order."""
        if self.index_hints:
            units = [[self.hint(start + i), d] for i, d in enumerate(lsb_first)]
        else:
            units = [[d] for d in lsb_first]
        if not lsb_out:
            units = units[::-1]
        return [t for unit in units for t in unit]

    def params(self) -> dict:
        """Without ``independent_lengths`` at false: the evaluation-set cache key of every
        config saved before the option existed stays what it was."""
        params = super().params()
        if not self.independent_lengths:
            del params["independent_lengths"]
        return params

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        lengths = [n, n]
        if self.variable_digits:
            lengths[int(rng.integers(0, 2))] = int(rng.integers(1, n + 1))
        elif self.independent_lengths:
            lengths = [int(k) for k in rng.integers(1, n + 1, size=2)]
        return self._pair(n, lengths, rng)

    def sample_eval(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Evaluation sets: with ``independent_lengths`` both operands n digits (the
        default's examples); otherwise `sample`."""
        if self.independent_lengths:
            return self._pair(n, [n, n], rng)
        return self.sample(n, rng)

    def _pair(
        self, n: int, lengths: list[int], rng: np.random.Generator
    ) -> tuple[list[int], list[int]]:
        """The (input, target) of two operands of ``lengths`` digits at length ``n``."""
        a, b = (self._number(k, rng) for k in lengths)
        start = int(rng.integers(0, self.n_hints - n)) if self.index_hints else 0
        total = self._value(a) + self._value(b)  # Python ints: exact for any n
        digits = []
        while True:
            total, d = divmod(total, self.base)
            digits.append(d)
            if total == 0:
                break
        if self.zero_pad:  # to the longer operand: n but with independent lengths
            width = max(len(a), len(b))
            a, b = ([0] * (width - len(x)) + x for x in (a, b))
            digits += [0] * (width + 1 - len(digits))
        inputs = [
            *self._write(a[::-1], start, self.lsb_first),
            self.plus,
            *self._write(b[::-1], start, self.lsb_first),
        ]
        return inputs, self._write(digits, start, self.answer_lsb_first)

    def max_sequence_length(self, n: int, rng: np.random.Generator) -> int:
        # two n-digit operands and "+", an (n+1)-digit sum, plus BOS, SEP and EOS; hints
        # double every digit
        per_digit = 2 if self.index_hints else 1
        return per_digit * (2 * n) + 1 + per_digit * (n + 1) + 3

    def _value(self, msb_first: list[int]) -> int:
        value = 0
        for d in msb_first:
            value = value * self.base + d
        return value

    def solve(self, inputs: list[int]) -> list[int]:
        """Schoolbook addition with a carry, least-significant digit first."""
        i = inputs.index(self.plus)
        a, b = inputs[:i], inputs[i + 1 :]
        start = 0
        if self.index_hints:  # (hint, digit) pairs; significance 0 has the smallest hint
            start = min(a[0::2]) - self.hint(0)
            a, b = a[1::2], b[1::2]
        if not self.lsb_first:
            a, b = a[::-1], b[::-1]
        out, carry = [], 0
        for k in range(max(len(a), len(b))):
            s = (a[k] if k < len(a) else 0) + (b[k] if k < len(b) else 0) + carry
            out.append(s % self.base)
            carry = s // self.base
        if carry or self.zero_pad:
            out.append(carry)
        return self._write(out, start, self.answer_lsb_first)
