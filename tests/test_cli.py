"""The `posenc` command: help, list, config, train, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posenc import encodings
from posenc.cli.app import app
from posenc.config import group_options
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_help_does_not_import_torch():
    code = "import sys; from posenc.cli.app import app; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_list_shows_every_encoding_and_task_on_one_line_each():
    from posenc import tasks

    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for name in encodings.names():
        line = next(line for line in lines if line.split()[:1] == [name])
        assert encodings.info(name).paper in line
    for name in tasks.names():
        assert any(line.split()[:1] == [name] for line in lines)


def test_config_prints_the_resolved_config_with_overrides():
    result = runner.invoke(app, ["config", "encoding=alibi", "model.n_layers=3"])
    assert result.exit_code == 0
    assert "encoding:\n  name: alibi\n" in result.output
    assert "n_layers: 3" in result.output
    assert "data_dir: runs/_data" in result.output  # interpolations resolved


def test_train_runs_and_writes_metrics(tmp_path):
    args = [
        "train",
        *TINY,
        "encoding=t5",
        f"run_dir={tmp_path / 'r'}",
        f"data_dir={tmp_path / 'd'}",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["encoding"] == "t5"
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already holds a finished run" in again.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["encoding=nope"], "unknown encoding 'nope'; valid choices: abacus, alibi,"),
        (["task=nope"], "unknown task 'nope'; valid choices: "),
        (["model.n_heads=3"], "not divisible by model.n_heads=3"),
        (["model.d_model=12", "model.n_heads=4"], "must be a positive even integer"),
        (["encoding=learned", "model.max_len=64", "eval.max_len=60"], "model.max_len=64"),
        (["train.min_len=-2"], "train.min_len must be an integer >= 0, got -2"),
        (["train.min_len=9", "train.max_len=3"], "train.min_len=9 is greater than train.max_len=3"),
        (["task.vocab_size=1"], "needs task.vocab_size >= 2, got 1"),
        (["train.stepz=3"], "train has no key 'stepz' (valid: steps, batch_size,"),
        (["train.betas=[0.9]"], "train.betas must be a list of exactly 2 entries, got [0.9]"),
        (["eval.lengths=[3,x]"], "eval.lengths[1] must be an integer, got 'x'"),
        (["encoding=combo", "encoding.parts=[t5,{name:t5,num_bucket:3}]"], "has no key"),
        (["train.lr=nan"], "train.lr must be a finite number, got nan"),
        (["+train.momentum=0.9"], "unknown key train.momentum"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, expected):
    run_dir = tmp_path / "r"
    result = runner.invoke(
        app, ["train", *args, f"run_dir={run_dir}", f"data_dir={tmp_path / 'd'}"]
    )
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not run_dir.exists() and not (tmp_path / "d").exists()


def test_bad_input_from_a_real_shell_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "posenc.cli", "train", "encoding=nope", f"run_dir={tmp_path / 'r'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: unknown encoding 'nope'; valid choices: {', '.join(group_options('encoding'))}"
    ]
    assert not (tmp_path / "r").exists()


def test_jobs_with_a_launcher_that_cannot_limit_them_is_one_line(tmp_path):
    for launcher in ("submitit_local", "basic"):
        result = runner.invoke(
            app,
            [
                "compare",
                "-e",
                "none",
                "--launcher",
                launcher,
                "--jobs",
                "1",
                f"runs_root={tmp_path}",
            ],
        )
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [
            f"error: --jobs does not apply to --launcher {launcher} ("
            + ("one run after another" if launcher == "basic" else "it starts every run at once")
            + "); use --launcher local --jobs N"
        ]
    assert not any(tmp_path.iterdir())


def test_slurm_banner_shows_the_launchers_cores_not_an_interpolation(tmp_path):
    from posenc.sweep import plan_sweep

    plan = plan_sweep([f"runs_root={tmp_path}"], base=["encoding=none"], launcher="slurm")
    assert plan.threads == "${hydra:launcher.cpus_per_task}"  # resolved on the node
    assert plan.threads_shown == "4"  # configs/hydra/launcher/slurm.yaml
    plan = plan_sweep(
        [f"runs_root={tmp_path}", "hydra.launcher.cpus_per_task=2"], base=[], launcher="slurm"
    )
    assert plan.threads_shown == "2"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("posenc tr", ["train"]),
        ("posenc train encoding=al", ["encoding=alibi"]),
        ("posenc train encoding = al", ["alibi"]),  # bash splits words at '='
        ("posenc train task=re", ["task=reverse"]),
        ("posenc compare -e rope,al", ["rope,alibi"]),
        ("posenc compare --tasks co", ["copy", "count"]),
        ("posenc train se", ["seed="]),
        ("posenc train train.bet", ["train.betas="]),
        ("posenc config ta", ["task.", "task="]),
    ],
)
def test_shell_completion_completes_commands_names_and_keys(words, expected):
    env = {
        **os.environ,
        "_POSENC_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    out = subprocess.run(
        [sys.executable, "-m", "posenc.cli"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.stdout.split() == expected, out.stderr


def test_install_completion_is_offered():
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output
