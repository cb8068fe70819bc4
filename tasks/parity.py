"""Parity: is the number of 1s in a bit string odd?"""

from __future__ import annotations

import numpy as np

from posenc.tasks.base import Task, register


@register
class Parity(Task):
    """Parity of the number of 1s in n uniform random bits: one answer token, ``1`` if odd.

    Length n: the number of input bits; the target is a single token (``0`` even, ``1``
    odd). Vocabulary: ``0`` and ``1``. Example: ``<bos> 1 0 1 1 <sep> 1 <eos>``.
    "Parity check" in Delétang et al. 2023 and "parity" in Kazemnejad et al. 2023. The task
    has no parameters.
    """

    name = "parity"
    description = "parity of the number of 1s in n bits (one answer token)"

    def __init__(self) -> None:
        pass

    @property
    def symbols(self) -> list[str]:
        return ["0", "1"]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        bits = rng.integers(0, 2, size=n)
        return bits.tolist(), [int(bits.sum()) % 2]

    def solve(self, inputs: list[int]) -> list[int]:
        odd = 0
        for bit in inputs:
            odd ^= bit
        return [odd]
