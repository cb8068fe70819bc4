"""Damaged run folders fed to ``posenc eval``, ``report``, ``tables`` and ``publish``:
truncated, garbage, wrong types, missing keys, folders in place of files. Every case gives
one line naming the damaged file (no traceback); a report is still made from the other runs,
with the damaged one listed as failed, in the published report too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from posenc.cli.app import app
from posenc.config import compose
from posenc.run.execute import run
from tests.conftest import MICRO
from tests.test_report import metrics, write_run

RUNNER = CliRunner()


def _metrics(**changes) -> bytes:
    data = metrics("copy", "alibi", 0, {1: 1.0, 2: 1.0, 3: 0.5})
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data).encode()


def _no_exact_match() -> bytes:
    data = json.loads(_metrics())
    del data["per_length"]["2"]["exact_match"]
    return json.dumps(data).encode()


def _folder(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()
    (path / "inside").write_text("{}")


def _write(content: bytes):
    return lambda path: path.write_bytes(content)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (file, damage): the damage is applied to that file of a complete run.
CASES = {
    "metrics-truncated": ("metrics.json", _truncate),
    "metrics-empty": ("metrics.json", _write(b"")),
    "metrics-garbage": ("metrics.json", _write(b"\xff\xfe\x00garbage")),
    "metrics-list": ("metrics.json", _write(b"[]")),
    "metrics-null": ("metrics.json", _write(b"null")),
    "metrics-string": ("metrics.json", _write(b'"complete"')),
    "metrics-no-per-length": ("metrics.json", _write(_metrics(per_length=KeyError))),
    "metrics-no-exact-match": ("metrics.json", _write(_no_exact_match())),
    "metrics-per-length-list": ("metrics.json", _write(_metrics(per_length=[1, 2]))),
    "metrics-exact-match-text": (
        "metrics.json",
        _write(_metrics(per_length={"1": {"exact_match": "high", "token_accuracy": 1.0}})),
    ),
    "metrics-length-not-int": (
        "metrics.json",
        _write(_metrics(per_length={"one": {"exact_match": 1.0, "token_accuracy": 1.0}})),
    ),
    "metrics-train-range-text": ("metrics.json", _write(_metrics(train_range="1-2"))),
    "metrics-seed-text": ("metrics.json", _write(_metrics(seed="zero"))),
    "metrics-no-task": ("metrics.json", _write(_metrics(task=KeyError))),
    "metrics-train-list": ("metrics.json", _write(_metrics(train=[1]))),
    "metrics-folder": ("metrics.json", _folder),
    "config-garbage": ("config.yaml", _write(b"encoding: [name: {rope\n  - :")),
    "config-binary": ("config.yaml", _write(b"\xff\xfe\x00\x01")),
    "config-list": ("config.yaml", _write(b"- 1\n- 2\n")),
    "config-folder": ("config.yaml", _folder),
}


def assert_clean(result, code: int = 0) -> None:
    """Exit ``code``, no exception escaped, no traceback printed."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output


def experiment(root: Path) -> Path:
    """Two encodings × two seeds on copy, each with a config.yaml, and a failed run."""
    exp = root / "exp"
    for enc, em in (("alibi", {1: 1.0, 2: 1.0, 3: 0.5}), ("rope", {1: 1.0, 2: 0.9, 3: 0.0})):
        for seed in (0, 1):
            d = write_run(exp, f"copy/{enc}/seed{seed}", metrics("copy", enc, seed, em))
            (d / "config.yaml").write_text(f"encoding:\n  name: {enc}\nseed: {seed}\n")
    write_run(
        exp, "copy/t5/seed0", error={"task": "copy", "encoding": "t5", "seed": 0, "error": "Boom"}
    )
    return exp


def damage_run(d: Path, case: str) -> Path:
    """A complete run in ``d`` (its config.yaml too), then ``case`` applied; the damaged file."""
    write_run(d.parent, d.name, json.loads(_metrics()))
    (d / "config.yaml").write_text("encoding:\n  name: alibi\nseed: 0\n")
    name, damage = CASES[case]
    damage(d / name)
    return d / name


@pytest.fixture
def damaged(tmp_path) -> tuple[Path, dict[str, Path]]:
    """The experiment with one more run per case, each damaged its own way: one command
    over it meets every case (a command per case would take minutes)."""
    exp = experiment(tmp_path)
    paths = {c: damage_run(exp / f"copy/alibi/seed{10 + i}", c) for i, c in enumerate(CASES)}
    return exp, paths


N_FAILED = len(CASES) + 1  # every damaged run and the run that failed in training


@pytest.mark.parametrize("case", sorted(CASES))
def test_reading_a_damaged_run_gives_a_failed_record_naming_its_file(tmp_path, case):
    from posenc.report import read_run

    path = damage_run(tmp_path / "seed3", case)
    record = read_run(path.parent, "copy/alibi/seed3")
    assert record.status == "failed"
    assert record.error is not None and str(path) in record.error
    assert len(record.error.splitlines()) == 1


def test_report_lists_every_damaged_run_as_failed_naming_its_file(damaged):
    exp, paths = damaged
    result = RUNNER.invoke(app, ["report", str(exp)])
    assert_clean(result)
    assert f"4 complete, {N_FAILED} failed, 0 unfinished" in result.output
    failed = (exp / "report.md").read_text().split("## Failed runs")[1]
    for path in paths.values():
        assert str(path) in failed
    assert (exp / "results.csv").read_text().count("\ncopy,") == 4 * 3


def test_publish_carries_every_failure_into_the_published_report(damaged, tmp_path):
    exp, paths = damaged
    dest = tmp_path / "pub"
    result = RUNNER.invoke(app, ["publish", str(exp), str(dest)])
    assert_clean(result)
    assert f"published 4 complete and {N_FAILED} failed runs" in result.output
    failed = (dest / "report.md").read_text().split("## Failed runs")[1]
    for path in paths.values():  # named within the experiment: the same on every machine
        assert f"{path.relative_to(exp)} is " in failed
    assert str(tmp_path) not in failed
    # the published folder stands on its own: its own report lists the same failures
    again = RUNNER.invoke(app, ["report", str(dest)])
    assert_clean(again)
    assert f"4 complete, {N_FAILED} failed, 0 unfinished" in again.output


def test_tables_render_from_the_other_runs_and_name_each_damaged_file(damaged, tmp_path):
    exp, paths = damaged
    doc = tmp_path / "results.md"
    doc.write_text("# results\n\n<!-- posenc report exp -->\nstale\n<!-- /posenc -->\n")
    result = RUNNER.invoke(app, ["tables", str(doc)])
    assert_clean(result)
    assert f"{doc}: updated" in result.output
    for path in paths.values():  # one line each
        assert len([line for line in result.output.splitlines() if str(path) in line]) == 1
    table = doc.read_text()
    assert "| alibi |" in table and "| rope |" in table


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One real finished run (seconds), copied for each case."""
    d = tmp_path_factory.mktemp("finished")
    run(compose([*MICRO, "progress=false", "threads=1", f"run_dir={d / 'run'}",
                 f"data_dir={d / 'data'}"]))  # fmt: skip
    return d


EVAL_CASES = [
    c
    for c in sorted(CASES)
    if not c.startswith("metrics-") or c in ("metrics-list", "metrics-null")
] + ["metrics-truncated", "metrics-folder", "metrics-train-list", "config-no-encoding"]
EVAL_CASES += ["config-no-model", "config-no-task"]


@pytest.mark.parametrize("case", sorted(set(EVAL_CASES)))
def test_eval_on_a_damaged_run_folder_is_one_line_naming_the_file(tmp_path, finished, case):
    d = tmp_path / "run"
    shutil.copytree(finished / "run", d)
    if case.startswith("config-no-"):  # a section deleted: its defaults are another model
        name = "config.yaml"
        saved = yaml.safe_load((d / name).read_text())
        del saved[case.removeprefix("config-no-")]
        (d / name).write_text(yaml.safe_dump(saved))
    else:
        name, damage = CASES[case]
        damage(d / name)
    result = RUNNER.invoke(app, ["eval", str(d), f"data_dir={finished / 'data'}"])
    assert_clean(result, code=2)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(d / name) in lines[0] or f"{d} has no {name}" in lines[0]
