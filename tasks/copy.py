"""Copy: repeat the input."""

from __future__ import annotations

import numpy as np

from tasks.base import Task, check_vocab_size, register


@register
class Copy(Task):
    """Copy the input: n symbols drawn uniformly from ``vocab_size`` symbols -> the same n.

    Length n: the number of input symbols. Example (vocab 16):
    ``<bos> 3 f 0 <sep> 3 f 0 <eos>``. Used by Kazemnejad et al. 2023. (Delétang et al. 2023's
    "duplicate string" writes the input twice: that is the `duplicate` task.)
    """

    name = "copy"
    description = "repeat the n input symbols"

    def __init__(self, vocab_size: int = 16) -> None:
        check_vocab_size(self.name, vocab_size, 2)
        self.vocab_size = vocab_size

    @property
    def symbols(self) -> list[str]:
        return [format(i, "x") if self.vocab_size <= 16 else str(i) for i in range(self.vocab_size)]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        inputs = rng.integers(0, self.vocab_size, size=n).tolist()
        return inputs, self.solve(inputs)

    def solve(self, inputs: list[int]) -> list[int]:
        return list(inputs)
