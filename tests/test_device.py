"""A whole run on a GPU: skipped without one (benchmarks/gpu.sh runs it where there is)."""

from __future__ import annotations

import json

import pytest
import torch

from posenc.run.execute import run
from posenc.run.reevaluate import reevaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_on_the_gpu_trains_evaluates_and_decodes_as_it_scores(tiny_cfg, tmp_path, precision):
    """device=cuda end to end, then the same checkpoint scored again by greedy KV-cache
    decoding: every example of every length as right or wrong as by teacher forcing."""
    run(tiny_cfg("device=cuda", f"train.precision={precision}", "train.steps=40"))
    d = tmp_path / "run"
    forced = json.loads((d / "metrics.json").read_text())
    assert forced["status"] == "complete"
    greedy, _ = reevaluate(d, ["eval.greedy=true", "device=cuda"])
    assert {n: v["examples"] for n, v in greedy["per_length"].items()} == {
        n: v["examples"] for n, v in forced["per_length"].items()
    }
