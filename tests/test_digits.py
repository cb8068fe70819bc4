"""Positions derived from the tokens: Abacus, position coupling, and addition's formats.

The paper's positions are written out by hand for one example each; decoding with a KV
cache must agree with teacher forcing (logits and exact match) with and without offsets;
a generated answer's positions follow from the generated tokens, never from the target.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posenc import encodings, tasks
from posenc.config import compose
from posenc.data import collate
from posenc.encodings.digits import digit_places, run_lengths
from posenc.errors import ConfigError
from posenc.model import ModelConfig, Transformer
from posenc.run.evaluate import evaluate_pairs
from posenc.run.execute import plan, run
from posenc.run.planning import digit_layout
from posenc.tasks.format import EOS, N_SPECIAL, prompt_ids

D = 32


def build(name: str, task: tasks.Task | None = None, **params):
    enc = encodings.build(name, d_model=D, n_heads=4, max_len=256, n_layers=2, **params)
    if task is not None:
        enc.bind_task(digit_layout(task))
    return enc


def model_for(enc, task: tasks.Task, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=N_SPECIAL + len(task.symbols), d_model=D, n_layers=2, n_heads=4, d_ff=64,
        max_len=256,
    )  # fmt: skip
    model = Transformer(cfg, enc).eval()
    for name, p in enc.named_parameters():  # make the position vectors count
        if "table" in name:
            torch.nn.init.normal_(p, std=1.0)
    return model


def tokens_of(task: tasks.Task, text: str) -> torch.Tensor:
    """'<bos> 7 5 8 + ... <eos>' -> (1, T) token ids."""
    specials = {"<pad>": 0, "<bos>": 1, "<sep>": 2, "<eos>": 3}
    return torch.tensor(
        [[specials.get(w) or N_SPECIAL + task.symbols.index(w) for w in text.split()]]
    )


def hook_positions(enc, tokens: torch.Tensor, offset: int = 0) -> list[int]:
    pos = torch.arange(tokens.shape[1])[None] + offset
    return enc.token_positions(tokens, pos)[0].tolist()


# --- the papers' positions, by hand ----------------------------------------------------

LSB = tasks.build("addition")  # 857 + 586 = 1443, least-significant digit first
EXAMPLE = "<bos> 7 5 8 + 6 8 5 <sep> 3 4 4 1 <eos>"


def test_abacus_ids_are_places_within_each_number():
    enc = build("abacus", LSB)
    #            <bos> 7  5  8  +  6  8  5 <sep> 3  4  4  1 <eos>
    assert hook_positions(enc, tokens_of(LSB, EXAMPLE)) == [
        0,
        1,
        2,
        3,
        0,
        1,
        2,
        3,
        0,
        1,
        2,
        3,
        4,
        0,
    ]
    # an offset k (the first token's drawn position) shifts digits only, as in the paper
    assert hook_positions(enc, tokens_of(LSB, EXAMPLE), offset=40) == [
        0, 41, 42, 43, 0, 41, 42, 43, 0, 41, 42, 43, 44, 0,
    ]  # fmt: skip


def test_coupled_ids_match_the_reference_format():
    """Cho et al.'s format: operands MSB first, zero-padded; the answer reversed (padded)."""
    task = tasks.build(
        "addition", lsb_first=False, reverse_answer=True, zero_pad=True, variable_digits=True
    )
    enc = build("coupled", task)
    # 57 + 586 = 643: operands padded to 3 digits, the answer to 4, reversed.
    text = "<bos> 0 5 7 + 5 8 6 <sep> 3 4 6 0 <eos>"
    assert task.solve(tokens_of(task, text)[0, 1:8].sub(N_SPECIAL).tolist()) == [3, 4, 6, 0]
    # start = 1: '+' and '=' get 1; significance i gets 2 + i; BOS 0
    expected = [0, 4, 3, 2, 1, 4, 3, 2, 1, 2, 3, 4, 5, 1]
    assert hook_positions(enc, tokens_of(task, text)) == expected
    # a random start s = 1 + 9 shifts every id but BOS's
    shifted = [0] + [p + 9 for p in expected[1:]]
    assert hook_positions(enc, tokens_of(task, text), offset=9) == shifted


def test_coupled_ids_with_every_number_lsb_first():
    enc = build("coupled", LSB)
    assert hook_positions(enc, tokens_of(LSB, EXAMPLE)) == [
        0,
        2,
        3,
        4,
        1,
        2,
        3,
        4,
        1,
        2,
        3,
        4,
        5,
        1,
    ]


def _places_reference(seq: list[int], digits: set[int]) -> tuple[list[int], list[int]]:
    places, lengths, run = [], [], []
    for t in seq:
        run = [*run, t] if t in digits else []
        places.append(len(run))
    i = 0
    while i < len(seq):  # run lengths, by scanning each run
        j = i
        while j < len(seq) and seq[j] in digits:
            j += 1
        lengths += [j - i] * (j - i) if j > i else [0]
        i = j if j > i else i + 1
    return places, lengths


def test_digit_places_and_run_lengths_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8, (6, 30), generator=g)
    digits = {4, 5, 6}
    is_digit, place = digit_places(tokens, torch.tensor(sorted(digits)))
    for row, seq in enumerate(tokens.tolist()):
        places, lengths = _places_reference(seq, digits)
        assert place[row].tolist() == places
        assert run_lengths(is_digit)[row].tolist() == lengths


# --- decoding: KV cache = teacher forcing, positions from generated tokens -------------

CASES = [
    ("abacus", {}),
    ("abacus", {"eval_offset": True, "max_offset": 30}),
    ("coupled", {}),
    ("coupled", {"eval_offset": True, "max_offset": 30}),
    ("combo", {"parts": ["abacus", "fire"]}),
    ("combo", {"parts": ["coupled", "rope"]}),
    ("combo", {"parts": [{"name": "abacus", "eval_offset": True}, {"name": "randomized", "base": "fire"}]}),
    ("abacus", {"other_ids": "start", "offset_per": "sequence", "eval_offset": True, "max_offset": 30}),
    ("coupled", {"other_ids": "zero", "offset_per": "batch", "eval_offset": True, "max_offset": 30}),
]  # fmt: skip
IDS = ["abacus", "abacus-offset", "coupled", "coupled-offset", "abacus+fire", "coupled+rope", "abacus-offset+randomized_fire", "abacus-start-ids", "coupled-zero-ids"]  # fmt: skip


def _batch(task, n=4, count=6, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [task.sample(n, rng) for _ in range(count)]
    return pairs, collate(pairs).tokens  # right-padded


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_cached_decoding_logits_equal_teacher_forcing(name, params):
    model = model_for(build(name, LSB, **params), LSB)
    _, tokens = _batch(LSB)
    B, T = tokens.shape
    g = torch.Generator().manual_seed(3)
    pos = model.encoding.positions(B, T, generator=g)
    full, _ = model(tokens, pos)
    prompt = 10  # <bos> 4 digits + 4 digits <sep>
    logits, cache = model(tokens[:, :prompt], pos[:, :prompt])
    steps = [logits]
    for t in range(prompt, T):  # one token at a time, positions from the cache's history
        logits, cache = model(tokens[:, t : t + 1], pos[:, t : t + 1], cache)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    with_cache = model.generate(tokens[:, :prompt], 6, pos=pos[:, : prompt + 6])
    without = model.generate(tokens[:, :prompt], 6, pos=pos[:, : prompt + 6], use_cache=False)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_greedy_and_teacher_forced_exact_match_agree(name, params):
    """Targets: the model's own greedy answers (exact match 1) and altered copies (0)."""
    model = model_for(build(name, LSB, **params), LSB)
    eos_boost = model.head.register_forward_hook(
        lambda m, a, out: out + 6.0 * torch.nn.functional.one_hot(torch.tensor(EOS), out.shape[-1])
    )  # so that answers end early
    pairs, _ = _batch(LSB, n=3, count=16, seed=1)
    g = torch.Generator().manual_seed(5)
    prompt = torch.tensor([prompt_ids(x) for x, _ in pairs])
    B, Tp = prompt.shape
    pos = model.encoding.positions(B, Tp + 8, generator=g)
    out = model.generate(prompt, 8, pos=pos)
    own, altered = [], []
    for (x, _), row in zip(pairs, out.tolist(), strict=True):
        if EOS not in row or any(t < N_SPECIAL for t in row[: row.index(EOS)]):
            continue
        answer = [t - N_SPECIAL for t in row[: row.index(EOS)]]
        own.append((x, answer))
        altered.append((x, [*answer[:-1], (answer[-1] + 1) % 10] if answer else [0]))
    assert len(own) >= 4, "too few answers ended with EOS to test anything"
    both = own + altered
    scores = {
        greedy: evaluate_pairs(
            model, both, greedy=greedy, generator=torch.Generator().manual_seed(5)
        )
        for greedy in (True, False)
    }
    eos_boost.remove()
    assert scores[True]["exact_match"] == scores[False]["exact_match"] == 0.5


def _seen_positions(enc):
    seen = []
    embed = enc.embed

    def spy(x, pos, tokens=None):
        seen.append(pos.clone())
        return embed(x, pos, tokens)

    enc.embed = spy
    return seen


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_generated_positions_follow_the_generated_tokens_not_the_target(name, params):
    """evaluate_pairs scores one prompt against different targets: its teacher-forced pass
    sees each target, its decoding passes (prompt, then one token a step) never do."""
    model = model_for(build(name, LSB, **params), LSB)
    x = LSB.sample(4, np.random.default_rng(2))[0]
    passes = []
    for target in ([1, 2, 3, 4, 5], [9, 9], [0]):
        seen = _seen_positions(model.encoding)
        evaluate_pairs(
            model, [(x, target)], greedy=True, generator=torch.Generator().manual_seed(7)
        )
        del model.encoding.embed
        passes.append(seen)
    assert not torch.equal(passes[0][0], passes[1][0])  # teacher forcing reads the target
    for other in passes[1:]:
        decoding = list(zip(passes[0][1:], other[1:], strict=False))
        assert len(decoding) >= 2
        for a, b in decoding:
            if a.dim() == 3:  # a combination: the token-derived channel. (A randomized
                a, b = a[..., 0], b[..., 0]  # part's subset is drawn for the whole length.)
            assert torch.equal(a, b)


def test_generated_positions_equal_the_positions_of_the_generated_sequence():
    model = model_for(build("coupled", LSB), LSB)
    prompt = torch.tensor([prompt_ids(LSB.sample(3, np.random.default_rng(0))[0])])
    seen = _seen_positions(model.encoding)
    out = model.generate(prompt, 6)
    del model.encoding.embed
    decoded = torch.cat(seen, dim=1)[:, : prompt.shape[1] + 5]
    sequence = torch.cat((prompt, out[:, :5]), dim=1)
    expected = model.encoding.token_positions(sequence, torch.arange(sequence.shape[1])[None])
    assert torch.equal(decoded, expected)


# --- offsets: seeded, and off at evaluation unless asked -------------------------------


@pytest.mark.parametrize("name", ["abacus", "coupled"])
def test_offsets_are_seeded_in_range_and_off_at_evaluation(name):
    enc = build(name, LSB, max_offset=50).train()

    def draw(seed):
        return enc.positions(8, 12, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    offsets = torch.stack([draw(s)[:, 0] for s in range(20)])  # (20, B)
    assert offsets.min() >= 0 and offsets.max() <= 50 and len(offsets.unique()) > 5
    if name == "abacus":  # one offset per batch, as in the reference code
        assert (offsets == offsets[:, :1]).all()
    else:  # one start per sequence
        assert (offsets != offsets[:, :1]).any()
    assert (draw(3) - draw(3)[:, :1] == torch.arange(12)).all()  # 0..T-1 + offset
    enc.eval()
    assert torch.equal(draw(1), torch.arange(12).expand(8, 12))
    asked = build(name, LSB, max_offset=50, eval_offset=True).eval()
    assert not torch.equal(
        asked.positions(8, 12, generator=torch.Generator().manual_seed(1)),
        torch.arange(12).expand(8, 12),
    )


@pytest.mark.parametrize("name", ["abacus", "coupled"])
def test_offset_per_batch_or_sequence(name):
    def first(offset_per=None, rows=4):  # the drawn offset of each row, seed 0
        params = {} if offset_per is None else {"offset_per": offset_per}
        enc = build(name, LSB, max_offset=50, **params).train()
        return enc.positions(rows, 3, generator=torch.Generator().manual_seed(0))[:, 0].tolist()

    # per sequence: row b gets the b-th of B draws; per batch: every row the first of one
    per_row = torch.randint(0, 51, (4, 1), generator=torch.Generator().manual_seed(0))
    assert first("sequence") == per_row[:, 0].tolist() and len(set(first("sequence"))) > 1
    assert first("batch") == [per_row[0, 0].item()] * 4
    assert first() == first("batch" if name == "abacus" else "sequence")  # today's defaults
    for offset_per in ("batch", "sequence"):  # evaluation: offset 0 either way
        enc = build(name, LSB, max_offset=50, offset_per=offset_per).eval()
        assert torch.equal(enc.positions(4, 3), torch.arange(3).expand(4, 3))


def test_default_offsets_are_todays_bit_for_bit():
    """Seed 0, 4 rows of 3 tokens, max_offset 50: the offsets the code before offset_per drew
    (Abacus one k for the batch, coupling one start per row)."""
    got = {
        name: build(name, LSB, max_offset=50)
        .train()
        .positions(4, 3, generator=torch.Generator().manual_seed(0))[:, 0]
        .tolist()
        for name in ("abacus", "coupled")
    }
    assert got == {"abacus": [41, 41, 41, 41], "coupled": [41, 3, 29, 33]}  # the old code's


def test_other_ids_by_hand():
    """Issue 35's ablation knob: the id of '+', the separator and EOS, by hand."""
    tokens = tokens_of(LSB, EXAMPLE)
    #                  <bos> 7  5  8  +  6  8  5 <sep> 3  4  4  1 <eos>
    start = build("abacus", LSB, other_ids="start")
    assert hook_positions(start, tokens) == [0, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 5, 1]
    assert hook_positions(start, tokens, offset=40) == [
        0, 42, 43, 44, 41, 42, 43, 44, 41, 42, 43, 44, 45, 41,
    ]  # fmt: skip
    zero = build("coupled", LSB, other_ids="zero")
    assert hook_positions(zero, tokens) == [0, 2, 3, 4, 0, 2, 3, 4, 0, 2, 3, 4, 5, 0]
    assert hook_positions(zero, tokens, offset=9) == [
        0, 11, 12, 13, 0, 11, 12, 13, 0, 11, 12, 13, 14, 0,
    ]  # fmt: skip
    assert build("abacus", LSB).other_ids == "zero" and build("coupled", LSB).other_ids == "start"


def test_abacus_with_both_of_couplings_choices_is_coupling():
    """LSB-first addition: Abacus with other_ids=start and offset_per=sequence gives position
    coupling's ids and offsets exactly, in training and at evaluation, so these two knobs
    are every difference between the schemes in this format."""
    task = tasks.build("addition", variable_digits=True)
    rng = np.random.default_rng(0)
    tokens = collate([task.sample(int(n), rng) for n in rng.integers(1, 9, size=8)]).tokens
    like = build("abacus", task, other_ids="start", offset_per="sequence", max_offset=30)
    coupled = build("coupled", task, max_offset=30)
    plain = build("abacus", task, max_offset=30)
    for mode in ("train", "eval"):
        for enc in (like, coupled, plain):
            getattr(enc, mode)()
        B, T = tokens.shape
        pos = [
            e.positions(B, T, generator=torch.Generator().manual_seed(3))
            for e in (like, coupled, plain)
        ]
        assert torch.equal(pos[0], pos[1])
        ids = [
            e.token_positions(tokens, p) for e, p in zip((like, coupled, plain), pos, strict=True)
        ]
        assert torch.equal(ids[0], ids[1])
        assert not torch.equal(ids[0], ids[2])


def test_training_offsets_come_from_the_seeded_global_generator():
    enc = build("abacus", LSB).train()
    torch.manual_seed(11)
    a = [enc.positions(2, 5)[0, 0].item() for _ in range(10)]
    torch.manual_seed(11)
    b = [enc.positions(2, 5)[0, 0].item() for _ in range(10)]
    assert a == b and len(set(a)) > 1


def test_combination_gives_each_part_its_own_positions():
    combo = build("combo", LSB, parts=["abacus", "fire"]).eval()
    abacus, fire = combo.parts
    tokens = tokens_of(LSB, EXAMPLE)
    T = tokens.shape[1]
    pos = combo.positions(1, T)
    assert pos.shape == (1, T, 2)
    hook = combo.token_positions(tokens, pos)
    assert hook[0, :, 0].tolist() == hook_positions(abacus, tokens)
    assert hook[0, :, 1].tolist() == list(range(T))  # fire: sequence positions
    x = torch.randn(1, T, D)
    torch.testing.assert_close(combo.embed(x, hook), abacus.embed(x, hook[..., 0]))
    q = torch.randn(1, 4, T, D // 4)
    seq = torch.arange(T)[None]
    torch.testing.assert_close(combo.bias(q, q, hook, hook), fire.bias(q, q, seq, seq))


# --- bad combinations: one line, before anything is written ----------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["encoding=abacus", "task=copy"], "task 'copy' has no digits; valid tasks: addition"),
        (["encoding=coupled", "task=parity"], "task 'parity' has no digits; valid tasks: addition"),
        (
            ["encoding=combo", "encoding.parts=[abacus,fire]", "task=reverse"],
            "task 'reverse' has no digits",
        ),
        (
            ["encoding=coupled", "task=addition", "task.lsb_first=false"],
            "needs the answer written least-significant digit first",
        ),
        (["encoding=randomized", "encoding.base=abacus", "task=addition"], "randomize the attention part"),
        (["encoding=abacus", "task=addition", "encoding.max_offset=600"], "encoding.max_offset must be"),
        (["encoding=abacus", "task=addition", "encoding.offset_per=row"], "unknown encoding.offset_per 'row'; valid choices: batch, sequence"),
        (["encoding=coupled", "task=addition", "encoding.other_ids=one"], "unknown encoding.other_ids 'one'; valid choices: zero, start"),
        (["encoding=coupled", "task=addition", "task.variable_digits=true", "task.independent_lengths=true"], "not both"),
        (["encoding=abacus", "task=addition", "encoding.max_position=120"], "encoding .abacus. has 19 positions"),
    ],
)  # fmt: skip
def test_bad_combinations_raise_one_line_config_errors(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as info:
        plan(compose([*overrides, f"run_dir={tmp_path / 'run'}"]))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_abacus_on_a_task_without_digits(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "posenc.cli", "train", "encoding=abacus", "task=copy",
         f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert "has no digits; valid tasks: addition" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# --- the task's formats ----------------------------------------------------------------


def test_index_hints_example_from_the_docstring():
    task = tasks.build("addition", index_hints=True)
    text = "h2 7 h3 5 h4 8 + h2 6 h3 8 h4 5"
    x = [task.symbols.index(w) for w in text.split()]
    assert [task.symbols[i] for i in task.solve(x)] == "h2 3 h3 4 h4 4 h5 1".split()


@pytest.mark.parametrize(
    "params",
    [
        {"index_hints": True},
        {"index_hints": True, "lsb_first": False, "variable_digits": True},
        {"zero_pad": True, "variable_digits": True},
        {"zero_pad": True, "lsb_first": False, "reverse_answer": True, "variable_digits": True},
        {"reverse_answer": True},
        {"independent_lengths": True},
        {"zero_pad": True, "lsb_first": False, "reverse_answer": True, "independent_lengths": True},
    ],
)
def test_addition_formats_agree_with_their_solver_and_the_sum(params):
    task = tasks.build("addition", **params)
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 9):
        for _ in range(20):
            x, y = task.sample(n, rng)
            assert task.solve(x) == y
            text = "".join(w for w in map(task.symbols.__getitem__, x) if w[0] != "h")
            a, b = text.split("+")
            answer = "".join(w for w in map(task.symbols.__getitem__, y) if w[0] != "h")
            if task.lsb_first:
                a, b = a[::-1], b[::-1]
            if task.answer_lsb_first:
                answer = answer[::-1]
            assert int(a) + int(b) == int(answer)
            if task.zero_pad:  # to the longer operand: n but with independent lengths
                assert len(a) == len(b) <= n and len(answer) == len(a) + 1
                assert len(a) == n or task.independent_lengths
            assert len(prompt_ids(x)) + len(y) + 1 <= task.max_sequence_length(n, rng)


def test_index_hints_mark_equal_significance_and_cover_the_hint_set():
    task = tasks.build("addition", index_hints=True)
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(300):
        x, y = task.sample(3, rng)
        a, b = x[: x.index(task.plus)], x[x.index(task.plus) + 1 :]
        assert a[0::2] == b[0::2] == y[0::2][:3]  # same hints, significance by significance
        assert all(task.symbols[h].startswith("h") for h in a[0::2] + y[0::2])
        starts.add(a[0])
    assert min(starts) == task.hint(0) and max(starts) == task.hint(60)
    with pytest.raises(ConfigError, match="valid lengths: \\[1, 63\\]"):
        task.check_length(64)


def test_digit_layout_follows_the_task():
    layout = digit_layout(tasks.build("addition", base=16, lsb_first=False, reverse_answer=True))
    assert layout.digits == tuple(range(N_SPECIAL, N_SPECIAL + 16))
    assert not layout.prompt_lsb_first and layout.answer_lsb_first
    assert digit_layout(tasks.build("copy")).digits == ()
    assert digit_layout(tasks.build("copy")).valid_tasks == ("addition",)


# --- end to end ------------------------------------------------------------------------


def test_a_tiny_abacus_fire_run_evaluates_greedily(tiny_cfg):
    cfg = tiny_cfg(
        "task=addition", "encoding=combo", "encoding.parts=[abacus,fire]", "eval.greedy=true",
        "train.max_len=3", "eval.max_len=6",
    )  # fmt: skip
    metrics = run(cfg)
    assert metrics["encoding"] == "abacus+fire"
    assert set(metrics["per_length"]) == {str(n) for n in range(1, 7)}


@pytest.mark.parametrize("name", ["abacus", "coupled"])
def test_digit_tables_start_at_the_token_embeddings_scale(name):
    """Both reference codes draw the position table like the token table; posenc's tokens
    have unit variance (model.embed_init=scaled), so the digit table's rows do too, from the
    config and from the class alike (combo parts use the class default)."""
    cfg = compose([f"encoding={name}", "task=addition"])
    assert cfg.encoding.init_std == 1.0
    torch.manual_seed(0)
    for enc in (
        encodings.from_config(cfg),
        encodings.build(name, d_model=64, n_heads=4, max_len=64),
    ):
        assert abs(enc.table.weight.std().item() - 1.0) < 0.02
    model = Transformer(
        ModelConfig(vocab_size=16, d_model=64),
        encodings.build(name, d_model=64, n_heads=4, max_len=64),
    )
    tokens = model.tok_emb.weight * model.embed_scale  # what the table is added to
    assert abs(tokens.std().item() - 1.0) < 0.1
