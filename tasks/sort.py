"""Sort: the input symbols in ascending order."""

from __future__ import annotations

import numpy as np

from posenc.tasks.base import SymbolTask, register


@register
class Sort(SymbolTask):
    """Sort the input: n symbols drawn uniformly (repeats allowed) -> the same n, ascending.

    Length n: the number of input symbols; the target has n. Vocabulary: ``vocab_size``
    symbols ordered by id, shown as hex digits. Example (vocab 16):
    ``<bos> 3 f 0 3 <sep> 0 3 3 f <eos>``. "Sort" in Kazemnejad et al. 2023; with a small
    alphabet this is Delétang et al.'s bucket sort (see `bucket_sort`).
    """

    name = "sort"
    description = "the n input symbols in ascending order"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        inputs = rng.integers(0, self.vocab_size, size=n)
        return inputs.tolist(), np.sort(inputs).tolist()

    def solve(self, inputs: list[int]) -> list[int]:
        # counting sort, written out: the reference must not share code with `sample`
        counts = [0] * self.vocab_size
        for s in inputs:
            counts[s] += 1
        return [s for s in range(self.vocab_size) for _ in range(counts[s])]
