"""TensorBoard logging of one run: scalars, accuracy-versus-length views, hparams."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def open_writer(run_dir: Path, purge_step: int | None = None):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
    # Custom-scalars dashboard: per-length curves over training and the final length curve.
    writer.add_custom_scalars(
        {
            "accuracy": {
                "exact match per length (during training)": [
                    "Multiline",
                    [r"eval/exact_match/len_\d+"],
                ],
                "token accuracy per length (during training)": [
                    "Multiline",
                    [r"eval/token_accuracy/len_\d+"],
                ],
                "accuracy vs length (final; x axis = length)": ["Multiline", [r"length_curve/.*"]],
            }
        }
    )
    return writer


def accuracy_figure(per_length: Mapping[int, Mapping[str, float]], train_max: int, title: str):
    """A matplotlib figure of exact match and token accuracy against length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted(per_length)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.axvspan(min(lengths) - 0.5, train_max + 0.5, color="0.9", label="training lengths")
    ax.plot(
        lengths, [per_length[n]["exact_match"] for n in lengths], marker=".", label="exact match"
    )
    ax.plot(
        lengths,
        [per_length[n]["token_accuracy"] for n in lengths],
        marker=".",
        label="token accuracy",
    )
    ax.set(xlabel="length n", ylabel="accuracy", ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="lower left", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)  # not tight_layout: slow
    return fig


def log_per_length(writer, per_length: Mapping[int, Mapping[str, float]], step: int) -> None:
    for n, scores in sorted(per_length.items()):
        writer.add_scalar(f"eval/exact_match/len_{n}", scores["exact_match"], step)
        writer.add_scalar(f"eval/token_accuracy/len_{n}", scores["token_accuracy"], step)


def log_final(
    writer,
    per_length: Mapping[int, Mapping[str, float]],
    summary: Mapping[str, Any],
    hparams: Mapping[str, Any],
    *,
    step: int,
    train_max: int,
    title: str,
) -> None:
    log_per_length(writer, per_length, step)
    for n, scores in sorted(per_length.items()):  # x axis = length: an accuracy-vs-length chart
        writer.add_scalar("length_curve/exact_match", scores["exact_match"], n)
        writer.add_scalar("length_curve/token_accuracy", scores["token_accuracy"], n)
    for key, value in summary.items():
        if value is not None:
            writer.add_scalar(f"summary/{key}", value, step)
    writer.add_figure(
        "eval/accuracy_vs_length", accuracy_figure(per_length, train_max, title), step
    )
    metrics = {f"hparam/{k}": float(v) for k, v in summary.items() if v is not None}
    writer.add_hparams(dict(hparams), metrics, run_name=".")
    writer.flush()


def flat_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {'model.d_model': 128, ...} with TensorBoard-friendly values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is None:
            flat[name] = "null"
        else:
            flat[name] = str(value)
    return flat
