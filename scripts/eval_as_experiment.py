"""Gather the re-evaluations of an experiment (``eval-TAG.json`` from ``posenc eval``) into
an experiment folder of their own, which ``posenc report`` and ``posenc publish`` read.

    python scripts/eval_as_experiment.py runs/liu_flip_flop eval_p_ignore-0.98 runs/liu_flip_flop_sparse

Each run folder of SRC that has ``eval-TAG.json`` becomes ``DEST/<task>/<encoding>/seed<k>/``
with that file as its ``metrics.json`` and the run's ``config.yaml`` with the re-evaluation's
overrides applied (so the folder says what it was scored on). Nothing is trained; the
numbers are the re-evaluation's, unchanged. Used for flip_flop's sparse and dense splits
(docs/results.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from posenc.io import atomic_write_json, atomic_write_text


def gather(src: Path, tag: str, dest: Path) -> int:
    count = 0
    for found in sorted(src.glob(f"*/*/seed*/eval-{tag}.json")):
        run = found.parent
        metrics = json.loads(found.read_text())
        cfg = OmegaConf.load(run / "config.yaml")
        for override in metrics["eval"].get("overrides", []):
            key, value = override.split("=", 1)
            OmegaConf.update(cfg, key, _value(value), merge=False)
        cfg.experiment = dest.name
        metrics["experiment"] = dest.name
        out = dest / run.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_json(out / "metrics.json", metrics)
        count += 1
    return count


def _value(text: str):
    """An override's value as the YAML it came from (``0.98`` a float, ``null`` None)."""
    return OmegaConf.create(f"v: {text}")["v"]


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    n = gather(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
    print(f"{n} runs -> {sys.argv[3]}")
    if not n:
        sys.exit(1)
