"""Shared fixtures: tiny configs that train in a second or two."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from posenc import encodings
from posenc.config import compose
from posenc.model import ModelConfig, Transformer

# The suite runs in one pytest-xdist worker per core (pyproject.toml: -n auto): most of its time
# is a process starting, a subprocess waiting or a file written, not arithmetic, so two workers
# on 2 cores take about half the wall time of one. Each worker's torch gets its share of the
# cores, not all of them (a test that wants a thread count sets it and puts it back).
MAX_WORKERS = 8  # each worker holds its own torch, Hydra and models in memory
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may run on, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, _cores))


@pytest.fixture(autouse=True)
def one_slurm_test_at_a_time(request, tmp_path_factory):
    """Tests marked ``slurm`` run one at a time across the workers: they share the one Slurm
    node, and test_slurm.py checks that a rerun submits no job, which another worker's job
    would break. (xdist's ``--dist loadgroup`` would do it, but pytest 9 ignores the group it
    writes into the test's id.) A lock file in the folder every worker's temp folder shares."""
    if request.node.get_closest_marker("slurm") is None:
        yield
        return
    import fcntl

    with open(tmp_path_factory.getbasetemp().parent / "slurm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# The smallest config that still runs every stage: sweeps and servers start many of them.
MICRO = [
    "model.d_model=16",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.d_ff=32",
    "train.steps=5",
    "train.max_len=3",
    "train.eval_every=0",
    "train.log_every=1",
    "eval.max_len=6",
    "eval.n_samples=4",
    "eval.val_share=0",  # lengths 4..6 stay test lengths
    "train.until_fit=false",
]

TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.d_ff=64",
    "train.steps=12",
    "train.batch_size=8",
    "train.max_len=6",
    "train.log_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.warmup_steps=2",
    "eval.max_len=9",
    "eval.n_samples=6",
    "eval.val_share=0",  # lengths 7..9 stay test lengths (test_protocol_fit.py: the split)
    "train.until_fit=false",  # exactly train.steps (test_protocol_fit.py: until_fit)
    "progress=false",
    "threads=1",
]


@pytest.fixture(autouse=True, scope="session")
def no_machine_record(tmp_path_factory):
    """The suite never reads this machine's own measurements (`posenc.precision`: what
    ``train.precision=auto`` and ``train.compile=auto`` decide by): a record made on a
    developer's machine would change what those resolve to. A test that wants one writes it
    to a file of its own (the subprocesses it starts inherit the variable)."""
    from posenc.precision import PRECISION_FILE_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PRECISION_FILE_ENV, str(tmp_path_factory.mktemp("record") / "none.json"))
        yield


@pytest.fixture
def tiny_cfg(tmp_path):
    """Compose a tiny config writing into tmp_path; extra overrides win."""

    def make(*overrides: str):
        return compose(
            [*TINY, f"run_dir={tmp_path / 'run'}", f"data_dir={tmp_path / 'data'}", *overrides]
        )

    return make


def tiny_model(name: str, *, seed: int = 0, vocab: int = 12, **params) -> Transformer:
    torch.manual_seed(seed)
    enc = encodings.build(name, d_model=32, n_heads=4, max_len=128, n_layers=2, **params)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=128)
    return Transformer(cfg, enc).eval()


def terminal_signals() -> None:
    """In the child: Ctrl-C as in a terminal, even when the suite was started as a background
    job of a non-interactive shell (which starts its children with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
