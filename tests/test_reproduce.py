"""``posenc reproduce``: a finished run trained again from its own config, and compared."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from posenc.cli.app import app
from posenc.config import compose
from posenc.run import reproduce as rp
from posenc.run.execute import run
from tests.conftest import TINY


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny run, saved as a published one is: its config names a data cache on
    the machine that made it, which the reproduction must not need."""
    root = tmp_path_factory.mktemp("made")
    cfg = compose([*TINY, "experiment=made", f"runs_root={root}", "seed=3"])
    run(cfg)
    folder = root / "made" / "copy" / "rope" / "seed3"
    published = tmp_path_factory.mktemp("published") / "seed3"
    published.mkdir()
    for name in ("config.yaml", "metrics.json"):  # no checkpoint, logs or events
        shutil.copy(folder / name, published / name)
    shutil.rmtree(root)  # the making machine's folders are gone
    return published


def invoke(*args: str):
    return CliRunner().invoke(app, ["reproduce", *args, "--no-progress"])


def test_a_run_reproduces_bit_for_bit_and_a_second_call_only_compares(source, tmp_path):
    result = invoke(str(source), "--runs-root", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "reproduced bit for bit: all" in result.output
    folder = tmp_path / "_reproduce" / "made" / "copy" / "rope" / "seed3"
    here = json.loads((folder / "metrics.json").read_text())
    there = json.loads((source / "metrics.json").read_text())
    assert here["per_length"] == there["per_length"]
    assert here["train"]["final_loss"] == there["train"]["final_loss"]
    assert (tmp_path / "_data").is_dir()  # the frozen sets cached under --runs-root
    log = (folder / "train.log").read_bytes()
    again = invoke(str(source), "--runs-root", str(tmp_path))
    assert again.exit_code == 0, again.output
    assert "already holds the finished reproduction" in again.output
    assert (folder / "train.log").read_bytes() == log  # not trained again


def test_a_run_that_differs_is_exit_1_with_what_differs(source, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    metrics = json.loads((changed / "metrics.json").read_text())
    first = metrics["per_length"]["2"]["examples"]
    metrics["per_length"]["2"]["examples"] = ("0" if first[0] == "1" else "1") + first[1:]
    metrics["train"]["final_loss"] += 1e-9
    (changed / "metrics.json").write_text(json.dumps(metrics))
    result = invoke(str(changed), "--into", str(tmp_path / "again"))
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "not reproduced bit for bit; 1 of " in out and "at lengths 2" in out
    assert "final training loss" in out and "no" in out
    again = invoke(str(changed), "--into", str(tmp_path / "again"))  # compared, not trained
    assert again.exit_code == 1 and "already holds the finished reproduction" in again.output


def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(source, tmp_path):
    for args, expected in (
        ([str(tmp_path / "missing")], "is not a run folder"),
        ([str(tmp_path)], "holds no finished run"),  # nor a run below it
    ):
        result = invoke(*args, "--runs-root", str(tmp_path / "root"))
        assert result.exit_code == 2 and expected in result.output, result.output
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(source / "config.yaml", unfinished / "config.yaml")
    result = invoke(str(unfinished), "--runs-root", str(tmp_path / "root"))
    assert result.exit_code == 2 and "not a finished run" in result.output
    result = invoke(str(source), "--into", str(source))  # would compare it with itself
    assert result.exit_code == 2 and "is the run itself" in result.output
    assert not (tmp_path / "root").exists()


def test_a_folder_holding_another_run_is_refused(source, tmp_path):
    other = tmp_path / "other"
    run(compose([*TINY, f"run_dir={other}", f"data_dir={tmp_path / 'data'}", "seed=4"]))
    before = (other / "metrics.json").read_bytes()
    result = invoke(str(source), "--into", str(other))
    assert result.exit_code == 2 and "holds another run (seed: 4 there, 3 here" in " ".join(
        result.output.split()
    )
    assert (other / "metrics.json").read_bytes() == before


def test_the_reproduction_trains_what_the_run_trained(source, tmp_path):
    """Same config, the folders its own, a precision of auto pinned to what the run used
    (this machine's records could choose otherwise)."""
    src = rp.source_run(source)
    assert src.metrics["train"]["attempts"][0]["threads"] == 1  # TINY's threads=1
    src.cfg.train.precision = "auto"
    src.metrics["train"]["precision_used"] = "bf16"
    src.cfg.threads = None  # torch's default there: the threads it recorded
    src.metrics["train"]["attempts"][0]["threads"] = 3
    cfg = rp.reproduction(src, tmp_path / "into", tmp_path, progress=False)
    assert (cfg.train.precision, cfg.threads) == ("bf16", 3)
    assert (cfg.run_dir, cfg.data_dir) == (str(tmp_path / "into"), str(tmp_path / "_data"))
    saved = OmegaConf.to_container(OmegaConf.load(source / "config.yaml"), resolve=True)
    mine = OmegaConf.to_container(cfg, resolve=True)
    for key in ("run_dir", "runs_root", "data_dir", "progress", "overwrite"):
        saved.pop(key), mine.pop(key)
    mine["train"]["precision"], mine["threads"] = saved["train"]["precision"], saved["threads"]
    assert mine == saved


def test_the_comparison_names_lengths_scored_on_one_side_and_validation_differences():
    there = {
        "per_length": {
            "1": {"exact_match": 1.0, "token_accuracy": 1.0, "examples": "11"},
            "2": {"exact_match": 0.5, "token_accuracy": 0.75, "examples": "10"},
            "3": {"exact_match": 0.0, "token_accuracy": 0.5, "examples": "00"},
        },
        "validation": {"per_length": {"1": {"exact_match": 1.0}, "4": {"exact_match": 0.5}}},
        "train": {"final_loss": 0.25, "steps": 10, "machine": "cpu | X | kernels AVX2"},
    }
    here = json.loads(json.dumps(there))
    del here["per_length"]["3"]
    here["per_length"]["2"]["token_accuracy"] = 0.5  # the same examples right, other tokens
    here["validation"]["per_length"]["4"]["exact_match"] = 1.0
    here["train"]["machine"] = "cpu | X | kernels AVX512"
    c = rp.compare_runs(there, here)
    assert not c.same and c.differing_lengths == [2, 3] and c.unmatched_lengths == [3]
    assert ("validation exact match", "2 lengths", "differs at 4", False) in c.rows
    line = rp.verdict(c)
    assert "0 of 4 test examples differ, at lengths 2" in line
    assert "lengths scored on one side only: 3" in line
    assert "Float kernels differ between machine kinds" in rp.machines_line(c)
    for side, count in (("there", 1), ("here", 2)):  # the threads each side recorded
        setattr(c, f"threads_{side}", count)
    assert "kernels AVX2 (1 thread); reproduced on: cpu | X | kernels AVX512 (2 threads)" in (
        rp.machines_line(c)
    )
    assert rp.compare_runs(there, json.loads(json.dumps(there))).same
    # a summary under older definitions is shown, not judged: the examples decide
    there["summary"], there["summary_version"] = {"extrapolation_horizon": 20}, 1
    same = json.loads(json.dumps(there)) | {"summary": {}, "summary_version": 3}
    c = rp.compare_runs(there, same)
    assert c.same and c.summary_versions == (1, 3)
    assert ("extrapolation horizon", "20", "—", None) in c.rows


def test_a_folder_of_runs_reproduces_run_by_run_then_one_table(source, tmp_path):
    """An experiment folder: every finished run in it, two at a time, each by its own
    process; a second call only compares, and one run that differs makes it exit 1."""
    folder = tmp_path / "experiment" / "copy" / "rope"
    shutil.copytree(source, folder / "seed3")
    other = tmp_path / "made"
    run(compose([*TINY, f"run_dir={other}", f"data_dir={tmp_path / 'data'}", "seed=4"]))
    (folder / "seed4").mkdir()
    for name in ("config.yaml", "metrics.json"):
        shutil.copy(other / name, folder / "seed4" / name)
    (folder / "_ignored").mkdir()  # a folder starting with "_" is passed over
    shutil.copy(source / "config.yaml", folder / "_ignored" / "config.yaml")
    args = (str(tmp_path / "experiment"), "--into", str(tmp_path / "again"), "--jobs", "2")
    result = invoke(*args)
    out = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "2 runs under" in out and "2 of 2 runs reproduced bit for bit" in out
    assert (tmp_path / "again" / "copy" / "rope" / "seed4" / "metrics.json").is_file()
    metrics = json.loads((folder / "seed4" / "metrics.json").read_text())
    metrics["train"]["final_loss"] += 1e-9
    (folder / "seed4" / "metrics.json").write_text(json.dumps(metrics))
    again = invoke(*args)
    assert again.exit_code == 1, again.output
    assert "1 of 2 runs reproduced bit for bit" in " ".join(again.output.split())
    assert not list((tmp_path / "again").rglob("_ignored"))


def test_sigterm_stops_a_folder_s_reproductions_with_checkpoints_and_the_same_command_resumes(
    tmp_path,
):
    """SIGTERM to ``posenc reproduce FOLDER``: each running reproduction is sent SIGTERM,
    saves its checkpoint at its next step and stops; the command exits 143, and run again
    it resumes them and they still reproduce bit for bit."""
    import signal
    import subprocess
    import sys
    import time

    made = tmp_path / "experiment" / "copy" / "rope" / "seed0"
    long = [*TINY, "train.steps=300", "train.log_every=1"]  # time to stop it midway
    run(compose([*long, f"run_dir={made}", f"data_dir={tmp_path / 'data'}"]))
    into = tmp_path / "again"
    command = [sys.executable, "-m", "posenc.cli", "reproduce", str(tmp_path / "experiment"),
               "--into", str(into), "--runs-root", str(tmp_path / "root")]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = into / "copy" / "rope" / "seed0" / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and " step 50 " not in (
        log.read_text() if log.exists() else ""
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "interrupted; finished reproductions are kept and checkpoints saved" in out
    assert (log.parent / "checkpoint.pt").is_file() and not (log.parent / "metrics.json").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from step" in log.read_text()
    assert "1 of 1 runs reproduced bit for bit" in again.stdout
