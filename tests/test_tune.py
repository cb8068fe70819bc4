"""posenc tune (Hydra's Optuna and basic sweepers over validation-only trials) and the choices
file it writes, applied to and recorded in every run."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml
from typer.testing import CliRunner

import posenc.run.execute
import posenc.run.session
from posenc import data, tasks, tuning
from posenc.choices import apply_choices, read_choices
from posenc.cli.app import app
from posenc.config import compose
from posenc.errors import ConfigError
from posenc.run.execute import run
from tests.conftest import TINY

# Parity over 1..3 (validation 4, test 5) with a low bar: a tiny model fits it in tens of steps.
SMALL = [
    *TINY,
    "task=parity",
    "model.n_layers=1",
    "train.max_len=3",
    "eval.max_len=5",
    "eval.val_share=0.25",
    "eval.threshold=0.8",
    "train.batch_size=32",
    "train.warmup_steps=5",
    "train.min_lr_ratio=1.0",
    "train.steps=10",
    "train.eval_every=5",
    "train.until_fit=true",
    "train.max_steps=40",
    "eval.n_samples=8",
    "eval.val_samples=8",
]


def _tune(tmp_path, *args: str, extra: tuple[str, ...] = ()):
    out = tmp_path / "choices.yaml"
    base = [f"runs_root={tmp_path / 'runs'}", f"data_dir={tmp_path / 'data'}", *extra]
    result = CliRunner().invoke(app, ["tune", *args, "-o", str(out), *SMALL, *base])
    return result, out


def test_a_tuning_trial_never_evaluates_a_test_length(tmp_path, monkeypatch):
    """Instrumented: every evaluation a grid search makes is recorded, the frozen test set's
    loader and the final evaluation fail if called. Only training and validation lengths are
    scored, on examples none of which is a test example."""
    scored: dict[int, list] = {}
    real = posenc.run.session.evaluate_lengths

    def recording(model, groups, **kwargs):
        for n, pairs in groups.items():
            scored.setdefault(n, []).extend(pairs)
        return real(model, groups, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a tuning trial read the test set")

    monkeypatch.setattr(posenc.run.session, "evaluate_lengths", recording)
    monkeypatch.setattr(posenc.run.execute, "evaluate_phase", forbidden)
    monkeypatch.setattr(data, "load_eval_set", forbidden)
    result, out = _tune(tmp_path, "-e", "none", "--search", "grid", "-p", "train.lr=3e-3,1e-2")
    assert result.exit_code == 0, result.output
    # Training lengths with validation examples (parity's 1 and 2: all in the test set) and
    # validation length 4; never test length 5.
    assert set(scored) == {3, 4}
    test = data.generate_eval_rows(tasks.build("parity"), [1, 2, 3, 5], 8, 1234)
    test_hashes = {
        data.example_hash(i, t) for i, t in zip(test["input"], test["target"], strict=True)
    }
    assert (
        not {data.example_hash(i, t) for pairs in scored.values() for i, t in pairs} & test_hashes
    )
    records = tuning.trials(tmp_path / "runs" / "tune" / "parity" / "none")
    assert [r["settings"]["train.lr"] for r in records] == [3e-3, 1e-2]


@pytest.mark.slow
def test_tune_with_optuna_writes_the_best_fitting_choice(tmp_path):
    """A real Optuna study (2 trials per encoding, a 1-layer model, tens of steps)."""
    space = ["-p", "model.embed_init=choice(scaled,gpt)", "-p", "train.lr=interval(3e-3,1e-2)"]
    result, out = _tune(tmp_path, "-e", "none,alibi", "--trials", "2", *space)
    tree = yaml.safe_load(out.read_text())
    assert tree["task"] == "parity" and tree["split"] == {"train": [1, 3], "validation": [4, 4]}
    assert tree["made_by"].startswith("posenc tune -e none,alibi '--param=model.embed_init=choice(")
    folder = tmp_path / "runs" / "tune" / "parity"
    for label in ("none", "alibi"):
        records = tuning.trials(folder / label)
        assert len(records) == 2
        best = tuning.choose(records)
        if best is None:  # listed as unfit, and the command says so
            assert label not in tree["choices"] and result.exit_code == 2
            continue
        assert tree["choices"][label] == {
            k: best["settings"][k] for k in ("model.embed_init", "train.lr")
        }
        assert tree["choices"][label]["model.embed_init"] in ("scaled", "gpt")
        assert 3e-3 <= tree["choices"][label]["train.lr"] <= 1e-2
    assert tree["choices"], "no encoding fit: the test's budget is too small"


def test_choose_takes_the_best_trial_that_fits_and_the_first_of_equals():
    def trial(n, fits, score):
        return {
            "settings": {"n": n},
            "validation": {"fits_training_range": fits},
            "objective": score,
        }

    records = [trial(0, False, -0.1), trial(1, True, 0.2), trial(2, True, 0.5), trial(3, True, 0.5)]
    assert tuning.choose(records)["settings"] == {"n": 2}
    assert tuning.choose([trial(0, False, -0.5)]) is None
    fit = {"fits_training_range": True, "ood_exact_match": 0.25, "min_id_exact_match": 1.0}
    unfit = {"fits_training_range": False, "ood_exact_match": 0.9, "min_id_exact_match": 0.5}
    assert tuning.objective(fit) == 0.25 and tuning.objective(unfit) == -0.5


def _choices_file(tmp_path, task="copy"):
    path = tmp_path / "choices.yaml"
    path.write_text(
        f"task: {task}\nsplit: {{train: [1, 6], validation: [7, 7]}}\nmade_by: by hand\n"
        "choices:\n  alibi: {model.embed_init: gpt, train.lr: 0.002}\n"
    )
    return path


def test_a_choices_file_is_applied_to_its_encoding_and_recorded(tiny_cfg, tmp_path):
    path = _choices_file(tmp_path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    cfg = tiny_cfg("encoding=alibi", f"choices={path}")
    assert (cfg.model.embed_init, cfg.train.lr) == ("gpt", 0.002)
    out = run(cfg)
    record = {
        "file": str(path),
        "sha256": sha,
        "values": {"model.embed_init": "gpt", "train.lr": 0.002},
    }
    assert out["protocol"]["choices"] == record
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["choices"] == record and saved["model"]["embed_init"] == "gpt"
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"]["choices"] == record
    )
    rope = tiny_cfg("encoding=rope", f"choices={path}")  # not in the file: its own values
    assert (rope.model.embed_init, rope.train.lr) == ("scaled", 3e-3)
    assert rope.choices["values"] == {}


def test_the_choices_file_is_recorded_relative_to_the_working_directory(
    tiny_cfg, tmp_path, monkeypatch
):
    """``posenc compare --choices docs/choices/compare.yaml`` hands its jobs the absolute
    path: a run records it as the command named it, relative to where it was started, and a
    file outside that folder absolute (the sha256 identifies the content either way)."""
    from posenc.choices import recorded_path

    inside = tmp_path / "repo" / "docs" / "choices"
    inside.mkdir(parents=True)
    path = _choices_file(inside)
    monkeypatch.chdir(tmp_path / "repo")
    for given in (path, "docs/choices/choices.yaml", "./docs/../docs/choices/choices.yaml"):
        cfg = tiny_cfg("encoding=alibi", f"choices={given}")
        assert cfg.choices["file"] == "docs/choices/choices.yaml"
    outside = _choices_file(tmp_path)
    assert tiny_cfg("encoding=alibi", f"choices={outside}").choices["file"] == str(outside)
    assert recorded_path("../choices.yaml") == str(outside)


def test_a_chosen_value_matches_the_same_value_given(tiny_cfg, tmp_path):
    from posenc.runfolder import config_identity

    chosen = tiny_cfg("encoding=alibi", f"choices={_choices_file(tmp_path)}")
    given = tiny_cfg("encoding=alibi", "model.embed_init=gpt", "train.lr=0.002")
    assert config_identity(chosen) == config_identity(given)


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (None, ["train.lr=1e-3"], "train.lr is both given and chosen for alibi"),
        (None, ["task=reverse"], "was made on task 'copy'; this run trains 'reverse'"),
        ("choices: [1, 2]\n", [], "has no 'choices:' mapping"),
        ("choices: {alibi: {model.widht: 3}}\n", [], "model.widht is not a config key"),
        ("choices: {alibi: {train.lr: -1}}\n", [], "train.lr"),
    ],
)
def test_a_bad_choices_file_or_a_clash_is_refused(tmp_path, text, overrides, message):
    path = _choices_file(tmp_path)
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        compose(["encoding=alibi", f"choices={path}", *overrides])


def test_a_missing_choices_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        read_choices(tmp_path / "none.yaml")
    cfg = compose(["encoding=alibi"])
    apply_choices(cfg)  # null: nothing to apply
    assert cfg.choices is None


def test_compare_passes_its_choices_file_to_every_run(tmp_path, monkeypatch):
    import posenc.cli.experiments as experiments

    seen = {}
    monkeypatch.setattr(experiments, "_launch", lambda base, *a, **k: seen.update(base=base))
    path = _choices_file(tmp_path)
    result = CliRunner().invoke(app, ["compare", "-e", "alibi", "--choices", str(path)])
    assert result.exit_code == 0, result.output
    assert f"choices={path.resolve()}" in seen["base"]


def test_tune_refuses_a_search_without_validation_lengths(tmp_path):
    result, _ = _tune(
        tmp_path, "-e", "none", "-p", "train.lr=1e-3,1e-2", extra=("eval.val_share=0",)
    )
    assert result.exit_code == 2 and "needs validation lengths" in result.output


def test_the_same_tune_twice_reuses_its_finished_trials(tmp_path, monkeypatch):
    """A second call of the same command trains nothing: each trial folder holds the same
    config's finished trial, reused with its record, and the choices file is the same."""
    args = ("-e", "none", "--search", "grid", "-p", "train.lr=3e-3,1e-2")
    result, out = _tune(tmp_path, *args)
    assert result.exit_code == 0, result.output
    first = out.read_text()
    evidence = yaml.safe_load(first)["trials"]["none"]  # every trial, its settings only
    assert [t["settings"] for t in evidence] == [{"train.lr": 3e-3}, {"train.lr": 1e-2}]
    assert all({"fits", "validation_ood_exact_match", "objective"} <= t.keys() for t in evidence)
    assert "trials scored on validation" in result.output
    calls = []
    real = posenc.run.session.train_phase
    monkeypatch.setattr(
        posenc.run.session, "train_phase", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    result, out = _tune(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert calls == [] and out.read_text() == first


def test_an_interrupted_trial_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A trial whose folder holds this config's checkpoint but no record (the search was
    stopped) goes on from it: prepared in resume mode; a changed search space retrains."""
    args = ("-e", "none", "--search", "grid", "-p", "train.lr=3e-3")
    result, _ = _tune(tmp_path, *args)
    assert result.exit_code == 0, result.output
    trial = tmp_path / "runs" / "tune" / "parity" / "none" / "0"
    (trial / tuning.TRIAL).unlink()
    assert (trial / "checkpoint.pt").is_file()
    modes = []
    real = posenc.run.session.prepare
    monkeypatch.setattr(
        posenc.run.session, "prepare", lambda p, mode: modes.append(mode) or real(p, mode)
    )
    assert _tune(tmp_path, *args)[0].exit_code == 0
    assert modes == ["resume"]
    assert (
        _tune(tmp_path, "-e", "none", "--search", "grid", "-p", "train.lr=1e-2")[0].exit_code == 0
    )
    assert modes == ["resume", "overwrite"]


def test_a_search_reads_only_its_own_trials(tmp_path):
    """A narrower search in the same folder never chooses from an earlier search's trials."""
    result, _ = _tune(tmp_path, "-e", "none", "--search", "grid", "-p", "train.lr=3e-3,1e-2")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "tune" / "parity" / "none"
    search = tuning.start_search(folder)
    assert tuning.trials(folder, search) == []
    assert len(tuning.trials(folder)) == 2


@pytest.mark.slow
def test_tune_jobs_runs_trials_side_by_side_with_a_thread_each(tmp_path):
    """--jobs 2: the grid's two trials through the joblib launcher, cores/2 threads each."""
    result, out = _tune(tmp_path, "-e", "none", "--search", "grid", "--jobs", "2",
                        "-p", "train.lr=3e-3,1e-2")  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "tune" / "parity" / "none"
    assert len(tuning.trials(folder)) == 2
    threads = yaml.safe_load((folder / "0" / "config.yaml").read_text())["threads"]
    assert threads == max(1, (os.cpu_count() or 1) // 2)


def test_tune_refuses_jobs_below_one(tmp_path):
    result, _ = _tune(tmp_path, "-e", "none", "--jobs", "0", "-p", "train.lr=3e-3")
    assert result.exit_code == 2 and "--jobs must be >= 1, got 0" in result.output


# ---------------------------------------------------------------- --seeds

# A setting's validation by seed (training mocked): lr 1e-2 wins at seed 0 alone (0.9 against
# 0.4), but its seed 2 does not fit; lr 3e-3 fits at every seed, mean 0.3.
_BY_SEED = {
    3e-3: {0: (True, 0.4), 1: (True, 0.2), 2: (True, 0.3)},
    1e-2: {0: (True, 0.9), 1: (True, 0.8), 2: (False, 0.0)},
    1e-3: {0: (True, 0.1), 1: (True, 0.1), 2: (True, 0.1)},
}


def _mock_training(monkeypatch) -> list:
    """train_phase does nothing (its calls counted); validation_record gives `_BY_SEED`."""
    calls = []

    def validation(s):
        fits, ood = _BY_SEED[float(s.p.cfg.train.lr)][int(s.p.cfg.seed)]
        return {
            "fits_training_range": fits,
            "min_id_exact_match": 1.0 if fits else 0.5,
            "ood_exact_match": ood,
        }

    monkeypatch.setattr(posenc.run.session, "train_phase", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(posenc.run.session, "validation_record", validation)
    return calls


def test_seeds_objective_is_the_mean_and_needs_every_seed_to_fit():
    fit = {"fits_training_range": True, "ood_exact_match": 0.25, "min_id_exact_match": 1.0}
    other = {**fit, "ood_exact_match": 0.75}
    unfit = {"fits_training_range": False, "ood_exact_match": 0.9, "min_id_exact_match": 0.5}
    assert tuning.seeds_objective([fit]) == tuning.objective(fit) == 0.25
    assert tuning.seeds_objective([fit, other]) == 0.5
    assert tuning.seeds_objective([other, unfit]) == pytest.approx((1.0 + 0.5) / 2 - 1)
    assert tuning.seeds_objective([other, unfit]) < tuning.seeds_objective([fit, fit])


def test_tune_seeds_scores_each_setting_by_its_mean_over_seeds(tmp_path, monkeypatch):
    """--seeds 3 on a grid: each setting trains at seeds 0-2 inside its trial; the setting
    whose seed 0 is best but whose seed 2 does not fit is not chosen; the choices file and
    the table give the means and each seed's figures; the same command again trains
    nothing and writes the same file."""
    calls = _mock_training(monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")  # the table on one line a row
    args = ("-e", "none", "--search", "grid", "-p", "train.lr=3e-3,1e-2", "--seeds", "3")
    result, out = _tune(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 6  # 2 settings x 3 seeds
    tree = yaml.safe_load(out.read_text())
    assert tree["choices"] == {"none": {"train.lr": 3e-3}}
    assert "--seeds 3" in tree["made_by"]
    low, high = tree["trials"]["none"]
    assert (low["fits"], low["objective"], low["validation_ood_exact_match"]) == (True, 0.3, 0.3)
    assert [s["validation_ood_exact_match"] for s in low["seeds"]] == [0.4, 0.2, 0.3]
    assert [s["seed"] for s in low["seeds"]] == [0, 1, 2]
    assert high["fits"] is False and [s["fits"] for s in high["seeds"]] == [True, True, False]
    assert high["objective"] == pytest.approx(round((1.0 + 1.0 + 0.5) / 3 - 1, 4))
    assert "each seed" in result.output and "0.400 / 0.200 / 0.300" in result.output
    assert "0.900 / 0.800 / no fit (0.500)" in result.output
    folder = tmp_path / "runs" / "tune" / "parity" / "none"
    assert all((folder / "0" / f"seed{k}" / tuning.TRIAL).is_file() for k in range(3))
    first = out.read_text()
    result, out = _tune(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 6 and out.read_text() == first  # every seed of every trial reused


def test_tune_seeds_resumes_a_trial_whose_seeds_are_partly_trained(tmp_path, monkeypatch):
    """A trial stopped after its first seed: the same command reuses that seed and trains
    the others; one seed (the default) writes no seed folders and no per-seed figures."""
    calls = _mock_training(monkeypatch)
    args = ("-e", "none", "--search", "grid", "-p", "train.lr=3e-3", "--seeds", "2")
    assert _tune(tmp_path, *args)[0].exit_code == 0 and len(calls) == 2
    trial = tmp_path / "runs" / "tune" / "parity" / "none" / "0"
    (trial / tuning.TRIAL).unlink()
    (trial / "seed1" / tuning.TRIAL).unlink()
    (trial / "seed1" / "metrics.json").unlink(missing_ok=True)
    result, out = _tune(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 3  # seed 1 again, seed 0 reused
    assert yaml.safe_load(out.read_text())["trials"]["none"][0]["objective"] == 0.3
    result, out = _tune(tmp_path / "one", "-e", "none", "--search", "grid", "-p", "train.lr=3e-3")
    assert result.exit_code == 0, result.output
    (line,) = yaml.safe_load(out.read_text())["trials"]["none"]
    assert "seeds" not in line and line["objective"] == 0.4 and "each seed" not in result.output
    assert not (tmp_path / "one" / "runs" / "tune" / "parity" / "none" / "0" / "seed0").exists()


def test_tune_seeds_with_optuna_returns_each_trials_mean(tmp_path, monkeypatch):
    """Optuna's objective for a trial is the mean over its seeds (the trial function's
    return), one study trial per setting, never a seed sampled as a parameter."""
    _mock_training(monkeypatch)
    returned = []
    real = tuning.seeded_trial

    def seeded(*args, **kwargs):
        record = real(*args, **kwargs)
        returned.append(record)
        return record

    monkeypatch.setattr(tuning, "seeded_trial", seeded)
    args = ("-e", "none", "-p", "train.lr=choice(3e-3,1e-3)", "--trials", "2", "--seeds", "3")
    result, out = _tune(tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert len(returned) == 2
    for record in returned:
        by_seed = _BY_SEED[record["settings"]["train.lr"]]
        mean = sum(ood for _, ood in by_seed.values()) / 3
        assert record["objective"] == pytest.approx(mean)
        assert [s["seed"] for s in record["seeds"]] == [0, 1, 2]
        assert "seed" not in record["settings"]


def test_tune_refuses_seeds_below_one(tmp_path):
    result, _ = _tune(tmp_path, "-e", "none", "--seeds", "0", "-p", "train.lr=3e-3")
    assert result.exit_code == 2 and "--seeds must be >= 1, got 0" in result.output
