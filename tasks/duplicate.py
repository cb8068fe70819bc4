"""Duplicate: write the input twice."""

from __future__ import annotations

from posenc.tasks.base import SymbolTask, register


@register
class Duplicate(SymbolTask):
    """Write the input twice: n symbols w -> w w (2n symbols).

    Length n: the number of input symbols; the target has 2n. Vocabulary: ``vocab_size``
    symbols, shown as hex digits. Example (vocab 16): ``<bos> 3 f 0 <sep> 3 f 0 3 f 0 <eos>``.
    "Duplicate string" in Delétang et al. 2023 (binary there).
    """

    name = "duplicate"
    description = "write the n input symbols twice"

    def solve(self, inputs: list[int]) -> list[int]:
        return [*inputs, *inputs]
