"""Multi-query associative recall (Arora et al. 2023, Zoology): every key queried, in-stream."""

from __future__ import annotations

import numpy as np

from posenc.errors import ConfigError
from posenc.tasks.base import Task, check_int, check_symbols, register


@register
class MultiQueryRecall(Task):
    """n key-value pairs, then every key queried once in random order, answered in-stream.

    Length n: the number of pairs (and of queries). Input: the context ``k_1 v_1 .. k_n
    v_n`` (n distinct keys from ``n_keys``, values uniform from ``n_values``), then the
    query region: the n query pairs ``k v`` (each key once, shuffled; v its value) mixed
    with ``fillers * n`` filler tokens, drawn uniformly from the values, at uniformly random
    places between the queries. So the input has (4 + fillers)·n symbols. Answers are
    inline: after each queried key the model must predict its value (the next token of the
    stream); the target lists those values in order, and only those positions are trained
    and scored. A filler is never a key, so a key in the query region is always a query.
    Vocabulary: keys ``k0 ..`` then values ``v0 ..``. Example (n = 2, fillers = 1), scored
    after each query key: ``<bos> k3 v1 k0 v2 v0 k0 v2 k3 v1 v2 <eos> answers: v2 v1``; from Arora et al. 2023 ("Zoology: Measuring and Improving Recall in Efficient
    Language Models"); `associative_recall` is its single-query form with the answer at the
    end.
    """

    name = "mqar"
    description = "n key-value pairs, then every key queried in-stream: predict each value"
    inline = True
    scored = "the value after each queried key"

    def __init__(self, n_keys: int = 64, n_values: int = 64, fillers: int = 1) -> None:
        check_int(self.name, "n_keys", n_keys, 1)
        check_symbols(self.name, "n_keys", n_keys)
        check_int(self.name, "n_values", n_values, 2)
        check_symbols(self.name, "n_values", n_values)
        check_int(self.name, "fillers", fillers, 0)
        self.n_keys = n_keys
        self.n_values = n_values
        self.fillers = fillers
        self.max_length = n_keys  # one distinct key per pair

    @property
    def symbols(self) -> list[str]:
        return [f"k{i}" for i in range(self.n_keys)] + [f"v{i}" for i in range(self.n_values)]

    def check_length(self, n: int, what: str = "length") -> None:
        if n > self.n_keys:
            raise ConfigError(
                f"task {self.name!r} cannot make {what} {n}: {n} pairs need {n} distinct keys "
                f"but task.n_keys={self.n_keys}; valid lengths: [1, {self.n_keys}]"
            )
        super().check_length(n, what)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        keys = rng.choice(self.n_keys, size=n, replace=False)
        values = self.n_keys + rng.integers(0, self.n_values, size=n)
        order = rng.permutation(n)
        n_fill = self.fillers * n
        # query slots among n + n_fill items: a sorted random subset keeps the queries in order
        slots = np.zeros(n + n_fill, dtype=bool)
        slots[rng.choice(n + n_fill, size=n, replace=False)] = True
        filler = (self.n_keys + rng.integers(0, self.n_values, size=n_fill)).tolist()
        inputs = np.stack([keys, values], 1).ravel().tolist()
        queries = iter(order.tolist())
        fills = iter(filler)
        for is_query in slots.tolist():
            if is_query:
                q = next(queries)
                inputs += [int(keys[q]), int(values[q])]
            else:
                inputs.append(next(fills))
        return inputs, values[order].tolist()

    def max_sequence_length(self, n: int, rng: np.random.Generator) -> int:
        """Exactly ``[BOS]``, (4 + fillers)·n symbols, ``[EOS]``: counted, not sampled, so a
        huge ``fillers`` is refused by the memory and ``model.max_len`` checks instead of
        drawn (10^10 fillers would fill the machine's memory before either check)."""
        return (4 + self.fillers) * n + 2

    def answer_positions(self, inputs: list[int]) -> list[int]:
        n = len(inputs) // (4 + self.fillers)
        return [i for i in range(2 * n, len(inputs)) if inputs[i] < self.n_keys]

    def solve(self, inputs: list[int]) -> list[int]:
        n = len(inputs) // (4 + self.fillers)
        memory = {}
        for i in range(0, 2 * n, 2):
            memory[inputs[i]] = inputs[i + 1]
        return [memory[inputs[i]] for i in self.answer_positions(inputs)]
