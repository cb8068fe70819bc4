"""Disk faults: a run_dir that is a file, under a file or /dev/null; a full disk (ENOSPC) and
a read-only file system (EROFS), simulated by making posenc's atomic writer fail as the OS
would (the suite may run as root, for whom a chmod-ed folder is writable). Each is one line
naming the path and the cause, exit 2, and nothing half-written is left behind."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import pytest

from posenc.cli.app import main
from tests.conftest import MICRO
from tests.test_fuzz_runfolders import experiment


def posenc_main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """``posenc ARGS`` in this process, through the real entry point (its error handling)."""
    monkeypatch.setattr(sys, "argv", ["posenc", *args])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code, capsys.readouterr().err.strip().splitlines()


def fail_writes(monkeypatch, code: int, only: str = "", after: int = 0) -> None:
    """Every atomic write of a file whose name ends with ``only``, past the first ``after``,
    fails with ``code`` as the OS reports it: mid-write for a full disk, at the temporary
    file for a read-only file system."""
    import posenc.io

    writes = []

    real_fsync, real_mkstemp = os.fsync, posenc.io.tempfile.mkstemp

    def mkstemp(prefix="", suffix="", dir=None):
        if code == errno.EROFS and prefix.rstrip(".").endswith(only):
            raise OSError(code, os.strerror(code), str(Path(dir) / f"{prefix}x{suffix}"))
        return real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if code == errno.ENOSPC and Path(name).name.split(".tmp")[0][:-9].endswith(only):
            writes.append(name)
            if len(writes) > after:
                raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(posenc.io.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(posenc.io.os, "fsync", fsync)


def train_args(tmp_path: Path, run_dir) -> list[str]:
    return [
        "train", *MICRO, "progress=false", "threads=1", f"run_dir={run_dir}",
        f"data_dir={tmp_path / 'data'}",
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["file", "under-file", "dev-null"])
def test_a_run_dir_that_cannot_be_a_folder_is_one_line(tmp_path, monkeypatch, capsys, where):
    (tmp_path / "afile").write_text("x")
    run_dir = {
        "file": tmp_path / "afile",
        "under-file": tmp_path / "afile" / "run",
        "dev-null": Path("/dev/null"),
    }[where]
    code, err = posenc_main(monkeypatch, capsys, *train_args(tmp_path, run_dir))
    assert code == 2
    assert len(err) == 1, err
    assert str(run_dir) in err[0] and "Not a directory" in err[0]
    assert "a file stands where posenc needs a folder" in err[0]
    assert (tmp_path / "afile").read_text() == "x"


def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    import torch

    run_dir = tmp_path / "run"
    args = [*train_args(tmp_path, run_dir), "train.checkpoint_every=1"]
    with monkeypatch.context() as patched:
        fail_writes(patched, errno.ENOSPC, only="checkpoint.pt", after=2)
        code, err = posenc_main(patched, capsys, *args)
    assert code == 2
    assert err == [
        f"error: {run_dir / 'checkpoint.pt'}: No space left on device; free some space and "
        "run the same command again: finished runs and the last checkpoint are kept"
    ]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["trainer"]["step"] == 2
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert posenc_main(monkeypatch, capsys, *args)[0] == 0  # space freed: it resumes
    assert "resumed from step 2" in (run_dir / "train.log").read_text()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    from posenc.config import compose
    from posenc.run.execute import run

    d = tmp_path_factory.mktemp("finished")
    run(compose([*MICRO, "progress=false", "threads=1", f"run_dir={d / 'run'}",
                 f"data_dir={d / 'data'}"]))  # fmt: skip
    return d


def test_eval_on_a_read_only_run_is_one_line(tmp_path, finished, monkeypatch, capsys):
    d = tmp_path / "run"
    shutil.copytree(finished / "run", d)
    fail_writes(monkeypatch, errno.EROFS, only="eval-base.json")
    code, err = posenc_main(monkeypatch, capsys, "eval", str(d), f"data_dir={finished / 'data'}")
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {d / 'eval-base.json'}: Read-only file")
    assert "write elsewhere" in err[0]


@pytest.mark.parametrize(
    ("code", "cause"), [(errno.ENOSPC, "No space"), (errno.EROFS, "Read-only")]
)
def test_report_and_publish_on_a_full_or_read_only_disk_are_one_line(
    tmp_path, monkeypatch, capsys, code, cause
):
    exp = experiment(tmp_path)
    fail_writes(monkeypatch, code, only="results.csv")
    status, err = posenc_main(monkeypatch, capsys, "report", str(exp))
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"error: {exp / 'results.csv'}: {cause}"), err
    status, err = posenc_main(monkeypatch, capsys, "publish", str(exp), str(tmp_path / "pub"))
    assert status == 2
    assert len(err) == 1 and f"{tmp_path / 'pub' / 'results.csv'}: {cause}" in err[0], err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_runs_root_and_run_for_real(tmp_path, finished, monkeypatch, capsys):
    root = tmp_path / "ro"
    shutil.copytree(finished / "run", root / "run")
    for p in [root, root / "run"]:
        p.chmod(0o555)
    try:
        args = train_args(tmp_path, root / "new")
        code, err = posenc_main(monkeypatch, capsys, *args)
        assert code == 2 and len(err) == 1 and "Permission denied" in err[0]
        code, err = posenc_main(
            monkeypatch, capsys, *train_args(tmp_path, root / "run"), "overwrite=true"
        )
        assert code == 2 and len(err) == 1 and "Permission denied" in err[0]
    finally:
        for p in [root, root / "run"]:
            p.chmod(0o755)


def test_a_read_only_runs_root_or_data_dir_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    import posenc.data

    with monkeypatch.context() as patched:  # the runs root: its first file cannot be made
        fail_writes(patched, errno.EROFS, only="config.yaml")
        code, err = posenc_main(patched, capsys, *train_args(tmp_path, tmp_path / "run"))
    assert code == 2
    assert err == [
        f"error: {tmp_path / 'run' / 'config.yaml'}: Read-only file system; the file system "
        "is read-only: write elsewhere (runs_root=, run_dir=, data_dir=, or another "
        "destination folder)"
    ]

    def mkdtemp(prefix="", dir=None):  # the data dir: the evaluation set cannot be saved
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(posenc.data.tempfile, "mkdtemp", mkdtemp)
    code, err = posenc_main(monkeypatch, capsys, *train_args(tmp_path, tmp_path / "run2"))
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'data'}: Read-only"), err


def test_overwrite_of_a_read_only_run_is_one_line(tmp_path, finished, monkeypatch, capsys):
    d = tmp_path / "run"
    shutil.copytree(finished / "run", d)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):  # the run folder's files cannot be removed
        if self.parent == d:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".lock"}
    args = [*train_args(tmp_path, d)[:-1], f"data_dir={finished / 'data'}", "overwrite=true"]
    code, err = posenc_main(monkeypatch, capsys, *args)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {d}/") and "Read-only file system" in err[0]
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
