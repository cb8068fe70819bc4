"""The report side of the protocol (issue 34) on hand-made run folders: fit first, the
robustness column, unresolved pairs and ``--seeds auto``'s decision, the protocol header."""

from __future__ import annotations

import json

import pytest

from posenc import report as rp
from posenc.report.header import task_header
from posenc.report.seeds import adjacent_pairs, next_seed_count, unresolved_pairs

TRAIN = (1, 4)  # training lengths; validation 5-6; test 7-9


def protocol_metrics(
    encoding,
    seed,
    *,
    val_em,
    test_em,
    examples=None,
    until_fit=True,
    choices=True,
    steps_to_fit=400,
):
    """A metrics.json as a protocol run writes it: fit judged on validation (``val_em`` at
    training lengths 1-4 and validation lengths 5-6), the test evaluation at every length
    1-9 (``test_em``), reported OOD over the test lengths 7-9 only."""
    lo, hi = TRAIN
    fits = all(val_em[n] >= 0.9 for n in range(lo, hi + 1))
    per_length = {}
    for n, v in test_em.items():
        per_length[str(n)] = {"exact_match": v, "token_accuracy": v, "n_samples": 4}
        if examples and n in examples:
            per_length[str(n)]["examples"] = examples[n]
    return {
        "status": "complete",
        "task": "copy",
        "encoding": encoding,
        "seed": seed,
        "train_range": [lo, hi],
        "summary_version": 3,
        "summary": {},
        "per_length": per_length,
        "train": {"steps": 500, "seconds": 60.0},
        "eval": {},
        "validation": {
            "seed": 99,
            "n_samples": 4,
            "train_range": [lo, hi],
            "lengths": [5, 6],
            "per_length": {
                str(n): {"exact_match": v, "token_accuracy": v, "n_samples": 4}
                for n, v in val_em.items()
            },
            "fits_training_range": fits,
            "min_id_exact_match": min(val_em[n] for n in range(lo, hi + 1)),
            "ood_exact_match": (val_em[5] + val_em[6]) / 2,
        },
        "protocol": {
            "version": 1,
            "fit_on": "validation",
            "until_fit": until_fit,
            "steps": 300,
            "max_steps": 2000,
            "steps_trained": 400 if steps_to_fit else 2000,
            "steps_to_fit": steps_to_fit,
            "test_lengths": [7, 9],
            "choices": (
                {
                    "file": "configs/choices/copy.yaml",
                    "sha256": "ab" * 32,
                    "values": {"train.lr": 0.001},  # the run's encoding's, as a run records
                }
                if choices
                else None
            ),
        },
    }


FIT_VAL = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0}
CONFIG = {
    "model": {"embed_init": "scaled"},
    "train": {"steps": 300, "batching": "bucketed", "batch_size": 64},
    "eval": {"threshold": 0.9},
}


def run(encoding, seed, val_em=FIT_VAL, test_em=None, **kwargs) -> rp.RunRecord:
    test_em = test_em or {n: 1.0 if n <= 6 else 0.5 for n in range(1, 10)}
    m = protocol_metrics(encoding, seed, val_em=val_em, test_em=test_em, **kwargs)
    return rp.record_from_metrics(m, f"copy/{encoding}/seed{seed}", config=CONFIG)


# ---------------------------------------------------------------- fit first


def test_ood_figures_are_over_the_test_lengths_only_and_the_fit_is_judged_on_validation():
    """Lengths 5-6 were validation (chosen on): the OOD mean leaves them out; the test set's
    0.5 at a training length does not unfit a run that fits on validation."""
    test_em = {1: 0.5, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0, 6: 0.0, 7: 0.9, 8: 0.6, 9: 0.3}
    r = run("alibi", 0, test_em=test_em)
    s = r.metrics["summary"]
    assert s["ood_exact_match"] == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    assert s["fits_training_range"] is True and s["fit_on"] == "validation"
    # the horizon is over the test lengths alone: 7 passes, 8 does not (5-6 never count)
    assert s["extrapolation_horizon"] == 7
    val_unfit = {**FIT_VAL, 3: 0.8}
    s = run("alibi", 1, val_em=val_unfit, test_em={n: 1.0 for n in range(1, 10)}).metrics["summary"]
    assert s["fits_training_range"] is False and s["extrapolation_horizon"] is None


@pytest.mark.parametrize("test_pass", [0, 3])
def test_the_report_horizon_is_the_one_the_run_records(test_pass):
    """Train 1-20, validation 21-30 (all pass), test 31-60 (the first ``test_pass`` pass).
    The report once counted the validation lengths (30 where the run recorded 20): the
    horizon is a test-side figure, the same in metrics.json and in the report."""
    from omegaconf import OmegaConf

    from posenc.run.record import metrics_record, protocol_record

    cfg = OmegaConf.create(
        {
            "experiment": "e",
            "seed": 0,
            "encoding": {"name": "alibi"},
            "train": {"min_len": 1, "max_len": 20, "steps": 10, "max_steps": 40},
            "eval": {"threshold": 0.9},
        }
    )
    tests = [*range(1, 21), *range(31, 61)]
    per_length = {
        n: {"exact_match": 1.0 if n <= 20 or n < 31 + test_pass else 0.2, "token_accuracy": 1.0}
        for n in tests
    }
    ones = {"exact_match": 1.0, "token_accuracy": 1.0}
    validation = {
        "lengths": [21, 30],
        "per_length": {str(n): ones for n in range(1, 31)},
        "fits_training_range": True,
        "min_id_exact_match": 1.0,
    }
    protocol = protocol_record(
        cfg, steps_trained=10, steps_to_fit=10, until_fit=True, test_lengths=tests
    )
    metrics = metrics_record(
        cfg, "copy", per_length, train={}, evaluation={}, validation=validation, protocol=protocol
    )
    metrics = json.loads(json.dumps(metrics))  # as read back from metrics.json
    recorded = metrics["summary"]["extrapolation_horizon"]
    r = rp.record_from_metrics(metrics, "copy/alibi/seed0", config=CONFIG)
    expected = 30 + test_pass if test_pass else 20  # 31 failing: the training maximum
    assert recorded == r.metrics["summary"]["extrapolation_horizon"] == expected
    assert rp.generalizes(r) is (test_pass > 0)


def test_a_run_that_misses_one_training_length_is_out_of_ood_means_horizons_and_pairs():
    good = {n: 1.0 if n <= 8 else 0.0 for n in range(1, 10)}  # horizon 8
    examples = {7: "1111", 8: "1111", 9: "0000"}
    runs = [run("rope", s, test_em=good, examples=examples) for s in range(3)]
    # alibi seed 2 misses training length 2 on validation (0.5) but scores 1.0 everywhere
    # on the test set: were it counted, it would lift alibi's OOD mean and horizon
    bad_val = {**FIT_VAL, 2: 0.5}
    runs += [run("alibi", s, test_em=good, examples=examples) for s in range(2)]
    runs.append(
        run(
            "alibi",
            2,
            val_em=bad_val,
            test_em={n: 1.0 for n in range(1, 10)},
            examples={7: "1111", 8: "1111", 9: "1111"},
        )
    )
    report = rp.build_report(runs, "hand", plots=False, baseline="rope")
    rows = {row.encoding: row for row in report.tables["copy"]}
    alibi = rows["alibi"]
    assert alibi.fit == 2 and alibi.unfit == [2]
    assert alibi.ood_exact_match.mean == pytest.approx(2 / 3) and alibi.ood_exact_match.n == 2
    assert alibi.extrapolation_horizon.mean == 8 and alibi.extrapolation_horizon.n == 2
    assert alibi.id_exact_match.n == 3  # ID figures keep every run
    assert alibi.best_seed in (0, 1)
    (pair,) = report.pairs["copy"]
    assert pair.difference.seeds == [0, 1]  # seed 2 pairs nowhere
    (diff,) = report.differences["copy"]
    assert diff.seeds == [0, 1] and diff.mean == 0.0
    md = rp.render_markdown(report)
    assert "Did not fit their training range" in md and "alibi (seed 2)" in md


def test_a_row_where_no_run_fits_is_listed_below_the_ranked_rows_with_its_id_figures():
    unfit_val = {**FIT_VAL, 1: 0.2}
    runs = [
        run("pathy", s, val_em=unfit_val, test_em={n: 1.0 for n in range(1, 10)}) for s in (0, 1)
    ]
    runs += [run("rope", s) for s in (0, 1)]
    rows = rp.summary_rows(runs, "copy")
    assert [r.encoding for r in rows] == ["rope", "pathy"]  # 1.0 OOD on test, yet last
    pathy = dict(zip(rp.TABLE_HEADER, rp.table_cells(rows[1]), strict=True))
    assert pathy["fit"] == "0/2" and pathy["OOD exact match"] == "did not fit"
    assert pathy["ID exact match"] == "1.000 ± 0.000" and pathy["robust"] == "0/2"
    assert not rows[1].ranked and len(adjacent_pairs(runs, "copy", rows)) == 0


# ---------------------------------------------------------------- robustness


def write(root, record: rp.RunRecord) -> None:
    folder = root / record.path
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(record.metrics))
    (folder / "config.yaml").write_text(json.dumps(record.config))  # JSON is YAML


def test_robustness_is_the_share_of_seeds_whose_horizon_passes_the_training_range(tmp_path):
    """Of 5 seeds, 3 extrapolate (horizon 5+), one fits but stops at 4, one does not fit."""
    passing = {n: 1.0 if n <= 7 else 0.2 for n in range(1, 10)}
    stuck = {n: 1.0 if n <= 4 else 0.0 for n in range(1, 10)}
    runs = [run("alibi", s, test_em=passing) for s in range(3)]
    runs.append(run("alibi", 3, test_em=stuck))
    runs.append(run("alibi", 4, val_em={**FIT_VAL, 4: 0.1}, test_em=passing))
    exp = tmp_path / "exp"
    for r in runs:
        write(exp, r)
    report, _ = rp.report_experiment(exp, plots=False)
    (row,) = report.tables["copy"]
    assert (row.robust, row.fit, len(row.seeds)) == (3, 4, 5)
    md = (exp / "report.md").read_text()
    (line,) = [x for x in md.splitlines() if x.startswith("| alibi | 5 |")]
    cells = dict(zip(rp.TABLE_HEADER, line.strip("| ").split(" | "), strict=True))
    assert (cells["robust"], cells["fit"], cells["seeds"]) == ("3/5", "4/5", "5")
    csv = (exp / "results.csv").read_text().splitlines()
    header = csv[0].split(",")
    by_seed = {
        int(f[header.index("seed")]): f[header.index("generalizes")]
        for f in (x.split(",") for x in csv[1:])
    }
    assert by_seed == {0: "True", 1: "True", 2: "True", 3: "False", 4: "False"}
    from rich.console import Console

    console = Console(width=80, record=True)
    for table in rp.rich_tables(report):
        console.print(table)
    assert "3/5" in console.export_text()


# ---------------------------------------------------------------- unresolved pairs, --seeds auto


def seeds_of(encoding, rights: list[str]) -> list[rp.RunRecord]:
    """One run per seed whose 8 test examples at length 7 are ``rights[seed]`` (1: right)."""
    return [
        run(
            encoding,
            s,
            test_em={**{n: 1.0 for n in range(1, 7)}, 7: text.count("1") / 8},
            examples={7: text},
        )
        for s, text in enumerate(rights)
    ]


def test_seeds_auto_stops_where_the_bootstrap_resolves_each_pair():
    # alibi always right, rope always wrong, none half right: both pairs resolved at once
    runs = seeds_of("alibi", ["11111111"] * 5) + seeds_of("none", ["11110000"] * 5)
    runs += seeds_of("rope", ["00000000"] * 5)
    assert [p.resolved for p in adjacent_pairs(runs, "copy", rp.summary_rows(runs, "copy"))] == [
        True,
        True,
    ]
    assert next_seed_count(runs, seeds=5, cap=10) is None


def test_a_tie_on_every_example_is_named_as_such_and_asks_for_no_more_seeds():
    runs = seeds_of("alibi", ["11111111"] * 3) + seeds_of("learned", ["00000000"] * 3)
    runs += seeds_of("sinusoidal", ["00000000"] * 3)
    upper, tie = adjacent_pairs(runs, "copy", rp.summary_rows(runs, "copy"))
    assert upper.resolved and tie.tied and not tie.resolved
    assert next_seed_count(runs, seeds=3, cap=10) is None
    md = rp.render_markdown(rp.build_report(runs, "hand", plots=False))
    assert "No adjacent pair of the ranking is left unresolved" in md
    assert "Tied (the same outcome on every paired example): learned = sinusoidal." in md


def test_seeds_auto_adds_a_seed_while_a_pair_is_unresolved_and_stops_at_the_cap():
    # alibi and t5 split 4:4 against 5:3 with seeds disagreeing: no order between them
    runs = seeds_of("alibi", ["11110000", "11111000", "11100000"])
    runs += seeds_of("t5", ["11111000", "11110000", "11110000"])
    runs += seeds_of("rope", ["00000000"] * 3)
    (open_,) = unresolved_pairs(runs)
    assert {open_.upper, open_.lower} == {"alibi", "t5"}
    assert next_seed_count(runs, seeds=3, cap=10) == 4
    assert next_seed_count(runs, seeds=3, cap=10, step=2) == 5
    assert next_seed_count(runs, seeds=9, cap=10, step=2) == 10
    assert next_seed_count(runs, seeds=10, cap=10) is None
    report = rp.build_report(runs, "hand", plots=False)
    md = rp.render_markdown(report)
    assert (
        "Unresolved adjacent pairs (1 of 2" in md
        and "3 seeds: fewer than the protocol's 5; more may resolve them" in md
    )


# ---------------------------------------------------------------- the protocol above the table


def control(task="copy", learned=True):
    return {
        "task": task,
        "config": {},
        "learned": learned,
        "min_id_exact_match": 1.0 if learned else 0.3,
        "threshold": 0.9,
        "steps": 200,
        "command": f"posenc check-task {task}",
    }


def test_a_run_under_the_whole_protocol_states_it_and_departs_from_nothing(tmp_path):
    exp = tmp_path / "runs" / "exp"
    for s in range(5):
        write(exp, run("alibi", s))
    (tmp_path / "runs" / "controls" / "copy").mkdir(parents=True)
    (tmp_path / "runs" / "controls" / "copy" / "control.json").write_text(json.dumps(control()))
    report, _ = rp.report_experiment(exp, plots=False)
    header = task_header(report, "copy")
    assert header.departures == []
    assert "until fit (`train.until_fit`): from 300 steps, ceiling 2,000" in header.protocol
    assert "steps used 400–400" in header.protocol
    assert (
        "on validation samples" in header.protocol and "validation lengths 5–6" in header.protocol
    )
    assert "`configs/choices/copy.yaml`, sha256 abababababab" in header.protocol
    assert "alibi: train.lr=0.001" in header.protocol
    assert "Seeds: 5 per encoding" in header.protocol and "bucketed × 64" in header.protocol
    assert "OOD figures over test lengths 7–9" in header.protocol
    assert header.control == "Control: copy learned (min ID 1.000 ≥ 0.9 after 200 steps)."
    one = run("alibi", 0)
    one.metrics["validation"]["lengths"] = [5, 5]  # a single validation length (flip-flop: 48)
    assert (
        "(validation lengths 5)"
        in task_header(rp.build_report([one], "x", plots=False), "copy").protocol
    )
    md = (exp / "report.md").read_text()
    assert "**Protocol.**" in md and "Departs from the protocol" not in md
    assert md.index("**Protocol.**") < md.index("| encoding |")


def test_a_preset_that_departs_gets_the_departure_line():
    """A fixed budget, no choices file, 3 seeds and a control that did not learn."""
    runs = [run("alibi", s, until_fit=False, choices=False) for s in range(3)]
    report = rp.build_report(runs, "hand", plots=False, controls={"copy": control(learned=False)})
    header = task_header(report, "copy")
    assert header.departures == [
        "a fixed training budget (not `train.until_fit`)",
        "settings not chosen on validation by `posenc tune`",
        "3 seeds (the protocol asks for at least 5)",
        "its control did not learn",
    ]
    assert header.control == "Control: copy did not learn (min ID 0.300 < 0.9 after 200 steps)."
    md = rp.render_markdown(report)
    assert "**Departs from the protocol:** a fixed training budget" in md
    assert "Budget: fixed, 300 steps (`train.steps`)" in md


def test_the_choices_line_gives_each_encodings_chosen_values():
    """Each run records its own encoding's values: the header gathers them per encoding (the
    default comparison's file chose gpt for ALiBi and scaled for RoPE)."""
    runs = []
    for encoding, scale in (("alibi", "gpt"), ("rope", "scaled"), ("none", None)):
        for s in range(5):
            r = run(encoding, s)
            chosen = {"model.embed_init": scale} if scale else {}
            r.metrics["protocol"]["choices"]["values"] = chosen
            runs.append(r)
    header = task_header(rp.build_report(runs, "hand", plots=False), "copy")
    assert (
        "chosen on validation by `posenc tune`: alibi: model.embed_init=gpt; none: none chosen; "
        "rope: model.embed_init=scaled." in header.protocol
    )


def test_one_choices_file_recorded_absolute_and_relative_is_named_once():
    """Seeds 0-1 made when runs recorded the path absolute, 2-4 after (relative): one file
    (one sha256), named once, by its relative path; another sha256 is another file."""
    runs = [run("alibi", s) for s in range(5)]
    for r in runs[:2]:
        r.metrics["protocol"]["choices"]["file"] = "/work/main/configs/choices/copy.yaml"
    header = task_header(rp.build_report(runs, "hand", plots=False), "copy")
    assert header.protocol.count("chosen on validation") == 1
    assert "`configs/choices/copy.yaml`, sha256 abababababab" in header.protocol
    runs[0].metrics["protocol"]["choices"]["sha256"] = "cd" * 32
    header = task_header(rp.build_report(runs, "hand", plots=False), "copy")
    assert header.protocol.count("chosen on validation") == 2


def test_a_control_on_other_task_settings_says_where_they_differ():
    """A control made on other task settings (state tracking's Z5 above an S5 table) names
    the differing settings; the same settings add nothing."""
    runs = [run("alibi", s) for s in range(5)]
    for r in runs:  # a config of its own: CONFIG is shared
        r.config = {**r.config, "task": {"name": "copy", "group": "S5", "bos": True}}
    z5 = {**control(), "config": {"task": {"name": "copy", "group": "Z5", "bos": True}}}
    report = rp.build_report(runs, "hand", plots=False, controls={"copy": z5})
    assert task_header(report, "copy").control == (
        "Control: copy learned (min ID 1.000 ≥ 0.9 after 200 steps; the control's task differs "
        "from the table's: group Z5 (the table: S5))."
    )
    z5["config"]["task"]["group"] = "S5"
    assert task_header(report, "copy").control.endswith("after 200 steps).")


def test_the_control_shown_is_the_one_whose_task_settings_match_the_runs(tmp_path):
    """runs_root/controls holds the task's own control (Z5) and another of the same task
    (state_tracking_s5: S5): an S5 table shows S5's, a Z5 table the task's own, a table of
    a third group the task's own (first among equals); a control of another task, or a
    damaged file, is never chosen."""
    from posenc.report.protocol import find_controls

    root = tmp_path / "runs"
    exp = root / "exp"
    exp.mkdir(parents=True)

    def put(name, task, group, text=None):
        folder = root / "controls" / name
        folder.mkdir(parents=True)
        data = {**control(task), "config": {"task": {"name": task, "group": group}}}
        (folder / "control.json").write_text(text if text is not None else json.dumps(data))

    put("state_tracking", "state_tracking", "Z5")
    put("state_tracking_a5", "state_tracking", "A5", text='{"task": "state_tra')  # damaged
    put("state_tracking_s5", "state_tracking", "S5")
    put("state_tracking_x", "copy", "S5")  # named like one, another task's: never

    def shown(group):
        runs = [run("alibi", s) for s in range(2)]
        for r in runs:
            r.task = "state_tracking"
            r.config = {**r.config, "task": {"name": "state_tracking", "group": group}}
        found = find_controls(exp, ["state_tracking"], runs)
        return found["state_tracking"][0].parent.name

    assert shown("S5") == "state_tracking_s5"
    assert shown("Z5") == "state_tracking"
    assert shown("A5") == "state_tracking"  # A5's own file is damaged
    assert shown("Q8") == "state_tracking"
    assert find_controls(exp, ["state_tracking"])["state_tracking"][0].parent.name == (
        "state_tracking"
    )  # no runs to match: the task's own


def test_old_run_folders_load_and_are_marked_made_before_the_protocol(tmp_path):
    exp = tmp_path / "exp"
    old = {
        "status": "complete",
        "task": "copy",
        "encoding": "rope",
        "seed": 0,
        "train_range": [1, 4],
        "summary": {},
        "per_length": {
            str(n): {"exact_match": 1.0 if n <= 5 else 0.0, "token_accuracy": 1.0}
            for n in range(1, 9)
        },
    }
    (exp / "copy/rope/seed0").mkdir(parents=True)
    (exp / "copy/rope/seed0/metrics.json").write_text(json.dumps(old))
    report, _ = rp.report_experiment(exp, plots=False)
    s = report.records[0].metrics["summary"]
    assert s["fit_on"] == "test" and s["extrapolation_horizon"] == 5
    assert s["ood_exact_match"] == pytest.approx(1 / 4)  # every length past 4
    header = task_header(report, "copy")
    assert header.departures[0] == (
        "made before the protocol (no validation split: fit judged on the test set)"
    )
    assert "no positive control shown" in header.departures
    md = (exp / "report.md").read_text()
    assert "No positive control shown for copy" in md
    assert "on the test set (1 run made before the protocol)" in md


def fake_launch(exp, outcomes, launched):
    """Stands in for the sweep: writes each asked seed's runs from ``outcomes(encoding,
    seed)`` (its 8 test examples at length 7) and records the seed counts asked for."""

    def launch(base, overrides, **kwargs):
        seeds = [int(s) for s in base[2].removeprefix("seed=").split(",")]
        launched.append(len(seeds))
        for encoding in base[0].removeprefix("encoding=").split(","):
            for seed in seeds:
                if not (exp / f"copy/{encoding}/seed{seed}").exists():
                    text = outcomes(encoding, seed) or "11111111"  # None: does not fit
                    val = FIT_VAL if outcomes(encoding, seed) else {**FIT_VAL, 1: 0.0}
                    em = {**{n: 1.0 for n in range(1, 7)}, 7: text.count("1") / 8}
                    write(exp, run(encoding, seed, val, test_em=em, examples={7: text}))
        return exp

    return launch


@pytest.mark.parametrize(
    ("outcomes", "cap", "counts", "said"),
    [
        (  # alibi and t5 trade places seed by seed: never resolved, so up to the cap
            lambda enc, s: ("11110000", "11111000")[(enc == "t5") ^ (s % 2)],
            7,
            [5, 6, 7],
            "stopped at the cap of 7 seeds (--max-seeds); unresolved: copy: ",
        ),
        (  # neither fits its training range: nothing to rank, nothing to resolve
            lambda enc, s: None,
            10,
            [5],
            "no pair to resolve at 5 seeds (fewer than two encodings",
        ),
        (  # alibi always right, t5 never: resolved at the start
            lambda enc, s: "11111111" if enc == "alibi" else "00000000",
            10,
            [5],
            "no adjacent pair left unresolved at 5 seeds",
        ),
    ],
)
def test_compare_seeds_auto_runs_more_seeds_until_resolved_or_the_cap(
    tmp_path, monkeypatch, outcomes, cap, counts, said
):
    from typer.testing import CliRunner

    from posenc.cli import experiments
    from posenc.cli.app import app

    launched: list[int] = []
    monkeypatch.setattr(experiments, "_launch", fake_launch(tmp_path / "exp", outcomes, launched))
    args = ["compare", "-e", "alibi,t5", "--seeds", "auto", "--max-seeds", str(cap)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert launched == counts
    assert said in result.output


def test_steps_to_fit_count_the_runs_that_fit_and_name_the_ceiling_for_the_others():
    runs = [run("alibi", 0, steps_to_fit=400), run("alibi", 1, steps_to_fit=800)]
    runs.append(run("alibi", 2, val_em={**FIT_VAL, 1: 0.5}, steps_to_fit=None))
    runs += [run("rope", s, steps_to_fit=300) for s in (0, 1)]
    runs.append(run("fixed", 0, until_fit=False))  # a fixed budget: no row
    # fit at its first check (step 250), then diverged: it did not fit, whatever it records
    runs.append(run("wall", 0, val_em={**FIT_VAL, 1: 0.0}, steps_to_fit=250))
    runs[-1].metrics["protocol"]["steps_trained"] = 2000
    report = rp.build_report(runs, "hand", plots=False)
    rope, alibi, wall = report.fit_steps["copy"]
    assert (wall.reached, wall.by_seed) == ([], [None])
    assert rp.stop_cells(wall)[1] == "0 of 1"
    assert (alibi.reached, alibi.by_seed, alibi.limit) == ([400, 800], [400, 800, None], 2000)
    assert rp.stop_cells(rope)[:4] == ["rope", "2 of 2", "300 ± 0", "300, 300"]
    assert (
        rp.stop_cells(alibi)[1] == "2 of 3" and rp.stop_cells(alibi)[3] == "400, 800, not by 2000"
    )
    md = rp.render_markdown(report)
    assert "Steps to fit the training range (`train.until_fit`: exact match ≥ 0.9" in md
    assert "| alibi | 2 of 3 |" in md
    header = task_header(report, "copy")
    assert "steps used 400–2,000; 2 of 6 runs reached the ceiling without fitting" in (
        header.protocol
    )
    assert "(6 of 7 runs; the others a fixed budget)" in header.protocol
    assert "a fixed training budget (not `train.until_fit`)" in header.departures


def test_one_paired_seed_never_resolves_a_pair_and_lifts_count_only_runs_that_fit():
    runs = seeds_of("alibi", ["11111111"]) + seeds_of("rope", ["00000000"])
    (pair,) = adjacent_pairs(runs, "copy", rp.summary_rows(runs, "copy"))
    assert pair.difference.low == 1.0 and not pair.resolved  # examples alone: no seed spread
    randomized = {**CONFIG, "encoding": {"name": "randomized", "base": "rope"}}
    lifted = [run("randomized_rope", s) for s in (0, 1)]  # OOD 0.5 on the test lengths
    for r in lifted:
        r.config = randomized
    unfit = run(
        "randomized_rope", 2, val_em={**FIT_VAL, 1: 0.0}, test_em={n: 1.0 for n in range(1, 10)}
    )
    unfit.config = randomized
    base = [
        run("rope", s, test_em={n: 1.0 if n <= 6 else 0.25 for n in range(1, 10)}) for s in (0, 1)
    ]
    (lift,) = rp.randomized_lifts([*lifted, unfit, *base], "copy")
    assert (lift.randomized_value, lift.base_value) == (0.5, 0.25)  # seed 2's 1.0 left out


def test_a_test_set_of_test_lengths_only_takes_id_figures_from_validation():
    val = {**FIT_VAL, 3: 0.95, 6: 0.5}  # validation: fits, 5 passes, 6 fails
    r = run("alibi", 0, val_em=val, test_em={7: 1.0, 8: 1.0, 9: 0.0})
    s = r.metrics["summary"]
    assert s["id_exact_match"] == pytest.approx((1 + 1 + 0.95 + 1) / 4)
    assert s["min_id_exact_match"] == 0.95
    assert s["extrapolation_horizon"] == 8  # test 7-8 pass, 9 does not; validation never counts
    assert s["ood_exact_match"] == pytest.approx(2 / 3)


def test_test_lengths_may_be_a_range_or_the_lengths_themselves():
    em = {n: 1.0 if n <= 6 else 0.1 * n for n in range(1, 10)}
    as_range = run("alibi", 0, test_em=em).metrics
    listed = protocol_metrics("alibi", 0, val_em=FIT_VAL, test_em=em)
    listed["protocol"]["test_lengths"] = [7, 8, 9]
    listed["validation"]["lengths"] = [5, 6]
    listed = rp.record_from_metrics(listed, config=CONFIG).metrics
    assert listed["summary"]["ood_exact_match"] == as_range["summary"]["ood_exact_match"]
    assert as_range["summary"]["ood_exact_match"] == pytest.approx(0.8)
