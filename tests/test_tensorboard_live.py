"""`posenc tb` starts a real TensorBoard on 127.0.0.1 that serves an experiment's runs, scalar
tags, hparams and attention-map images over its HTTP data API; it is stopped by PID."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from posenc.config import compose
from posenc.run.execute import run
from posenc.tbserver import free_port
from tests.conftest import MICRO, terminal_signals

ROOT = Path(__file__).resolve().parent.parent
TINY = [*MICRO, "model.n_layers=2", "progress=false", "threads=1"]
RUNS = ["copy/rope/seed0", "copy/alibi/seed0"]


def get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return json.loads(r.read())


def poll(fn, timeout: float = 90.0):
    """Call ``fn`` until it returns something truthy (TensorBoard loads runs in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except (urllib.error.URLError, OSError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("TensorBoard did not serve the expected data in time")
        time.sleep(0.5)


def is_tensorboard(pid: int) -> bool:
    try:
        return b"tensorboard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("tb") / "runs"
    for encoding in ("rope", "alibi"):
        run(compose([f"runs_root={runs}", "experiment=tiny", f"encoding={encoding}", *TINY]))
    return runs / "tiny"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_posenc_tb_serves_runs_scalars_hparams_and_attention_maps(experiment, stop_signal):
    port = free_port(None)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    cli = subprocess.Popen(
        [sys.executable, "-m", "posenc.cli", "tb", str(experiment), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=terminal_signals,
    )
    server_pid = None
    try:
        line = cli.stdout.readline()  # printed once the server answers
        m = re.search(r"(http://127\.0\.0\.1:(\d+)/)\s+\(pid (\d+)", line)
        assert m, line + cli.stdout.read() if cli.poll() is not None else line
        url, server_pid = m[1], int(m[3])
        assert int(m[2]) == port

        runs = poll(lambda: (r := get(url + "data/runs")) and set(RUNS) <= set(r) and r)
        assert set(runs) == set(RUNS)

        tags = poll(
            lambda: (t := get(url + "data/plugin/scalars/tags")) and set(RUNS) <= set(t) and t
        )
        for name in RUNS:
            assert {
                "train/loss",
                "summary/ood_exact_match",
                "length_curve/exact_match",
                "eval/exact_match/len_6",
            } <= set(tags[name])

        images = get(url + "data/plugin/images/tags")
        for name in RUNS:
            assert {
                "eval/accuracy_vs_length",
                "attention/train_len_3/layer_0",
                "attention/train_len_3/layer_1",
                "attention/beyond_len_6/layer_0",
                "attention/beyond_len_6/layer_1",
            } <= set(images[name])

        body = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_RUNNING"],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        }
        groups = poll(
            lambda: (
                (g := get(url + "data/plugin/hparams/session_groups", body)["sessionGroups"])
                and len(g) == 2
                and g
            )
        )
        sessions = {g["name"]: g for g in groups}
        assert set(sessions) == set(RUNS)
        for name, g in sessions.items():
            assert g["hparams"]["encoding.name"] == name.split("/")[1]
            assert g["hparams"]["task.name"] == "copy" and g["hparams"]["seed"] == 0
            metrics = {m["name"]["tag"] for m in g["metricValues"]}
            # these tiny runs do not fit their training range: no horizon, the marker instead
            assert {"hparam/id_exact_match", "hparam/fits_training_range"} <= metrics
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, stop_signal)  # the command stops its server by PID on either
            try:
                cli.wait(timeout=30)
            except subprocess.TimeoutExpired:
                cli.kill()
                cli.wait()
        if server_pid is not None and is_tensorboard(server_pid):
            os.kill(server_pid, signal.SIGKILL)  # only if it outlived the command
    assert cli.returncode == 0, cli.stdout.read()
    assert server_pid is not None and not is_tensorboard(server_pid)
    with pytest.raises((urllib.error.URLError, OSError)):
        get(url + "data/runs")
