"""Associative recall: key-value pairs, then a query key; answer its value."""

from __future__ import annotations

import numpy as np

from posenc.errors import ConfigError
from posenc.tasks.base import Task, check_int, check_symbols, register


@register
class AssociativeRecall(Task):
    """n key-value pairs with distinct keys, then one of the keys again -> its value.

    Length n: the number of pairs. Input ``k_1 v_1 k_2 v_2 ... k_n v_n q`` (2n+1 symbols),
    where the keys are n distinct keys drawn from ``n_keys``, the values are drawn uniformly
    (repeats allowed) from ``n_values``, and the query q is one of the n keys, chosen
    uniformly; the target is its value (one token). Vocabulary: keys ``k0 .. k{n_keys-1}``
    (ids 0..n_keys-1), then values shown as digits when ``n_values <= 10``, else
    ``v0 ..``. So n can be at most ``n_keys``. Example: ``<bos> k3 7 k9 1 k3 <sep> 7 <eos>``.
    From Ba et al. 2016 ("Using Fast Weights to Attend to the Recent Past") and the
    multi-query recall of Arora et al. 2024 (Zoology), here with a single query.
    """

    name = "associative_recall"
    description = "n key-value pairs, then a key: answer its value"

    def __init__(self, n_keys: int = 64, n_values: int = 10) -> None:
        check_int(self.name, "n_keys", n_keys, 1)
        check_symbols(self.name, "n_keys", n_keys)
        check_int(self.name, "n_values", n_values, 2)
        check_symbols(self.name, "n_values", n_values)
        self.n_keys = n_keys
        self.n_values = n_values
        self.max_length = n_keys  # one distinct key per pair

    @property
    def symbols(self) -> list[str]:
        keys = [f"k{i}" for i in range(self.n_keys)]
        values = [str(i) if self.n_values <= 10 else f"v{i}" for i in range(self.n_values)]
        return keys + values

    def check_length(self, n: int, what: str = "length") -> None:
        if n > self.n_keys:
            raise ConfigError(
                f"task {self.name!r} cannot make {what} {n}: {n} pairs need {n} distinct keys "
                f"but task.n_keys={self.n_keys}; valid lengths: [1, {self.n_keys}]"
            )
        super().check_length(n, what)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        keys = rng.choice(self.n_keys, size=n, replace=False).tolist()
        values = (self.n_keys + rng.integers(0, self.n_values, size=n)).tolist()
        q = int(rng.integers(0, n))
        inputs = [s for pair in zip(keys, values, strict=True) for s in pair] + [keys[q]]
        return inputs, [values[q]]

    def solve(self, inputs: list[int]) -> list[int]:
        query = inputs[-1]
        for i in range(0, len(inputs) - 1, 2):
            if inputs[i] == query:
                return [inputs[i + 1]]
        raise ValueError(f"query key {query} is not among the pairs")
