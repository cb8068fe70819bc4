"""The tasks with inline answers: flip_flop, mqar, state_tracking.

Each generator is checked against its reference solver and against an oracle written here
from the docstring, on thousands of draws; the scored positions are checked against the
papers' protocols; exact match and token accuracy are checked on hand-made examples.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from posenc import tasks
from posenc.cli.app import app
from posenc.config import CONFIG_DIR, compose
from posenc.data import collate, generate_eval_rows, length_buckets, load_eval_set
from posenc.errors import ConfigError
from posenc.run.evaluate import evaluate_pairs
from posenc.run.train import masked_loss
from posenc.tasks.format import BOS, EOS, N_SPECIAL, SequenceFormat

INLINE = ["flip_flop", "mqar", "state_tracking"]
LENGTHS = [1, 2, 5, 16, 40, 64]


# ---------------------------------------------------------------- independent oracles


def oracle_flip_flop(task, x):
    names = [task.symbols[s] for s in x]
    assert len(names) % 2 == 0 and names[0] == "w" and names[-2] == "r"
    out, last = [], None
    for op, bit in zip(names[0::2], names[1::2], strict=True):
        assert op in ("w", "r", "i") and bit in ("0", "1")
        if op == "w":
            last = bit
        elif op == "r":
            assert bit == last, "a read must repeat the last written bit"
            out.append(task.symbols.index(last))
    return out


def oracle_mqar(task, x):
    names = [task.symbols[s] for s in x]
    n = len(names) // (4 + task.fillers)
    assert len(names) == (4 + task.fillers) * n
    context, queries = names[: 2 * n], names[2 * n :]
    keys, values = context[0::2], context[1::2]
    assert all(k.startswith("k") for k in keys) and all(v.startswith("v") for v in values)
    assert len(set(keys)) == n, "keys must be distinct"
    table = dict(zip(keys, values, strict=True))
    asked = [(i, s) for i, s in enumerate(queries) if s.startswith("k")]
    assert sorted(s for _, s in asked) == sorted(keys), "every key is queried once"
    for i, s in asked:
        assert queries[i + 1] == table[s], "a query is followed by its value"
    return [task.symbols.index(table[s]) for _, s in asked]


@functools.cache
def _perms(symbols: tuple[str, ...], cyclic: bool) -> list[np.ndarray]:
    """Each symbol as a permutation array, read from its name as the docstring says."""
    if cyclic:  # rotation by j of 0..m-1
        m = len(symbols)
        return [np.array([(i + int(name)) % m for i in range(m)]) for name in symbols]
    return [np.array([int(c) for c in name]) for name in symbols]


def oracle_state_tracking(task, x):
    perms = _perms(tuple(task.symbols), task.group.startswith("Z"))
    back = {tuple(p): s for s, p in enumerate(perms)}
    state = np.arange(len(perms[0]))
    out = []
    for s in x:
        state = state[perms[s]]  # (state ∘ g)(i) = state[g[i]]
        out.append(back[tuple(state)])
    return out if task.answers == "every" else out[-1:]


ORACLES = {
    "flip_flop": oracle_flip_flop,
    "mqar": oracle_mqar,
    "state_tracking": oracle_state_tracking,
}

VARIANTS = [
    ("flip_flop", {}),
    ("flip_flop", {"p_ignore": 0.0}),
    ("flip_flop", {"p_ignore": 0.98}),
    ("mqar", {}),
    ("mqar", {"fillers": 0}),
    ("mqar", {"fillers": 3, "n_keys": 70, "n_values": 2}),
    ("state_tracking", {}),
    ("state_tracking", {"answers": "final"}),
    ("state_tracking", {"group": "A5"}),
    ("state_tracking", {"group": "S3"}),
    ("state_tracking", {"group": "A4", "answers": "final"}),
    ("state_tracking", {"group": "Z5"}),
    ("state_tracking", {"group": "Z60", "answers": "final"}),
]


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=str)
def test_generator_agrees_with_solver_and_oracle_on_thousands_of_draws(name, params):
    task = tasks.build(name, **params)
    rng = np.random.default_rng(0)
    for n in LENGTHS:
        for _ in range(400 if n < 40 else 60):
            x, y = task.sample(n, rng)
            assert task.solve(x) == y == ORACLES[name](task, x), (n, x, y)
            assert len(task.answer_positions(x)) == len(y)


def test_state_tracking_groups_have_their_orders_and_compose_like_permutations():
    sizes = {"S3": 6, "S4": 24, "S5": 120, "A4": 12, "A5": 60, "Z2": 2, "Z60": 60, "Z120": 120}
    for group, size in sizes.items():
        task = tasks.build("state_tracking", group=group)
        assert len(task.symbols) == len(set(task.symbols)) == size
    s3 = tasks.build("state_tracking", group="S3")
    ids = {name: i for i, name in enumerate(s3.symbols)}
    # 102 swaps 0 and 1; 021 swaps 1 and 2: (102 ∘ 021)(i) = 102[021[i]] = 120
    assert s3.solve([ids["102"], ids["021"]]) == [ids["102"], ids["120"]]
    assert s3.solve([ids["021"], ids["102"]])[-1] == ids["201"]  # S3 is not abelian


def test_flip_flop_density_follows_p_ignore_and_the_last_instruction_reads():
    for p in (0.1, 0.8, 0.98):
        task = tasks.build("flip_flop", p_ignore=p)
        rng = np.random.default_rng(1)
        ops = []
        for _ in range(200):
            x, _ = task.sample(50, rng)
            assert task.symbols[x[-2]] == "r" and task.symbols[x[0]] == "w"
            ops += [task.symbols[s] for s in x[2:-2:2]]
        assert abs(ops.count("i") / len(ops) - p) < 0.02
        assert abs(ops.count("w") - ops.count("r")) / len(ops) < 0.03


def test_flip_flop_eval_sets_use_eval_p_ignore_and_training_uses_p_ignore():
    task = tasks.build("flip_flop", p_ignore=0.8, eval_p_ignore=0.1)
    rows = generate_eval_rows(task, [50], 100, 0)
    ops = [task.symbols[s] for x in rows["input"] for s in x[2:-2:2]]
    assert abs(ops.count("i") / len(ops) - 0.1) < 0.03
    x, _ = task.sample(2000, np.random.default_rng(0))
    assert abs([task.symbols[s] for s in x[2::2]].count("i") / 2000 - 0.8) < 0.03


# ------------------------------------------------------------------- frozen sets

# sha256 of the JSON of generate_eval_rows(task, [1, 7, 30], 20, seed=1234): the same on
# every machine (numpy's PCG64 streams are platform independent); a change here changes
# every published number on these tasks, so it needs a FORMAT_VERSION bump.
FROZEN = {
    "flip_flop": "d3cf7fe7e5c254eb",
    "mqar": "c1dd0bc6e0cd358e",
    "state_tracking": "b8b07826e10eeb7b",
}


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", INLINE)
def test_frozen_sets_are_identical_across_runs_and_machines(name, tmp_path):
    task = tasks.build(name)
    first = load_eval_set(task, [1, 7, 30], 20, 1234, tmp_path / "a").to_dict()
    again = load_eval_set(tasks.build(name), [30, 1, 7], 20, 1234, tmp_path / "b").to_dict()
    assert first == again == generate_eval_rows(task, [1, 7, 30], 20, 1234)
    assert _digest(first) == FROZEN[name]


# -------------------------------------------------------------- scored positions


def _fmt(task) -> SequenceFormat:
    return SequenceFormat().for_task(task)


def _ids(task, text: str) -> list[int]:
    return [task.symbols.index(s) for s in text.split()]


def test_flip_flop_scores_exactly_the_bit_after_each_read():
    task = tasks.build("flip_flop")
    x = _ids(task, "w 1 i 0 r 1 w 0 i 1 r 0")
    y = task.solve(x)
    batch = collate([(x, y)], _fmt(task))
    tokens = batch.tokens[0].tolist()
    assert tokens == [BOS, *(N_SPECIAL + s for s in x), EOS]  # no [SEP], answers in-stream
    scored = batch.loss_mask[0].nonzero().flatten().tolist()
    # prediction k is made after reading tokens[k]: the r's are tokens 5 and 11
    assert [task.symbols[tokens[k] - N_SPECIAL] for k in scored] == ["r", "r"]
    assert scored == [5, 11]
    assert (
        batch.labels[0, scored].tolist()
        == [tokens[6], tokens[12]]
        == [N_SPECIAL + 4, N_SPECIAL + 3]
    )


def test_mqar_scores_the_value_after_each_query_key_only():
    task = tasks.build("mqar", fillers=1)
    x = _ids(task, "k3 v1 k0 v2 v0 k0 v2 k3 v1 v2")
    y = task.solve(x)
    assert [task.symbols[s] for s in y] == ["v2", "v1"]
    batch = collate([(x, y)], _fmt(task))
    scored = batch.loss_mask[0].nonzero().flatten().tolist()
    assert scored == [6, 8]  # after the query keys (inputs 5 and 7), not the context's keys
    assert batch.labels[0, scored].tolist() == batch.tokens[0, [7, 9]].tolist()


@pytest.mark.parametrize("answers", ["every", "final"])
def test_state_tracking_scores_the_running_product_without_feeding_it_back(answers):
    task = tasks.build("state_tracking", group="Z5", answers=answers)
    x = _ids(task, "2 4 1")
    y = task.solve(x)
    assert [task.symbols[s] for s in y] == (["2", "1", "2"] if answers == "every" else ["2"])
    batch = collate([(x, y)], _fmt(task))
    assert batch.tokens[0].tolist() == [BOS, *(N_SPECIAL + s for s in x), EOS]
    scored = batch.loss_mask[0].nonzero().flatten().tolist()
    assert scored == ([1, 2, 3] if answers == "every" else [3])
    assert batch.labels[0, scored].tolist() == [N_SPECIAL + s for s in y]


def test_bucketed_pieces_and_the_loss_keep_the_inline_labels():
    task = tasks.build("state_tracking", group="Z5")
    rng = np.random.default_rng(0)
    batch = collate([task.sample(n, rng) for n in (2, 9, 3, 9, 5)], _fmt(task))
    pieces = length_buckets(batch, 3)
    assert sum(int(p.loss_mask.sum()) for p in pieces) == int(batch.loss_mask.sum()) == 28
    for piece in pieces:
        assert piece.label_ids is not None
        assert torch.equal(piece.to("cpu").labels, piece.label_ids)
    # logits that put all mass on the label: zero loss; on the next token instead: not zero
    for labels, zero in ((batch.labels, True), (batch.tokens[:, 1:], False)):
        logits = torch.nn.functional.one_hot(labels, N_SPECIAL + 5).float() * 50
        assert (masked_loss(logits, batch).item() < 1e-6) == zero


# ------------------------------------------------------ hand-made exact match, token acc


class FixedModel(torch.nn.Module):
    """Predicts ``rule(tokens)`` at every position (a stand-in for a trained model)."""

    def __init__(self, vocab: int, rule):
        super().__init__()
        self.vocab, self.rule = vocab, rule

        class NoPositions:
            def positions(self, B, T, device=None, generator=None):
                return torch.arange(T).expand(B, T)

        self.encoding = NoPositions()

    def forward(self, tokens, pos):
        return torch.nn.functional.one_hot(self.rule(tokens), self.vocab).float(), None


def test_flip_flop_scores_by_hand():
    task = tasks.build("flip_flop")
    # a model that always answers 0: reads of 0,0 right; of 1,0 half right
    zero = N_SPECIAL + task.symbols.index("0")
    model = FixedModel(N_SPECIAL + 5, lambda t: torch.full_like(t, zero))
    pairs = []
    for text in ("w 0 r 0 i 1 r 0", "w 1 r 1 w 0 r 0"):
        x = _ids(task, text)
        pairs.append((x, task.solve(x)))
    scores = evaluate_pairs(model, pairs, fmt=_fmt(task))
    assert scores["exact_match"] == 1 / 2  # 2 examples, the first all right
    assert scores["token_accuracy"] == 3 / 4  # 4 reads, 3 right; EOS and other bits unscored
    assert scores["examples"] == "10"
    # greedy decoding does not apply to inline answers: the same numbers
    assert evaluate_pairs(model, pairs, fmt=_fmt(task), greedy=True) == scores


def test_state_tracking_scores_by_hand():
    task = tasks.build("state_tracking", group="Z5")
    # a model that answers the element it has just read: right only where p_t = g_t
    model = FixedModel(N_SPECIAL + 5, lambda t: t)
    pairs = [(x, task.solve(x)) for x in (_ids(task, "2 0 0"), _ids(task, "3 0 1 1"))]
    # products: 2 2 2 (right at 1 of 3: 2); 3 3 4 0 (right at 1 of 4: 3)
    scores = evaluate_pairs(model, pairs, fmt=_fmt(task))
    assert scores["exact_match"] == 0.0
    assert scores["token_accuracy"] == 2 / 7
    final = tasks.build("state_tracking", group="Z5", answers="final")
    pairs = [(x, final.solve(x)) for x in (_ids(final, "2 0 0"), _ids(final, "0 0 0"))]
    scores = evaluate_pairs(model, pairs, fmt=_fmt(final))  # finals: 2 (said 0), 0 (said 0)
    assert scores["exact_match"] == scores["token_accuracy"] == 1 / 2


# ---------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("flip_flop", {"p_ignore": 1.0}, "needs task.p_ignore in [0, 1), got 1.0"),
        ("flip_flop", {"p_ignore": -0.1}, "needs task.p_ignore in [0, 1), got -0.1"),
        ("flip_flop", {"p_ignore": True}, "needs task.p_ignore in [0, 1), got True"),
        ("flip_flop", {"p_ignore": "x"}, "needs task.p_ignore in [0, 1), got 'x'"),
        ("flip_flop", {"eval_p_ignore": 1.5}, "task.eval_p_ignore in [0, 1) or null, got 1.5"),
        ("state_tracking", {"group": "Q8"}, "no group 'Q8'; valid groups: S3, S4, S5, A4, A5"),
        ("state_tracking", {"group": "S6"}, "no group 'S6'"),
        ("state_tracking", {"group": "Z1"}, "no group 'Z1'"),
        ("state_tracking", {"group": "Z121"}, "no group 'Z121'"),
        ("state_tracking", {"group": 5}, "no group 5"),
        ("state_tracking", {"answers": "some"}, "needs task.answers in every, final, got 'some'"),
        ("mqar", {"fillers": -1}, "needs task.fillers >= 0, got -1"),
        ("mqar", {"n_values": 1}, "needs task.n_values >= 2, got 1"),
    ],
)
def test_bad_parameters_raise_one_line(name, params, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        tasks.build(name, **params)
    assert "\n" not in str(info.value)


runner = CliRunner()


@pytest.mark.parametrize(
    "override", ["task=flip_flop task.p_ignore=1.0", "task=state_tracking task.group=Q8"]
)
def test_cli_bad_parameter_exits_2_with_one_line_and_writes_nothing(override, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", *override.split(), f"run_dir={out}", f"data_dir={tmp_path / 'data'}"]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert not out.exists() and not (tmp_path / "data").exists()


# ------------------------------------------------------------------ show, docs, presets


@pytest.mark.parametrize("name", INLINE)
def test_docstring_and_yaml_examples_are_right(name):
    yaml = (CONFIG_DIR / "task" / f"{name}.yaml").read_text()
    for text in (tasks.task_class(name).__doc__, yaml):
        text = " ".join(text.replace("``", "").replace("#", " ").split())
        m = re.search(r"<bos> (.*?) <eos> answers: ([^;.(]*)", text)
        assert m, text
        params = {"group": "Z5"} if name == "state_tracking" else {}
        task = tasks.build(name, **params)
        x = _ids(task, m.group(1))
        assert task.solve(x) == _ids(task, m.group(2).strip()), (name, m.groups())


@pytest.mark.parametrize("name", INLINE)
def test_data_show_prints_the_sequence_and_its_answers(name):
    result = runner.invoke(app, ["data", "show", name, "--lengths", "3", "--count", "2"])
    assert result.exit_code == 0, result.output
    task = tasks.build(name)
    lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("  <bos>")]
    assert len(lines) == 2
    for line in lines:
        seq, answers = line.split("   answers: ")
        x = _ids(task, seq.removeprefix("<bos> ").removesuffix(" <eos>"))
        assert _ids(task, answers) == task.solve(x)


def test_every_inline_preset_composes_and_plans():
    from posenc.config import preset_axes
    from posenc.run.execute import plan

    presets = {
        "liu_flip_flop": "flip_flop",
        "arora_mqar": "mqar",
        "grazzi_state_tracking": "state_tracking",
        "merrill_state_tracking": "state_tracking",
    }
    for preset, task in presets.items():
        cfg = compose([f"task={task}", f"preset={preset}"])
        axes = preset_axes(preset)
        assert axes["task"] == [task] and axes["seed"] == ["0", "1", "2"]
        assert axes["encoding"] == ["none", "sinusoidal", "learned", "rope", "alibi", "t5"]
        assert plan(cfg).fmt.inline is not None
    assert compose(["task=state_tracking", "preset=merrill_state_tracking"]).task.group == "A5"


@pytest.mark.parametrize("name", INLINE)
def test_a_tiny_training_run_scores_the_answers(name, tmp_path):
    from posenc.run.execute import run

    cfg = compose(
        [
            f"task={name}",
            "encoding=alibi",
            "model.d_model=16",
            "model.n_layers=1",
            "model.n_heads=2",
            "model.d_ff=32",
            "train.steps=10",
            "train.batch_size=8",
            "train.max_len=5",
            "train.warmup_steps=2",
            "train.eval_every=5",
            "train.until_fit=false",
            "train.eval_lengths=[3]",
            "train.checkpoint_every=0",
            "eval.lengths=[2,7]",
            "eval.n_samples=4",
            f"run_dir={tmp_path / 'run'}",
            f"data_dir={tmp_path / 'data'}",
            "progress=false",
            "threads=1",
        ]
    )
    metrics = run(cfg)
    assert metrics["status"] == "complete" and set(metrics["per_length"]) == {"2", "7"}
    assert all(0 <= s["token_accuracy"] <= 1 for s in metrics["per_length"].values())


def test_the_report_says_what_an_inline_task_scores():
    from posenc.report.markdown import inline_scoring

    assert "the bit after every read" in inline_scoring("flip_flop")
    assert "the value after each queried key" in inline_scoring("mqar")
    assert "token accuracy: the share of answers right" in inline_scoring("state_tracking")
    assert inline_scoring("copy") is None and inline_scoring("no_such_task") is None


def test_posenc_eval_may_change_only_the_evaluation_density():
    from posenc.run.reevaluate import parse_overrides

    assert parse_overrides(["task.eval_p_ignore=0.98"]) == [("task.eval_p_ignore", 0.98)]
    with pytest.raises(ConfigError, match="task.p_ignore cannot change at evaluation"):
        parse_overrides(["task.p_ignore=0.5"])
