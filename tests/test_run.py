"""End-to-end single runs on tiny configs: files, schema, determinism, resume, refusal."""

from __future__ import annotations

import json

import pytest
import torch

from posenc.console import Reporter
from posenc.errors import ConfigError, RunExistsError
from posenc.evaluate import evaluate_pairs
from posenc.run import plan, run
from tests.conftest import tiny_model


def test_run_writes_every_file_with_the_documented_schema(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg("encoding=alibi"))
    d = tmp_path / "run"
    assert {"config.yaml", "metrics.json", "checkpoint.pt", "train.log"} <= {
        p.name for p in d.iterdir()
    }
    assert any(p.name.startswith("events.out.tfevents") for p in d.iterdir())
    on_disk = json.loads((d / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["status"] == "complete"
    assert (on_disk["task"], on_disk["encoding"], on_disk["seed"]) == ("copy", "alibi", 0)
    assert on_disk["train_range"] == [1, 6]
    assert set(on_disk["per_length"]) == {str(n) for n in range(1, 10)}
    assert set(on_disk["per_length"]["3"]) == {"exact_match", "token_accuracy", "n_samples"}
    assert on_disk["per_length"]["3"]["n_samples"] == 6
    assert set(on_disk["summary"]) == {"id_exact_match", "ood_exact_match", "extrapolation_horizon"}
    assert on_disk["train"]["steps"] == 12 and on_disk["train"]["tokens_per_sec"] > 0
    assert "encoding:\n  name: alibi" in (d / "config.yaml").read_text()
    ckpt = torch.load(d / "checkpoint.pt", weights_only=False)
    assert ckpt["trainer"]["step"] == 12


def test_same_config_and_seed_give_the_same_numbers(tiny_cfg, tmp_path):
    a = run(tiny_cfg("encoding=rope", f"run_dir={tmp_path / 'a'}"))
    b = run(tiny_cfg("encoding=rope", f"run_dir={tmp_path / 'b'}"))
    c = run(tiny_cfg("encoding=rope", "seed=1", f"run_dir={tmp_path / 'c'}"))
    assert (
        a["per_length"] == b["per_length"] and a["train"]["final_loss"] == b["train"]["final_loss"]
    )
    assert a["train"]["final_loss"] != c["train"]["final_loss"]


def test_a_finished_run_is_never_overwritten(tiny_cfg, tmp_path):
    run(tiny_cfg())
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(RunExistsError, match="already holds a finished run.*overwrite=true"):
        run(tiny_cfg())
    with pytest.raises(RunExistsError):
        run(tiny_cfg("seed=3"))
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before
    after = run(tiny_cfg("overwrite=true", "seed=3"))
    assert after["seed"] == 3


class _Interrupt(Reporter):
    def __init__(self, at: int) -> None:
        self.at = at

    def step(self, step, loss, steps_per_sec):
        if step == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_leaves_a_checkpoint_and_no_metrics_and_resume_matches(tiny_cfg, tmp_path):
    reference = run(tiny_cfg(f"run_dir={tmp_path / 'ref'}"))
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(), _Interrupt(at=5))
    d = tmp_path / "run"
    assert not (d / "metrics.json").exists()
    assert torch.load(d / "checkpoint.pt", weights_only=False)["trainer"]["step"] == 5
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    resumed = run(tiny_cfg())
    assert "resumed from step 5" in (d / "train.log").read_text()
    assert resumed["train"]["final_loss"] == reference["train"]["final_loss"]
    assert resumed["per_length"] == reference["per_length"]


def test_resume_refuses_a_different_config(tiny_cfg):
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(), _Interrupt(at=3))
    with pytest.raises(RunExistsError, match="different config"):
        run(tiny_cfg("train.lr=1e-3"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["model.n_heads=3"], "model.d_model=32 is not divisible by model.n_heads=3"),
        (["model.d_model=12", "model.n_heads=4"], "rotary dimension"),
        (["encoding=learned", "model.max_len=15"], "raise model.max_len"),
        (["train.min_len=-1"], "train.min_len must be an integer >= 0, got -1"),
        (["train.min_len=7"], "train.min_len=7 is greater than train.max_len=6"),
        (["eval.min_len=9", "eval.max_len=3"], "eval.min_len=9 is greater than eval.max_len=3"),
        (["task.vocab_size=1"], "task 'copy' needs task.vocab_size >= 2, got 1"),
        (["encoding.bse=2"], None),  # struct mode: unknown key -> bad override
        (["device=tpu"], "unknown device 'tpu'; valid choices"),
        (["model.d_model=1000000", "model.n_heads=1"], "GiB (model and optimizer"),
        (["train.batch_size=100000000"], "GiB (training activations"),
        (["eval.n_samples=1000000000"], "GiB (evaluation set"),
        (["encoding=learned", "model.max_len=4611686018427387904"], "cannot build encoding"),
        (["threads=100000"], "threads must be at most 1024"),
    ],
)
def test_bad_configs_fail_before_anything_is_written(tiny_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        plan(tiny_cfg(*override))
    if message:
        assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_greedy_exact_match_equals_teacher_forced_exact_match(tiny_cfg):
    """Exact match by greedy KV-cache decoding and by teacher forcing agree by construction."""
    model = tiny_model("rope", vocab=20)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    import tasks
    from posenc.data import TrainStream
    from posenc.train import masked_loss

    stream = TrainStream(tasks.build("copy"), 1, 4, 32, seed=0)
    model.train()
    for _ in range(150):
        b = stream.next()
        loss = masked_loss(model(b.inputs)[0], b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = [tasks.build("copy").sample(3, rng) for _ in range(64)]
    greedy = evaluate_pairs(model, pairs, greedy=True)
    forced = evaluate_pairs(model, pairs, greedy=False)
    assert 0 < greedy["exact_match"] and greedy == forced


def test_tensorboard_events_hold_the_documented_tags(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_cfg("encoding=t5", "train.eval_every=6", "train.eval_lengths=[3,8]"))
    d = tmp_path / "run"
    assert [p for p in d.iterdir() if p.is_dir()] == [], "hparams must stay in the run's own folder"
    acc = EventAccumulator(str(d), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_sec"} <= scalars
    assert {f"eval/exact_match/len_{n}" for n in range(1, 10)} <= scalars
    assert {f"eval/token_accuracy/len_{n}" for n in range(1, 10)} <= scalars
    assert [e.step for e in acc.Scalars("eval/exact_match/len_8")] == [6, 12]  # quick + final
    curve = acc.Scalars("length_curve/exact_match")
    assert [e.step for e in curve] == list(range(1, 10))  # x axis = length
    assert "eval/accuracy_vs_length" in acc.Tags()["images"]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert "custom_scalars__config__" in acc.PluginTagToContent("custom_scalars")
