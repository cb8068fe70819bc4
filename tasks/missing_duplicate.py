"""Missing duplicate: w w with one symbol hidden; answer the hidden symbol."""

from __future__ import annotations

import numpy as np

from posenc.tasks.base import Task, check_vocab_size, hex_symbols, register


@register
class MissingDuplicate(Task):
    """A string w written twice with one of the 2n symbols replaced by ``_`` -> that symbol.

    Length n: the length of w, so the input has 2n symbols (one of them ``_``, at a uniform
    position) and the target is one token, read off the same position in the other copy.
    Vocabulary: ``vocab_size`` symbols (hex digits; binary by default, as in the paper) and
    ``_``. Example: ``<bos> 0 1 1 0 _ 1 <sep> 1 <eos>`` (w = 011). "Missing duplicate" in
    Delétang et al. 2023, whose length is the input length 2n (odd lengths padded); ours
    is |w|, so every example of length n has a 2n-symbol input.
    """

    name = "missing_duplicate"
    description = "w w with one symbol hidden by _: answer the hidden symbol"

    def __init__(self, vocab_size: int = 2) -> None:
        check_vocab_size(self.name, vocab_size, 2)
        self.vocab_size = vocab_size

    @property
    def hole(self) -> int:
        return self.vocab_size

    @property
    def symbols(self) -> list[str]:
        return [*hex_symbols(self.vocab_size), "_"]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        w = rng.integers(0, self.vocab_size, size=n).tolist()
        inputs = w + w
        i = int(rng.integers(0, 2 * n))
        hidden = inputs[i]
        inputs[i] = self.hole
        return inputs, [hidden]

    def solve(self, inputs: list[int]) -> list[int]:
        n = len(inputs) // 2
        i = inputs.index(self.hole)
        return [inputs[i + n] if i < n else inputs[i - n]]
