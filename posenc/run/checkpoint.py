"""Reading a run's checkpoint, for resuming a run and for re-evaluating a finished one:
``weights_only=True``, and one clear error for a file that is truncated, corrupt or not a
checkpoint of this run."""

from __future__ import annotations

from pathlib import Path

import torch

from posenc.errors import ConfigError, UnreadableFileError, first_line

KEYS = ("model", "trainer", "stream", "torch_rng", "seconds", "tokens")


def read_checkpoint(path: str | Path, device="cpu", keys: tuple[str, ...] = KEYS) -> dict:
    """The checkpoint's state; raises whatever reading it raises, or `ValueError` when an
    entry of ``keys`` is missing."""
    state = torch.load(path, map_location=device, weights_only=True)
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"no {missing[0]!r} entry: not a posenc checkpoint")
    return state


def _cause(exc: BaseException, limit: int = 160) -> str:
    """The cause in a few words: torch's first line, cut after a whole sentence (its
    refusal of an unsafe pickle runs on for lines of advice that do not apply here), or at
    a word with an ellipsis, never mid-word."""
    text = first_line(exc)
    if len(text) <= limit:
        return text
    end = text.find(". ", 0, limit)
    if end > 0:
        return text[: end + 1]
    return text[:limit].rsplit(" ", 1)[0] + "…"


def load_checkpoint(path: str | Path, model: torch.nn.Module, device="cpu") -> dict:
    """The checkpoint's state, its weights already loaded into ``model`` (strictly: a
    checkpoint of another model fails here, before the run writes anything)."""
    try:
        state = read_checkpoint(path, device)
        model.load_state_dict(state["model"])
    except Exception as exc:
        raise UnreadableFileError(
            f"{path} cannot be read as a checkpoint of this run ({_cause(exc)}); "
            "pass overwrite=true to start the run over"
        ) from exc
    return state


def load_weights(path: str | Path, model: torch.nn.Module, device="cpu") -> None:
    """Load a finished run's weights into ``model``, rebuilt under evaluation-time overrides
    (`posenc.run.reevaluate`): an unreadable file and a model these overrides changed are two
    different one-line errors."""
    try:
        state = read_checkpoint(path, device, keys=("model",))
    except Exception as exc:
        raise UnreadableFileError(
            f"{path} cannot be read as a posenc checkpoint ({_cause(exc)}); "
            "retrain the run with posenc train ... overwrite=true"
        ) from exc
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise ConfigError(
            f"the checkpoint in {Path(path).parent} does not fit the model these overrides "
            f"build ({detail[1].strip() if len(detail) > 1 else detail[0]}); override only "
            "settings that leave the parameters alone"
        ) from exc
