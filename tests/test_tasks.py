"""The task suite: every generator against its reference solver and an oracle written here.

Everything is parametrized over `tasks.names()`, so a new task is tested the day it lands;
a task without an entry in `SPECS` fails `test_every_task_has_a_spec` until it gets one.
"""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_inline_tasks import ORACLES as INLINE_ORACLES
from typer.testing import CliRunner

from posenc import tasks
from posenc.cli.app import app
from posenc.config import CONFIG_DIR, compose
from posenc.data import eval_set_key, generate_eval_rows, load_eval_set
from posenc.errors import ConfigError
from posenc.run.execute import plan, run
from posenc.schema import task_params
from posenc.tasks.format import SequenceFormat

REPO = Path(__file__).resolve().parent.parent
LENGTHS = [1, 2, 3, 4, 7, 12, 20, 33, 60]


# ---------------------------------------------------------------- independent oracles
# Each oracle parses an input the way a reader of the docstring would, asserts that it is
# well formed, and returns the target. None shares code with the task modules.


def _names(task, ids):
    return [task.symbols[i] for i in ids]


def _ids(task, names):
    return [task.symbols.index(s) for s in names]


def oracle_addition(task, x):
    plus = task.symbols.index("+")
    assert x.count(plus) == 1
    i = x.index(plus)
    a, b = x[:i], x[i + 1 :]
    assert a and b and plus not in a + b
    if task.lsb_first:
        a, b = a[::-1], b[::-1]
    for operand in (a, b):
        assert len(operand) == 1 or operand[0] != 0, "leading zero in an operand"
    value = int("".join(_names(task, a)), task.base) + int("".join(_names(task, b)), task.base)
    digits = np.base_repr(value, task.base).lower()
    out = _ids(task, list(digits))
    return out[::-1] if task.lsb_first else out


def oracle_associative_recall(task, x):
    assert len(x) % 2 == 1
    keys, values, query = x[0:-1:2], x[1:-1:2], x[-1]
    assert len(set(keys)) == len(keys), "keys must be distinct"
    assert all(k < task.n_keys for k in keys) and all(v >= task.n_keys for v in values)
    return [dict(zip(keys, values, strict=True))[query]]


def oracle_count(task, x):
    q, rest = x[0], x[1:]
    assert all(s < task.vocab_size for s in x), "letters only in the input"
    return _ids(task, list(str(rest.count(q))))


def oracle_mode(task, x):
    counts = Counter(x)
    return [min(counts, key=lambda s: (-counts[s], s))]


def oracle_missing_duplicate(task, x):
    hole = task.symbols.index("_")
    assert len(x) % 2 == 0 and x.count(hole) == 1
    n = len(x) // 2
    i = x.index(hole)
    j = (i + n) % (2 * n)
    filled = list(x)
    filled[i] = x[j]
    assert filled[:n] == filled[n:], "input is not w w"
    return [x[j]]


@dataclass
class Spec:
    oracle: Callable  # (task, input) -> target
    input_lengths: Callable  # (task, n) -> set of allowed input lengths
    target_lengths: Callable  # (task, n) -> set of allowed target lengths


def _fixed(f):
    return lambda task, n: {f(n)}


SPECS: dict[str, Spec] = {
    "copy": Spec(lambda t, x: list(x), _fixed(lambda n: n), _fixed(lambda n: n)),
    "reverse": Spec(lambda t, x: list(reversed(x)), _fixed(lambda n: n), _fixed(lambda n: n)),
    "duplicate": Spec(lambda t, x: x + x, _fixed(lambda n: n), _fixed(lambda n: 2 * n)),
    "sort": Spec(lambda t, x: sorted(x), _fixed(lambda n: n), _fixed(lambda n: n)),
    "bucket_sort": Spec(lambda t, x: sorted(x), _fixed(lambda n: n), _fixed(lambda n: n)),
    "odds_first": Spec(lambda t, x: x[0::2] + x[1::2], _fixed(lambda n: n), _fixed(lambda n: n)),
    "addition": Spec(
        oracle_addition,
        lambda t, n: set(range(n + 2, 2 * n + 2)) if t.variable_digits else {2 * n + 1},
        lambda t, n: set(range(1, n + 2)) if t.variable_digits else {n, n + 1},
    ),
    "parity": Spec(lambda t, x: [sum(x) % 2], _fixed(lambda n: n), _fixed(lambda n: 1)),
    "associative_recall": Spec(
        oracle_associative_recall, _fixed(lambda n: 2 * n + 1), _fixed(lambda n: 1)
    ),
    "count": Spec(
        oracle_count, _fixed(lambda n: n + 1), lambda t, n: set(range(1, len(str(n)) + 1))
    ),
    "mode": Spec(oracle_mode, _fixed(lambda n: n), _fixed(lambda n: 1)),
    "missing_duplicate": Spec(
        oracle_missing_duplicate, _fixed(lambda n: 2 * n), _fixed(lambda n: 1)
    ),
    # inline answers (tests/test_inline_tasks.py holds their oracles and protocol tests)
    "flip_flop": Spec(
        INLINE_ORACLES["flip_flop"], _fixed(lambda n: 2 * n + 2), lambda t, n: set(range(1, n + 1))
    ),
    "mqar": Spec(INLINE_ORACLES["mqar"], lambda t, n: {(4 + t.fillers) * n}, _fixed(lambda n: n)),
    "state_tracking": Spec(
        INLINE_ORACLES["state_tracking"],
        _fixed(lambda n: n),
        lambda t, n: {n if t.answers == "every" else 1},
    ),
}

# Non-default parameter settings that must also hold up.
VARIANTS = [
    ("addition", {"lsb_first": False}),
    ("addition", {"variable_digits": True}),
    ("addition", {"variable_digits": True, "lsb_first": False, "base": 2}),
    ("addition", {"base": 16}),
    ("associative_recall", {"n_keys": 5, "n_values": 30}),
    ("count", {"vocab_size": 2}),
    ("count", {"vocab_size": 26}),
    ("mode", {"vocab_size": 2}),
    ("mode", {"vocab_size": 40}),
    ("missing_duplicate", {"vocab_size": 16}),
    ("sort", {"vocab_size": 40}),
    ("odds_first", {"vocab_size": 2}),
]


def task_params_of(name: str) -> dict:
    sig = inspect.signature(tasks.task_class(name).__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.name != "self"}


def usable_lengths(task) -> list[int]:
    hi = getattr(task, "max_length", None)
    return [n for n in LENGTHS if hi is None or n <= hi] + ([hi] if hi else [])


def check_examples(task, lengths, per_length=40, seed=0):
    spec = SPECS[task.name]
    rng = np.random.default_rng(seed)
    seen_inputs: dict[int, set] = {}
    for n in lengths:
        for _ in range(per_length):
            x, y = task.sample(n, rng)
            assert all(isinstance(s, int) for s in x + y)
            assert all(0 <= s < len(task.symbols) for s in x + y), (x, y)
            assert task.solve(list(x)) == y, (n, x, y)
            assert spec.oracle(task, list(x)) == y, (n, x, y)
            assert len(x) in spec.input_lengths(task, n), (n, len(x))
            assert len(y) in spec.target_lengths(task, n), (n, len(y))
            seen_inputs.setdefault(n, set()).add(len(x))
    return seen_inputs


# ------------------------------------------------------------------------ generators


def test_every_task_has_a_spec():
    missing = sorted(set(tasks.names()) - set(SPECS))
    assert not missing, f"add an oracle and length rules to SPECS for: {missing}"


def test_the_issue_task_list_is_registered():
    expected = {
        "copy", "reverse", "duplicate", "sort", "odds_first", "addition", "parity",
        "associative_recall", "count", "mode", "bucket_sort", "missing_duplicate",
    }  # fmt: skip
    assert expected <= set(tasks.names())


@pytest.mark.parametrize("name", tasks.names())
def test_generator_agrees_with_solver_and_oracle(name):
    task = tasks.build(name)
    check_examples(task, usable_lengths(task))


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=lambda v: str(v))
def test_generator_agrees_with_solver_and_oracle_for_variants(name, params):
    task = tasks.build(name, **params)
    check_examples(task, usable_lengths(task), per_length=25)


@pytest.mark.parametrize("name", tasks.names())
def test_sampling_is_deterministic_under_a_seed(name):
    task = tasks.build(name)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [task.sample(n, rng) for n in (1, 5, 12) for _ in range(10)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


@pytest.mark.parametrize("name", tasks.names())
def test_every_length_has_one_input_length_where_the_task_says_so(name):
    task = tasks.build(name)
    seen = check_examples(task, [1, 6, 15])
    rules = {n: SPECS[name].input_lengths(task, n) for n in (1, 6, 15)}
    for n, lengths in seen.items():
        if len(rules[n]) == 1:
            assert lengths == rules[n]


def test_variable_digit_addition_varies_the_input_length_within_one_n():
    task = tasks.build("addition", variable_digits=True)
    seen = check_examples(task, [8], per_length=200)
    assert len(seen[8]) >= 5  # one operand has 8 digits, the other 1..8
    rng = np.random.default_rng(1)
    plus = task.symbols.index("+")
    shorter = Counter()
    for _ in range(100):
        x, _ = task.sample(8, rng)
        a, b = x.index(plus), len(x) - x.index(plus) - 1
        assert max(a, b) == 8
        shorter[(a < b) - (a > b)] += 1
    assert shorter[1] > 20 and shorter[-1] > 20  # either operand may be the short one


def test_fixed_digit_addition_operands_have_exactly_n_digits():
    task = tasks.build("addition", lsb_first=False)
    rng = np.random.default_rng(0)
    for n in (1, 4, 30):
        for _ in range(30):
            x, _ = task.sample(n, rng)
            i = x.index(task.symbols.index("+"))
            assert i == n and len(x) - i - 1 == n
            if n > 1:
                assert x[0] != 0 and x[i + 1] != 0


# ------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("name", tasks.names())
def test_length_one_examples(name):
    task = tasks.build(name)
    check_examples(task, [1], per_length=100)


@pytest.mark.parametrize(
    ("name", "symbol", "n", "expected"),
    [
        ("copy", 3, 5, [3] * 5),
        ("reverse", 3, 5, [3] * 5),
        ("duplicate", 3, 4, [3] * 8),
        ("sort", 7, 6, [7] * 6),
        ("bucket_sort", 4, 6, [4] * 6),
        ("odds_first", 2, 7, [2] * 7),
        ("parity", 1, 7, [1]),
        ("parity", 1, 8, [0]),
        ("parity", 0, 9, [0]),
        ("mode", 3, 9, [3]),
    ],
)
def test_all_equal_symbols(name, symbol, n, expected):
    task = tasks.build(name)
    x = [symbol] * n
    assert task.solve(x) == expected == SPECS[name].oracle(task, x)


def test_count_of_a_string_of_only_the_marked_symbol_is_its_length():
    task = tasks.build("count")
    x = [2] * 13  # mark b, then twelve b's
    assert _names(task, task.solve(x)) == ["1", "2"]
    assert _names(task, task.solve([2, 0, 1, 3])) == ["0"]


@pytest.mark.parametrize("lsb_first", [True, False])
@pytest.mark.parametrize(
    ("a", "b", "total"),
    [
        ("99999", "1", "100000"),  # a carry through every digit (variable digits)
        ("55555", "44445", "100000"),  # every column carries (fixed digits)
        ("9", "9", "18"),
        ("0", "0", "0"),
        ("1", "99999999999999999999", "100000000000000000000"),
        ("10000", "90000", "100000"),
    ],
)
def test_addition_carries(a, b, total, lsb_first):
    task = tasks.build("addition", lsb_first=lsb_first)

    def write(digits):
        ids = _ids(task, list(digits))
        return ids[::-1] if lsb_first else ids

    x = [*write(a), task.symbols.index("+"), *write(b)]
    assert task.solve(x) == write(total) == oracle_addition(task, x)


def test_binary_addition_carries_through_every_bit():
    task = tasks.build("addition", base=2, lsb_first=False)
    x = _ids(task, list("1111+1111"))
    assert _names(task, task.solve(x)) == list("11110")


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        ([3, 1, 3, 0, 1], 1),  # 1 and 3 tie: the smaller wins
        ([2, 2, 0, 0], 0),
        ([3], 3),
        ([3, 2, 1, 0], 0),  # everything ties
        ([1, 3, 3], 3),
    ],
)
def test_mode_ties_go_to_the_smallest_symbol(x, expected):
    task = tasks.build("mode")
    assert task.solve(x) == [expected] == oracle_mode(task, x)


def test_mode_samples_cover_ties():
    task = tasks.build("mode")
    rng = np.random.default_rng(0)
    ties = 0
    for _ in range(200):
        x, y = task.sample(6, rng)
        counts = Counter(x)
        top = max(counts.values())
        if sum(c == top for c in counts.values()) > 1:
            ties += 1
            assert y == [min(s for s, c in counts.items() if c == top)]
    assert ties > 20


def test_odds_first_uses_one_based_positions():
    task = tasks.build("odds_first")
    assert task.solve([1, 2, 3, 4, 5]) == [1, 3, 5, 2, 4]
    assert task.solve([1, 2]) == [1, 2]
    assert task.solve([9]) == [9]


@pytest.mark.parametrize(("i", "expected"), [(0, 0), (2, 1), (3, 0), (5, 1)])
def test_missing_duplicate_reads_the_other_copy(i, expected):
    task = tasks.build("missing_duplicate")
    x = [0, 1, 1, 0, 1, 1]  # w = 011
    x[i] = task.symbols.index("_")
    x[(i + 3) % 6] = expected  # what the hidden symbol was
    assert task.solve(x) == [expected]


def test_associative_recall_finds_the_first_and_the_last_pair():
    task = tasks.build("associative_recall", n_keys=4, n_values=3)
    k = [0, 1, 2, 3]
    v = [4 + 2, 4 + 0, 4 + 1, 4 + 0]
    pairs = [s for kv in zip(k, v, strict=True) for s in kv]
    assert task.solve(pairs + [0]) == [6]
    assert task.solve(pairs + [3]) == [4]


def test_associative_recall_uses_every_key_when_n_equals_n_keys():
    task = tasks.build("associative_recall", n_keys=6)
    x, _ = task.sample(6, np.random.default_rng(0))
    assert sorted(x[0:-1:2]) == list(range(6))


@pytest.mark.parametrize("name", tasks.names())
def test_samples_use_every_symbol(name):
    task = tasks.build(name)
    rng = np.random.default_rng(0)
    lengths = usable_lengths(task)
    used = set()
    for _ in range(400):
        x, y = task.sample(int(rng.choice(lengths)), rng)
        used |= {*x, *y}
    assert used == set(range(len(task.symbols)))


def test_count_marks_every_letter_and_sometimes_one_that_is_absent():
    task = tasks.build("count")
    rng = np.random.default_rng(0)
    samples = [task.sample(3, rng) for _ in range(300)]
    assert {x[0] for x, _ in samples} == set(range(task.vocab_size))
    assert any(_names(task, y) == ["0"] for _, y in samples)


def test_missing_duplicate_hides_every_position():
    task = tasks.build("missing_duplicate")
    rng = np.random.default_rng(0)
    hole = task.symbols.index("_")
    assert {task.sample(3, rng)[0].index(hole) for _ in range(300)} == set(range(6))


def test_associative_recall_queries_every_pair_position():
    task = tasks.build("associative_recall")
    rng = np.random.default_rng(0)
    positions = set()
    for _ in range(300):
        x, _ = task.sample(4, rng)
        positions.add(x[0:-1:2].index(x[-1]))
    assert positions == set(range(4))


def test_parity_and_mode_answers_cover_every_value():
    rng = np.random.default_rng(0)
    for name, n, values in (("parity", 9, 2), ("mode", 9, 4)):
        task = tasks.build(name)
        assert {task.sample(n, rng)[1][0] for _ in range(200)} == set(range(values))


# ------------------------------------------------------------------ examples in docs

_EXAMPLE = re.compile(r"<bos> (.*?) <sep> (.*?) ?<eos>")


def _first_example(text: str):
    m = _EXAMPLE.search(" ".join(text.split()))
    assert m, "no '<bos> ... <sep> ... <eos>' example"
    return m.group(1).split(), m.group(2).split()


@pytest.mark.parametrize("name", [n for n in tasks.names() if not tasks.task_class(n).inline])
def test_docstring_and_yaml_examples_are_right(name):
    task = tasks.build(name)
    yaml_header = "\n".join(
        line for line in (CONFIG_DIR / "task" / f"{name}.yaml").read_text().splitlines()
        if line.startswith("#")
    )  # fmt: skip
    for text in (tasks.task_class(name).__doc__, yaml_header):
        x, y = _first_example(text)
        assert task.solve(_ids(task, x)) == _ids(task, y), (name, x, y)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", tasks.names())
def test_yaml_names_every_parameter_with_a_comment_and_passes_plan(name):
    cfg = compose([f"task={name}"])
    assert cfg.task.name == name
    assert set(task_params(cfg.task)) == set(task_params_of(name))
    assert task_params(cfg.task) == task_params_of(name)  # YAML defaults = code defaults
    lines = (CONFIG_DIR / "task" / f"{name}.yaml").read_text().splitlines()
    for line in lines:
        if line and not line.startswith("#") and not line.startswith("name:"):
            assert "#" in line, f"uncommented parameter line: {line!r}"
    p = plan(cfg)  # default train and eval ranges work for every task
    assert p.task.name == name


ZERO_IS_VALID = {("mqar", "fillers")}  # no filler between queries: Zoology's dense case


def _invalid_values(name):
    """(param, bad value) pairs derived from each parameter's type."""
    out = []
    for param, default in task_params_of(name).items():
        if isinstance(default, bool):
            out += [(param, "yes"), (param, 1)]
        elif isinstance(default, int):
            zero = [] if (name, param) in ZERO_IS_VALID else [(param, 0)]
            out += [*zero, (param, -3), (param, "abc"), (param, 2.5)]
    return out


BAD_PARAMS = [(name, p, v) for name in tasks.names() for p, v in _invalid_values(name)]


@pytest.mark.parametrize(("name", "param", "value"), BAD_PARAMS)
def test_bad_parameters_raise_a_one_line_config_error(name, param, value):
    with pytest.raises(ConfigError) as info:
        tasks.build(name, **{param: value})
    msg = str(info.value)
    assert "\n" not in msg
    assert f"task.{param}" in msg and repr(value) in msg and name in msg


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("copy", {"vocab_size": 0}, "needs task.vocab_size >= 2, got 0"),
        ("count", {"vocab_size": 27}, "needs task.vocab_size in [2, 26], got 27"),
        ("addition", {"base": 17}, "needs task.base in [2, 16], got 17"),
        ("addition", {"lsb_first": "no"}, "needs task.lsb_first true or false, got 'no'"),
        ("associative_recall", {"n_values": 1}, "needs task.n_values >= 2, got 1"),
        ("reverse", {"nope": 1}, "has no parameter 'nope'; valid parameters: vocab_size"),
        ("parity", {"vocab_size": 2}, "valid parameters: none"),
    ],
)
def test_bad_parameter_messages(name, params, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        tasks.build(name, **params)


def test_more_pairs_than_keys_is_a_config_error_naming_the_limit():
    task = tasks.build("associative_recall", n_keys=10)
    task.check_length(10)
    with pytest.raises(ConfigError, match=re.escape("valid lengths: [1, 10]")):
        task.check_length(11)
    with pytest.raises(ConfigError, match="task.n_keys=10"):
        plan(compose(["task=associative_recall", "task.n_keys=10"]))  # eval.max_len 60


@pytest.mark.parametrize("name", tasks.names())
def test_length_zero_is_refused(name):
    with pytest.raises(ConfigError, match="valid lengths"):
        tasks.build(name).check_length(0)


runner = CliRunner()


def _bad_override(name):
    bad = _invalid_values(name)
    return f"task.{bad[0][0]}={bad[0][1]}" if bad else "task.vocab_size=0"


@pytest.mark.parametrize("name", tasks.names())
def test_cli_train_with_a_bad_parameter_exits_2_with_one_line(name, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", f"task={name}", _bad_override(name), f"run_dir={out}", f"data_dir={out}"]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_train_bad_parameter_in_a_real_process(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "posenc.cli",
            "train",
            "task=count",
            "task.vocab_size=0",
            f"run_dir={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: task 'count' needs task.vocab_size in [2, 26], got 0"
    assert not out.exists()


def test_cli_train_with_more_pairs_than_keys_exits_2(tmp_path):
    result = runner.invoke(
        app, ["train", "task=associative_recall", "task.n_keys=8", f"run_dir={tmp_path / 'r'}"]
    )
    assert result.exit_code == 2
    assert "valid lengths: [1, 8]" in result.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------- eval-set cache


# parameters that are not integers or booleans, with another valid value
CHANGED = {
    ("flip_flop", "p_ignore"): 0.5,
    ("flip_flop", "eval_p_ignore"): 0.1,
    ("state_tracking", "group"): "A5",
    ("state_tracking", "answers"): "final",
}


def _changed(value, name=None, param=None):
    if (name, param) in CHANGED:
        return CHANGED[name, param]
    return (not value) if isinstance(value, bool) else value + 1


# parameters that change the training data only: the evaluation sets stay the default's
TRAINING_ONLY = {("addition", "independent_lengths")}
PARAM_CASES = [(name, p) for name in tasks.names() for p in task_params_of(name)]


@pytest.mark.parametrize(("name", "param"), PARAM_CASES)
def test_a_changed_parameter_never_returns_stale_cached_data(name, param, tmp_path):
    lengths, n_samples, seed = [2, 5], 20, 3
    a = tasks.build(name)
    b = tasks.build(name, **{param: _changed(getattr(a, param), name, param)})
    assert eval_set_key(a, lengths, n_samples, seed) != eval_set_key(b, lengths, n_samples, seed)
    ds_a = load_eval_set(a, lengths, n_samples, seed, tmp_path)
    ds_b = load_eval_set(b, lengths, n_samples, seed, tmp_path)  # same cache dir
    assert ds_a.cache_files[0]["filename"] != ds_b.cache_files[0]["filename"]
    assert ds_b.to_dict() == generate_eval_rows(b, lengths, n_samples, seed)
    if (name, param) not in TRAINING_ONLY:
        assert ds_a.to_dict() != ds_b.to_dict()


@pytest.mark.parametrize("name", tasks.names())
def test_same_config_returns_identical_cached_data(name, tmp_path):
    task = tasks.build(name)
    first = load_eval_set(task, [1, 4], 8, 0, tmp_path)
    again = load_eval_set(tasks.build(name), [4, 1], 8, 0, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    assert first.to_dict() == again.to_dict() == generate_eval_rows(task, [1, 4], 8, 0)


# ------------------------------------------------------------------- posenc data CLI


def _example_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith("  <bos>")]


@pytest.mark.parametrize("name", tasks.names())
def test_data_show_prints_the_first_examples_of_the_frozen_eval_set(name, tmp_path):
    result = runner.invoke(app, ["data", "show", name, "--lengths", "3,1", "--count", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{name}: {tasks.task_class(name).description}")
    assert [line for line in lines if line.startswith("n = ")] == ["n = 1", "n = 3"]
    task = tasks.build(name)
    cfg = compose([f"task={name}"])
    ds = load_eval_set(task, [1, 3], 5, cfg.eval.seed, tmp_path)  # a bigger frozen set
    rows = ds.to_dict()
    fmt = SequenceFormat().for_task(task)
    expected = [
        fmt.render_example(x, y, task.symbols)
        for k, (x, y) in enumerate(zip(rows["input"], rows["target"], strict=True))
        if k % 5 < 2
    ]
    assert _example_lines(result.stdout) == expected


def test_data_show_applies_task_overrides():
    result = runner.invoke(
        app, ["data", "show", "addition", "task.lsb_first=false", "--lengths", "4", "--count", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "task.lsb_first=false" in result.stdout.splitlines()[0]
    for line in _example_lines(result.stdout):
        a = line.split()[1:5]
        assert a[0] != "0"  # most significant digit first now


def test_data_show_default_lengths_are_train_range_and_longest_eval_length():
    result = runner.invoke(app, ["data", "show", "copy", "train.max_len=7", "eval.max_len=9"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.splitlines() if line.startswith("n = ")] == [
        "n = 1",
        "n = 7",
        "n = 9",
    ]
    assert len(_example_lines(result.stdout)) == 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown task 'nope'; valid choices: addition"),
        (["copy", "--lengths", "1,x"], "--lengths must be comma-separated integers >= 1"),
        (["copy", "--lengths", "0"], "--lengths must be comma-separated integers >= 1"),
        (["associative_recall", "task.n_keys=3", "--lengths", "4"], "valid lengths: [1, 3]"),
        (["copy", "task.vocab_size=1"], "needs task.vocab_size >= 2, got 1"),
    ],
)
def test_data_show_errors_exit_2_with_one_line(args, message):
    result = runner.invoke(app, ["data", "show", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


SMALL_EVAL = ["eval.lengths=[2,4]", "eval.n_samples=3"]


def test_data_build_materializes_then_reuses_each_tasks_eval_set(tmp_path):
    args = ["data", "build", f"data_dir={tmp_path}", *SMALL_EVAL, "--tasks", "copy,reverse"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["copy", "reverse"]
    assert [line.split()[:3] for line in first.stdout.splitlines()] == [
        ["copy", "built", "6"],
        ["reverse", "built", "6"],
    ]
    again = runner.invoke(app, args)
    assert [line.split()[1] for line in again.stdout.splitlines()] == ["reused", "reused"]
    assert len(list(tmp_path.iterdir())) == 2
    # a run with the same config finds exactly these sets
    cfg = compose(["task=reverse", f"data_dir={tmp_path}", *SMALL_EVAL])
    task = tasks.build("reverse")
    ds = load_eval_set(task, [2, 4], 3, cfg.eval.seed, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert str(Path(ds.cache_files[0]["filename"]).parent) in first.stdout


def test_data_build_all_tasks(tmp_path):
    result = runner.invoke(
        app, ["data", "build", f"data_dir={tmp_path}", *SMALL_EVAL, "--tasks", "all"]
    )
    assert result.exit_code == 0, result.output
    built = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir())
    assert built == tasks.names()


def test_data_build_defaults_to_the_configs_task(tmp_path):
    result = runner.invoke(
        app, ["data", "build", "task=parity", f"data_dir={tmp_path}", *SMALL_EVAL]
    )
    assert result.exit_code == 0, result.output
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["parity"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # copy is fine but associative_recall cannot make n = 70: nothing may be written
        (["eval.max_len=70", "--tasks", "copy,associative_recall"], "valid lengths: [1, 64]"),
        (["--tasks", "copy,nope"], "unknown task 'nope'"),
        (["task=copy", "--tasks", "reverse"], "either as --tasks or as a task= override"),
        (["--tasks", " , "], "--tasks is empty"),
    ],
)
def test_data_build_checks_every_config_before_writing(extra, message, tmp_path):
    data = tmp_path / "data"
    result = runner.invoke(app, ["data", "build", f"data_dir={data}", *extra])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not data.exists()


# ------------------------------------------------------------------ end to end, tiny


@pytest.mark.parametrize("name", tasks.names())
def test_a_tiny_training_run_works_for_every_task(name, tmp_path):
    cfg = compose(
        [
            f"task={name}",
            "encoding=rope",
            "model.d_model=16",
            "model.n_layers=1",
            "model.n_heads=2",
            "model.d_ff=32",
            "train.steps=20",
            "train.batch_size=8",
            "train.min_len=1",
            "train.max_len=5",
            "train.warmup_steps=2",
            "train.eval_every=10",
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
    assert metrics["status"] == "complete" and metrics["task"] == name
    assert set(metrics["per_length"]) == {"2", "7"}
    for scores in metrics["per_length"].values():
        assert 0.0 <= scores["exact_match"] <= 1.0 and scores["n_samples"] == 4
    assert math.isfinite(metrics["train"]["final_loss"])
    assert (tmp_path / "run" / "metrics.json").exists()


def test_addition_without_independent_lengths_draws_todays_examples_bit_for_bit():
    """The digest of fixed-seed samples (training and evaluation) of six formats, computed
    with the generator before ``independent_lengths`` existed (commit 220836b)."""
    import hashlib
    import json

    out = []
    for params in (
        {},
        {"variable_digits": True},
        {"zero_pad": True, "lsb_first": False, "reverse_answer": True},
        {"zero_pad": True, "variable_digits": True},
        {"index_hints": True},
        {"base": 2, "variable_digits": True},
    ):
        task = tasks.build("addition", **params)
        rng = np.random.default_rng(7)
        out.append([task.sample(n, rng) for n in (1, 2, 3, 4, 9) for _ in range(20)])
        rng = np.random.default_rng(7)
        out.append([task.sample_eval(n, rng) for n in (1, 4, 16)])
    digest = hashlib.sha256(json.dumps(out).encode()).hexdigest()
    assert digest == "3e56d42b7b131f6d6b689246631f4dbfb986106e402d27c6169dffcbddecab40"
    assert "independent_lengths" not in tasks.build("addition").params()  # cache keys kept


def test_independent_lengths_draw_each_operand_in_1_to_n_and_evaluate_on_n_plus_n():
    task = tasks.build("addition", independent_lengths=True)
    plus = task.symbols.index("+")
    rng = np.random.default_rng(0)
    pairs = Counter()
    for _ in range(2000):
        x, _ = task.sample(3, rng)
        pairs[(x.index(plus), len(x) - x.index(plus) - 1)] += 1
    assert set(pairs) == {(a, b) for a in (1, 2, 3) for b in (1, 2, 3)}  # each 1..n, any pair
    assert min(pairs.values()) > 2000 / 9 * 0.7  # about uniform over the 9 pairs
    default = tasks.build("addition")
    assert generate_eval_rows(task, [1, 4, 16], 20, 5) == generate_eval_rows(
        default, [1, 4, 16], 20, 5
    )
    assert eval_set_key(task, [4], 20, 5) != eval_set_key(default, [4], 20, 5)


@pytest.mark.parametrize("label", ["abacus", "coupled"])
def test_published_arithmetic_runs_read_back_with_todays_options(label):
    from omegaconf import OmegaConf

    from posenc.runfolder import config_identity, read_config

    run_dir = (
        Path(__file__).parent.parent / "docs/experiments/arithmetic/addition" / label / "seed0"
    )
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert "independent_lengths" not in saved.task and "offset_per" not in saved.encoding
    cfg = read_config(run_dir)
    assert cfg.task.independent_lengths is False
    assert cfg.encoding.offset_per == ("batch" if label == "abacus" else "sequence")
    assert "other_ids" not in saved.encoding
    assert cfg.encoding.other_ids == ("zero" if label == "abacus" else "start")
    old, new = config_identity(saved), config_identity(cfg)
    assert (old["task"], old["encoding"]) == (new["task"], new["encoding"])
    other = "sequence" if label == "abacus" else "batch"
    changed = config_identity(OmegaConf.merge(cfg, {"encoding": {"offset_per": other}}))
    assert changed["encoding"] != old["encoding"]
    flipped = "start" if label == "abacus" else "zero"
    changed = config_identity(OmegaConf.merge(cfg, {"encoding": {"other_ids": flipped}}))
    assert changed["encoding"] != old["encoding"]
    composed = compose(["task=addition", "task.independent_lengths=true"])
    assert config_identity(composed)["task"]["independent_lengths"] is True
