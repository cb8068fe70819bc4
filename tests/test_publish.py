"""posenc publish (an experiment's numbers, nothing else) and posenc tables (docs tables
re-rendered from committed experiment folders), including the repository's own docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posenc import report as rp
from posenc.cli.app import app
from posenc.errors import ConfigError
from posenc.publish import publish, render_tables, update_tables
from tests.test_report import metrics, write_run

ROOT = Path(__file__).resolve().parents[1]
RUNNER = CliRunner()


def experiment(root: Path) -> Path:
    """Two encodings x two seeds on copy, with everything a real run folder holds, one failed
    and one unfinished run."""
    exp = root / "runs" / "exp"
    for enc, em in (
        ("alibi", {1: 1.0, 2: 1.0, 3: 0.75, 4: 0.5}),
        ("rope", {1: 1.0, 2: 0.9, 3: 0.0, 4: 0.0}),
    ):
        for seed in (0, 1):
            d = write_run(
                exp, f"copy/{enc}/seed{seed}", metrics("copy", enc, seed, em), checkpoint=True
            )
            (d / "config.yaml").write_text(f"encoding:\n  name: {enc}\nseed: {seed}\n")
            (d / "train.log").write_text("step 1\n")
            (d / "events.out.tfevents.1.vm").write_bytes(b"\0")
    write_run(
        exp, "copy/t5/seed0", error={"task": "copy", "encoding": "t5", "seed": 0, "error": "Boom"}
    )
    write_run(exp, "copy/none/seed0", checkpoint=True)  # unfinished: nothing to publish
    return exp


def test_publish_copies_only_the_numbers_and_the_report_regenerates_from_them(tmp_path):
    exp = experiment(tmp_path)
    dest = tmp_path / "docs" / "exp"
    done = publish(exp, dest)
    assert (done.complete, done.failed, done.unfinished) == (4, 1, 1)
    runs = sorted(p.relative_to(dest).as_posix() for p in dest.glob("copy/*/seed*/*"))
    assert runs == [
        *(
            f"copy/{e}/seed{s}/{f}"
            for e in ("alibi",)
            for s in (0, 1)
            for f in ("config.yaml", "metrics.json")
        ),
        *(
            f"copy/{e}/seed{s}/{f}"
            for e in ("rope",)
            for s in (0, 1)
            for f in ("config.yaml", "metrics.json")
        ),
        "copy/t5/seed0/error.json",
    ]
    assert not list(dest.rglob("checkpoint.pt")) and not list(dest.rglob("events.*"))
    # the published folder is an experiment folder: the report from it is the report from the runs
    rp.report_experiment(exp, plots=False)
    csv = (dest / "results.csv").read_text()
    assert csv == (exp / "results.csv").read_text()
    assert csv.count("\ncopy,alibi,") == 8
    md = (dest / "report.md").read_text()
    assert "| alibi | 2 |" in md and "Boom" in md
    assert (dest / "plots" / "accuracy_vs_length_copy.png").read_bytes()[:4] == b"\x89PNG"


def test_publish_refuses_a_destination_inside_the_experiment_and_an_empty_one(tmp_path):
    exp = experiment(tmp_path)
    with pytest.raises(ConfigError, match="outside the experiment"):
        publish(exp, exp / "published")
    empty = tmp_path / "runs" / "empty"
    write_run(empty, "copy/rope/seed0", checkpoint=True)
    with pytest.raises(ConfigError, match="no finished or failed runs under"):
        publish(empty, tmp_path / "out")
    with pytest.raises(ConfigError, match="baseline 'sinusoidal'"):
        publish(exp, tmp_path / "out", baseline="sinusoidal")
    assert not (tmp_path / "out").exists()  # nothing copied before the error


def test_publish_names_the_choices_file_by_its_path_under_the_folder_it_runs_in(
    tmp_path, monkeypatch
):
    """A run that recorded its choices file absolute (runs made before the path was recorded
    relative, or handed one) is published with the path relative to the folder posenc publish
    runs in, in config.yaml and metrics.json alike, so the tables do not carry the making
    machine's folders; a file outside that folder keeps its absolute path; every other byte of
    the two files is the run's."""
    exp = experiment(tmp_path)
    inside = tmp_path / "docs" / "choices" / "c.yaml"
    outside = tmp_path.parent / "elsewhere" / "c.yaml"
    for seed, file in ((0, inside), (1, outside)):
        run = exp / "copy" / "alibi" / f"seed{seed}"
        cfg = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(
            f"{cfg}choices:\n  file: {file}\n  sha256: ab12\n  values:\n    x: 1\n"
        )
        record = json.loads((run / "metrics.json").read_text())
        record["protocol"] = {"choices": {"file": str(file), "sha256": "ab12", "values": {}}}
        (run / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "docs" / "exp"
    publish(exp, dest)
    for seed, shown in ((0, "docs/choices/c.yaml"), (1, str(outside))):
        src, out = exp / "copy" / "alibi" / f"seed{seed}", dest / "copy" / "alibi" / f"seed{seed}"
        for name in ("config.yaml", "metrics.json"):
            expected = (src / name).read_text().replace(str(inside), "docs/choices/c.yaml")
            assert (out / name).read_text() == expected
        assert (
            json.loads((out / "metrics.json").read_text())["protocol"]["choices"]["file"] == shown
        )
    for name in ("config.yaml", "metrics.json"):  # a run without choices: copied as it is
        rope = Path("copy") / "rope" / "seed0" / name
        assert (dest / rope).read_bytes() == (exp / rope).read_bytes()
    report = (dest / "report.md").read_text()
    assert "`docs/choices/c.yaml`, sha256 ab12" in report and str(inside) not in report


def doc(body: str = "stale\n", args: str = "report exp") -> str:
    return f"# Results\n\nintro\n\n<!-- posenc {args} -->\n{body}<!-- /posenc -->\n\nafter\n"


def test_tables_render_blocks_from_the_folder_and_leave_the_rest(tmp_path):
    publish(experiment(tmp_path), tmp_path / "docs" / "exp")
    text = render_tables(doc(args="report exp --baseline rope"), tmp_path / "docs")
    before, block = text.split("<!-- posenc report exp --baseline rope -->\n")
    block, after = block.split("<!-- /posenc -->")
    assert before == "# Results\n\nintro\n\n" and after == "\n\nafter\n"
    lines = block.splitlines()
    assert lines[0] == "Trained on lengths 1–2."
    assert lines[2].startswith("**Protocol.** Budget: fixed")  # the protocol above the table
    assert lines[4].startswith("**Departs from the protocol:** made before the protocol")
    table = lines.index("| encoding | seeds | fit | ID exact match | min ID | OOD exact match "
                        "| extrapolation horizon | robust | best seed | best ID | best OOD "
                        "| best horizon | train min | status |")  # fmt: skip
    assert lines[table + 2].startswith("| alibi | 2 | 2/2 | 1.000 ± 0.000 |")
    assert lines[table + 3].startswith("| rope | 2 | 2/2 | 0.950 ± 0.000 |")
    assert "| alibi | 2 | +0.625 | [+0.625, +0.625] |" in block
    assert "![accuracy versus length on copy](exp/plots/accuracy_vs_length_copy.png)" in block
    assert "stale" not in block
    assert render_tables(text, tmp_path / "docs") == text  # idempotent


def test_publish_carries_the_positive_control_and_the_block_shows_it(tmp_path):
    exp = experiment(tmp_path)
    control = {"task": "copy", "config": {}, "learned": True, "min_id_exact_match": 0.97,
               "threshold": 0.9, "steps": 300, "command": "posenc check-task copy"}  # fmt: skip
    (tmp_path / "runs" / "controls" / "copy").mkdir(parents=True)
    (tmp_path / "runs" / "controls" / "copy" / "control.json").write_text(json.dumps(control))
    done = publish(exp, tmp_path / "docs" / "exp")
    copied = tmp_path / "docs" / "exp" / "controls" / "copy" / "control.json"
    assert copied in done.files and json.loads(copied.read_text()) == control
    text = render_tables(doc(), tmp_path / "docs")
    assert "Control: copy learned (min ID 0.970 ≥ 0.9 after 300 steps)." in text
    assert "no positive control" not in text
    assert "Control: copy learned" in (tmp_path / "docs" / "exp" / "report.md").read_text()


def test_update_tables_check_writes_nothing_and_says_stale(tmp_path):
    publish(experiment(tmp_path), tmp_path / "docs" / "exp")
    path = tmp_path / "docs" / "results.md"
    path.write_text(doc())
    assert update_tables(path, check=True) is True
    assert path.read_text() == doc()
    assert update_tables(path) is True and update_tables(path, check=True) is False
    edited = path.read_text().replace("| alibi | 2 | 2/2 | 1.000", "| alibi | 2 | 2/2 | 0.999")
    path.write_text(edited)
    result = RUNNER.invoke(app, ["tables", str(path), "--check"])
    assert result.exit_code == 1
    assert f"tables out of date in {path}: run posenc tables {path}" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            doc(args="report missing"),
            "experiment folder .*missing of a posenc block does not exist",
        ),
        (
            doc(args="report exp --best"),
            "unknown or incomplete block option '--best'.*valid: --baseline VALUE",
        ),
        (doc(args="plot exp"), "starts with '<!-- posenc report FOLDER"),
        (
            "<!-- posenc report exp -->\nno end\n",
            "block opened on line 1 has no '<!-- /posenc -->' line",
        ),
        (doc(args="report exp --baseline t5"), "baseline 't5'"),
    ],
)
def test_bad_blocks_are_one_line_errors(tmp_path, text, message):
    publish(experiment(tmp_path), tmp_path / "docs" / "exp")
    with pytest.raises(ConfigError, match=message):
        render_tables(text, tmp_path / "docs")


def test_cli_publish_and_tables(tmp_path):
    exp = experiment(tmp_path)
    result = RUNNER.invoke(app, ["publish", str(exp), str(tmp_path / "pub")])
    assert result.exit_code == 0, result.output
    assert "published 4 complete and 1 failed runs" in result.output
    assert "1 unfinished runs left out" in result.output
    no_blocks = tmp_path / "plain.md"
    no_blocks.write_text("# nothing\n")
    result = RUNNER.invoke(app, ["tables", str(no_blocks)])
    assert result.exit_code == 2 and "has no posenc blocks" in result.output


# The pages that hold posenc blocks: every markdown file of the repository's docs (and the
# README) with an opening line; `posenc tables` refuses a file without one.
DOCS_WITH_TABLES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if re.search(r"^<!-- posenc report ", p.read_text(), re.MULTILINE)
)


def test_the_results_pages_have_tables():
    assert {"README.md", "docs/results.md", "docs/performance.md"} <= set(DOCS_WITH_TABLES)


@pytest.mark.parametrize("name", DOCS_WITH_TABLES)
def test_the_repository_docs_tables_are_the_ones_posenc_writes(name):
    """Every results table in the docs is rendered from a committed experiment folder:
    this fails when one is edited by hand or its runs change (fix: posenc tables FILE)."""
    path = ROOT / name
    text = path.read_text()
    assert "<!-- posenc report" in text
    assert render_tables(text, path.parent) == text, f"run: posenc tables {name}"


def test_published_folders_hold_no_checkpoints_or_logs():
    published = ROOT / "docs" / "experiments"
    names = {p.name for p in published.rglob("*") if p.is_file()}
    assert names, "no published experiments"
    # control.json: a task's positive control (posenc check-task), in docs/experiments/controls/
    allowed = {
        "metrics.json", "config.yaml", "error.json", "results.csv", "report.md", "control.json"
    }  # fmt: skip
    assert {n for n in names if not n.endswith(".png")} <= allowed
    for path in published.rglob("metrics.json"):
        assert json.loads(path.read_text())["status"] == "complete"


def test_published_controls_agree_with_their_runs():
    """Each committed positive control (docs/experiments/controls/NAME/) says what its run's
    metrics say: learned iff the minimum exact match over the training lengths reaches the
    threshold, with that minimum, at the steps the run trained, on the control's task."""
    from posenc.controls import verdict

    found = sorted((ROOT / "docs" / "experiments" / "controls").glob("*/control.json"))
    assert found, "no published controls"
    for path in found:
        control = json.loads(path.read_text())
        run = json.loads((path.parent / "run" / "metrics.json").read_text())
        learned, low = verdict(run, control["threshold"])
        assert (control["learned"], control["min_id_exact_match"]) == (learned, low), path
        assert control["steps"] == run["train"]["steps"] and control["task"] == run["task"]


def per_length_block(tmp_path: Path, lengths: str) -> tuple[str, list[str]]:
    """The rendered block of ``--per-length exact_match --lengths LENGTHS`` over the
    published experiment under tmp_path/docs/exp, and its per-length table's lines."""
    args = f"report exp --per-length exact_match --lengths {lengths}"
    block = render_tables(doc(args=args), tmp_path / "docs").split("<!-- /posenc -->")[0]
    return block, block.split("Exact match by length (mean over seeds):\n\n")[1].splitlines()


def test_per_length_table_is_the_mean_over_seeds_at_the_asked_lengths(tmp_path):
    publish(experiment(tmp_path), tmp_path / "docs" / "exp")
    _, table = per_length_block(tmp_path, "3,4")
    assert table[:4] == [
        "| encoding | n = 3 | n = 4 |",
        "|---|--:|--:|",
        "| alibi | 0.75 | 0.50 |",
        "| rope | 0.00 | 0.00 |",
    ]
    with pytest.raises(ConfigError, match="--per-length 'loss' is not a per-length metric"):
        render_tables(doc(args="report exp --per-length loss --lengths 3"), tmp_path / "docs")
    with pytest.raises(ConfigError, match="--per-length and --lengths go together"):
        render_tables(doc(args="report exp --per-length exact_match"), tmp_path / "docs")


def test_per_length_table_shows_a_validation_length_as_such(tmp_path):
    """A validation length has no test figure: asked for, its column is the validation
    samples' mean, headed "(val)" and said so; a length that is neither stays "–"."""
    dest = tmp_path / "docs" / "exp"
    publish(experiment(tmp_path), dest)
    for seed, figure in ((0, 0.4), (1, 0.6)):
        path = dest / f"copy/alibi/seed{seed}/metrics.json"
        m = json.loads(path.read_text())
        m["validation"] = {"lengths": [5], "per_length": {"5": {"exact_match": figure}}}
        path.write_text(json.dumps(m))
    block, table = per_length_block(tmp_path, "4,5,6")
    assert table[:4] == [
        "| encoding | n = 4 | n = 5 (val) | n = 6 |",
        "|---|--:|--:|--:|",
        "| alibi | 0.50 | 0.50 | – |",
        "| rope | 0.00 | – | – |",
    ]
    assert "(val): a validation length (5), scored on the validation samples" in block


def test_factor_table_gives_each_row_its_scale_and_factor_at_each_threshold(tmp_path):
    """The factor is the horizon at a threshold over the longest training length, averaged
    over the seeds that fit the range at that threshold; none fit: "did not fit"."""
    exp = tmp_path / "runs" / "arith"
    config = "model:\n  n_layers: 1\n  d_model: 64\ntrain:\n  steps: 10000\n  batch_size: 64\n"
    runs = [
        ("coupled", 0, {2: 1.0, 4: 1.0, 6: 0.95, 8: 0.6, 10: 0.1}),  # 0.9: 6/4; 0.5: 8/4
        ("coupled", 1, {2: 1.0, 4: 0.8, 6: 0.7, 8: 0.2, 10: 0.0}),  # 0.9: no fit; 0.5: 6/4
        ("none", 0, {2: 0.4, 4: 0.1, 6: 0.0}),
    ]
    for enc, seed, em in runs:
        run = metrics("addition", enc, seed, em, train=(1, 4))
        write_run(exp, f"addition/{enc}/seed{seed}", run).joinpath("config.yaml").write_text(config)
    publish(exp, tmp_path / "docs" / "arith")
    block = render_tables(doc(args="report arith --factors 0.9,0.5"), tmp_path / "docs")
    table = block.split("at that threshold):\n\n")[1].split("<!-- /posenc -->")[0].splitlines()
    assert table[:4] == [
        "| encoding | trained on | layers × d_model | steps × batch | factor at 0.9 "
        "| factor at 0.5 |",
        "|---|---|---|---|--:|--:|",
        "| coupled | 1–4 | 1 × 64 | 10,000 × 64 | 1.50× (1 of 2 fit) | 1.75× |",
        "| none | 1–4 | 1 × 64 | 10,000 × 64 | did not fit | did not fit |",
    ]
    for bad in ("0.9,x", "1.5", "0"):
        with pytest.raises(ConfigError, match=f"--factors takes comma-separated .*got '{bad}'"):
            render_tables(doc(args=f"report arith --factors {bad}"), tmp_path / "docs")


# What a run made before the protocol had: a fixed budget and no validation lengths.
BEFORE_PROTOCOL = ["train.until_fit=false", "eval.val_share=0"]
# Every published run trained eagerly, with foreach AdamW: its documented command says so, so
# that it still composes the published run once train.compile defaults to auto (a compiled
# run rounds differently: it is another run, docs/performance.md).
EAGER = ["train.compile=false", "train.fused_adamw=false"]


@pytest.mark.parametrize(
    "run, overrides",
    [
        ("compare/copy/t5/seed0", ["model.embed_init=auto"]),
        ("compare/copy/alibi/seed1", ["model.embed_init=auto"]),  # auto: gpt
        ("compare_scaled/copy/alibi/seed0", ["model.embed_init=scaled"]),
        ("compare_gpt/copy/t5/seed2", ["model.embed_init=gpt"]),
        ("compare_gpt/copy/sinusoidal/seed0", ["model.embed_init=gpt"]),
        ("kazemnejad_copy/copy/alibi/seed1", ["preset=kazemnejad_copy"]),
        ("kazemnejad_reverse/reverse/none/seed2", ["preset=kazemnejad_reverse"]),
        ("arithmetic/addition/rope/seed0", ["preset=arithmetic", "task=addition"]),
        (
            "steps_mixed/copy/none/seed1",
            ["train.stop_at=0.99", "train.eval_every=100", "train.batching=mixed"],
        ),
        ("recipe_1500_lr3e-3/copy/t5/seed0", ["train.steps=1500", "train.lr=3e-3"]),
        ("recipe_1500_lr6e-3/copy/none/seed0", ["train.steps=1500", "train.lr=6e-3"]),
        ("ruoss_randomized/duplicate/randomized_learned/seed2", ["preset=ruoss_randomized"]),
    ],
)
def test_the_documented_commands_still_make_the_published_runs(run, overrides):
    """A published run's config is what its documented command composes today (execution
    and legacy-default keys aside), so the command resumes or skips it instead of training
    something else under the same name: this fails when a default changes under a table.
    Every published run was made before the protocol: its command takes `BEFORE_PROTOCOL`,
    and eagerly: `EAGER` (docs/results.md says so above its sections)."""
    from omegaconf import OmegaConf

    from posenc.config import compose
    from posenc.runfolder import config_identity

    published = OmegaConf.load(ROOT / "docs" / "experiments" / run / "config.yaml")
    experiment, task, encoding, seed = run.split("/")
    composed = compose(
        [*BEFORE_PROTOCOL, *overrides, f"task={task}", f"encoding={encoding}", f"seed={seed[4:]}"]
        + [f"experiment={experiment}", *EAGER]
    )
    assert config_identity(composed) == config_identity(published)


@pytest.mark.parametrize(
    "run",
    [
        "copy/alibi/seed1",
        "copy/rope/seed0",
        "copy/none/seed1",
        "copy/t5/seed4",
        "copy/sinusoidal/seed2",
    ],
)
def test_the_protocol_remake_is_what_its_documented_command_makes(run, monkeypatch):
    """The default comparison under the protocol (docs/experiments/compare_protocol): the
    defaults and the committed choices file compose each published run, with the scale the
    file chose for its encoding, so `posenc compare --seeds 5 --choices ... train.compile=false
    train.fused_adamw=false` skips it (the seeds 2-4 it added too; eagerly, whatever the default)."""
    from omegaconf import OmegaConf

    from posenc.config import compose
    from posenc.run.spec import FINISHED, resolve_auto, run_status
    from posenc.runfolder import config_identity

    monkeypatch.chdir(ROOT)  # the documented path of the choices file is the repository's
    folder = ROOT / "docs" / "experiments" / "compare_protocol" / run
    published = OmegaConf.load(folder / "config.yaml")
    task, encoding, seed = run.split("/")
    # as typed, and as posenc compare hands it to its jobs (absolute)
    for path in ("docs/choices/compare.yaml", ROOT / "docs" / "choices" / "compare.yaml"):
        composed = compose(
            [f"task={task}", f"encoding={encoding}", f"seed={seed[4:]}", "experiment=compare"]
            + [f"choices={path}", *EAGER]
        )
        resolve_auto(composed)
        assert config_identity(composed) == config_identity(published)
        assert published.choices.sha256 == composed.choices.sha256
        # recorded relative; the runs recorded it absolute, and publish named it relative
        assert composed.choices.file == published.choices.file == "docs/choices/compare.yaml"
        assert run_status(folder, composed) == FINISHED
    # a run that holds the path absolute is the same run (the path is metadata, not identity)
    absolute = published.copy()
    absolute.choices.file = str(ROOT / "docs" / "choices" / "compare.yaml")
    assert config_identity(absolute) == config_identity(published)
    assert published.train.until_fit and published.eval.val_share == 0.25


def test_tables_passes_over_a_file_without_blocks_among_several(tmp_path):
    """`posenc tables --check README.md docs/*.md`: a page without blocks is passed over,
    the pages with blocks are checked."""
    plain = tmp_path / "plain.md"
    plain.write_text("# no tables here\n")
    pages = [str(ROOT / page) for page in DOCS_WITH_TABLES]
    result = RUNNER.invoke(app, ["tables", "--check", str(plain), *pages])
    assert result.exit_code == 0, result.output
    assert f"{plain}: no tables" in result.output
    assert all(f"{page}: up to date" in result.output for page in pages)


@pytest.mark.parametrize(
    "run, overrides",
    [
        ("encodings_2026_flip_flop/flip_flop/pope/seed3", []),
        ("encodings_2026_flip_flop/flip_flop/wall/seed0", []),
        ("encodings_2026_flip_flop/flip_flop/canon_rope/seed1", []),
        ("encodings_2026_flip_flop/flip_flop/drope/seed4", []),
        (
            "encodings_2026_flip_flop/flip_flop/deltanet/seed2",
            ["model.mixers=[delta]", "+encoding.label=deltanet"],
        ),
        ("encodings_2026_copy/copy/canon/seed1", ["train.max_steps=2000"]),
        ("encodings_2026_copy/copy/dape_v2_kerple_log/seed0", ["train.max_steps=2000"]),
        ("encodings_2026_copy/copy/drope/seed2", ["train.max_steps=2000"]),
        (
            "encodings_2026_copy/copy/deltanet/seed0",
            ["model.mixers=[delta]", "+encoding.label=deltanet", "train.max_steps=2000"],
        ),
        # issue 35: the older attention-level rows remade in the same experiments
        ("encodings_2026_flip_flop/flip_flop/hard_alibi_paper/seed4", []),
        ("encodings_2026_flip_flop/flip_flop/rope_ssmax/seed0", []),
        ("encodings_2026_flip_flop/flip_flop/per_layer/seed2", ["encoding.layers=[rope,none]"]),
        ("encodings_2026_copy/copy/hard_alibi_paper/seed1", ["train.max_steps=2000"]),
        ("encodings_2026_copy/copy/per_layer/seed0", ["train.max_steps=2000"]),
        ("encodings_2026_copy/copy/path_fox/seed2", ["train.max_steps=2000"]),
    ],
)
def test_the_2026_generation_runs_are_what_their_documented_commands_make(run, overrides):
    """docs/results.md's commands for the 2026 generation (issue 39), under the protocol:
    `posenc compare --preset liu_flip_flop --experiment encodings_2026_flip_flop ...` (and the
    DeltaNet rows as `-e none 'model.mixers=[delta]' +encoding.label=deltanet`) compose each
    published run, so re-running them skips it."""
    from omegaconf import OmegaConf

    from posenc.config import compose
    from posenc.runfolder import config_identity

    published = OmegaConf.load(ROOT / "docs" / "experiments" / run / "config.yaml")
    experiment, task, label, seed = run.split("/")
    preset = {"flip_flop": "liu_flip_flop", "copy": "attention_level"}[task]
    names = {
        "canon_rope": "combo_canon_rope",
        "deltanet": "none",
        "dape_v2_kerple_log": "dape_v2",
        "rope_ssmax": "combo_rope_ssmax",
    }
    encoding = names.get(label, label)
    composed = compose(
        [f"preset={preset}", f"task={task}", f"encoding={encoding}", f"seed={seed[4:]}"]
        + [f"experiment={experiment}", *overrides, *EAGER]
    )
    assert config_identity(composed) == config_identity(published)


ABLATION = ["train.eval_every=500", "train.max_steps=9000"]


@pytest.mark.parametrize(
    "run, encoding, overrides",
    [
        ("coupled/seed0", "coupled", ["encoding.max_offset=20"]),
        ("abacus/seed2", "abacus", ["encoding.max_offset=20"]),
        (
            "abacus_offset_per_sequence/seed1",
            "abacus",
            ["encoding.max_offset=20", "encoding.offset_per=sequence"],
        ),
        ("abacus_other_ids_start/seed0", "abacus", ["encoding.max_offset=20", "encoding.other_ids=start"]),
        (
            "coupled_independent_lengths/seed2",
            "coupled",
            ["encoding.max_offset=20", "task.independent_lengths=true"],
        ),
        ("coupled_max_offset_100/seed1", "coupled", ["encoding.max_offset=100"]),
        (
            "coupled_batch1000_1500steps/seed0",
            "coupled",
            [
                "encoding.max_offset=20",
                "train.batch_size=1000",
                "train.steps=1500",
                "train.max_steps=2250",
            ],
        ),
    ],
)  # fmt: skip
def test_the_arithmetic_ablation_runs_are_what_their_documented_commands_make(
    run, encoding, overrides
):
    """docs/results.md's commands for the arithmetic ablation (issue 35) compose each
    published run, so re-running them skips it."""
    from omegaconf import OmegaConf

    from posenc.config import compose
    from posenc.runfolder import config_identity

    folder = ROOT / "docs" / "experiments" / "arithmetic_ablation" / "addition" / run
    published = OmegaConf.load(folder / "config.yaml")
    label, seed = run.split("/")
    overrides = [*ABLATION, *overrides]
    if "train.max_steps=2250" in overrides:
        overrides.remove("train.max_steps=9000")
    if label != encoding:
        overrides.append(f"+encoding.label={label}")
    composed = compose(
        ["preset=arithmetic", "task=addition", f"encoding={encoding}", f"seed={seed[4:]}"]
        + ["experiment=arithmetic_ablation", *overrides, *EAGER]
    )
    assert config_identity(composed) == config_identity(published)


@pytest.mark.parametrize(
    "run, overrides",
    [
        ("coupled_1layer_pad/seed1", []),
        ("coupled_1layer_pad_independent_lengths/seed2", ["task.independent_lengths=true"]),
    ],
)
def test_the_arithmetic_choice_runs_are_what_their_documented_commands_make(run, overrides):
    """docs/results.md's commands for the ablation's choice in the 10-digit set-up (issue 35)
    compose each published run of docs/experiments/arithmetic_long_protocol."""
    from omegaconf import OmegaConf

    from posenc.config import compose
    from posenc.runfolder import config_identity

    folder = ROOT / "docs" / "experiments" / "arithmetic_long_protocol" / "addition" / run
    published = OmegaConf.load(folder / "config.yaml")
    label, seed = run.split("/")
    composed = compose(
        ["preset=arithmetic_long", "task=addition", "encoding=coupled", f"seed={seed[4:]}"]
        + ["experiment=arithmetic_long_protocol", "model.n_layers=1", "task.zero_pad=true"]
        + ["encoding.max_offset=30", "train.max_steps=15000", f"+encoding.label={label}"]
        + [*overrides, *EAGER]
    )
    assert config_identity(composed) == config_identity(published)
