"""Reverse: write the input backwards."""

from __future__ import annotations

import numpy as np

from tasks.base import Task, check_vocab_size, hex_symbols, register


@register
class Reverse(Task):
    """Reverse the input: n symbols drawn uniformly from ``vocab_size`` -> the same n, backwards.

    Length n: the number of input symbols; the target has n symbols too. Vocabulary:
    ``vocab_size`` symbols, shown as hex digits. Example (vocab 16):
    ``<bos> 3 f 0 <sep> 0 f 3 <eos>``. "Reverse string" in Delétang et al. 2023 (binary
    there) and "reverse" in Kazemnejad et al. 2023.
    """

    name = "reverse"
    description = "write the n input symbols backwards"

    def __init__(self, vocab_size: int = 16) -> None:
        check_vocab_size(self.name, vocab_size, 2)
        self.vocab_size = vocab_size

    @property
    def symbols(self) -> list[str]:
        return hex_symbols(self.vocab_size)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        inputs = rng.integers(0, self.vocab_size, size=n).tolist()
        return inputs, self.solve(inputs)

    def solve(self, inputs: list[int]) -> list[int]:
        return inputs[::-1]
