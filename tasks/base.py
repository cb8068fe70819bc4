"""The task interface and its registry.

A task knows its symbols and draws ``(input, target)`` pairs for a length ``n`` from a
seeded ``numpy.random.Generator``. Symbols are task-local integers ``0 .. len(symbols)-1``;
`posenc.tasks.format` maps them to model token ids after the special tokens. Contract: where
natural, the input's length depends on ``n`` only (every example of one length then shares
a prompt length; the evaluator groups by input length, so a task such as variable-digit
addition may vary it), and ``solve(input)`` is a plain reference solver the tests check
``sample`` against.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from posenc.errors import ConfigError


@dataclass(frozen=True)
class Numbers:
    """How a task writes numbers: which symbols are digits and in which order.

    Encodings that place a digit by its significance (abacus, coupled) read this.
    """

    digits: tuple[int, ...]  # symbol ids of the digits
    prompt_lsb_first: bool  # numbers in the input least-significant digit first
    answer_lsb_first: bool  # numbers in the target least-significant digit first
    # Another token between every two digits of a number (index hints): a number is then no
    # run of consecutive digits, which is how abacus and coupled find its digits' places.
    interleaved: bool = False


class Task:
    """Base class: subclasses set ``name``/``description`` and implement ``sample``/``solve``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    min_length: ClassVar[int] = 1
    max_length: ClassVar[int | None] = None
    # Inline answers: the sequence is ``[BOS] input [EOS]`` and the answers are scored at
    # the predictions made right after the input positions `answer_positions` names (one
    # per target symbol), instead of after ``[SEP]`` (`posenc.tasks.format.SequenceFormat`).
    inline: ClassVar[bool] = False
    scored: ClassVar[str] = ""  # inline tasks: which predictions are scored, in words (reports)

    @property
    def symbols(self) -> list[str]:
        """Display names of the task's symbols; their index is the symbol id."""
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """One (input, target) pair of length ``n``."""
        raise NotImplementedError

    def solve(self, inputs: list[int]) -> list[int]:
        """The target for ``inputs``, computed plainly (the reference solver)."""
        raise NotImplementedError

    def sample_eval(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """One pair of the frozen evaluation sets: `sample`, unless a task evaluates on
        another distribution than it trains on (flip_flop's ``eval_p_ignore``)."""
        return self.sample(n, rng)

    def answer_positions(self, inputs: list[int]) -> list[int]:
        """Inline tasks: the input indices i whose next prediction (made after reading
        ``inputs[i]``) is scored, in order, one per target symbol."""
        raise NotImplementedError(f"task {self.name!r} answers after [SEP], not inline")

    def max_sequence_length(self, n: int, rng: np.random.Generator) -> int:
        """An upper bound on len(``[BOS] input [SEP] target [EOS]``) at length ``n``.

        The default takes the longest of 64 samples; override it when the longest case is
        rare, so `posenc.run.planning.plan` can check it against ``model.max_len`` up front.
        """
        from posenc.tasks.format import sequence_length

        if self.inline:  # [BOS] input [EOS]
            return max(len(self.sample(n, rng)[0]) + 2 for _ in range(64))
        return max(sequence_length(*map(len, self.sample(n, rng))) for _ in range(64))

    def numbers(self) -> Numbers | None:
        """How the task writes numbers, or None if it writes none (the default)."""
        return None

    def params(self) -> dict[str, Any]:
        """Every parameter that changes the data (part of the evaluation-set cache key)."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def check_length(self, n: int, what: str = "length") -> None:
        """Raise a `ConfigError` if this task cannot make examples of length ``n``."""
        hi = self.max_length
        if n < self.min_length or (hi is not None and n > hi):
            bound = f"[{self.min_length}, {hi}]" if hi is not None else f">= {self.min_length}"
            raise ConfigError(f"task {self.name!r} cannot make {what} {n}; valid lengths: {bound}")


class SymbolTask(Task):
    """A task over n symbols drawn uniformly from ``vocab_size`` plain symbols (hex digits).

    Subclasses give ``solve``; ``sample`` draws the input and applies it. A subclass with
    another default vocabulary overrides ``__init__`` with that default and calls this one.
    """

    def __init__(self, vocab_size: int = 16) -> None:
        check_vocab_size(self.name, vocab_size, 2)
        self.vocab_size = vocab_size

    @property
    def symbols(self) -> list[str]:
        return hex_symbols(self.vocab_size)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The n input symbols."""
        return rng.integers(0, self.vocab_size, size=n)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        inputs = self.draw(n, rng).tolist()
        return inputs, self.solve(inputs)


_TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: register a task under its ``name``."""
    if not cls.name or cls.name in _TASKS:
        raise ValueError(f"task name {cls.name!r} is empty or registered twice")
    _TASKS[cls.name] = cls
    return cls


def register_plugin(name: str, obj: Any, dist: str) -> None:
    """Register the class an installed package declares under entry point ``name``
    (`posenc.plugins`); raises for one that is not a task or takes another task's name."""
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise TypeError(f"{obj!r} is not a subclass of posenc.tasks.base.Task")
    if obj.name and obj.name != name:
        raise ValueError(f"the class names itself {obj.name!r}, not {name!r}")
    known = _TASKS.get(name)
    if known is not None and known is not obj:
        raise ValueError(f"the name {name!r} is taken by {known.__module__}")
    if known is None:
        obj.name = name
        register(obj)


def names() -> list[str]:
    return sorted(_TASKS)


def task_class(name: str) -> type[Task]:
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; valid choices: {', '.join(names())}")
    return _TASKS[name]


def build(name: str, **params: Any) -> Task:
    """Build task ``name``; an unknown parameter raises a `ConfigError` listing the valid ones."""
    cls = task_class(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"task {name!r} has no parameter {unknown[0]!r}; valid parameters: "
            f"{', '.join(valid) or 'none'}"
        )
    return cls(**params)


def check_int(name: str, param: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """Raise a `ConfigError` unless ``value`` is an integer in ``[minimum, maximum]``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if ok and (maximum is None or value <= maximum):
        return
    valid = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    raise ConfigError(f"task {name!r} needs task.{param} {valid}, got {value!r}")


def check_bool(name: str, param: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"task {name!r} needs task.{param} true or false, got {value!r}")


# The most symbols a task parameter may ask for (vocab_size, n_keys, n_values). The
# vocabulary is built as a Python list of names before posenc.memory can size the embedding
# table, so 10^10 symbols filled the machine's memory; 2^20 takes a fraction of a second and
# is far past any task in the literature (Zoology's MQAR uses 8,192 keys). What the
# embedding table of an allowed vocabulary needs, posenc.memory checks.
MAX_SYMBOLS = 2**20


def check_symbols(name: str, param: str, value: int) -> None:
    """Raise a `ConfigError` if ``value`` symbols (an integer already checked) exceed
    `MAX_SYMBOLS`."""
    if value > MAX_SYMBOLS:
        raise ConfigError(
            f"task {name!r} needs task.{param} <= {MAX_SYMBOLS:,} (the most symbols a task "
            f"may have), got {value!r}"
        )


def check_vocab_size(name: str, vocab_size: int, minimum: int, maximum: int | None = None) -> None:
    check_int(name, "vocab_size", vocab_size, minimum, maximum)
    check_symbols(name, "vocab_size", vocab_size)


def hex_symbols(k: int) -> list[str]:
    """Names of ``k`` plain symbols: hex digits up to 16, decimal numbers beyond."""
    return [format(i, "x") if k <= 16 else str(i) for i in range(k)]
