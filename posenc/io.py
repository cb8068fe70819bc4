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
    """Write ``data`` to ``path`` atomically. An `OSError` (a full disk, a read-only or
    missing folder) names ``path`` itself, not the temporary file or no file at all (a
    failed ``write`` names none), so the command's one line says which file it could not
    write."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` again, naming ``path`` where it named our temporary file or no file; a folder
    that could not be made keeps its own name (``run_dir`` under a file names that file)."""
    if exc.filename is not None and not Path(exc.filename).name.startswith(f".{path.name}."):
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


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
