"""Duplicate: write the input twice."""

from __future__ import annotations

import numpy as np

from tasks.base import Task, check_vocab_size, hex_symbols, register


@register
class Duplicate(Task):
    """Write the input twice: n symbols w -> w w (2n symbols).

    Length n: the number of input symbols; the target has 2n. Vocabulary: ``vocab_size``
    symbols, shown as hex digits. Example (vocab 16): ``<bos> 3 f 0 <sep> 3 f 0 3 f 0 <eos>``.
    "Duplicate string" in Delétang et al. 2023 (binary there).
    """

    name = "duplicate"
    description = "write the n input symbols twice"

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
        return [*inputs, *inputs]
