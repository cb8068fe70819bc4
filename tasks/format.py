"""Shared sequence format: ``[BOS] input [SEP] target [EOS]``, right padding, loss mask.

Token ids: 0 = PAD, 1 = BOS, 2 = SEP, 3 = EOS, then the task's symbols from 4 on.
The loss (and every accuracy) covers the target tokens and the EOS only.
"""

from __future__ import annotations

PAD, BOS, SEP, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<sep>", "<eos>")
N_SPECIAL = len(SPECIALS)
FORMAT_VERSION = 1  # bump whenever the stored evaluation data would change


def vocab_size(n_symbols: int) -> int:
    return N_SPECIAL + n_symbols


def prompt_ids(inputs: list[int]) -> list[int]:
    """``[BOS] input [SEP]``: what the model is given before it answers."""
    return [BOS, *(N_SPECIAL + s for s in inputs), SEP]


def answer_ids(target: list[int]) -> list[int]:
    """``target [EOS]``: what the model must produce."""
    return [*(N_SPECIAL + s for s in target), EOS]


def sequence_length(input_len: int, target_len: int) -> int:
    return input_len + target_len + 3


def render(ids: list[int], symbols: list[str], sep: str = " ") -> str:
    """Token ids -> readable text, e.g. ``<bos> 3 1 4 <sep> 3 1 4 <eos>``."""
    return sep.join(SPECIALS[i] if i < N_SPECIAL else symbols[i - N_SPECIAL] for i in ids)
