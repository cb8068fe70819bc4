"""Atomic file writes: a temporary file in the same folder, then a rename.

A crash or Ctrl-C mid-write leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a truncated or corrupt file raises `UnreadableFileError`."""
    from posenc.errors import UnreadableFileError, first_line

    try:
        text = Path(path).read_bytes()
    except IsADirectoryError as exc:  # a folder in place of the file
        raise UnreadableFileError(
            f"{path} is a folder, not a file; delete it, or rerun that run with overwrite=true"
        ) from exc
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        reason = first_line(exc)
        raise UnreadableFileError(
            f"{path} is corrupt ({reason}); delete it, or rerun that run with overwrite=true"
        ) from exc
