"""Every task's positive control learns it (issue 34): the quick variant of each task's control
(configs/control/<task>_quick.yaml) trains for real and must reach its threshold at every
training length within its step budget, so a broken generator, loss mask or loss fails here
instead of being published as a finding about encodings. Parametrized over every registered
task: a new task must bring a control."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from typer.testing import CliRunner

from posenc import controls, tasks
from posenc.cli.app import app
from posenc.data import TrainStream, collate
from posenc.tasks.format import PAD

# CPU seconds a quick control may take (one thread; CPU time, so a loaded machine does not
# fail it). Most take 4-11 s on the 2-core AMD EPYC CI machine, addition, missing_duplicate
# and the recall tasks 18-24 (docs/tasks.md#positive-controls-posenc-check-task).
QUICK_CPU_BUDGET_S = 60.0


def _check(name: str, tmp_path, *overrides: str):
    return controls.check(name, [f"runs_root={tmp_path}", "progress=false", *overrides], quick=True)


@pytest.mark.parametrize("task", tasks.names())
def test_quick_control_learns_its_task_within_its_budget(task, tmp_path):
    assert task in controls.names(), f"task {task!r} has no configs/control/{task}.yaml"
    cfg = controls.compose_control(task, [f"runs_root={tmp_path}"], quick=True)
    t0 = time.process_time()
    record, metrics, path = _check(task, tmp_path)
    cpu = time.process_time() - t0
    lo, hi = metrics["train_range"]
    scores = {n: v["exact_match"] for n, v in metrics["per_length"].items()}
    assert record["learned"], (
        f"{task}: exact match by length {scores}, threshold {cfg.eval.threshold}"
    )
    assert record["min_id_exact_match"] == min(scores[str(n)] for n in range(lo, hi + 1))
    assert record["steps"] <= cfg.train.steps
    assert cpu <= QUICK_CPU_BUDGET_S, f"{task}: {cpu:.1f} CPU s"
    assert path == tmp_path / "controls" / task / "quick" / "control.json"
    assert json.loads(path.read_text()) == record


@pytest.mark.parametrize("name", controls.names())
def test_every_control_composes_and_is_judged_on_its_training_lengths(name, tmp_path):
    from posenc.config import group_options
    from posenc.run.planning import eval_lengths

    variants = [False] + ([True] if f"{name}_quick" in group_options("control") else [])
    for quick in variants:
        cfg = controls.compose_control(name, [f"runs_root={tmp_path}"], quick=quick)
        assert eval_lengths(cfg) == list(range(cfg.train.min_len, cfg.train.max_len + 1))
        assert cfg.train.stop_at is not None and cfg.overwrite
        folder = tmp_path / "controls" / name / ("quick" if quick else "")
        assert cfg.run_dir == str(folder / "run")


def test_control_json_has_the_schema_the_report_reads(tmp_path):
    record, _, path = _check("copy", tmp_path, "train.steps=5")
    on_disk = json.loads(path.read_text())
    assert list(on_disk) == [
        "task",
        "config",
        "learned",
        "min_id_exact_match",
        "threshold",
        "steps",
        "command",
    ]
    assert on_disk["task"] == "copy" and on_disk["steps"] == 5 and on_disk["learned"] is False
    assert on_disk["threshold"] == 0.9 and on_disk["config"]["train"]["max_len"] == 4
    assert on_disk["command"].startswith("posenc check-task copy --quick runs_root=")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def _prompt_only_mask(original):
    """A loss mask that covers the prompt instead of the answer (an off-target mask)."""

    def next_batch(self):
        batch = original(self)
        real = batch.tokens[:, 1:] != PAD
        return dataclasses.replace(batch, loss_mask=real & ~batch.loss_mask)

    return next_batch


def _shuffled_targets(original):
    """A generator whose training targets belong to other inputs of the batch."""

    def next_batch(self):
        lengths = self.rng.integers(self.min_len, self.max_len + 1, size=self.batch_size)
        pairs = [self.task.sample(int(n), self.rng) for n in lengths]
        order = self.rng.permutation(len(pairs))
        return collate([(pairs[i][0], pairs[j][1]) for i, j in enumerate(order)], self.fmt)

    return next_batch


@pytest.mark.parametrize("breakage", [_prompt_only_mask, _shuffled_targets])
def test_a_broken_pipeline_fails_the_quick_control(breakage, tmp_path, monkeypatch):
    monkeypatch.setattr(TrainStream, "next", breakage(TrainStream.next))
    record, _, _ = _check("copy", tmp_path)
    assert not record["learned"], record["min_id_exact_match"]


def test_check_task_cli_exit_codes_and_verdict(tmp_path):
    runner = CliRunner()
    common = [f"runs_root={tmp_path}", "progress=false"]
    bad = runner.invoke(app, ["check-task", "nope", *common])
    assert bad.exit_code == 2
    assert "no control for task 'nope'; valid choices: addition," in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    short = runner.invoke(app, ["check-task", "copy", "--quick", *common, "train.steps=5"])
    assert short.exit_code == 1, short.output
    assert "did not learn copy" in short.output
    assert (tmp_path / "controls" / "copy" / "quick" / "control.json").exists()
    cut = runner.invoke(app, ["check-task", "copy", "--quick", *common, "eval.max_len=2"])
    assert cut.exit_code == 2 and "leaves out 3, 4" in cut.output
