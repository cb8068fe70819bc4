"""One process per run folder: an OS lock (``fcntl.flock``) on ``<run folder>/.lock``.

The OS drops the lock when its holder exits, however it exits (``kill -9`` included), so a
lock is never stale; the file itself stays and only names the last holder. ``flock`` locks
also hold across machines on NFSv4 and on Lustre/GPFS mounted with locking enabled.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from posenc.errors import PosencError

LOCK = ".lock"


class RunLockedError(PosencError):
    """Another process holds the run folder."""


class RunLock:
    """``with RunLock(folder):`` holds ``folder`` for this process.

    ``wait=False`` raises `RunLockedError` naming the holder at once; ``wait=True`` blocks
    until the holder is done, calling ``on_wait(holder)`` once first. Creates the folder
    (empty but for the lock file) if it does not exist.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        wait: bool = False,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.wait = wait
        self.on_wait = on_wait
        self._fd: int | None = None

    def holder(self) -> str:
        """The holder as written in the lock file: ``pid N on HOST``."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text.splitlines()[0] if text else "another process"

    def probe(self) -> None:
        """Raise `RunLockedError` if another process holds the folder; creates nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(self._message()) from None
        finally:
            os.close(fd)

    def _message(self) -> str:
        return (
            f"{self.folder} is in use by {self.holder()}; wait for it to finish (or stop it) "
            "and run the same command again"
        )

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.wait:
                    raise RunLockedError(self._message()) from None
                if self.on_wait:
                    self.on_wait(self.holder())
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def clear_folder(folder: str | Path) -> None:
    """Empty a run folder for ``overwrite=true``, keeping the lock file this process holds
    (removing it would let a second process lock a new file of the same name)."""
    import shutil

    for child in Path(folder).iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
