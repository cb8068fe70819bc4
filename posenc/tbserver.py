"""A TensorBoard server on 127.0.0.1 as a child process: start, wait until it answers, stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from posenc.errors import PosencError


class TensorBoardError(PosencError):
    """TensorBoard did not start or did not answer in time."""


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    logdir: Path


def free_port(preferred: int | None = 6006) -> int:
    """``preferred`` if nothing listens on it, else a port the OS picks."""
    candidates = [preferred] if preferred else []
    for port in [*candidates, 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise TensorBoardError("no free port on 127.0.0.1")


def start(
    logdir: str | Path,
    port: int | None = None,
    timeout: float = 60.0,
    reload_interval: float = 5,
    stop_if: Callable[[], bool] | None = None,
) -> Server | None:
    """Start TensorBoard for ``logdir`` and return once it answers over HTTP; stop it and
    return None instead if ``stop_if()`` becomes true while it starts (a Ctrl-C)."""
    logdir = Path(logdir)
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--reload_interval",
        str(reload_interval),
    ]
    log = logdir / ".tensorboard.log" if logdir.is_dir() else None
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()
    server = Server(process, f"http://127.0.0.1:{port}/", logdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop_if is not None and stop_if():
            stop(server)
            return None
        if process.poll() is not None:
            hint = log.read_text(errors="replace").strip().splitlines()[-1:] if log else []
            raise TensorBoardError(
                f"tensorboard exited with status {process.returncode}"
                + (f": {hint[0]}" if hint else "")
            )
        try:
            with urllib.request.urlopen(server.url + "data/environment", timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    stop(server)
    raise TensorBoardError(f"tensorboard did not answer on {server.url} within {timeout:.0f} s")


def stop(server: Server, timeout: float = 10.0) -> None:
    """Terminate the server by its PID (kill it if it does not exit)."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
