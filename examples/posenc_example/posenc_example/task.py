"""``rotate_left``: the input rotated left by ``shift`` symbols."""

from __future__ import annotations

from posenc.tasks.base import SymbolTask, check_int


class RotateLeft(SymbolTask):
    """Rotate left: the n input symbols shifted left by ``shift``, wrapping around.

    <bos> 3 f 0 a <sep> f 0 a 3 <eos> (shift 1). Every parameter of ``__init__`` is a
    ``task.KEY`` override and part of the evaluation-set cache key.
    """

    description = "rotate the input left by `shift` symbols (wrapping around)"

    def __init__(self, vocab_size: int = 8, shift: int = 1) -> None:
        super().__init__(vocab_size)
        check_int("rotate_left", "shift", shift, 0)
        self.shift = shift

    def solve(self, inputs: list[int]) -> list[int]:
        s = self.shift % len(inputs) if inputs else 0
        return list(inputs[s:]) + list(inputs[:s])
