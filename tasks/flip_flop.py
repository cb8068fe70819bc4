"""Flip-flop language modelling (Liu et al. 2023): after each read, the last written bit."""

from __future__ import annotations

import numpy as np

from posenc.errors import ConfigError
from posenc.tasks.base import Task, register

WRITE, READ, IGNORE, ZERO, ONE = range(5)  # symbol ids: the three instructions, then the two bits


def check_probability(name: str, param: str, value: object, nullable: bool = False) -> None:
    """Raise a `ConfigError` unless ``value`` is a number in [0, 1) (or None if allowed)."""
    if nullable and value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
    if not ok:
        null = " or null" if nullable else ""
        raise ConfigError(f"task {name!r} needs task.{param} in [0, 1){null}, got {value!r}")


@register
class FlipFlop(Task):
    """A write, then n instructions ending in a read; after every read, the last written bit.

    Length n: the number of instructions after the opening ``w b``. Each instruction is a
    pair: ``w b`` (write bit b), ``i b`` (ignore; b is noise) or ``r b`` (read; b is the
    bit of the most recent ``w``). The n instructions are ``i`` with probability
    ``p_ignore`` and ``w`` or ``r`` with (1 - p_ignore)/2 each, except the last, which is
    always ``r``; every written and ignored bit is uniform. So the input has 2n + 2 symbols.
    Answers are inline: the model is scored on its prediction right after each ``r`` (the
    read bit, which is the next token of the stream), not after a separator; the target
    lists those bits in order, and every other position is neither trained nor scored.
    ``eval_p_ignore`` draws the frozen evaluation sets with another density (the paper's
    sparse and dense out-of-distribution splits); null uses ``p_ignore``.
    Vocabulary: ``w r i 0 1``. Example (n = 3), scored at the ``r``:
    ``<bos> w 1 i 0 w 0 r 0 <eos> answers: 0``; from Liu, Ash, Goel, Krishnamurthy, Zhang 2023 ("Exposing
    Attention Glitches with Flip-Flop Language Modeling"), FFL(p_i).
    """

    name = "flip_flop"
    description = "w/i/r bit instructions: after every read, the last written bit (inline answers)"
    inline = True
    scored = "the bit after every read (r)"

    def __init__(self, p_ignore: float = 0.8, eval_p_ignore: float | None = None) -> None:
        check_probability(self.name, "p_ignore", p_ignore)
        check_probability(self.name, "eval_p_ignore", eval_p_ignore, nullable=True)
        self.p_ignore = p_ignore
        self.eval_p_ignore = eval_p_ignore

    @property
    def symbols(self) -> list[str]:
        return ["w", "r", "i", "0", "1"]

    def _draw(
        self, n: int, rng: np.random.Generator, p_ignore: float
    ) -> tuple[list[int], list[int]]:
        p_wr = (1 - p_ignore) / 2
        ops = rng.choice(3, size=n, p=[p_wr, p_wr, p_ignore])  # WRITE, READ, IGNORE
        ops[-1] = READ
        bits = rng.integers(0, 2, size=n + 1)
        memory = int(bits[0])
        inputs, target = [WRITE, ZERO + memory], []
        for op, bit in zip(ops.tolist(), bits[1:].tolist(), strict=True):
            if op == WRITE:
                memory = bit
            elif op == READ:
                bit = memory
                target.append(ZERO + bit)
            inputs += [op, ZERO + bit]
        return inputs, target

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        return self._draw(n, rng, self.p_ignore)

    def sample_eval(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        p = self.p_ignore if self.eval_p_ignore is None else self.eval_p_ignore
        return self._draw(n, rng, p)

    def answer_positions(self, inputs: list[int]) -> list[int]:
        return [i for i in range(0, len(inputs), 2) if inputs[i] == READ]

    def solve(self, inputs: list[int]) -> list[int]:
        out, memory = [], None
        for k in range(0, len(inputs), 2):
            op, bit = inputs[k], inputs[k + 1]
            if op == WRITE:
                memory = bit
            elif op == READ:
                if memory is None:
                    raise ValueError("a read before any write")
                out.append(memory)  # the written bit, not the stream's (which it must equal)
        return out
