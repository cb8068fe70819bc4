"""Count: how many times does the marked symbol occur?"""

from __future__ import annotations

import numpy as np

from posenc.tasks.base import Task, check_vocab_size, register


@register
class Count(Task):
    """A marked symbol, then n symbols -> how often the marked one occurs, in decimal.

    Length n: the number of symbols after the mark. Input ``q x_1 ... x_n`` (n+1 symbols):
    the marked symbol q and the x_i are drawn uniformly from ``vocab_size`` letters (q may
    not occur at all). Target: the count written in decimal, most significant digit first,
    no leading zeros (``0`` when q does not occur), so one digit up to n = 9 and up to
    ``len(str(n))`` digits beyond. Vocabulary: letters ``a, b, ...`` (ids 0..vocab_size-1),
    then the digits ``0``-``9``. Example: ``<bos> b a b c b <sep> 2 <eos>``. Counting as a
    probe of positional encodings follows Golovneva et al. 2024 (CoPE), whose counting tasks
    motivated contextual positions; the format here is our own.
    """

    name = "count"
    description = "how many times the first (marked) symbol occurs among the next n, in decimal"

    def __init__(self, vocab_size: int = 4) -> None:
        check_vocab_size(self.name, vocab_size, 2, 26)
        self.vocab_size = vocab_size

    @property
    def symbols(self) -> list[str]:
        return [chr(ord("a") + i) for i in range(self.vocab_size)] + [str(d) for d in range(10)]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        q = int(rng.integers(0, self.vocab_size))
        xs = rng.integers(0, self.vocab_size, size=n)
        count = int(np.count_nonzero(xs == q))
        return [q, *xs.tolist()], [self.vocab_size + int(d) for d in str(count)]

    def solve(self, inputs: list[int]) -> list[int]:
        count = 0
        for x in inputs[1:]:
            count += x == inputs[0]
        digits = []
        while True:
            count, d = divmod(count, 10)
            digits.append(self.vocab_size + d)
            if count == 0:
                return digits[::-1]
