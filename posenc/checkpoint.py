"""Reading a run's checkpoint: ``weights_only=True``, and one clear error for a file that is
truncated, corrupt or not a checkpoint of this run."""

from __future__ import annotations

from pathlib import Path

import torch

from posenc.errors import UnreadableFileError

KEYS = ("model", "trainer", "stream", "torch_rng", "seconds", "tokens")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | Path, model: torch.nn.Module, device="cpu") -> dict:
    """The checkpoint's state, its weights already loaded into ``model`` (strictly: a
    checkpoint of another model fails here, before the run writes anything)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"no {missing[0]!r} entry: not a posenc checkpoint")
        model.load_state_dict(state["model"])
    except Exception as exc:
        raise UnreadableFileError(
            f"{path} cannot be read as a checkpoint of this run ({first_line(exc)[:160]}); "
            "pass overwrite=true to start the run over"
        ) from exc
    return state
