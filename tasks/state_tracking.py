"""State tracking by permutation composition (Merrill et al. 2024; Grazzi et al. 2025)."""

from __future__ import annotations

import itertools
import re
from functools import cached_property

import numpy as np

from posenc.errors import ConfigError
from posenc.tasks.base import Task, register

ANSWERS = ("every", "final")
GROUPS = "S3, S4, S5, A4, A5 or Z<m> with 2 <= m <= 120"


def _is_even(p: tuple[int, ...]) -> bool:
    inversions = sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))
    return inversions % 2 == 0


def group_elements(group: str) -> list[tuple[int, ...]]:
    """The elements of ``group`` as permutations in one-line notation, identity first.

    S_k: every permutation of 0..k-1 in lexicographic order; A_k: the even ones; Z_m: the
    rotations x -> x + j mod m, j = 0..m-1 (so every group composes the same way).
    """
    m = re.fullmatch(r"([SAZ])(\d+)", group) if isinstance(group, str) else None
    if m and m.group(1) in "SA" and m.group(2) in ("3", "4", "5"):
        k = int(m.group(2))
        perms = list(itertools.permutations(range(k)))
        return perms if m.group(1) == "S" else [p for p in perms if _is_even(p)]
    if m and m.group(1) == "Z" and 2 <= int(m.group(2)) <= 120 and not m.group(2).startswith("0"):
        k = int(m.group(2))
        return [tuple((x + j) % k for x in range(k)) for j in range(k)]
    raise ConfigError(f"task 'state_tracking' has no group {group!r}; valid groups: {GROUPS}")


@register
class StateTracking(Task):
    """n elements of a permutation group; the running product after each (or only the last).

    Length n: the number of group elements, drawn uniformly. The product of g_1 .. g_t is
    the composition p_t = p_{t-1} ∘ g_t (apply g_t first), p_0 the identity. Answers are
    inline: with ``answers=every`` the prediction after reading g_t must be p_t, for every
    t (the paper's protocol: a label at every position); with ``answers=final`` only p_n is
    scored. The answers are never fed back: the model sees only the g's. Groups (``group``):
    ``S5`` (120 elements, not solvable: the hard case), ``A5`` (60, not solvable), ``S3``,
    ``S4``, ``A4``, and the cyclic ``Z<m>`` (the easy, abelian control). Vocabulary: the
    elements, shown in one-line notation for S/A (``120`` maps 0->1, 1->2, 2->0) and as
    0..m-1 for Z_m. Example (Z5, every), scored after each element:
    ``<bos> 2 4 1 <eos> answers: 2 1 2``; from Merrill, Petty, Sabharwal 2024 ("The Illusion of State in
    State-Space Models") and Grazzi et al. 2025 ("Unlocking State-Tracking in Linear RNNs
    Through Negative Eigenvalues").
    """

    name = "state_tracking"
    description = "a sequence of permutations (S5, A5, Z_m): the running product (inline answers)"
    inline = True
    scored = "the running product after every element (answers=every) or the last"

    def __init__(self, group: str = "S5", answers: str = "every") -> None:
        self.elements = group_elements(group)
        if answers not in ANSWERS:
            raise ConfigError(
                f"task {self.name!r} needs task.answers in {', '.join(ANSWERS)}, got {answers!r}"
            )
        self.group = group
        self.answers = answers

    @property
    def symbols(self) -> list[str]:
        if self.group.startswith("Z"):
            return [str(p[0]) for p in self.elements]
        return ["".join(map(str, p)) for p in self.elements]

    @cached_property
    def table(self) -> np.ndarray:
        """Cayley table: table[a, b] = index of elements[a] ∘ elements[b]."""
        index = {p: i for i, p in enumerate(self.elements)}
        size = len(self.elements)
        out = np.empty((size, size), dtype=np.int64)
        for a, pa in enumerate(self.elements):
            for b, pb in enumerate(self.elements):
                out[a, b] = index[tuple(pa[x] for x in pb)]
        return out

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        g = rng.integers(0, len(self.elements), size=n)
        prefix, state = [], 0  # element 0 is the identity
        for x in g.tolist():
            state = int(self.table[state, x])
            prefix.append(state)
        return g.tolist(), prefix if self.answers == "every" else prefix[-1:]

    def answer_positions(self, inputs: list[int]) -> list[int]:
        return list(range(len(inputs))) if self.answers == "every" else [len(inputs) - 1]

    def solve(self, inputs: list[int]) -> list[int]:
        index = {p: i for i, p in enumerate(self.elements)}
        k = len(self.elements[0])
        state = tuple(range(k))
        out = []
        for x in inputs:
            g = self.elements[x]
            state = tuple(state[g[i]] for i in range(k))  # (state ∘ g)(i) = state(g(i))
            out.append(index[state])
        return out if self.answers == "every" else out[-1:]
