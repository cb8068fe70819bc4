"""Property-based fuzzing of ``posenc train``: random overrides drawn from the config tree
(wrong types, empty and over-long lists, negative, zero, huge, NaN, unknown keys and
options). Each command line either starts training or exits 2 with one line and no files
written; never a traceback."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from typer.testing import CliRunner

from posenc.cli.app import app
from posenc.config import compose, group_options
from tests.conftest import MICRO

EXAMPLES = 150  # CI time: ~1 min on 2 cores; a one-off run with 1,500 cases passed too
runner = CliRunner()


class Started(Exception):
    """Raised by the first optimizer step: the command got past every check."""


def leaves(tree, prefix: str = "") -> list[str]:
    """Dotted keys of every value (lists and mappings as a whole, and their entries' keys)."""
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, dict):
            keys += leaves(value, f"{path}.")
    return keys


KEYS = {
    (enc, task): leaves(
        OmegaConf.to_container(compose([f"encoding={enc}", f"task={task}"]), resolve=False)
    )
    for enc in group_options("encoding")
    for task in ("copy", "addition", "associative_recall")
}

NUMBERS = st.one_of(
    st.integers(-3, 70).map(str),
    st.sampled_from(["0", "-1", "1000000", "10**9", "1000000000000", "9223372036854775808"]),
    st.sampled_from(["0.0", "-0.5", "0.5", "1.5", "1e-12", "1e300", "nan", "inf", "-inf"]),
)
WORDS = st.one_of(
    st.sampled_from(["true", "false", "null", "abc", "''", "rope", "t5", "yarn", "clamp"]),
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8),
)
SCALARS = st.one_of(NUMBERS, WORDS)
LISTS = st.one_of(
    st.just("[]"),
    st.lists(SCALARS, min_size=1, max_size=4).map(lambda xs: f"[{','.join(xs)}]"),
    st.integers(1, 8).map(lambda n: "[" + ",".join(str(i) for i in range(1, 60 * n)) + "]"),
    st.sampled_from(["[learned,t5]", "[rope]", "[nope,t5]", "[{name:t5,num_buckets:-1},alibi]"]),
)
MAPPINGS = st.sampled_from(["{}", "{a:1}", "{base:-1.0}", "{num_buckets:8}", "{name:t5}"])
VALUES = st.one_of(SCALARS, SCALARS, LISTS, MAPPINGS)


@st.composite
def command_lines(draw) -> list[str]:
    enc, task = draw(st.sampled_from(sorted(KEYS)))
    lines = [f"encoding={enc}", f"task={task}"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value"] * 6 + ["unknown key", "add", "delete", "option"]))
        key = draw(st.sampled_from(KEYS[enc, task]))
        if kind == "value":
            lines.append(f"{key}={draw(VALUES)}")
        elif kind == "unknown key":
            lines.append(f"{key}.{draw(WORDS)}={draw(SCALARS)}")
        elif kind == "add":
            lines.append(f"+{key}_{draw(WORDS)}={draw(SCALARS)}")
        elif kind == "delete":
            lines.append(f"~{key}")
        else:
            group = draw(st.sampled_from(["encoding", "task", "preset", "model", "train"]))
            lines.append(f"{group}={draw(WORDS)}")
    return lines


@pytest.mark.slow
def test_fuzzed_train_command_lines_start_or_fail_with_one_line(monkeypatch, capsys):
    def started(self, batch):
        raise Started

    monkeypatch.setattr("posenc.run.train.Trainer.step", started)
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same cases in every CI run
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(command_lines())
    def case(lines: list[str]) -> None:
        with tempfile.TemporaryDirectory(
            ignore_cleanup_errors=True
        ) as tmp:  # a TB writer may linger
            run_dir, data_dir = Path(tmp) / "run", Path(tmp) / "data"
            args = ["train", *MICRO, "progress=false", *lines]
            args += [f"run_dir={run_dir}", f"data_dir={data_dir}"]
            result = runner.invoke(app, args)
            if isinstance(result.exception, Started):
                seen["started"] += 1
                return
            assert result.exit_code == 2, (lines, result.exception, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), lines
            assert len(result.stderr.strip().splitlines()) == 1, (lines, result.stderr)
            assert result.stderr.startswith("error: "), (lines, result.stderr)
            assert "Traceback" not in result.output
            assert not run_dir.exists() and not data_dir.exists(), lines
            seen["refused"] += 1

    case()
    with capsys.disabled():
        print(
            f"\nfuzzed {sum(seen.values())} posenc train command lines: "
            f"{seen['started']} started, {seen['refused']} refused with one line and exit 2"
        )
    assert seen["started"] > 0 and seen["refused"] > 0
