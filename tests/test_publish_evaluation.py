"""`posenc publish --evaluation TAG`: a re-evaluation (`posenc eval --tag TAG`) published as an
experiment of its own, which `posenc tables` reads (docs/results.md's flip-flop splits)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf
from typer.testing import CliRunner

from posenc.cli.app import app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "experiments"
TAG = "eval_p_ignore-0.98"


def _experiment_with_its_reevaluation(root: Path) -> Path:
    """docs/experiments/liu_flip_flop's runs, each with the eval-TAG.json that `posenc eval`
    wrote beside it (recovered from the published sparse split: the same file but for the
    experiment's name)."""
    src = root / "liu_flip_flop"
    for metrics in sorted((DOCS / "liu_flip_flop").glob("flip_flop/*/seed*/metrics.json")):
        rel = metrics.parent.relative_to(DOCS / "liu_flip_flop")
        (src / rel).mkdir(parents=True)
        for name in ("metrics.json", "config.yaml"):
            shutil.copyfile(metrics.parent / name, src / rel / name)
        sparse = json.loads((DOCS / "liu_flip_flop_sparse" / rel / "metrics.json").read_text())
        sparse["experiment"] = "liu_flip_flop"
        (src / rel / f"eval-{TAG}.json").write_text(json.dumps(sparse))
    return src


def test_a_reevaluation_publishes_as_the_sparse_split_the_docs_hold(tmp_path):
    src = _experiment_with_its_reevaluation(tmp_path / "runs")
    dest = tmp_path / "liu_flip_flop_sparse"
    result = CliRunner().invoke(app, ["publish", str(src), str(dest), "--evaluation", TAG])
    assert result.exit_code == 0, result.output
    published = sorted(p.relative_to(dest) for p in dest.glob("flip_flop/*/seed*/*"))
    expected = sorted(p.relative_to(DOCS / "liu_flip_flop_sparse")
                      for p in (DOCS / "liu_flip_flop_sparse").glob("flip_flop/*/seed*/*"))  # fmt: skip
    assert published == expected and published
    for rel in published:
        ours, docs = dest / rel, DOCS / "liu_flip_flop_sparse" / rel
        if rel.name == "metrics.json":
            assert json.loads(ours.read_text()) == json.loads(docs.read_text()), rel
        else:
            assert OmegaConf.load(ours) == OmegaConf.load(docs), rel
    assert OmegaConf.load(dest / published[0].parent / "config.yaml").task.eval_p_ignore == 0.98
    assert (dest / "report.md").is_file() and (dest / "results.csv").is_file()


def test_report_prints_a_reevaluations_tables_and_writes_nothing(tmp_path):
    src = _experiment_with_its_reevaluation(tmp_path / "runs")
    before = sorted(src.rglob("*"))
    result = CliRunner().invoke(app, ["report", str(src), "--evaluation", TAG])
    assert result.exit_code == 0, result.output
    assert "18 runs re-evaluated as eval_p_ignore-0.98" in result.output
    assert "alibi" in result.output and sorted(src.rglob("*")) == before


def test_a_missing_reevaluation_is_one_line(tmp_path):
    src = _experiment_with_its_reevaluation(tmp_path / "runs")
    result = CliRunner().invoke(
        app, ["publish", str(src), str(tmp_path / "out"), "--evaluation", "nope"]
    )
    assert result.exit_code == 2
    assert "has eval-nope.json" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_reevaluation_names_its_choices_file_relative_as_publish_does(tmp_path, monkeypatch):
    """`posenc publish --evaluation` writes each config and evaluation itself, and names a
    choices file recorded by an absolute path under the folder it runs in by its relative
    path there, as `posenc publish` does (posenc.choices.copy_portable)."""
    src = _experiment_with_its_reevaluation(tmp_path / "runs")
    run = sorted(src.glob("flip_flop/*/seed*"))[0]
    file = tmp_path / "docs" / "choices" / "c.yaml"
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.choices = {"file": str(file), "sha256": "ab12", "values": {}}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    record = json.loads((run / f"eval-{TAG}.json").read_text())
    record["protocol"] = {"choices": {"file": str(file), "sha256": "ab12", "values": {}}}
    (run / f"eval-{TAG}.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "out"
    result = CliRunner().invoke(app, ["publish", str(src), str(dest), "--evaluation", TAG])
    assert result.exit_code == 0, result.output
    out = dest / run.relative_to(src)
    assert OmegaConf.load(out / "config.yaml").choices.file == "docs/choices/c.yaml"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["choices"]["file"] == "docs/choices/c.yaml"
