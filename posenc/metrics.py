"""Summary figures from per-length accuracies.

``SUMMARY_VERSION`` names the definitions below; ``metrics.json`` records it, and the report
recomputes every summary from ``per_length`` so folders written under an older definition
never mix silently with new ones. Version 1 ended the horizon at the first failing length
counted from the shortest; version 2 gave a horizon to runs that never fit their training
range; version 3 gives them none (``fits_training_range`` false).
"""

from __future__ import annotations

from collections.abc import Mapping

SUMMARY_VERSION = 3


def extrapolation_horizon(
    exact_match: Mapping[int, float], train_max: int, threshold: float = 0.9
) -> int | None:
    """How far past the training range the model keeps working.

    The largest n >= ``train_max`` such that exact match >= ``threshold`` at every evaluated
    length in (``train_max``, n]; ``train_max`` itself when the first length past the range
    already fails (lengths after a failure never count, even if they recover); None when no
    length beyond the range was evaluated. In-range failures do not touch it: they show in
    ``min_id_exact_match``.
    """
    beyond = sorted(n for n in exact_match if n > train_max)
    if not beyond:
        return None
    horizon = train_max
    for n in beyond:
        if exact_match[n] < threshold:
            break
        horizon = n
    return horizon


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    per_length: Mapping[int | str, Mapping[str, float]],
    train_min: int,
    train_max: int,
    threshold: float = 0.9,
) -> dict[str, float | int | None]:
    """The summary figures of one run (None where no length qualifies):

    ``id_exact_match`` and ``min_id_exact_match``: mean and minimum exact match over the
    lengths in [train_min, train_max]; ``ood_exact_match`` and ``ood_token_accuracy``: means
    over the lengths > train_max; ``fits_training_range``: whether exact match reaches
    ``threshold`` at every training length; ``extrapolation_horizon`` (see
    `extrapolation_horizon`), only for a run that fits its training range: one that does not
    has no horizon to speak of (None), not the training maximum.
    """
    em = {int(n): float(v["exact_match"]) for n, v in per_length.items()}
    tok = {int(n): float(v["token_accuracy"]) for n, v in per_length.items()}
    inside = [v for n, v in sorted(em.items()) if train_min <= n <= train_max]
    beyond = sorted(n for n in em if n > train_max)
    fits = min(inside) >= threshold if inside else None
    return {
        "id_exact_match": _mean(inside),
        "min_id_exact_match": min(inside) if inside else None,
        "ood_exact_match": _mean([em[n] for n in beyond]),
        "ood_token_accuracy": _mean([tok[n] for n in beyond]),
        "fits_training_range": fits,
        "extrapolation_horizon": (
            None if fits is False else extrapolation_horizon(em, train_max, threshold)
        ),
    }
