"""End-to-end single runs on tiny configs: files, schema, determinism, resume, refusal."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from omegaconf import OmegaConf

from posenc import tasks
from posenc.console import Reporter
from posenc.data import TrainStream, length_buckets
from posenc.errors import ConfigError, RunExistsError
from posenc.precision import run_machine
from posenc.run.evaluate import evaluate_pairs
from posenc.run.execute import plan, run
from posenc.tasks.format import PAD
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
    assert set(on_disk["per_length"]["3"]) == {
        "exact_match",
        "token_accuracy",
        "n_samples",
        "examples",
    }
    scores = on_disk["per_length"]["3"]
    assert scores["n_samples"] == 6 and len(scores["examples"]) == 6
    assert set(scores["examples"]) <= {"0", "1"}
    assert scores["examples"].count("1") / 6 == scores["exact_match"]
    # the default bucketed batching: the padded slots of the length-sorted pieces
    stream = TrainStream(tasks.build("copy"), 1, 6, 8, seed=0, batching="bucketed")
    drawn = [stream.next() for _ in range(12)]
    real = sum(int((b.tokens != PAD).sum()) for b in drawn)
    slots = sum(q.tokens.numel() for b in drawn for q in length_buckets(b, 4))
    assert on_disk["train"]["padding_share"] == round(1 - real / slots, 4)
    assert on_disk["train"]["stopped_at"] is None
    assert on_disk["summary_version"] == 3  # posenc.metrics.SUMMARY_VERSION
    assert set(on_disk["summary"]) == {
        "id_exact_match",
        "min_id_exact_match",
        "ood_exact_match",
        "ood_token_accuracy",
        "extrapolation_horizon",
        "fits_training_range",
    }
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
    here = {"machine": run_machine("cpu"), "threads": 1}  # TINY's threads=1
    assert reference["train"]["attempts"] == [{"from_step": 0, **here}]
    assert resumed["train"]["attempts"] == [{"from_step": 0, **here}, {"from_step": 5, **here}]


def test_a_run_resumed_from_a_checkpoint_without_attempts_says_the_first_machine_is_unknown(
    tiny_cfg, tmp_path
):
    """Checkpoints written before attempts were recorded still resume; the record says what
    it knows: an attempt from step 0 on an unnamed machine, then this one."""
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg(), _Interrupt(at=4))
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    del state["attempts"]
    torch.save(state, path)
    resumed = run(tiny_cfg())
    assert resumed["train"]["attempts"] == [
        {"from_step": 0, "machine": None},
        {"from_step": 4, "machine": run_machine("cpu"), "threads": 1},
    ]


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


CORE_ENCODINGS = ("none", "sinusoidal", "learned", "rope", "alibi", "t5")


@pytest.mark.parametrize("name", CORE_ENCODINGS)
def test_greedy_exact_match_equals_teacher_forced_exact_match(name):
    """On a trained model, greedy KV-cache decoding and teacher forcing get every example
    of every length, inside and beyond the training range, equally right or wrong."""
    import numpy as np

    from posenc import tasks
    from posenc.data import TrainStream
    from posenc.run.train import masked_loss

    model = tiny_model(name, vocab=12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    task = tasks.build("copy", vocab_size=8)
    stream = TrainStream(task, 1, 4, 32, seed=0, batching="by_length")
    model.train()
    for _ in range(200):
        b = stream.next()
        loss = masked_loss(model(b.inputs)[0], b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rng = np.random.default_rng(0)
    hits = ""
    for n in (1, 2, 4, 6):
        pairs = [task.sample(n, rng) for _ in range(48)]
        greedy = evaluate_pairs(model, pairs, greedy=True)
        forced = evaluate_pairs(model, pairs, greedy=False)
        assert greedy == forced
        hits += forced["examples"]
    assert "1" in hits and "0" in hits, "a trained but imperfect model makes the test bite"


def test_stop_at_ends_training_after_two_consecutive_good_checks(tiny_cfg, tmp_path, monkeypatch):
    import posenc.run.session

    script = iter([0.5, 0.995, 0.3, 0.995, 0.995, 1.0, 1.0])  # quick ID exact match per check
    real = posenc.run.session.evaluate_lengths

    def scripted(model, groups, **kwargs):
        scores = real(model, groups, **kwargs)
        value = next(script) if 1 in groups else None  # the quick set has every training length
        return {n: {**v, "exact_match": value} for n, v in scores.items()} if value else scores

    monkeypatch.setattr(posenc.run.session, "evaluate_lengths", scripted)  # the quick evaluations
    out = run(tiny_cfg("train.stop_at=0.99", "train.eval_every=2", "train.steps=50"))
    # Checks at steps 2, 4, 6, 8, 10: the hit at 4 is broken by 6; 8 and 10 are two running.
    assert out["train"]["stopped_at"] == 10 and out["train"]["steps"] == 10
    assert "stopped at step 10" in (tmp_path / "run" / "train.log").read_text()


def test_stop_at_never_reached_trains_every_step(tiny_cfg):
    out = run(tiny_cfg("train.stop_at=1.0", "train.eval_every=4"))
    assert out["train"]["stopped_at"] is None and out["train"]["steps"] == 12


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.batching=sorted",
            "unknown train.batching 'sorted'; valid choices: by_length, mixed, bucketed",
        ),
        ("train.buckets=0", "train.buckets must be an integer >= 1, got 0"),
        ("train.precision=fp16", "unknown train.precision 'fp16'; valid choices: fp32, bf16, auto"),
        ("train.stop_at=1.5", "train.stop_at must be in (0, 1] or null, got 1.5"),
        ("train.compile=maybe", "train.compile must be true, false or auto, got 'maybe'"),
        ("train.fused_adamw=1", "train.fused_adamw must be true, false or auto, got 1"),
    ],
)
def test_bad_speed_options_are_rejected_before_anything_is_written(
    tiny_cfg, tmp_path, override, message
):
    with pytest.raises(ConfigError) as err:
        run(tiny_cfg(override))
    assert str(err.value) == message
    assert not (tmp_path / "run").exists()


def test_bf16_trains_in_bf16_with_fp32_master_weights(tiny_cfg, tmp_path):
    from posenc.run.train import Trainer

    p = plan(tiny_cfg("train.precision=bf16"))
    trainer = Trainer(p.model, p.cfg.train)
    seen = []
    hook = p.model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = TrainStream(p.task, 1, 6, 8, seed=0, batching="by_length").next()
    first = trainer.step(batch).loss
    hook.remove()
    assert seen == [torch.bfloat16]  # the matmuls ran in bf16 ...
    assert all(q.dtype == torch.float32 for q in p.model.parameters())  # ... the weights did not
    state = trainer.optimizer.state_dict()["state"]
    assert all(v["exp_avg"].dtype == torch.float32 for v in state.values())
    for _ in range(20):
        last = trainer.step(batch).loss
    assert last < first


@pytest.mark.parametrize("name", ["none", "sinusoidal", "learned", "rope", "alibi", "t5"])
def test_bucketed_step_has_the_gradient_of_the_whole_mixed_batch(tiny_cfg, name):
    from posenc.run.train import Trainer

    p = plan(tiny_cfg(f"encoding={name}", "train.batching=bucketed", "train.buckets=3"))
    whole = copy.deepcopy(p.model)
    trainer = Trainer(p.model, p.cfg.train)
    assert trainer.buckets == 3
    reference = Trainer(whole, OmegaConf.merge(p.cfg.train, {"batching": "mixed"}))
    assert reference.buckets == 1
    batch = TrainStream(p.task, 1, 12, 16, seed=1, batching="bucketed").next()
    loss, slots = trainer.backward(batch)
    ref_loss, ref_slots = reference.backward(batch)
    assert slots < ref_slots == batch.tokens.numel()
    assert torch.allclose(loss, ref_loss, rtol=1e-6)
    for (key, a), b in zip(p.model.named_parameters(), whole.parameters(), strict=True):
        if b.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), key


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


def test_a_label_names_a_variant_and_its_type_is_checked(tiny_cfg, tmp_path):
    """`+encoding.label=NAME` (sweeps and ablations) passes the typed config check."""
    p = plan(tiny_cfg("encoding=alibi", "+encoding.label=alibi_variant"))
    assert p.run_dir == tmp_path / "run"
    from posenc.run.spec import run_dir

    p.cfg.run_dir = None  # the default layout: the label names the folder
    assert run_dir(p.cfg).parts[-2] == "alibi_variant"
    with pytest.raises(ConfigError, match="encoding.label"):
        plan(tiny_cfg("encoding=alibi", "+encoding.label=[1,2]"))


@pytest.fixture
def one_thread():
    """torch at one intra-op thread for the test (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["rope", "alibi", "t5", "learned", "randomized"])
def test_pieces_side_by_side_take_the_sequential_step_bit_for_bit(tiny_cfg, one_thread, name):
    """Concurrent pieces draw the positions and add the gradients in the sequential order:
    after three optimizer steps every weight is identical (randomized positions included)."""
    from posenc.run.train import Trainer

    weights = []
    for workers in (1, 3):
        torch.manual_seed(0)
        p = plan(tiny_cfg(f"encoding={name}", "train.batching=bucketed", "train.buckets=3"))
        trainer = Trainer(p.model, p.cfg.train)
        trainer.workers = workers
        stream = TrainStream(p.task, 1, 12, 16, seed=1, batching="bucketed")
        torch.manual_seed(1)
        losses = [trainer.step(stream.next()).loss for _ in range(3)]
        trainer.close()
        weights.append([*(q.detach().clone() for q in p.model.parameters()), torch.tensor(losses)])
    sequential, side_by_side = weights
    assert all(torch.equal(a, b) for a, b in zip(sequential, side_by_side, strict=True))


def test_concurrent_pieces_start_largest_first_and_add_up_in_piece_order(tiny_cfg, one_thread):
    """The pieces start in order of token slots, largest first (they come shortest first from
    `length_buckets`); the step still adds their gradients in piece order, so with a
    one-thread pool (starts in submission order) it equals the sequential step bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    from posenc.data import length_buckets
    from posenc.run.train import Trainer, largest_first

    stream = TrainStream(plan(tiny_cfg()).task, 1, 12, 16, seed=1, batching="bucketed")
    batch = stream.next()
    pieces = length_buckets(batch, 3)
    slots = [q.tokens.numel() for q in pieces]
    order = largest_first(pieces)
    assert [slots[i] for i in order] == sorted(slots, reverse=True)
    assert order != list(range(len(pieces)))  # this batch's pieces do not come largest first

    weights, started = [], []
    for workers in (1, 3):
        torch.manual_seed(0)
        p = plan(tiny_cfg("encoding=rope", "train.batching=bucketed", "train.buckets=3"))
        trainer = Trainer(p.model, p.cfg.train)
        trainer.workers = workers
        if workers > 1:
            trainer._pool = ThreadPoolExecutor(1)  # one at a time, in the order submitted
            p.model.head.register_forward_hook(lambda m, args, out: started.append(out.shape))
        trainer.step(batch)
        trainer.close()
        weights.append([q.detach().clone() for q in p.model.parameters()])
    assert [tuple(s[:2]) for s in started] == [tuple(pieces[i].inputs.shape) for i in order]
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_pieces_run_side_by_side_one_thread_each_only_where_that_is_safe(tiny_cfg):
    from posenc.run.train import Trainer

    def workers(*overrides, threads=2, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            p = plan(tiny_cfg("train.batching=bucketed", *overrides))
            return Trainer(p.model, p.cfg.train, **kwargs).workers
        finally:
            torch.set_num_threads(before)

    assert workers("train.buckets=4") == 2  # one per torch thread
    assert workers("train.buckets=2", threads=8) == 2  # at most one per piece
    assert workers("train.buckets=4", threads=1) == 1
    assert workers("train.batching=mixed") == 1  # one piece
    assert workers("model.dropout=0.1") == 1  # masks drawn inside the forward pass
    assert workers("train.compile=true") == 2  # the threads share the compiled graph

    # Each piece thread computes with the run's threads shared out: 2 threads, 2 workers -> 1.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        p = plan(tiny_cfg("train.batching=bucketed", "train.buckets=2"))
        trainer = Trainer(p.model, p.cfg.train)
        seen = []
        p.model.head.register_forward_hook(
            lambda *_: seen.append((threading.current_thread().name, torch.get_num_threads()))
        )
        stream = TrainStream(p.task, 1, 12, 16, seed=1, batching="bucketed")
        trainer.step(stream.next())
        assert torch.get_num_threads() == 2  # the calling thread keeps the run's threads
        trainer.step(stream.next())
        trainer.close()
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 4
    assert all(name.startswith("posenc-piece") and n == 1 for name, n in seen)
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        Trainer(p.model, p.cfg.train, workers=0)


def test_a_run_that_does_not_fit_says_so_in_metrics_and_tensorboard(tiny_cfg, tmp_path):
    """Five steps cannot fit copy: metrics.json marks it and has no horizon, TensorBoard logs
    summary/fits_training_range = 0 and no horizon scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_cfg("train.steps=5"))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["summary"]["fits_training_range"] is False
    assert m["summary"]["extrapolation_horizon"] is None
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("summary/fits_training_range")] == [0.0]
    assert "summary/extrapolation_horizon" not in acc.Tags()["scalars"]
