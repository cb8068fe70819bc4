"""posenc compare / sweep / report end to end: bad input, failing runs, skip and resume,
the joblib and submitit_local launchers, variant names, and the live-progress counts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posenc import sweep
from posenc.cli.app import app
from posenc.errors import ConfigError
from posenc.io import atomic_write_json
from posenc.sweep.status import JOB_STATUS
from tests.conftest import MICRO

ROOT = Path(__file__).resolve().parent.parent
TINY = MICRO


def posenc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI of this checkout in a child process, as a user would."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return subprocess.run(
        [sys.executable, "-m", "posenc.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------- bad input, before anything runs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--encodings", "rope,nope"], "unknown encoding 'nope' in --encodings; valid choices: "),
        (["--tasks", "copy,sort_of"], "unknown task 'sort_of' in --tasks; valid choices: "),
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["--jobs", "0"], "--jobs must be an integer >= 1, got 0"),
        (["--launcher", "cloud"], "unknown launcher 'cloud'; valid choices: basic, local, slurm"),
        (["encoding=rope"], "encoding is set by --encodings"),
        (["experiment=x"], "experiment is set by --experiment"),
        (["run_dir=somewhere"], "run_dir names one run folder"),
        (["model.nope=3"], "model has no key 'nope' (valid: d_model, n_layers, n_heads,"),
        (
            ["-e", "rope,alibi,none", "encoding.base=10000.0"],
            "with encoding=alibi: encoding 'alibi' has no key 'base' (valid: name); an "
            "encoding.KEY override applies to every encoding of the sweep",
        ),
        (
            ["-t", "addition", "-e", "abacus,coupled,none", "encoding.max_offset=20"],
            "with encoding=none: encoding 'none' has no key 'max_offset' (valid: name)",
        ),
        (["hydra/launcher=joblib"], "choose the launcher with --launcher"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_anything_runs(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    if "valid choices" in message:
        assert "rope" in lines[0] or "copy" in lines[0] or "local" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_sweep_rejects_a_swept_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sweep", "experiment=a,b"])
    assert result.exit_code == 2 and "experiment cannot be swept" in result.output


# ---------------------------------------------------------------- planning


def test_plan_gives_each_local_job_its_share_of_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep.threads, "cores", lambda: 4)
    base = ["encoding=rope,alibi,t5", "seed=0,1", f"runs_root={tmp_path}"]
    plan = sweep.plan_sweep(["model.n_layers=2,4", "train.lr=1e-3"], base=base, experiment="e")
    assert plan.total == 3 * 2 * 2
    assert (plan.jobs, plan.threads) == (4, "1")
    assert "hydra.launcher.n_jobs=4" in plan.overrides and "threads=1" in plan.overrides
    assert plan.experiment_dir == tmp_path / "e"
    assert plan.sweep_dir.parent == tmp_path / "e" / "_sweeps"
    labels = {spec.label for spec in plan.specs}  # only swept keys other than seed name runs
    assert labels == {f"{e}@model.n_layers={n}" for e in ("rope", "alibi", "t5") for n in (2, 4)}
    assert f"spec={','.join(map(str, range(12)))}" in plan.overrides
    two = sweep.plan_sweep([], base=base, experiment="e", jobs=2)
    assert (two.jobs, two.threads) == (2, "2")
    mine = sweep.plan_sweep(["threads=3"], base=base, experiment="e", jobs=2)
    assert mine.threads == "3" and mine.overrides.count("threads=3") == 1
    slurm = sweep.plan_sweep([], base=base, experiment="e", launcher="slurm", jobs=8)
    assert slurm.threads == "${hydra:launcher.cpus_per_task}"
    assert "hydra.launcher.array_parallelism=8" in slurm.overrides
    preset = sweep.plan_sweep([], base=base, experiment="e", launcher="slurm")
    assert not any("array_parallelism" in o for o in preset.overrides)  # the preset's value


def test_a_key_only_the_swept_encodings_have_reaches_each_job_in_its_specification(tmp_path):
    """Each run is composed in the parent and its job reads it: Hydra's one composition of
    the multirun with each swept group at its default (rope) never sees encoding.max_offset."""
    base = ["encoding=coupled,abacus", "task=addition", "seed=0", f"runs_root={tmp_path}"]
    plan = sweep.plan_sweep(["encoding.max_offset=30", "train.steps=1"], base=base, experiment="e")
    assert [s.cfg.encoding.max_offset for s in plan.specs] == [30, 30]
    assert [s.cfg.train.steps for s in plan.specs] == [1, 1]
    assert not any("max_offset" in o or "train.steps" in o for o in plan.overrides)
    plan.sweep_dir.mkdir(parents=True)
    plan.write_specs()
    from posenc.run.spec import read_spec

    job = read_spec(plan.sweep_dir / "specs" / "1.yaml", threads=1)
    assert (job.cfg.encoding.name, job.cfg.encoding.max_offset, job.cfg.threads) == (
        "abacus",
        30,
        1,
    )
    assert job.run_dir == tmp_path / "e" / "addition" / "abacus" / "seed0" and job.status == "new"


def test_one_label_for_several_swept_encodings_is_refused_before_anything_runs(tmp_path):
    """Both runs would land in <experiment>/copy/same/seed0: the second failed after the first
    had trained."""
    base = ["encoding=none,rope", "task=copy", "seed=0", f"runs_root={tmp_path}"]
    with pytest.raises(
        ConfigError,
        match=r"'\+encoding.label=same' names the runs of every encoding of the sweep \(none, rope\)",
    ):
        sweep.plan_sweep(["+encoding.label=same"], base=base, experiment="e")
    one = ["encoding=rope", "task=copy", "seed=0,1", f"runs_root={tmp_path}"]
    assert sweep.plan_sweep(["+encoding.label=same"], base=one, experiment="e").total == 2
    assert not any((tmp_path / "e").glob("*/*"))  # nothing was written


@pytest.mark.parametrize("key", ["threads", "device", "experiment", "runs_root"])
def test_keys_that_name_no_run_cannot_be_swept(key):
    with pytest.raises(ConfigError, match=f"{key} cannot be swept"):
        sweep.plan_sweep([f"{key}=a,b"], experiment="e")


def test_sweep_progress_counts_job_files_and_finds_the_best_encoding(tmp_path):
    def job(num, status, encoding, ood=None, error=None):
        data = {"status": status, "task": "copy", "encoding": encoding, "seed": num}
        if ood is not None:
            data["summary"] = {"id_exact_match": 1.0, "ood_exact_match": ood}
        if error:
            data["error"] = error
        atomic_write_json(tmp_path / str(num) / JOB_STATUS, data)

    job(0, "finished", "rope", 0.1)
    job(1, "skipped", "alibi", 0.5)
    job(2, "finished", "alibi", 0.3)
    job(3, "running", "t5")
    job(4, "failed", "learned", error="ValueError: x")
    p = sweep.sweep_progress(tmp_path, total=6)
    assert (p.running, p.finished, p.skipped, p.failed, p.done) == (1, 2, 1, 1, 4)
    assert p.best == ("alibi", pytest.approx(0.4), "OOD")
    assert p.errors == ["copy/learned/seed4: ValueError: x"]


# ---------------------------------------------------------------- end to end


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_failing_run_is_recorded_and_the_others_finish(tmp_path):
    # A run folder holding an unfinished run of another config makes that one run fail.
    bad = tmp_path / "runs" / "fail" / "copy" / "alibi" / "seed0"
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("something: else\n")
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = posenc(
        "compare",
        "--encodings",
        "rope,alibi",
        "--launcher",
        "basic",
        "--experiment",
        "fail",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 of 2 runs failed" in result.stderr and "different config" in result.stdout
    exp = tmp_path / "runs" / "fail"
    error = json.loads((bad / "error.json").read_text())
    assert error["status"] == "failed" and error["encoding"] == "alibi"
    assert error["error"].startswith("RunExistsError:") and "different config" in error["error"]
    assert not (bad / "metrics.json").exists()
    assert (exp / "copy" / "rope" / "seed0" / "metrics.json").exists()
    assert {row["encoding"] for row in read_csv(exp / "results.csv")} == {"rope"}
    md = (exp / "report.md").read_text()
    assert "## Failed runs" in md and "copy/alibi/seed0" in md and "different config" in md
    assert "failed runs" in result.stdout and "rope" in result.stdout
    for name in ("plots/accuracy_vs_length_copy.png", "plots/ood_heatmap.png"):
        assert (exp / name).stat().st_size > 1000


def test_rerun_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    from posenc.config import compose
    from posenc.console import Reporter
    from posenc.run.execute import run

    class StopAtStep3(Reporter):
        def step(self, step, loss, steps_per_sec):
            if step == 3:
                raise KeyboardInterrupt

    runs = tmp_path / "runs"
    common = ["experiment=rerun", "task=copy", "seed=0", f"runs_root={runs}", "progress=false"]
    run(compose([*common, "encoding=rope", *TINY]))
    with pytest.raises(KeyboardInterrupt):
        run(compose([*common, "encoding=alibi", *TINY]), StopAtStep3())
    rope, alibi = (runs / "rerun" / "copy" / e / "seed0" for e in ("rope", "alibi"))
    assert (alibi / "checkpoint.pt").exists() and not (alibi / "metrics.json").exists()
    mtime = (rope / "metrics.json").stat().st_mtime_ns

    result = posenc(
        "compare", "-e", "rope,alibi", "--jobs", "2", "--experiment", "rerun", *TINY, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (rope / "metrics.json").stat().st_mtime_ns == mtime  # skipped, not retrained
    assert "resumed from step 3" in (alibi / "train.log").read_text()
    assert json.loads((alibi / "metrics.json").read_text())["train"]["steps"] == 5
    jobs = [
        json.loads(p.read_text()) for p in (runs / "rerun" / "_sweeps").glob(f"*/*/{JOB_STATUS}")
    ]
    assert sorted((j["encoding"], j["status"]) for j in jobs) == [
        ("alibi", "finished"),
        ("rope", "skipped"),
    ]
    assert "2 at once, threads per run: " in result.stderr
    assert len(read_csv(runs / "rerun" / "results.csv")) == 2 * 6

    # A finished run is never replaced by a run of another config: reported, not overwritten.
    mtime = (alibi / "metrics.json").stat().st_mtime_ns
    changed = [o for o in TINY if not o.startswith("train.steps")] + ["train.steps=6"]
    result = posenc(
        "compare",
        "-e",
        "alibi",
        "--launcher",
        "basic",
        "--experiment",
        "rerun",
        *changed,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "holds a finished run with a different config" in result.stderr
    assert (alibi / "metrics.json").stat().st_mtime_ns == mtime
    assert not (alibi / "error.json").exists()


@pytest.mark.slow
def test_submitit_local_sweep_names_swept_variants(tmp_path):
    result = posenc(
        "sweep",
        "--launcher",
        "submitit_local",
        "experiment=variants",
        "encoding=rope",
        *[o for o in TINY if not o.startswith("model.d_ff")],
        "model.d_ff=16,32",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    exp = tmp_path / "runs" / "variants"
    for d_ff in (16, 32):
        metrics = json.loads(
            (exp / "copy" / f"rope@model.d_ff={d_ff}" / "seed0" / "metrics.json").read_text()
        )
        assert metrics["encoding"] == f"rope@model.d_ff={d_ff}"
    assert list(exp.glob("_sweeps/*/.submitit"))  # it went through submitit
    assert {row["encoding"] for row in read_csv(exp / "results.csv")} == {
        "rope@model.d_ff=16",
        "rope@model.d_ff=32",
    }
    again = posenc("report", str(exp), cwd=tmp_path)
    assert again.returncode == 0 and "rope@model.d_ff=16" in again.stdout


# ---------------------------------------------------------------- presets and --baseline


def test_compare_preset_supplies_encodings_tasks_seeds_and_experiment(monkeypatch, tmp_path):
    from posenc.cli import experiments

    seen = {}
    monkeypatch.setattr(
        experiments, "_launch", lambda base, overrides, **kw: seen.update(kw, base=base)
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", "--preset", "kazemnejad_reverse"])
    assert result.exit_code == 0, result.output
    assert seen["base"] == [
        "encoding=none,t5,alibi,rope,sinusoidal",
        "task=reverse",
        "seed=0,1,2",
        "preset=kazemnejad_reverse",
    ]
    assert seen["experiment"] == "kazemnejad_reverse" and seen["reserved"]["preset"] == "--preset"
    CliRunner().invoke(app, ["compare", "--preset", "kazemnejad_copy", "-s", "1", "-e", "t5"])
    assert seen["base"][:3] == ["encoding=t5", "task=copy", "seed=0"]  # options win


def test_compare_preset_that_selects_its_task_in_its_defaults_trains_that_task(
    monkeypatch, tmp_path
):
    """preset=arithmetic sweeps nothing but selects ``override /task: addition``: `posenc
    compare --preset arithmetic -e coupled` once passed task=copy, which overrode it, and
    the run failed after launching ("task 'copy' has no parameter 'lsb_first'")."""
    from posenc.cli import experiments
    from posenc.config import preset_axes, preset_tasks

    assert "task" not in preset_axes("arithmetic") and preset_tasks("arithmetic") == ["addition"]
    assert preset_tasks("kazemnejad_reverse") == ["reverse"] and preset_tasks("smoke") == []
    seen = {}
    monkeypatch.setattr(
        experiments, "_launch", lambda base, overrides, **kw: seen.update(kw, base=base)
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", "--preset", "arithmetic", "-e", "coupled"])
    assert result.exit_code == 0, result.output
    assert seen["base"][:2] == ["encoding=coupled", "task=addition"]
    assert seen["experiment"] == "arithmetic"  # the preset names it, as the papers' presets do
    CliRunner().invoke(app, ["compare", "--preset", "arithmetic", "-e", "none", "-t", "copy"])
    assert seen["base"][1] == "task=copy"  # --tasks wins


def test_compare_unknown_preset_and_a_second_preset_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", "--preset", "kazemnejad"])
    assert result.exit_code == 2
    assert "unknown preset 'kazemnejad' in --preset; valid choices: " in result.output
    assert "kazemnejad_copy" in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["compare", "--preset", "smoke", "preset=smoke"])
    assert result.exit_code == 2 and "preset is set by --preset" in result.output
    assert not (tmp_path / "runs").exists()


def test_preset_runs_carry_the_paper_block_into_config_yaml():
    from posenc.config import compose

    cfg = compose(["preset=kazemnejad_copy"])
    assert cfg.paper["values"]["copy"]["t5"] == 0.42 and cfg.eval.max_len == 40
    assert cfg.experiment == "kazemnejad_copy" and "compare" not in cfg


def test_report_baseline_on_the_command_line(tmp_path):
    exp = tmp_path / "exp"
    for enc, ood in (("alibi", 1.0), ("rope", 0.0)):
        d = exp / "copy" / enc / "seed0"
        d.mkdir(parents=True)
        data = {
            "status": "complete", "task": "copy", "encoding": enc, "seed": 0,
            "train_range": [1, 1],
            "per_length": {"1": {"exact_match": 1.0, "token_accuracy": 1.0, "examples": "11"},
                           "2": {"exact_match": ood, "token_accuracy": ood,
                                 "examples": "11" if ood else "00"}},
        }  # fmt: skip
        (d / "metrics.json").write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["report", str(exp), "--baseline", "t5"])
    assert result.exit_code == 2 and not (exp / "report.md").exists()
    assert "baseline 't5' is not an encoding of this experiment; valid choices: alibi, rope" in (
        result.output
    )
    result = CliRunner().invoke(app, ["report", str(exp), "--baseline", "rope"])
    assert result.exit_code == 0, result.output
    assert "| alibi | 1 | +1.000 | [+1.000, +1.000] | seeds × examples |" in (
        (exp / "report.md").read_text()
    )


def test_a_preset_made_for_another_task_needs_task_named(tmp_path, monkeypatch):
    """`posenc sweep preset=kazemnejad_reverse` without task= would train copy, the default
    task: it stops instead, naming the task."""
    from posenc.config import compose
    from posenc.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose(["preset=kazemnejad_reverse", "encoding=rope"])
    assert str(err.value) == (
        "preset 'kazemnejad_reverse' is made for task reverse (its hydra.sweeper.params), but this "
        "run would train the default task 'copy'; add task=reverse (or run posenc compare "
        "--preset kazemnejad_reverse)"
    )
    assert compose(["preset=kazemnejad_reverse", "task=reverse"]).task.name == "reverse"
    assert compose(["preset=kazemnejad_reverse", "task=copy"]).task.name == "copy"  # named
    assert compose(["preset=kazemnejad_copy"]).task.name == "copy"  # its own task
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "preset=kazemnejad_reverse", "encoding=rope"])
    assert result.exit_code == 2, result.output
    assert "add task=reverse" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_sweep_with_a_preset_takes_the_axes_it_does_not_set_from_the_preset(tmp_path):
    """`posenc sweep preset=NAME` sweeps what the preset's hydra.sweeper.params declare, as
    Hydra's sweeper would, unless its own overrides set the key."""
    from posenc.sweep import plan_sweep

    plan = plan_sweep(
        ["preset=kazemnejad_reverse", "encoding=rope", "seed=0,1", f"runs_root={tmp_path}"]
    )
    runs = [(s.cfg.task.name, s.label, s.cfg.seed) for s in plan.specs]
    assert runs == [("reverse", "rope", 0), ("reverse", "rope", 1)] and plan.total == 2
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- planned before launching


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "rope,alibi", "model.d_model=100"], "copy/rope/seed0: rotary dimension"),
        (
            ["-e", "rope,alibi", "model.d_model=96", "model.n_heads=64"],
            "model.d_model=96 is not divisible by model.n_heads=64",
        ),
        (["-e", "rope,alibi", "-t", "mqar", "train.max_len=80"], "cannot make train.max_len 80"),
        (["-e", "p_rope", "--seeds", "2", "encoding.p=2"], "encoding.p must be in (0, 1]"),
        (
            ["-e", "rope,alibi", "-t", "flip_flop", "task.p_ignore=1"],
            "task.p_ignore in [0, 1), got 1",
        ),
    ],
)
def test_a_sweep_refuses_what_posenc_train_would_refuse_before_any_job_starts(
    tmp_path, monkeypatch, args, message
):
    """Every combination is planned as `posenc train` plans one run (issue 36): the encoding's,
    the task's and the model's checks refuse it in one line, before the first job."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", "--launcher", "basic", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # no sweep folder, no run folder


def test_a_sweep_that_would_put_two_runs_in_one_folder_is_refused(tmp_path):
    base = ["encoding=rope", "task=copy", "seed=1,1", f"runs_root={tmp_path}"]
    with pytest.raises(ConfigError, match="seed=1 and seed=1 would share the run folder"):
        sweep.plan_sweep([], base=base, experiment="e")
