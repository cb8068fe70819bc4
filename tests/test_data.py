"""Sequence format, training stream, frozen evaluation sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posenc import tasks
from posenc.data import (
    TrainStream,
    by_length,
    collate,
    eval_set_key,
    length_buckets,
    load_eval_set,
)
from posenc.tasks.format import BOS, EOS, PAD, SEP, render


def test_collate_formats_pads_and_masks_target_and_eos_only():
    batch = collate([([0, 1], [0, 1]), ([5], [5])])
    assert batch.tokens.tolist() == [
        [BOS, 4, 5, SEP, 4, 5, EOS],
        [BOS, 9, SEP, 9, EOS, PAD, PAD],
    ]
    # labels are tokens[1:]; the mask marks the target tokens and EOS
    assert batch.loss_mask.tolist() == [
        [False, False, False, True, True, True],
        [False, False, True, True, False, False],
    ]
    assert batch.labels[batch.loss_mask].tolist() == [4, 5, EOS, 9, EOS]


def test_render_shows_what_the_model_sees():
    task = tasks.build("copy")
    assert render([BOS, 4, 19, SEP, 4, 19, EOS], task.symbols) == "<bos> 0 f <sep> 0 f <eos>"


def test_train_stream_is_seeded_and_resumable():
    task = tasks.build("copy")
    a = TrainStream(task, 1, 5, 4, seed=3, batching="by_length")
    b = TrainStream(task, 1, 5, 4, seed=3, batching="by_length")
    assert torch.equal(a.next().tokens, b.next().tokens)
    state = a.state()
    x = a.next().tokens
    b.load_state(state)
    assert torch.equal(b.next().tokens, x)
    lengths = [
        (r[1:] != PAD).sum().item()
        for r in TrainStream(task, 3, 3, 5, seed=0, batching="by_length").next().tokens
    ]
    assert lengths == [3 + 1 + 3 + 1] * 5  # input, SEP, target, EOS


def test_eval_set_is_frozen_shared_and_keyed_by_every_parameter(tmp_path):
    copy16, copy8 = tasks.build("copy", vocab_size=16), tasks.build("copy", vocab_size=8)
    a = load_eval_set(copy16, [1, 4], 5, 0, tmp_path)
    b = load_eval_set(copy16, [1, 4], 5, 0, tmp_path)  # from disk
    assert a.to_dict() == b.to_dict()
    assert len(list(tmp_path.iterdir())) == 1
    c = load_eval_set(copy8, [1, 4], 5, 0, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2, "a changed task parameter must not reuse data"
    assert max(max(x) for x in c["input"]) < 8
    keys = {
        eval_set_key(copy16, [1, 4], 5, 0),
        eval_set_key(copy8, [1, 4], 5, 0),
        eval_set_key(copy16, [1, 5], 5, 0),
        eval_set_key(copy16, [1, 4], 6, 0),
        eval_set_key(copy16, [1, 4], 5, 1),
    }
    assert len(keys) == 5
    groups = by_length(a)
    assert sorted(groups) == [1, 4] and all(len(v) == 5 for v in groups.values())
    assert all(len(i) == 4 and i == t for i, t in groups[4])


def test_eval_examples_of_a_length_do_not_depend_on_the_other_lengths(tmp_path):
    task = tasks.build("copy")
    a = by_length(load_eval_set(task, [3, 7], 4, 0, tmp_path))
    b = by_length(load_eval_set(task, [7, 30], 4, 0, tmp_path))
    assert a[7] == b[7]


def test_copy_task_samples_uniform_symbols():
    task = tasks.build("copy", vocab_size=4)
    rng = np.random.default_rng(0)
    inputs, target = task.sample(4000, rng)
    assert inputs == target
    counts = np.bincount(inputs, minlength=4)
    assert counts.min() > 900


def test_by_length_batches_have_one_length_and_no_padding():
    task = tasks.build("copy")
    stream = TrainStream(task, 1, 20, 16, seed=0, batching="by_length")
    lengths = []
    for _ in range(2000):
        b = stream.next()
        assert (b.tokens != PAD).all(), "a one-length batch of copy has no padding"
        n = (b.tokens.shape[1] - 3) // 2
        lengths.append(n)
    counts = np.bincount(lengths, minlength=21)[1:]
    assert counts.min() > 0
    # Uniform over 1..20 across steps: chi-square with 19 dof, p = 0.001 at 43.8.
    expected = len(lengths) / 20
    assert ((counts - expected) ** 2 / expected).sum() < 43.8


def test_mixed_batches_draw_a_length_per_example_and_pad():
    stream = TrainStream(tasks.build("copy"), 1, 20, 64, seed=0, batching="mixed")
    b = stream.next()
    real = (b.tokens != PAD).sum(dim=1)
    assert len(set(real.tolist())) > 5 and (b.tokens == PAD).any()


def _slots_brute_force(lengths: list[int], buckets: int) -> int:
    """The fewest padded slots over every split of the sorted rows into <= buckets runs."""
    from itertools import combinations

    lengths = sorted(lengths)
    n, best = len(lengths), None
    for k in range(1, min(buckets, n) + 1):
        for cuts in combinations(range(1, n), k - 1):
            edges = (0, *cuts, n)
            slots = sum((b - a) * lengths[b - 1] for a, b in zip(edges, edges[1:], strict=False))
            best = slots if best is None else min(best, slots)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("buckets", [1, 2, 3, 5])
def test_length_buckets_keep_every_row_once_with_the_fewest_padded_slots(seed, buckets):
    stream = TrainStream(tasks.build("copy"), 1, 20, 9, seed=seed, batching="bucketed")
    b = stream.next()
    pieces = length_buckets(b, buckets)
    assert 1 <= len(pieces) <= buckets
    real = (b.tokens != PAD).sum(1).tolist()
    assert sum(p.tokens.numel() for p in pieces) == _slots_brute_force(real, buckets)
    # every row exactly once, unchanged but for trailing padding, with its own loss mask
    keys = [tuple(r[r != PAD].tolist()) for r in b.tokens]
    rows = dict(zip(keys, b.loss_mask, strict=True))  # a repeated row has the same mask
    seen = []
    for p in pieces:
        assert (p.tokens[:, -1] != PAD).any(), "a piece is trimmed to its longest row"
        assert p.loss_mask.shape == (p.tokens.shape[0], p.tokens.shape[1] - 1)
        for r, m in zip(p.tokens, p.loss_mask, strict=True):
            key = tuple(r[r != PAD].tolist())
            assert torch.equal(rows[key][: len(m)], m) and not rows[key][len(m) :].any()
            seen.append(key)
    assert sorted(seen) == sorted(keys)


def test_length_buckets_leave_a_one_length_batch_whole_and_reject_zero():
    b = TrainStream(tasks.build("copy"), 1, 20, 8, seed=0, batching="by_length").next()
    (piece,) = length_buckets(b, 4)
    assert torch.equal(piece.tokens, b.tokens)
    with pytest.raises(ValueError, match="buckets must be >= 1, got 0"):
        length_buckets(b, 0)


def test_bucketed_draws_the_batches_of_mixed_with_a_fraction_of_the_padding():
    mixed = TrainStream(tasks.build("copy"), 1, 20, 64, seed=3, batching="mixed")
    bucketed = TrainStream(tasks.build("copy"), 1, 20, 64, seed=3, batching="bucketed")
    real = slots = padded = 0
    for _ in range(50):
        a, b = mixed.next(), bucketed.next()
        assert torch.equal(a.tokens, b.tokens)
        real += int((b.tokens != PAD).sum())
        padded += b.tokens.numel()
        slots += sum(p.tokens.numel() for p in length_buckets(b, 4))
    assert 1 - real / padded > 0.35  # mixed: ~44% of the slots are padding
    assert 1 - real / slots < 0.2  # four buckets: ~13%
