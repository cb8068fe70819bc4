"""Per-length evaluation: greedy exact match (KV cache) and teacher-forced token accuracy."""

from __future__ import annotations

from collections.abc import Callable

import torch

from posenc.data import collate
from posenc.model import Transformer
from tasks.format import DEFAULT_FORMAT, SequenceFormat


@torch.no_grad()
def evaluate_pairs(
    model: Transformer,
    pairs: list[tuple[list[int], list[int]]],
    *,
    batch_size: int = 128,
    greedy: bool = True,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    fmt: SequenceFormat = DEFAULT_FORMAT,
) -> dict[str, float | int]:
    """Score (input, target) pairs.

    ``token_accuracy``: fraction of answer tokens (target, and EOS in the ``eos`` format)
    predicted right by teacher forcing. ``exact_match``: fraction of examples whose whole
    answer greedy decoding reproduces; in the ``known_length`` format it decodes exactly
    ``len(target)`` tokens. With ``greedy=False``: every teacher-forced argmax right, which
    is the same number whenever positions are deterministic. Positions come from the encoding, drawn
    once per batch for the whole sequence so both scores see the same ones.
    """
    was_training = model.training
    model.eval()
    by_prompt: dict[int, list] = {}
    for inputs, target in pairs:  # greedy decoding needs one prompt length per batch
        by_prompt.setdefault(len(inputs), []).append((inputs, target))
    exact = tok_correct = tok_total = 0
    for group in by_prompt.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            batch = collate(chunk, fmt)
            tokens, mask = batch.tokens.to(device), batch.loss_mask.to(device)
            B, T = tokens.shape
            pos = model.encoding.positions(B, T, device=device, generator=generator)
            logits, _ = model(tokens[:, :-1], pos[:, :-1])
            correct = (logits.argmax(-1) == tokens[:, 1:]) & mask
            tok_correct += int(correct.sum())
            tok_total += int(mask.sum())
            if not greedy:
                exact += int((correct | ~mask).all(dim=1).sum())
                continue
            t_prompt = len(fmt.prompt_ids(chunk[0][0]))
            answers = [fmt.answer_ids(target) for _, target in chunk]
            n_new = max(map(len, answers))
            out = model.generate(tokens[:, :t_prompt], n_new, pos=pos[:, : t_prompt + n_new])
            for b, ans in enumerate(answers):
                exact += int(out[b, : len(ans)].tolist() == ans)
    model.train(was_training)
    return {
        "exact_match": exact / len(pairs),
        "token_accuracy": tok_correct / max(tok_total, 1),
        "n_samples": len(pairs),
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
