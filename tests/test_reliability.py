"""Faults injected for real: a second process on a run folder, signals and kill -9 sent to a
training child process, truncated and foreign files, and a sweep that finds its run held."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from posenc.config import compose
from posenc.console import Reporter
from posenc.run.execute import run
from posenc.run.lock import RunLock
from posenc.run.signals import RunStopped
from tests.conftest import MICRO, TINY, terminal_signals

ROOT = Path(__file__).resolve().parent.parent
LONG = [*TINY, "train.steps=400", "train.checkpoint_every=10"]


def posenc(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "posenc.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def start_training(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "posenc.cli", "train", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(run_dir: Path, step: int, child: subprocess.Popen, timeout: float = 120) -> None:
    """Until the child's train.log reports ``step`` (or later)."""
    deadline = time.monotonic() + timeout
    log = run_dir / "train.log"
    while time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()
        if log.exists():
            steps = [int(w.split()[3]) for w in log.read_text().splitlines() if " step " in w]
            if steps and max(steps) >= step:
                return
        time.sleep(0.05)
    child.kill()
    raise AssertionError(f"no step {step} within {timeout} s")


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run every interrupted one must match."""
    d = tmp_path_factory.mktemp("reference")
    return run(compose([*LONG, f"run_dir={d / 'run'}", f"data_dir={d / 'data'}"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGUSR1, 138), (signal.SIGKILL, -9)]
)
def test_a_signal_mid_training_then_the_same_command_resumes_to_the_same_numbers(
    tmp_path, reference, sig, code
):
    args = [*LONG, f"run_dir={tmp_path / 'run'}", f"data_dir={tmp_path / 'data'}"]
    child = start_training(args)
    wait_for_step(tmp_path / "run", 25, child)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    d = tmp_path / "run"
    assert not (d / "metrics.json").exists()
    saved = torch.load(d / "checkpoint.pt", weights_only=True)["trainer"]["step"]
    assert 10 <= saved < 400
    if sig != signal.SIGKILL:  # a handled signal: checkpoint at the next step, one line
        name = signal.Signals(sig).name
        assert err.strip().splitlines() == [
            f"error: stopped by {name}; checkpoint saved at step {saved}: run the same "
            "command again to resume"
        ]
        assert f"interrupted at step {saved}; checkpoint saved" in (d / "train.log").read_text()
    again = posenc("train", *args)  # kill -9 left the lock file: the OS dropped the lock
    assert again.returncode == 0, again.stderr
    assert f"resumed from step {saved}" in (d / "train.log").read_text()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["per_length"] == reference["per_length"]
    assert metrics["train"]["final_loss"] == reference["train"]["final_loss"]


@pytest.mark.slow
def test_ctrl_c_under_job_control_stops_at_a_step_boundary_and_resumes_to_the_same_numbers(
    tmp_path, reference
):
    """A real SIGINT to the child's own process group, as a terminal's Ctrl-C sends it: the
    child leads a session (setsid) with SIGINT at its default, so Python raises on it unless
    posenc handles it. A plain background job would ignore SIGINT and test nothing."""
    d = tmp_path / "run"
    args = [*LONG, f"run_dir={d}", f"data_dir={tmp_path / 'data'}"]
    child = subprocess.Popen(
        [sys.executable, "-m", "posenc.cli", "train", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=terminal_signals,
    )
    wait_for_step(d, 25, child)
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    saved = torch.load(d / "checkpoint.pt", weights_only=True)["trainer"]["step"]
    assert 25 <= saved < 400
    assert err.strip().splitlines() == [
        f"error: stopped by SIGINT; checkpoint saved at step {saved}: run the same command "
        "again to resume"
    ]
    again = posenc("train", *args)
    assert again.returncode == 0, again.stderr
    assert f"resumed from step {saved}" in (d / "train.log").read_text()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["per_length"] == reference["per_length"]
    assert metrics["train"]["final_loss"] == reference["train"]["final_loss"]


class _CtrlCTwice(Reporter):
    """Sends this process two real SIGINTs at step ``at``: the first is only noted, the
    second stops at once, inside this call, mid-step as far as the loop knows."""

    def __init__(self, at: int) -> None:
        self.at = at

    def step(self, step, loss, steps_per_sec):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    from posenc.run.signals import StoppedAtOnce

    d = tmp_path / "run"
    args = [*TINY, "train.log_every=1", "train.checkpoint_every=4", f"run_dir={d}"]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(StoppedAtOnce, match="interrupted again: stopped at once"):
            run(compose([*args, f"data_dir={tmp_path / 'data'}"]), _CtrlCTwice(at=6))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    # step 6 is not saved: the checkpoint of step 4 stays, and the run resumes from it
    assert torch.load(d / "checkpoint.pt", weights_only=True)["trainer"]["step"] == 4
    assert "interrupted again at step 6; resumes from the last checkpoint" in (
        (d / "train.log").read_text()
    )


@pytest.mark.slow
def test_a_second_process_on_a_held_run_folder_gets_one_line_and_writes_nothing(tmp_path):
    d = tmp_path / "run"
    args = [*TINY, "train.steps=100000", f"run_dir={d}", f"data_dir={tmp_path / 'data'}"]
    first = start_training(args)
    try:
        wait_for_step(d, 3, first)
        for extra in ([], ["train.lr=1e-4"], ["overwrite=true"]):  # same, other, overwrite
            before = files(d)
            second = posenc("train", *args, *extra)
            assert second.returncode == 2, second.stderr
            (line,) = second.stderr.strip().splitlines()
            assert line.startswith(f"error: {d} is in use by pid {first.pid} on ")
            assert line.endswith(
                "wait for it to finish (or stop it) and run the same command again"
            )
            after = files(d)
            assert set(after) == set(before)
            assert after["config.yaml"] == before["config.yaml"]
            assert after[".lock"] == before[".lock"]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143


def test_stop_signal_chains_to_the_earlier_handler_after_the_checkpoint(tmp_path):
    """Under submitit, SIGUSR2 is its checkpoint-and-requeue signal: posenc saves first, then
    calls submitit's handler (here a stand-in that records the call and exits like it)."""
    d = tmp_path / "run"
    marker = tmp_path / "requeued"
    overrides = [*TINY, "train.steps=100000", f"run_dir={d}", f"data_dir={tmp_path / 'data'}"]
    code = f"""
import signal, sys
from pathlib import Path
from posenc.config import compose
from posenc.run.execute import run

def submitit_handler(signum, frame):
    import torch
    step = torch.load("{d}/checkpoint.pt", weights_only=True)["trainer"]["step"]
    Path("{marker}").write_text(str(step))
    sys.exit(-1)

signal.signal(signal.SIGUSR2, submitit_handler)
run(compose({overrides!r}))
"""
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    wait_for_step(d, 3, child)
    child.send_signal(signal.SIGUSR2)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 255, err  # sys.exit(-1), as submitit's handler does
    step = int(marker.read_text())
    assert step >= 3
    assert torch.load(d / "checkpoint.pt", weights_only=True)["trainer"]["step"] == step
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # this process: untouched


class _StopFileAt(Reporter):
    """Creates the sweep's stop file when training reaches step ``at``."""

    def __init__(self, path: Path, at: int) -> None:
        self.path, self.at = path, at

    def step(self, step, loss, steps_per_sec):
        if step == self.at:
            self.path.write_text("stopped by SIGTERM\n")


def test_a_stop_file_stops_training_as_sigterm_does_and_passes_nothing_on(tmp_path):
    """How posenc compare stops its sweep's jobs: the file appears, the run checkpoints at its
    next step and raises RunStopped(SIGTERM); no handler installed before it is called (under
    submitit that would requeue a job the user stopped), and that handler is back after."""
    d, stop = tmp_path / "run", tmp_path / "posenc_stopping"
    args = [*TINY, "train.steps=100000", "train.log_every=1", f"run_dir={d}"]
    calls = []

    def handler(*a):
        calls.append(a)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(RunStopped) as stopped:
            run(
                compose([*args, f"data_dir={tmp_path / 'data'}"]),
                _StopFileAt(stop, 5),
                stop_file=stop,
            )
        assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
        assert calls == [] and signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert torch.load(d / "checkpoint.pt", weights_only=True)["trainer"]["step"] == 5
    assert not (d / "metrics.json").exists()
    assert "interrupted at step 5; checkpoint saved" in (d / "train.log").read_text()


def _interrupted_run(tmp_path) -> list[str]:
    """A run folder holding a checkpoint and no metrics (Ctrl-C at step 5)."""
    from tests.test_run import _Interrupt as Stop

    args = [*TINY, f"run_dir={tmp_path / 'run'}", f"data_dir={tmp_path / 'data'}"]
    with pytest.raises(KeyboardInterrupt):
        run(compose(args), Stop(at=5))
    return args


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(b""),
        lambda p: torch.save({"weights": torch.zeros(3)}, p),  # someone else's checkpoint
        lambda p: torch.save({"model": object()}, p),  # a pickle weights_only refuses
    ],
    ids=["truncated", "empty", "foreign", "unsafe-pickle"],
)
def test_an_unreadable_checkpoint_is_one_line_exit_2_and_changes_nothing(tmp_path, damage):
    args = _interrupted_run(tmp_path)
    d = tmp_path / "run"
    damage(d / "checkpoint.pt")
    before = files(d)
    result = posenc("train", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{d / 'checkpoint.pt'} cannot be read as a checkpoint" in lines[0]
    assert "overwrite=true" in lines[0]
    assert {k: v for k, v in files(d).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }  # the lock file names its last holder; nothing else changed
    assert posenc("train", *args, "overwrite=true").returncode == 0


def test_a_corrupt_metrics_json_is_named_by_eval_and_report(tmp_path):
    runs = tmp_path / "runs"
    d = runs / "exp" / "copy" / "rope" / "seed0"
    run(compose([*TINY, f"run_dir={d}", f"data_dir={tmp_path / 'data'}"]))
    (d / "metrics.json").write_text('{"status": "compl')
    result = posenc("eval", str(d))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {d / 'metrics.json'} is corrupt (Unterminated string starting at: line 1 "
        "column 12 (char 11)); delete it, or rerun that run with overwrite=true"
    ]
    report = posenc("report", str(runs / "exp"))
    assert report.returncode == 0, report.stderr
    assert "metrics.json is corrupt" in (runs / "exp" / "report.md").read_text()


def test_a_corrupt_eval_set_cache_is_one_line_naming_the_folder(tmp_path):
    data = tmp_path / "data"
    run(compose([*MICRO, "progress=false", f"run_dir={tmp_path / 'a'}", f"data_dir={data}"]))
    (cache,) = [p for p in data.iterdir() if not p.name.startswith(".")]
    for arrow in cache.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:40])
    args = [*MICRO, "progress=false", f"run_dir={tmp_path / 'b'}", f"data_dir={data}"]
    result = posenc("train", *args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"the cached evaluation set {cache} cannot be read" in line
    assert "delete that folder" in line
    import shutil

    shutil.rmtree(cache)
    again = posenc("train", *args)  # resumes from the final checkpoint, only evaluates
    assert again.returncode == 0, again.stderr
    assert "resumed from step 5" in (tmp_path / "b" / "train.log").read_text()


@pytest.mark.slow
def test_a_sweep_waits_for_a_run_another_process_holds(tmp_path):
    runs = tmp_path / "runs"
    d = runs / "shared" / "copy" / "none" / "seed0"
    lock = RunLock(d)
    lock.acquire()  # as another posenc would
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "posenc.cli", "compare", "-e", "none", "--launcher", "basic"]
            + ["--experiment", "shared", *MICRO, f"runs_root={runs}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and child.poll() is None:
            found = list((runs / "shared" / "_sweeps").glob("*/*/posenc_job.json"))
            status = json.loads(found[0].read_text()) if found else None
            if status and status["status"] == "waiting":
                break
            time.sleep(0.1)
        assert status and status["status"] == "waiting", child.communicate()
        assert status["holder"].startswith(f"pid {os.getpid()} on ")
        assert not (d / "config.yaml").exists()  # nothing written while it waits
    finally:
        lock.release()
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert (d / "metrics.json").exists()


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def pgid(pid: int) -> int | None:
    try:  # a zombie has exited: it holds nothing
        if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
            return None
        return os.getpgid(pid)
    except OSError:
        return None


def processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_compare_stops_its_sweep_and_workers_with_checkpoints(tmp_path, sig, code):
    """kill <posenc compare> (SIGTERM to it alone, not to its process group), or Ctrl-C
    (SIGINT), stops the sweep child and every worker: none trains on orphaned, each running
    run keeps a checkpoint, a queued one starts no run, and the command exits 128 + the
    signal."""
    runs = tmp_path / "runs"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "posenc.cli",
            "compare",
            "-e",
            "rope,alibi,t5",  # t5 waits for a free worker
            "--jobs",
            "2",
            "--experiment",
            "stop",
            *TINY,
            "train.steps=100000",
            "train.checkpoint_every=0",
            f"runs_root={runs}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as a shell's background job: nothing else signals the group
        preexec_fn=terminal_signals,  # Ctrl-C reaches it, however the suite was started
    )
    try:
        logs = [runs / "stop" / "copy" / e / "seed0" / "train.log" for e in ("rope", "alibi")]
        deadline = time.monotonic() + 180
        while not all(p.exists() and " step " in p.read_text() for p in logs):
            assert parent.poll() is None, parent.communicate()
            assert time.monotonic() < deadline, "the runs did not start"
            time.sleep(0.1)
        (sweep,) = [
            p for p in processes() if str(runs) in cmdline(p) and "posenc.sweep" in cmdline(p)
        ]
        group = os.getpgid(sweep)  # the sweep and its workers
        assert group != os.getpgid(parent.pid)
        assert len([p for p in processes() if pgid(p) == group]) >= 3
        parent.send_signal(sig)
        _, err = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == code, err
    assert "interrupted; finished runs are kept and checkpoints saved" in err
    for enc in ("rope", "alibi"):
        d = runs / "stop" / "copy" / enc / "seed0"
        assert (d / "checkpoint.pt").exists() and not (d / "metrics.json").exists()
    assert not (runs / "stop" / "copy" / "t5").exists()  # queued: started no run
    (sweep_dir,) = (runs / "stop" / "_sweeps").iterdir()
    assert (sweep_dir / "posenc_stopping").exists()
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/posenc_job.json")]
    assert len(jobs) in (2, 3) and {j["status"] for j in jobs} == {"interrupted"}
    time.sleep(1)  # any worker still alive would go on writing its log
    sizes = {p: p.stat().st_size for p in (runs / "stop").rglob("train.log")}
    time.sleep(3)
    assert sizes == {p: p.stat().st_size for p in (runs / "stop").rglob("train.log")}
    assert [p for p in processes() if pgid(p) == group] == []


@pytest.mark.slow
def test_compare_with_a_quoted_non_ascii_runs_root_and_experiment(tmp_path):
    """The quotes survive from the command line into the sweep's jobs (they were dropped,
    and every such compare failed)."""
    root = tmp_path / "ü runs"
    result = posenc(
        "compare", "-e", "none", "--launcher", "basic", "--experiment", "exp ü 1", *MICRO,
        f"runs_root='{root}'", f"data_dir={tmp_path / 'data'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "exp ü 1" / "copy" / "none" / "seed0" / "metrics.json").is_file()
    assert (root / "exp ü 1" / "report.md").is_file()
