"""The protocol's training side (issue 34): validation apart from the test set, the fit
decided on validation, train.until_fit and its exact resume, the metrics.json blocks."""

from __future__ import annotations

import json

import pytest
import torch

import posenc.run.session
from posenc import tasks
from posenc.config import compose
from posenc.console import Reporter
from posenc.data import by_length, example_hash, load_eval_set
from posenc.errors import ConfigError
from posenc.run.execute import run
from posenc.run.planning import eval_lengths, plan, validation_lengths
from posenc.run.session import validation_groups

# Parity over 1..3 with a low bar: the tiny model fits it within a few dozen steps.
PARITY = [
    "task=parity",
    "encoding=none",
    "model.n_layers=1",
    "train.max_len=3",
    "eval.max_len=5",
    "eval.val_share=0.25",
    "eval.threshold=0.8",
    "train.lr=1e-2",
    "train.batch_size=32",
    "train.warmup_steps=5",
    "eval.n_samples=8",
    "eval.val_samples=8",
]


def test_the_default_split_validates_21_to_30_and_tests_31_to_60():
    cfg = compose([])
    assert validation_lengths(cfg) == list(range(21, 31))
    assert eval_lengths(cfg) == [*range(1, 21), *range(31, 61)]


@pytest.mark.parametrize(
    "overrides, held, test_past",
    [
        (["train.max_len=4", "eval.lengths=[2,5,6,8,10,12,14,16]"], [5, 6], [8, 10, 12, 14, 16]),
        (["train.max_len=32", "eval.lengths=[16,32,48]"], [], [48]),  # one length: the test's
        (["eval.val_share=0"], [], list(range(21, 61))),
    ],
)
def test_validation_takes_the_first_share_of_the_lengths_past_the_range(overrides, held, test_past):
    cfg = compose(overrides)
    assert validation_lengths(cfg) == held
    assert [n for n in eval_lengths(cfg) if n > cfg.train.max_len] == test_past


@pytest.mark.parametrize("name", tasks.names())
def test_no_validation_example_equals_a_test_example(tiny_cfg, tmp_path, name):
    """Every validation example (training lengths and validation lengths) hashes apart from
    every example of the frozen test set, for every task, short lengths included (where the
    test set holds every example there is, validation keeps none)."""
    task = tasks.build(name)
    lo = next(n for n in range(1, 50) if _makes(task, n))
    hi = lo + 5
    cfg = tiny_cfg(
        f"task={name}",
        f"train.min_len={lo}",
        f"train.max_len={hi}",
        f"eval.min_len={lo}",
        f"eval.max_len={hi + 4}",
        "eval.val_share=0.5",
        "eval.n_samples=30",
        "eval.val_samples=20",
        "model.max_len=4096",
    )
    p = plan(cfg)
    assert list(p.validation_lengths) == [hi + 1, hi + 2]
    test = by_length(load_eval_set(p.task, p.eval_lengths, 30, cfg.eval.seed, cfg.data_dir))
    held = validation_groups(p)
    test_hashes = {example_hash(i, t) for pairs in test.values() for i, t in pairs}
    val_hashes = {example_hash(i, t) for pairs in held.values() for i, t in pairs}
    assert val_hashes and not val_hashes & test_hashes
    assert set(held) == {*range(lo, hi + 1), hi + 1, hi + 2}
    assert not set(held) - set(range(lo, hi + 1)) & set(test)  # validation lengths: no test
    assert all(len(held[n]) == 20 for n in (hi + 1, hi + 2))


def _makes(task, n: int) -> bool:
    try:
        task.check_length(n, "n")
        return True
    except ConfigError:
        return False


@pytest.mark.slow
def test_until_fit_trains_past_steps_until_validation_fits_then_stops(tiny_cfg):
    """5 steps never fit this parity setting and 80 always do, whatever the seed: over seeds
    0-19 (2026-12-07, AMD EPYC) it fit at 10-65 steps, at 15 for seed 0, the test's. (With
    10 steps and the default 4x ceiling, seeds 6, 10 and 15 fit at 10 and seed 11 not by 40,
    so the test passed only where its seed's rounding happened to land between.)"""
    extend = ["train.steps=5", "train.max_steps=80", "train.eval_every=5", "train.until_fit=true"]
    out = run(tiny_cfg(*PARITY, *extend, "train.min_lr_ratio=1.0"))
    protocol, validation = out["protocol"], out["validation"]
    assert protocol["until_fit"] and protocol["steps"] == 5 and protocol["max_steps"] == 80
    assert 5 < protocol["steps_trained"] < 80 and protocol["steps_trained"] % 5 == 0
    assert protocol["steps_to_fit"] == protocol["steps_trained"] == out["train"]["steps"]
    assert validation["fits_training_range"] is out["summary"]["fits_training_range"] is True
    assert validation["lengths"] == [4, 4] and protocol["test_lengths"] == [5, 5]
    assert set(validation["per_length"]) <= {"1", "2", "3", "4"} and "4" in validation["per_length"]


def test_a_run_at_the_ceiling_without_fitting_is_recorded_as_not_fitting(tiny_cfg):
    out = run(
        tiny_cfg(
            "train.steps=6", "train.eval_every=3", "train.max_steps=12", "train.until_fit=true"
        )
    )
    assert out["protocol"]["steps_trained"] == out["train"]["steps"] == 12
    assert out["protocol"]["steps_to_fit"] is None
    assert out["validation"]["fits_training_range"] is False
    assert out["summary"]["fits_training_range"] is False
    assert out["summary"]["extrapolation_horizon"] is None


def test_the_fit_is_decided_on_validation_not_the_test_set(tiny_cfg, monkeypatch):
    """Validation says fit while the test set says not: the summary follows validation."""
    real = posenc.run.session.score_validation

    def perfect(s, lengths):
        return {n: {**v, "exact_match": 1.0} for n, v in real(s, lengths).items()}

    monkeypatch.setattr(posenc.run.session, "score_validation", perfect)
    out = run(tiny_cfg("train.steps=4"))
    assert min(out["per_length"][str(n)]["exact_match"] for n in range(1, 7)) < 0.9
    assert out["validation"]["fits_training_range"] is True
    assert out["summary"]["fits_training_range"] is True
    assert out["summary"]["extrapolation_horizon"] is not None


def test_steps_to_fit_is_the_streak_that_ends_training_not_a_fit_lost_again(tiny_cfg, monkeypatch):
    """Validation (scripted) fits at the check of step 3, not at 6 (the budget's end, so
    training goes on), then from 9: the run stops at 9 and records 9, not 3 (a diverging
    run, or DroPE fitting with RoPE before its drop, fits at a check and loses it)."""
    real = posenc.run.session.score_validation

    def fit_lost_then_regained(s, lengths):
        fit = 1.0 if s.trainer.step_count in (3, 9, 12) else 0.0
        return {n: {**v, "exact_match": fit} for n, v in real(s, lengths).items()}

    monkeypatch.setattr(posenc.run.session, "score_validation", fit_lost_then_regained)
    extend = ["train.steps=6", "train.eval_every=3", "train.max_steps=30", "train.until_fit=true"]
    out = run(tiny_cfg(*extend))
    assert out["protocol"]["steps_trained"] == out["protocol"]["steps_to_fit"] == 9


class _Interrupt(Reporter):
    def __init__(self, at: int) -> None:
        self.at = at

    def step(self, step, loss, steps_per_sec):
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_until_fit_resumes_mid_extension_exactly(tiny_cfg, tmp_path):
    """Interrupted past train.steps (the lr held at its minimum), between a step and its
    until_fit check, the run resumes to the same numbers as one never interrupted."""
    extend = ["train.steps=6", "train.eval_every=3", "train.max_steps=12", "train.until_fit=true"]
    extend += ["train.checkpoint_every=3"]
    reference = run(tiny_cfg(*extend, f"run_dir={tmp_path / 'ref'}"))
    with pytest.raises(KeyboardInterrupt):  # at step 9, before that step's check
        run(tiny_cfg(*extend), _Interrupt(at=9))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["trainer"]["step"] == 9 and state["checked_at"] == 6
    resumed = run(tiny_cfg(*extend))
    assert resumed["train"]["final_loss"] == reference["train"]["final_loss"]
    assert resumed["per_length"] == reference["per_length"]
    assert resumed["validation"] == reference["validation"]
    assert resumed["protocol"] == reference["protocol"]


def test_a_check_missed_by_an_interrupt_is_made_on_resume(tiny_cfg, tmp_path, monkeypatch):
    """Validation (scripted) fits from step 9: interrupted at step 9 before its check, the
    resumed run checks at 9 and stops there, as the uninterrupted run does."""
    real = posenc.run.session.score_validation

    def from_step_9(s, lengths):
        fit = 1.0 if s.trainer.step_count >= 9 else 0.0
        return {n: {**v, "exact_match": fit} for n, v in real(s, lengths).items()}

    monkeypatch.setattr(posenc.run.session, "score_validation", from_step_9)
    extend = ["train.steps=6", "train.eval_every=3", "train.max_steps=30", "train.until_fit=true"]
    reference = run(tiny_cfg(*extend, f"run_dir={tmp_path / 'ref'}"))
    assert reference["protocol"]["steps_trained"] == reference["protocol"]["steps_to_fit"] == 9
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(*extend), _Interrupt(at=9))
    resumed = run(tiny_cfg(*extend))
    assert resumed["protocol"] == reference["protocol"]
    assert resumed["per_length"] == reference["per_length"]


def test_the_lr_holds_at_its_minimum_past_train_steps():
    from posenc.run.train import lr_factor

    at = [lr_factor(s, warmup=2, total=10, min_ratio=0.1) for s in (10, 11, 40)]
    assert at == pytest.approx([0.1, 0.1, 0.1])


def test_metrics_json_holds_the_validation_and_protocol_blocks(tiny_cfg, tmp_path):
    out = run(tiny_cfg("eval.val_share=0.5", "eval.max_len=10", "eval.val_samples=5"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["validation"] == out["validation"] and saved["protocol"] == out["protocol"]
    v = saved["validation"]
    assert (v["seed"], v["n_samples"], v["train_range"], v["lengths"]) == (4321, 5, [1, 6], [7, 8])
    assert set(v["per_length"]["7"]) == {"exact_match", "token_accuracy", "n_samples"}
    assert {"7", "8"}.isdisjoint(saved["per_length"])  # validation lengths: never test lengths
    p = saved["protocol"]
    assert (p["version"], p["fit_on"], p["until_fit"]) == (1, "validation", False)
    assert (p["steps"], p["steps_trained"], p["test_lengths"], p["choices"]) == (
        12,
        12,
        [9, 10],
        None,
    )
