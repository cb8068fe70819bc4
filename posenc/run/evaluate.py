"""Per-length evaluation: exact match (teacher forcing, or greedy KV-cache decoding) and token accuracy."""

from __future__ import annotations

from collections.abc import Callable

import torch

from posenc.data import collate
from posenc.model import Transformer
from posenc.tasks.format import DEFAULT_FORMAT, SequenceFormat


@torch.no_grad()
def evaluate_pairs(
    model: Transformer,
    pairs: list[tuple[list[int], list[int]]],
    *,
    batch_size: int = 128,
    greedy: bool = False,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    fmt: SequenceFormat = DEFAULT_FORMAT,
) -> dict[str, float | int | str]:
    """Score (input, target) pairs.

    ``token_accuracy``: fraction of answer tokens (target, and EOS in the ``eos`` format)
    predicted right by teacher forcing. ``exact_match``: fraction of examples whose whole
    answer is right. By default by teacher forcing (every argmax right given the right
    prefix), which is exactly greedy decoding's number whenever positions are fixed for the
    batch, as they are for every encoding here (randomized positions are drawn once per batch
    for the whole sequence); ``greedy=True`` decodes with the KV cache instead (in the
    ``known_length`` format exactly ``len(target)`` tokens). ``examples``: one '0'/'1' per
    pair, in the order given, for paired statistics across runs. Inline answers (``fmt.inline``)
    are scored where the task says, always by teacher forcing: the model never generates them
    (flip_flop's read bits and mqar's values are in the given stream; state_tracking's
    products are never fed back), so ``greedy`` does not apply.
    """
    was_training = model.training
    model.eval()
    by_prompt: dict[int, list[int]] = {}
    for i, (inputs, _) in enumerate(pairs):  # greedy decoding needs one prompt length per batch
        by_prompt.setdefault(len(inputs), []).append(i)
    hits = [False] * len(pairs)
    tok_correct = tok_total = 0
    for indices in by_prompt.values():
        for start in range(0, len(indices), batch_size):
            chunk_ids = indices[start : start + batch_size]
            chunk = [pairs[i] for i in chunk_ids]
            batch = collate(chunk, fmt)
            tokens, mask = batch.tokens.to(device), batch.loss_mask.to(device)
            B, T = tokens.shape
            pos = model.encoding.positions(B, T, device=device, generator=generator)
            logits, _ = model(tokens[:, :-1], pos[:, :-1])
            correct = (logits.argmax(-1) == batch.labels.to(device)) & mask
            tok_correct += int(correct.sum())
            tok_total += int(mask.sum())
            if greedy and fmt.inline is None:  # inline answers: never generated
                t_prompt = len(fmt.prompt_ids(chunk[0][0]))
                answers = [fmt.answer_ids(target) for _, target in chunk]
                n_new = max(map(len, answers))
                out = model.generate(tokens[:, :t_prompt], n_new, pos=pos[:, : t_prompt + n_new])
                right = [out[b, : len(ans)].tolist() == ans for b, ans in enumerate(answers)]
            else:
                right = (correct | ~mask).all(dim=1).tolist()
            for i, ok in zip(chunk_ids, right, strict=True):
                hits[i] = bool(ok)
    model.train(was_training)
    return {
        "exact_match": sum(hits) / len(pairs),
        "token_accuracy": tok_correct / max(tok_total, 1),
        "n_samples": len(pairs),
        "examples": "".join("1" if h else "0" for h in hits),
    }


def evaluate_lengths(
    model: Transformer,
    groups: dict[int, list[tuple[list[int], list[int]]]],
    *,
    on_length: Callable[[int, dict], None] | None = None,
    **kwargs,
) -> dict[int, dict[str, float | int]]:
    """{length: pairs} -> {length: scores}, calling ``on_length`` after each length."""
    results = {}
    for n in sorted(groups):
        results[n] = evaluate_pairs(model, groups[n], **kwargs)
        if on_length is not None:
            on_length(n, results[n])
    return results
