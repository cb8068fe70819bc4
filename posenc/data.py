"""Batches from tasks: seeded on-the-fly training batches and frozen evaluation sets.

Evaluation sets are Hugging Face `datasets` saved on disk under a key that hashes every
task parameter, the lengths, the sample count, the seed and the data-format version, so
every encoding in a comparison is scored on exactly the same examples and a changed
parameter never returns stale data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from posenc.tasks.base import Task
from posenc.tasks.format import DEFAULT_FORMAT, FORMAT_VERSION, PAD, SequenceFormat


@dataclass
class Batch:
    tokens: Tensor  # (B, T) int64: [BOS] input [SEP] target [EOS] <pad>...
    loss_mask: Tensor  # (B, T-1) bool: True where a prediction is trained and scored
    # (B, T-1) int64: what each prediction must be, where it is not simply the next token
    # (inline answers, `posenc.tasks.format.SequenceFormat.layout`); None: tokens[:, 1:]
    label_ids: Tensor | None = None

    @property
    def inputs(self) -> Tensor:
        return self.tokens[:, :-1]

    @property
    def labels(self) -> Tensor:
        return self.tokens[:, 1:] if self.label_ids is None else self.label_ids

    def rows(self, rows: Tensor, t: int) -> Batch:
        """The given rows, trimmed to ``t`` tokens."""
        labels = None if self.label_ids is None else self.label_ids[rows, : t - 1]
        return Batch(self.tokens[rows, :t], self.loss_mask[rows, : t - 1], labels)

    def to(self, device: torch.device | str) -> Batch:
        labels = None if self.label_ids is None else self.label_ids.to(device)
        return Batch(self.tokens.to(device), self.loss_mask.to(device), labels)


def collate(
    pairs: list[tuple[list[int], list[int]]], fmt: SequenceFormat = DEFAULT_FORMAT
) -> Batch:
    """(input, target) pairs -> right-padded tokens and the loss mask (the answer only)."""
    laid = [fmt.layout(inputs, target) for inputs, target in pairs]
    T = max(len(ids) for ids, _, _ in laid)
    tokens = np.full((len(laid), T), PAD, dtype=np.int64)
    labels = np.full((len(laid), T - 1), PAD, dtype=np.int64)
    mask = np.zeros((len(laid), T - 1), dtype=bool)
    for b, (ids, lab, scored) in enumerate(laid):
        tokens[b, : len(ids)] = ids
        labels[b, : len(lab)] = lab
        mask[b, : len(scored)] = scored
    label_ids = torch.from_numpy(labels) if fmt.inline is not None else None
    return Batch(torch.from_numpy(tokens), torch.from_numpy(mask), label_ids)


def length_buckets(batch: Batch, buckets: int) -> list[Batch]:
    """Split a padded batch into at most ``buckets`` pieces of length-sorted rows, each
    trimmed to its own longest row, with the fewest padded token slots possible.

    Every row lands in exactly one piece. The cut points are chosen by dynamic programming
    over the distinct row lengths (a piece costs its rows times its longest row), and ties go
    to fewer pieces, so a batch of one length stays whole. Summing each piece's loss over the
    batch's answer tokens gives the whole batch's loss and gradient
    (`posenc.run.train.Trainer`): the arithmetic of ``batching="mixed"`` without most of its
    padding. An encoding that draws one set of positions per batch (``randomized``) draws
    one per piece.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    real = (batch.tokens != PAD).sum(1)  # right-padded rows: the real length of each
    order = torch.argsort(real, stable=True)
    sizes, counts = torch.unique_consecutive(real[order], return_counts=True)
    sizes, counts = sizes.tolist(), counts.tolist()
    m = len(sizes)
    rows_before = np.concatenate(([0], np.cumsum(counts))).tolist()
    # best[g][j]: fewest slots holding the rows of the first j distinct lengths in g pieces
    inf = float("inf")
    best = [[inf] * (m + 1) for _ in range(buckets + 1)]
    cut = [[0] * (m + 1) for _ in range(buckets + 1)]
    best[0][0] = 0
    for g in range(1, buckets + 1):
        for j in range(1, m + 1):
            for i in range(j):
                cost = best[g - 1][i] + (rows_before[j] - rows_before[i]) * sizes[j - 1]
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    g = min(range(1, buckets + 1), key=lambda g: (best[g][m], g))
    bounds, j = [], m
    while j > 0:
        i = cut[g][j]
        bounds.append((rows_before[i], rows_before[j], sizes[j - 1]))
        j, g = i, g - 1
    pieces = []
    for lo, hi, t in reversed(bounds):
        rows = order[lo:hi]
        pieces.append(batch.rows(rows, t))
    return pieces


class TrainStream:
    """An endless, seeded stream of training batches with lengths uniform in [min_len, max_len].

    ``batching="by_length"`` draws one length n per step and fills the whole batch with
    length-n examples (the protocol of the randomized-PE and Chomsky-hierarchy code of
    Ruoss et al. 2023 and Delétang et al. 2023): no padding for tasks whose sequence length
    depends on n alone. ``"mixed"`` draws a length per example and pads to the longest row.
    ``"bucketed"`` draws exactly the batches of ``"mixed"``; the trainer computes each in
    length-sorted pieces (`length_buckets`). Either way every length is equally likely at
    every step.
    """

    def __init__(
        self,
        task: Task,
        min_len: int,
        max_len: int,
        batch_size: int,
        seed: int,
        batching: str,
        fmt: SequenceFormat = DEFAULT_FORMAT,
    ) -> None:
        self.task, self.min_len, self.max_len, self.batch_size = task, min_len, max_len, batch_size
        self.batching = batching
        self.fmt = fmt
        self.rng = np.random.default_rng(seed)

    def next(self) -> Batch:
        if self.batching == "by_length":
            n = int(self.rng.integers(self.min_len, self.max_len + 1))
            lengths = [n] * self.batch_size
        else:
            lengths = self.rng.integers(self.min_len, self.max_len + 1, size=self.batch_size)
        return collate([self.task.sample(int(n), self.rng) for n in lengths], self.fmt)

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def eval_set_spec(task: Task, lengths: list[int], n_samples: int, seed: int) -> dict[str, Any]:
    """Everything that determines an evaluation set."""
    return {
        "task": task.name,
        "params": task.params(),
        "lengths": sorted(lengths),
        "n_samples": n_samples,
        "seed": seed,
        "format_version": FORMAT_VERSION,
    }


def eval_set_key(task: Task, lengths: list[int], n_samples: int, seed: int) -> str:
    """A stable hash of `eval_set_spec`."""
    spec = eval_set_spec(task, lengths, n_samples, seed)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generate_eval_rows(
    task: Task, lengths: list[int], n_samples: int, seed: int
) -> dict[str, list]:
    """Columns ``length``, ``input``, ``target``; each length has its own seeded stream."""
    rows: dict[str, list] = {"length": [], "input": [], "target": []}
    for n in sorted(lengths):
        rng = np.random.default_rng([seed, n])  # independent of which other lengths exist
        for _ in range(n_samples):
            inputs, target = task.sample_eval(n, rng)
            rows["length"].append(n)
            rows["input"].append(inputs)
            rows["target"].append(target)
    return rows


def example_hash(inputs, target) -> str:
    """A stable hash of one (input, target) example: equal examples, equal hashes."""
    text = json.dumps([[int(t) for t in inputs], [int(t) for t in target]])
    return hashlib.sha256(text.encode()).hexdigest()


def generate_validation_rows(
    task: Task,
    lengths: list[int],
    n_samples: int,
    seed: int,
    test: dict[str, list] | None = None,
    tries: int = 20,
) -> dict[str, list]:
    """Validation examples: `generate_eval_rows`'s columns from their own seed stream, none
    equal to an example of ``test`` (the test set's rows). Each length draws until it has
    ``n_samples`` examples or has made ``tries * n_samples`` draws: a short length whose every
    example is in the test set (copy at length 1) keeps fewer, possibly none."""
    taken = set()
    if test is not None:
        taken = {example_hash(i, t) for i, t in zip(test["input"], test["target"], strict=True)}
    rows: dict[str, list] = {"length": [], "input": [], "target": []}
    for n in sorted(lengths):
        rng = np.random.default_rng([seed, n])
        kept = 0
        for _ in range(tries * n_samples):
            if kept == n_samples:
                break
            inputs, target = task.sample_eval(n, rng)
            if example_hash(inputs, target) in taken:
                continue
            rows["length"].append(n)
            rows["input"].append(inputs)
            rows["target"].append(target)
            kept += 1
    return rows


def load_eval_set(task: Task, lengths: list[int], n_samples: int, seed: int, cache_dir: str | Path):
    """The frozen evaluation set as a `datasets.Dataset`, built and saved on first use."""
    import datasets

    datasets.disable_progress_bars()
    key = eval_set_key(task, lengths, n_samples, seed)
    path = Path(cache_dir) / f"{task.name}-{key}"
    if (path / "dataset_info.json").exists():
        return _load_cached(path)
    ds = datasets.Dataset.from_dict(generate_eval_rows(task, lengths, n_samples, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ds.save_to_disk(str(tmp))
        spec = eval_set_spec(task, lengths, n_samples, seed)
        (tmp / "spec.json").write_text(json.dumps(spec, default=str))
        try:
            os.replace(tmp, path)  # atomic; a concurrent builder may have won the race
        except OSError:
            if not (path / "dataset_info.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_cached(path)


def _load_cached(path: Path):
    """A cached evaluation set; a truncated or corrupt one raises `UnreadableFileError`."""
    import datasets

    from posenc.errors import UnreadableFileError, first_line

    try:
        ds = datasets.load_from_disk(str(path))
        if not {"length", "input", "target"} <= set(ds.column_names):
            raise ValueError(f"columns {ds.column_names}, not length, input, target")
        ds[:1]  # reads the Arrow data, not only the metadata
        return ds
    except Exception as exc:
        reason = first_line(exc)
        raise UnreadableFileError(
            f"the cached evaluation set {path} cannot be read ({reason[:160]}); delete that "
            "folder and run the same command again (it is rebuilt from its seed)"
        ) from exc


def by_length(ds) -> dict[int, list[tuple[list[int], list[int]]]]:
    """Group an evaluation set's rows into {length: [(input, target), ...]}."""
    groups: dict[int, list] = {}
    cols = ds.to_dict()
    for n, inputs, target in zip(cols["length"], cols["input"], cols["target"], strict=True):
        groups.setdefault(int(n), []).append((list(inputs), list(target)))
    return groups
