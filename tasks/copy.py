"""Copy: repeat the input."""

from __future__ import annotations

from posenc.tasks.base import SymbolTask, register


@register
class Copy(SymbolTask):
    """Copy the input: n symbols drawn uniformly from ``vocab_size`` symbols -> the same n.

    Length n: the number of input symbols. Example (vocab 16):
    ``<bos> 3 f 0 <sep> 3 f 0 <eos>``. Used by Kazemnejad et al. 2023. (Delétang et al. 2023's
    "duplicate string" writes the input twice: that is the `duplicate` task.)
    """

    name = "copy"
    description = "repeat the n input symbols"

    def solve(self, inputs: list[int]) -> list[int]:
        return list(inputs)
