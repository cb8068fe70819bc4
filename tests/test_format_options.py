"""The sequence-format options (task.answer, task.bos) and the model/optimizer options of
the ALiBi ablation (model.embed_init, model.bias, model.tie_embeddings,
train.decay_embeddings), on hand-made batches and an oracle model."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from posenc.config import compose
from posenc.data import TrainStream, collate
from posenc.errors import ConfigError
from posenc.run.evaluate import evaluate_pairs
from posenc.run.execute import plan, run
from posenc.run.train import make_optimizer, masked_loss
from posenc.runfolder import config_identity
from posenc.schema import task_params
from posenc.tasks.format import BOS, EOS, PAD, SEP, SequenceFormat
from tests.conftest import tiny_model

KNOWN = SequenceFormat(answer="known_length")
BARE = SequenceFormat(answer="known_length", bos=False)


def test_known_length_drops_eos_and_masks_the_target_only():
    batch = collate([([0, 1], [0, 1]), ([5], [5])], KNOWN)
    assert batch.tokens.tolist() == [[BOS, 4, 5, SEP, 4, 5], [BOS, 9, SEP, 9, PAD, PAD]]
    assert batch.loss_mask.tolist() == [
        [False, False, False, True, True],
        [False, False, True, False, False],
    ]
    assert batch.labels[batch.loss_mask].tolist() == [4, 5, 9]


def test_without_bos_the_input_starts_at_position_zero():
    batch = collate([([0, 1], [1, 0])], BARE)  # the trial's layout: x SEP y
    assert batch.tokens.tolist() == [[4, 5, SEP, 5, 4]]
    assert batch.loss_mask.tolist() == [[False, False, True, True]]  # labels: 5 SEP 5 4
    assert BARE.sequence_length(2, 2) == 5 and SequenceFormat().sequence_length(2, 2) == 7


def test_train_stream_uses_the_format():
    from posenc import tasks

    stream = TrainStream(tasks.build("copy"), 3, 3, 2, seed=0, batching="by_length", fmt=KNOWN)
    batch = stream.next()
    assert EOS not in batch.tokens.tolist()[0] and batch.tokens.shape == (2, 8)
    assert int(batch.loss_mask.sum()) == 2 * 3


def test_a_bad_format_value_names_the_choices():
    with pytest.raises(ConfigError, match="task.answer 'none'; valid choices: eos, known_length"):
        SequenceFormat(answer="none")
    with pytest.raises(ConfigError, match="task.answer 'none'; valid choices"):
        plan(compose(["task.answer=none"]))


def copy_oracle(model, fmt: SequenceFormat, *, eos: bool):
    """Make ``model`` answer copy perfectly, then emit EOS (``eos``) or a symbol forever."""
    vocab = model.cfg.vocab_size

    def forward(tokens, pos=None, cache=None):
        full = tokens if cache is None else torch.cat((cache[0], tokens), dim=1)
        logits = torch.zeros(*tokens.shape, vocab)
        offset = full.shape[1] - tokens.shape[1]
        for b in range(full.shape[0]):
            row = full[b].tolist()
            sep = row.index(SEP)
            inputs = row[int(fmt.bos) : sep]
            for t in range(tokens.shape[1]):
                j = offset + t - sep  # answer index predicted at this position
                if j < 0:
                    nxt = inputs[0]
                elif j < len(inputs):
                    nxt = inputs[j]
                else:
                    nxt = EOS if eos else inputs[0]
                logits[b, t, nxt] = 1.0
        return logits, [full]

    model.forward = forward
    return model


@pytest.mark.parametrize("greedy", [True, False])
def test_exact_match_needs_eos_only_in_the_eos_format(greedy):
    pairs = [([0, 3, 2], [0, 3, 2]), ([1, 1, 5], [1, 1, 5])]
    for fmt in (SequenceFormat(), KNOWN, BARE):
        for eos in (True, False):
            model = copy_oracle(tiny_model("none", vocab=20), fmt, eos=eos)
            scores = evaluate_pairs(model, pairs, greedy=greedy, fmt=fmt)
            expected = 1.0 if (eos or fmt.answer == "known_length") else 0.0
            assert scores["exact_match"] == expected, (fmt, eos)
            n_answer = 3 if fmt.answer == "known_length" else 4
            right = 4 if eos or fmt.answer == "known_length" else 3
            assert scores["token_accuracy"] == pytest.approx(
                right / n_answer if n_answer == 4 else 1.0
            )


def test_loss_covers_the_same_tokens_as_the_mask():
    model = tiny_model("none", vocab=20)
    batch = collate([([0, 1, 2], [0, 1, 2])], KNOWN)
    logits, _ = model(batch.inputs)
    # [BOS] 4 5 6 [SEP] 4 5 6: the answer (tokens 5-7) is predicted at positions 4-6
    by_hand = torch.nn.functional.cross_entropy(logits[0, 4:7], batch.tokens[0, 5:8])
    assert masked_loss(logits, batch).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_format_keys_are_not_task_parameters_and_leave_the_eval_set_alone():
    cfg = compose(["task=reverse", "task.answer=known_length", "task.bos=false"])
    assert task_params(cfg.task) == {"vocab_size": 16}
    p = plan(cfg)
    assert p.fmt == BARE


def test_embed_init_bias_and_tied_head():
    cfg = compose(["model.embed_init=gpt", "model.bias=false", "model.tie_embeddings=true"])
    model = plan(cfg).model
    assert model.embed_scale == 1.0
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.head.weight is model.tok_emb.weight
    assert not any(n.endswith(".bias") and ("qkv" in n or "mlp" in n or "proj" in n)
                   for n, _ in model.named_parameters())  # fmt: skip
    default = plan(compose([])).model
    assert default.embed_scale == pytest.approx(128**0.5)
    assert default.tok_emb.weight.std().item() == pytest.approx(128**-0.5, rel=0.1)
    tied_saving = default.num_parameters() - model.num_parameters()
    biases = sum(
        p.numel() for n, p in default.named_parameters() if n.endswith(".bias") and "ln" not in n
    )
    assert tied_saving == default.head.weight.numel() + biases
    with pytest.raises(
        ConfigError, match="model.embed_init 'big'; valid choices: scaled, gpt, auto"
    ):
        plan(compose(["model.embed_init=big"]))
    with pytest.raises(ConfigError, match="model.bias must be true or false"):
        plan(compose(["model.bias=3"]))


def test_decay_embeddings_moves_the_token_embeddings_into_the_decayed_group():
    model = tiny_model("learned")
    for flag in (False, True):
        opt = make_optimizer(
            model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), decay_embeddings=flag
        )
        decayed = {id(p) for p in opt.param_groups[0]["params"]}
        assert (id(model.tok_emb.weight) in decayed) is flag
        assert id(model.head.weight) in decayed
        assert not any(id(p) in decayed for p in model.encoding.parameters())


def test_new_options_at_their_defaults_keep_old_run_folders_resumable():
    cfg = compose([])
    old = OmegaConf.to_container(cfg, resolve=True)
    for section, key in (("task", "answer"), ("task", "bos"), ("model", "embed_init"),
                         ("model", "bias"), ("model", "tie_embeddings"), ("train", "decay_embeddings")):  # fmt: skip
        del old[section][key]
    del old["paper"]
    old["compare"] = {"encodings": ["rope"], "tasks": ["copy"], "seeds": 3, "experiment": "x"}
    assert config_identity(OmegaConf.create(old)) == config_identity(cfg)
    assert config_identity(compose(["paper={source: x}"])) == config_identity(cfg)
    assert config_identity(compose(["task.answer=known_length"])) != config_identity(cfg)


def test_a_known_length_run_without_bos_trains_and_scores(tiny_cfg):
    metrics = run(tiny_cfg("task.answer=known_length", "task.bos=false", "model.embed_init=gpt"))
    assert metrics["status"] == "complete"
    assert 0.0 <= metrics["summary"]["id_exact_match"] <= 1.0


def test_buckets_are_how_a_batch_is_computed_not_part_of_a_run_identity():
    """Like threads: a run made with 2 buckets is the run the 4-bucket default makes."""
    for batching in ("by_length", "mixed", "bucketed"):
        a = compose([f"train.batching={batching}", "train.buckets=2"])
        b = compose([f"train.batching={batching}", "train.buckets=8"])
        assert config_identity(a) == config_identity(b)
    a = compose(["train.batching=bucketed"])
    b = compose(["train.batching=mixed"])
    assert config_identity(a) != config_identity(b)  # the batching itself still counts


def test_embed_init_auto_is_the_encodings_own_scale_and_recorded_as_it():
    """auto resolves when the config is composed (and in a sweep's job): ALiBi's token_scale
    is gpt, every other encoding's scaled; the run is the same run as with the scale given."""
    from posenc.run.spec import resolve_auto

    alibi = compose(["encoding=alibi", "model.embed_init=auto"])
    assert alibi.model.embed_init == "gpt"
    assert config_identity(alibi) == config_identity(
        compose(["encoding=alibi", "model.embed_init=gpt"])
    )
    for name in ("rope", "t5", "none", "combo"):
        assert compose([f"encoding={name}", "model.embed_init=auto"]).model.embed_init == "scaled"
    raw = OmegaConf.create({"model": {"embed_init": "auto"}, "encoding": {"name": "alibi"}})
    resolve_auto(raw)  # what the sweep's job calls on Hydra's config
    assert raw.model.embed_init == "gpt"


def test_the_experiment_names_a_folder_not_a_run():
    """A finished run copied into another experiment's folder is the same run there (the
    default comparison reuses runs of its parametrisations' own experiments); what the run
    computes still counts."""
    a, b = compose(["experiment=compare_gpt"]), compose(["experiment=compare"])
    assert config_identity(a) == config_identity(b)
    assert config_identity(compose(["seed=1"])) != config_identity(b)
