"""Odds first: the symbols at odd positions, then those at even positions."""

from __future__ import annotations

from posenc.tasks.base import SymbolTask, register


@register
class OddsFirst(SymbolTask):
    """Odd positions first: s_1 s_2 ... s_n -> s_1 s_3 s_5 ... s_2 s_4 ... (1-based positions).

    Length n: the number of input symbols; the target has n. Vocabulary: ``vocab_size``
    symbols, shown as hex digits. Example (vocab 16): ``<bos> 1 2 3 4 5 <sep> 1 3 5 2 4 <eos>``.
    "Odds first" in Delétang et al. 2023 (binary there). Their paper and docstring define it
    with 1-based positions as here (``00110101 -> 0100 0111``); their code takes the 0-based
    odd indices first, i.e. the other half first. We follow the paper.
    """

    name = "odds_first"
    description = "symbols at odd positions (1st, 3rd, ...), then those at even positions"

    def solve(self, inputs: list[int]) -> list[int]:
        odd = [s for i, s in enumerate(inputs, start=1) if i % 2 == 1]
        even = [s for i, s in enumerate(inputs, start=1) if i % 2 == 0]
        return odd + even
