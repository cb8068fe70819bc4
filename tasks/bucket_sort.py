"""Bucket sort: sort over a small alphabet (Delétang et al. 2023)."""

from __future__ import annotations

from posenc.tasks.base import register
from posenc.tasks.sort import Sort


@register
class BucketSort(Sort):
    """Sort n symbols from a small alphabet (default 5, as in Delétang et al. 2023).

    The same task as `sort` with Delétang et al.'s setting: many repeats per symbol, so the
    model must count occurrences rather than order distinct items. Length n: the number of
    input symbols; the target has n. Example (vocab 5): ``<bos> 1 0 2 0 4 <sep> 0 0 1 2 4 <eos>``.
    """

    name = "bucket_sort"
    description = "sort n symbols from a small alphabet (Delétang et al.)"

    def __init__(self, vocab_size: int = 5) -> None:
        super().__init__(vocab_size)
