"""Reverse: write the input backwards."""

from __future__ import annotations

from posenc.tasks.base import SymbolTask, register


@register
class Reverse(SymbolTask):
    """Reverse the input: n symbols drawn uniformly from ``vocab_size`` -> the same n, backwards.

    Length n: the number of input symbols; the target has n symbols too. Vocabulary:
    ``vocab_size`` symbols, shown as hex digits. Example (vocab 16):
    ``<bos> 3 f 0 <sep> 0 f 3 <eos>``. "Reverse string" in Delétang et al. 2023 (binary
    there) and "reverse" in Kazemnejad et al. 2023.
    """

    name = "reverse"
    description = "write the n input symbols backwards"

    def solve(self, inputs: list[int]) -> list[int]:
        return inputs[::-1]
