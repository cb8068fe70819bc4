"""Addition of two numbers written digit by digit, optionally least-significant digit first."""

from __future__ import annotations

import numpy as np

from tasks.base import Task, check_bool, check_int, register


@register
class Addition(Task):
    """Add two numbers: ``a + b`` -> the digits of a + b.

    Length n: the number of digits of the longer operand. With ``variable_digits=false``
    both operands have exactly n digits; with ``true`` one operand (chosen at random) has n
    digits and the other a uniform number of digits in [1, n], so the input length varies
    within one n (2n+1 at most). An operand of more than one digit never starts with 0; the
    sum is written without leading zeros (n or n+1 digits).

    Vocabulary: the ``base`` digits (ids 0..base-1, shown as hex digits) and ``+``
    (id ``base``); the ``<sep>`` token plays the part of ``=``.

    ``lsb_first=true`` writes both operands and the sum least-significant digit first, so
    the answer can be produced in the order carries propagate: the standard trick for
    length generalization (Lee et al. 2023; Zhou et al. 2024, "Transformers Can Achieve
    Length Generalization But Not Robustly"). Example (base 10, n = 3, LSB first) for
    857 + 586 = 1443: ``<bos> 7 5 8 + 6 8 5 <sep> 3 4 4 1 <eos>``; with ``lsb_first=false``:
    ``<bos> 8 5 7 + 5 8 6 <sep> 1 4 4 3 <eos>``. Addition is a task of Kazemnejad et al. 2023;
    ``base=2`` gives the operand layout of Delétang et al. 2023's binary addition.
    """

    name = "addition"
    description = "add two n-digit numbers (optionally least-significant digit first)"

    def __init__(self, base: int = 10, lsb_first: bool = True, variable_digits: bool = False):
        check_int(self.name, "base", base, 2, 16)
        check_bool(self.name, "lsb_first", lsb_first)
        check_bool(self.name, "variable_digits", variable_digits)
        self.base = base
        self.lsb_first = lsb_first
        self.variable_digits = variable_digits

    @property
    def plus(self) -> int:
        return self.base

    @property
    def symbols(self) -> list[str]:
        return [format(d, "x") for d in range(self.base)] + ["+"]

    def _number(self, digits: int, rng: np.random.Generator) -> list[int]:
        """A uniform number with exactly ``digits`` digits, most significant first."""
        if digits == 1:
            return [int(rng.integers(0, self.base))]
        lead = int(rng.integers(1, self.base))
        return [lead, *rng.integers(0, self.base, size=digits - 1).tolist()]

    def _write(self, msb_first: list[int]) -> list[int]:
        return msb_first[::-1] if self.lsb_first else msb_first

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        lengths = [n, n]
        if self.variable_digits:
            lengths[int(rng.integers(0, 2))] = int(rng.integers(1, n + 1))
        a, b = (self._number(k, rng) for k in lengths)
        total = self._value(a) + self._value(b)  # Python ints: exact for any n
        digits = []
        while True:
            total, d = divmod(total, self.base)
            digits.append(d)
            if total == 0:
                break
        return [*self._write(a), self.plus, *self._write(b)], self._write(digits[::-1])

    def max_sequence_length(self, n: int, rng: np.random.Generator) -> int:
        # two n-digit operands and "+", an (n+1)-digit sum, plus BOS, SEP and EOS
        return (2 * n + 1) + (n + 1) + 3

    def _value(self, msb_first: list[int]) -> int:
        value = 0
        for d in msb_first:
            value = value * self.base + d
        return value

    def solve(self, inputs: list[int]) -> list[int]:
        """Schoolbook addition with a carry, least-significant digit first."""
        i = inputs.index(self.plus)
        a, b = inputs[:i], inputs[i + 1 :]
        if not self.lsb_first:
            a, b = a[::-1], b[::-1]
        out, carry = [], 0
        for k in range(max(len(a), len(b))):
            s = (a[k] if k < len(a) else 0) + (b[k] if k < len(b) else 0) + carry
            out.append(s % self.base)
            carry = s // self.base
        if carry:
            out.append(carry)
        return out if self.lsb_first else out[::-1]
