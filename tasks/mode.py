"""Mode: the most frequent symbol."""

from __future__ import annotations

import numpy as np

from posenc.tasks.base import SymbolTask, register


@register
class Mode(SymbolTask):
    """n symbols -> the most frequent one; a tie goes to the smallest symbol id.

    Length n: the number of input symbols, drawn uniformly from ``vocab_size``; the target
    is one token. Ties are common (for n = 1 every symbol present ties), so the rule is part
    of the task: among the symbols with the highest count, the one with the smallest id
    (the first in ``posenc data show``'s alphabet: 0 < 1 < ... < f). With ``vocab_size=2``
    this is majority of a bit string (ties -> 0). Example (vocab 4):
    ``<bos> 3 1 3 0 1 <sep> 1 <eos>`` (1 and 3 tie; 1 is smaller). "Mode" is one of the
    tasks of Zhou et al. 2023 ("What Algorithms can Transformers Learn?").
    """

    name = "mode"
    description = "the most frequent of n symbols (ties: the smallest symbol)"

    def __init__(self, vocab_size: int = 4) -> None:
        super().__init__(vocab_size)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        inputs = rng.integers(0, self.vocab_size, size=n)
        # argmax returns the first maximum, i.e. the smallest id among ties
        return inputs.tolist(), [int(np.bincount(inputs, minlength=self.vocab_size).argmax())]

    def solve(self, inputs: list[int]) -> list[int]:
        counts: dict[int, int] = {}
        for s in inputs:
            counts[s] = counts.get(s, 0) + 1
        best = max(counts.values())
        return [min(s for s, c in counts.items() if c == best)]
