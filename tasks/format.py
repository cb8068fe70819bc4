"""Shared sequence format: ``[BOS] input [SEP] target [EOS]``, right padding, loss mask.

Token ids: 0 = PAD, 1 = BOS, 2 = SEP, 3 = EOS, then the task's symbols from 4 on.
The loss (and every accuracy) covers the answer: the target tokens and the EOS.

`SequenceFormat` holds the two choices a config can change (``task.answer``, ``task.bos``):
``answer=known_length`` drops the EOS, so the answer is exactly ``len(target)`` tokens and
greedy decoding generates that many (the hand-written loop of the ALiBi trial in
REFERENCES.md does this); ``bos=false`` drops the leading BOS, so the input starts at
position 0. Neither changes the stored evaluation data (raw input and target symbols), so
the evaluation-set cache key does not include them.

A task with inline answers (``Task.inline``: flip_flop, mqar, state_tracking) is laid out
as ``[BOS] input [EOS]`` instead, and scored where its ``answer_positions`` say: the
prediction made right after input position i must be the next target symbol. Its labels
are then not always the next input token (state_tracking's running products are never
fed back), so `layout` returns them beside the tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from posenc.errors import ConfigError
from posenc.tokens import BOS, EOS, N_SPECIAL, PAD, SEP, SPECIALS  # noqa: F401  (the format's)

FORMAT_VERSION = 1  # bump whenever the stored evaluation data would change
ANSWERS = ("eos", "known_length")


def vocab_size(n_symbols: int) -> int:
    return N_SPECIAL + n_symbols


@dataclass(frozen=True)
class SequenceFormat:
    """How an (input, target) pair becomes tokens: ``[BOS]? input [SEP] target [EOS]?``."""

    answer: str = "eos"  # "eos": the answer ends with EOS; "known_length": no EOS
    bos: bool = True  # start with BOS
    # the task's answer_positions when its answers are inline (then `answer` is unused)
    inline: Callable[[list[int]], list[int]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise ConfigError(
                f"unknown task.answer {self.answer!r}; valid choices: {', '.join(ANSWERS)}"
            )
        if not isinstance(self.bos, bool):
            raise ConfigError(f"task.bos must be true or false, got {self.bos!r}")

    @classmethod
    def from_config(cls, task_cfg) -> SequenceFormat:
        """The format of a config's ``task.answer`` and ``task.bos`` (checked)."""
        return cls(answer=str(task_cfg.answer), bos=task_cfg.bos)

    def prompt_ids(self, inputs: list[int]) -> list[int]:
        """``[BOS] input [SEP]``: what the model is given before it answers."""
        return [*([BOS] if self.bos else []), *(N_SPECIAL + s for s in inputs), SEP]

    def answer_ids(self, target: list[int]) -> list[int]:
        """``target [EOS]`` (``target`` for known_length): what the model must produce."""
        return [*(N_SPECIAL + s for s in target), *([EOS] if self.answer == "eos" else [])]

    def sequence_length(self, input_len: int, target_len: int) -> int:
        if self.inline is not None:
            return input_len + 1 + self.bos
        return input_len + target_len + 1 + self.bos + (self.answer == "eos")

    def for_task(self, task) -> SequenceFormat:
        """This format for ``task``: inline when the task answers inline (then
        ``task.answer=known_length`` is refused: there is no EOS to drop)."""
        if task.inline and self.answer != "eos":
            raise ConfigError(
                f"task.answer={self.answer} does nothing on task {task.name!r}: its answers "
                "are inline, with no EOS to drop; leave task.answer=eos"
            )
        return replace(self, inline=task.answer_positions) if task.inline else self

    def layout(
        self, inputs: list[int], target: list[int]
    ) -> tuple[list[int], list[int], list[bool]]:
        """(tokens, labels, scored): ``labels[k]`` is what prediction k (made after reading
        ``tokens[: k + 1]``) must be, ``scored[k]`` whether it is trained and scored."""
        if self.inline is None:
            prompt = self.prompt_ids(inputs)
            ids = prompt + self.answer_ids(target)
            scored = [k >= len(prompt) - 1 for k in range(len(ids) - 1)]
            return ids, ids[1:], scored
        ids = [*([BOS] if self.bos else []), *(N_SPECIAL + s for s in inputs), EOS]
        labels, scored = ids[1:], [False] * (len(ids) - 1)
        positions = self.inline(inputs)
        if len(positions) != len(target):
            raise ValueError(f"{len(positions)} answer positions for {len(target)} answers")
        for i, answer in zip(positions, target, strict=True):
            k = i + self.bos  # the prediction made after reading input i
            labels[k], scored[k] = N_SPECIAL + answer, True
        return ids, labels, scored

    def render_example(self, inputs: list[int], target: list[int], symbols: list[str]) -> str:
        """One example as text: the whole sequence, and for inline answers the answers."""
        if self.inline is None:
            return render(self.prompt_ids(inputs) + self.answer_ids(target), symbols)
        ids = self.layout(inputs, target)[0]
        return (
            f"{render(ids, symbols)}   answers: {render([N_SPECIAL + s for s in target], symbols)}"
        )


DEFAULT_FORMAT = SequenceFormat()


def prompt_ids(inputs: list[int]) -> list[int]:
    """``[BOS] input [SEP]`` in the default format."""
    return DEFAULT_FORMAT.prompt_ids(inputs)


def answer_ids(target: list[int]) -> list[int]:
    """``target [EOS]`` in the default format."""
    return DEFAULT_FORMAT.answer_ids(target)


def sequence_length(input_len: int, target_len: int) -> int:
    """Tokens in the default format (the longest of the formats: an upper bound for all)."""
    return DEFAULT_FORMAT.sequence_length(input_len, target_len)


def render(ids: list[int], symbols: list[str], sep: str = " ") -> str:
    """Token ids -> readable text, e.g. ``<bos> 3 1 4 <sep> 3 1 4 <eos>``."""
    return sep.join(SPECIALS[i] if i < N_SPECIAL else symbols[i - N_SPECIAL] for i in ids)
