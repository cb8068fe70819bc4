"""Summary figures from per-length accuracies."""

from __future__ import annotations

from collections.abc import Mapping


def extrapolation_horizon(exact_match: Mapping[int, float], threshold: float = 0.9) -> int:
    """Largest evaluated length n such that every evaluated length <= n has exact match >= threshold.

    0 when the shortest evaluated length already falls below the threshold.
    """
    horizon = 0
    for n in sorted(exact_match):
        if exact_match[n] < threshold:
            break
        horizon = n
    return horizon


def summarize(
    per_length: Mapping[int, Mapping[str, float]],
    train_min: int,
    train_max: int,
    threshold: float = 0.9,
) -> dict[str, float | int | None]:
    """``id_exact_match`` (mean over lengths in [train_min, train_max]), ``ood_exact_match``
    (mean over lengths > train_max; None if none evaluated) and ``extrapolation_horizon``."""
    em = {int(n): float(v["exact_match"]) for n, v in per_length.items()}
    inside = [v for n, v in em.items() if train_min <= n <= train_max]
    beyond = [v for n, v in em.items() if n > train_max]
    return {
        "id_exact_match": sum(inside) / len(inside) if inside else None,
        "ood_exact_match": sum(beyond) / len(beyond) if beyond else None,
        "extrapolation_horizon": extrapolation_horizon(em, threshold),
    }
