"""Aggregation of an experiment on hand-made metrics: statistics, tables, results.csv, files."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from posenc import report as rp
from posenc.errors import ConfigError

# Two-sided 95% Student-t critical values t_{0.975, df}, from a printed table.
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 29: 2.0452}


def metrics(task, encoding, seed, em, *, train=(1, 2), token=None, horizon=None):
    """A metrics.json dict with per-length exact match ``em`` ({length: value})."""
    lo, hi = train
    inside = [v for n, v in em.items() if lo <= n <= hi]
    beyond = [v for n, v in em.items() if n > hi]
    return {
        "status": "complete",
        "experiment": "hand",
        "task": task,
        "encoding": encoding,
        "seed": seed,
        "train_range": [lo, hi],
        "summary": {
            "id_exact_match": sum(inside) / len(inside),
            "ood_exact_match": sum(beyond) / len(beyond) if beyond else None,
            "extrapolation_horizon": horizon if horizon is not None else 0,
        },
        "per_length": {
            str(n): {
                "exact_match": v,
                "token_accuracy": (token or {}).get(n, min(1.0, v + 0.25)),
                "n_samples": 10,
            }
            for n, v in em.items()
        },
        "train": {},
        "eval": {},
    }


def record(*args, **kwargs) -> rp.RunRecord:
    return rp.record_from_metrics(metrics(*args, **kwargs))


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_mean_ci_uses_the_printed_t_critical_value(df):
    values = [0.0, 1.0] + [0.5] * (df - 1)  # df + 1 values
    mean, half = rp.mean_ci(values)
    assert half == pytest.approx(
        T_TABLE[df] * statistics.stdev(values) / math.sqrt(df + 1), rel=1e-4
    )


def test_mean_ci_matches_hand_computed_interval():
    values = [0.2, 0.5, 0.9]
    mean, half = rp.mean_ci(values)
    expected = 4.302652729749464 * statistics.stdev(values) / math.sqrt(3)
    assert mean == pytest.approx(1.6 / 3)
    assert half == pytest.approx(expected, rel=1e-9)
    assert half == pytest.approx(0.87240, abs=1e-5)


def test_one_seed_has_a_mean_but_no_interval():
    assert rp.mean_ci([0.4]) == (0.4, None)
    assert rp.format_stat(rp.Stat.of([0.4])) == "0.400"
    assert rp.format_stat(rp.Stat.of([None])) == "–"


def hand_made_runs() -> list[rp.RunRecord]:
    """copy: alibi extrapolates (3 seeds), rope does not (3 seeds), learned failed once."""
    runs = [
        record("copy", "alibi", 0, {1: 1.0, 2: 1.0, 3: 0.6, 4: 0.2}, horizon=2),
        record("copy", "alibi", 1, {1: 1.0, 2: 0.9, 3: 0.9, 4: 0.5}, horizon=3),
        record("copy", "alibi", 2, {1: 1.0, 2: 1.0, 3: 0.4, 4: 0.0}, horizon=2),
        record("copy", "rope", 0, {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}, horizon=2),
        record("copy", "rope", 1, {1: 1.0, 2: 0.8, 3: 0.1, 4: 0.0}, horizon=1),
        record("copy", "rope", 2, {1: 0.9, 2: 1.0, 3: 0.0, 4: 0.0}, horizon=2),
        record("copy", "learned", 0, {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}, horizon=2),
        rp.RunRecord("copy", "learned", 1, "failed", "copy/learned/seed1", error="Boom: bad"),
        rp.RunRecord("copy", "learned", 2, "unfinished", "copy/learned/seed2"),
        record("reverse", "rope", 0, {1: 1.0, 2: 1.0, 3: 0.3, 4: 0.1}, horizon=2),
    ]
    return runs


def test_summary_rows_mean_ci_best_seed_and_order():
    rows = rp.summary_rows(hand_made_runs(), "copy")
    # by mean OOD of the runs that fit: rope's seed 1 (0.8 at length 2) does not, so rope's
    # OOD is 0.0 like learned's, and the tie goes to the higher ID exact match
    assert [r.encoding for r in rows] == ["alibi", "learned", "rope"]
    alibi = rows[0]
    ood = [(0.6 + 0.2) / 2, (0.9 + 0.5) / 2, (0.4 + 0.0) / 2]  # per seed, lengths 3 and 4
    assert alibi.seeds == [0, 1, 2]
    assert alibi.ood_exact_match.mean == pytest.approx(statistics.mean(ood))
    assert alibi.ood_exact_match.ci == pytest.approx(
        T_TABLE[2] * statistics.stdev(ood) / math.sqrt(3), rel=1e-4
    )
    ids = [1.0, 0.95, 1.0]
    assert alibi.id_exact_match.mean == pytest.approx(statistics.mean(ids))
    assert alibi.extrapolation_horizon.mean == pytest.approx(7 / 3)
    assert alibi.best_seed == 1
    assert {k: alibi.best[k] for k in ("id_exact_match", "ood_exact_match")} == {
        "id_exact_match": 0.95,
        "ood_exact_match": 0.7,
    }
    assert alibi.best["extrapolation_horizon"] == 3 and alibi.best["min_id_exact_match"] == 0.9
    learned = rows[1]
    assert learned.seeds == [0] and learned.ood_exact_match.ci is None
    assert [r.seed for r in learned.failed] == [1] and learned.unfinished == 1
    assert rp.table_cells(learned)[-1] == "1 failed, 1 unfinished"


def test_a_horizon_is_shown_only_for_runs_that_fit_their_training_range():
    """rope seed 1 has 0.8 at a training length (threshold 0.9): its horizon is left out of
    the mean and the cell says over how many runs it is; a row where no run fit says so."""
    rows = {r.encoding: r for r in rp.summary_rows(hand_made_runs(), "copy")}
    rope = rows["rope"]
    assert rope.fit == 2 and rope.extrapolation_horizon.n == 2
    cells = dict(zip(rp.TABLE_HEADER, rp.table_cells(rope), strict=True))
    assert cells["extrapolation horizon"] == "2.0 ± 0.0" and cells["fit"] == "2/3"
    assert cells["OOD exact match"] == "0.000 ± 0.000"  # seed 1's 0.05 is left out
    assert rope.unfit == [1] and rope.ood_exact_match.n == 2
    alibi = dict(zip(rp.TABLE_HEADER, rp.table_cells(rows["alibi"]), strict=True))
    assert (alibi["extrapolation horizon"], alibi["fit"]) == ("2.3 ± 1.4", "3/3")
    unfit = [
        record("copy", "t5", seed, {1: 0.5, 2: 0.2, 3: 0.0, 4: 0.0}, horizon=2) for seed in (0, 1)
    ]
    (t5,) = rp.summary_rows(unfit, "copy")
    cells = dict(zip(rp.TABLE_HEADER, rp.table_cells(t5), strict=True))
    assert cells["extrapolation horizon"] == "did not fit"
    assert cells["OOD exact match"] == "did not fit" and cells["best OOD"] == "–"
    assert cells["best horizon"] == "did not fit" and cells["fit"] == "0/2"
    assert t5.best["fits_training_range"] is False and t5.best["extrapolation_horizon"] is None


def test_best_seed_breaks_ood_ties_by_id_then_lowest_seed():
    runs = [
        record("copy", "t5", 0, {1: 0.8, 2: 0.8, 3: 0.5}),
        record("copy", "t5", 1, {1: 1.0, 2: 1.0, 3: 0.5}),
        record("copy", "t5", 2, {1: 1.0, 2: 1.0, 3: 0.5}),
    ]
    assert rp.summary_rows(runs, "copy")[0].best_seed == 1


def test_results_csv_rows_and_columns_exact():
    runs = [
        record("copy", "rope", 1, {1: 1.0, 2: 0.5, 3: 0.25}, token={1: 1.0, 2: 0.75, 3: 0.5}),
        record("copy", "alibi", 0, {1: 1.0, 3: 0.0}, token={1: 1.0, 3: 0.125}),
        rp.RunRecord("copy", "t5", 0, "failed", error="x"),
    ]
    text = rp.results_csv(rp.results_rows(runs))
    assert text == (
        "task,encoding,seed,length,in_train_range,exact_match,token_accuracy,"
        "fits_training_range,generalizes\n"
        "copy,alibi,0,1,True,1.0,1.0,True,False\n"
        "copy,alibi,0,3,False,0.0,0.125,True,False\n"
        "copy,rope,1,1,True,1.0,1.0,False,False\n"
        "copy,rope,1,2,True,0.5,0.75,False,False\n"
        "copy,rope,1,3,False,0.25,0.5,False,False\n"
    )


def write_run(root, folder, data=None, error=None, checkpoint=False):
    d = root / folder
    d.mkdir(parents=True)
    if data is not None:
        (d / "metrics.json").write_text(json.dumps(data))
    if error is not None:
        (d / "error.json").write_text(json.dumps(error))
    if checkpoint:
        (d / "checkpoint.pt").write_bytes(b"x")
    return d


def test_load_experiment_names_runs_from_metrics_and_finds_failed_and_unfinished(tmp_path):
    exp = tmp_path / "exp"
    # Folder names are not table names: the encoding's label comes from metrics.json.
    write_run(exp, "copy/rope-random/seed0", metrics("copy", "rope+random", 0, {1: 1.0, 3: 0.5}))
    write_run(
        exp,
        "copy/alibi/seed1",
        error={"task": "copy", "encoding": "alibi", "seed": 1, "error": "ValueError: no"},
        checkpoint=True,
    )
    write_run(exp, "copy/t5/seed2", checkpoint=True)
    write_run(exp, "_sweeps/2026/0", metrics("copy", "ghost", 0, {1: 1.0}))  # not a run
    records = {r.encoding: r for r in rp.load_experiment(exp)}
    assert set(records) == {"rope+random", "alibi", "t5"}
    assert records["rope+random"].status == "complete"
    assert (records["alibi"].status, records["alibi"].seed) == ("failed", 1)
    assert records["alibi"].error == "ValueError: no"
    assert (records["t5"].status, records["t5"].seed) == ("unfinished", 2)


def test_report_files_markdown_and_plots(tmp_path):
    exp = tmp_path / "exp"
    for r in hand_made_runs():
        if r.metrics:
            write_run(exp, f"{r.task}/{r.encoding}/seed{r.seed}", r.metrics)
    write_run(
        exp,
        "copy/learned/seed1",
        error={"task": "copy", "encoding": "learned", "seed": 1, "error": "Boom: bad | worse"},
    )
    report, written = rp.report_experiment(exp)
    names = {p.relative_to(exp).as_posix() for p in written}
    assert names == {
        "results.csv",
        "report.md",
        "plots/accuracy_vs_length_copy.png",
        "plots/accuracy_vs_length_reverse.png",
        "plots/ood_heatmap.png",
    }
    for name in names:
        if name.endswith(".png"):
            assert (exp / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (exp / "report.md").read_text()
    assert "![accuracy versus length on copy](plots/accuracy_vs_length_copy.png)" in md
    assert "(plots/ood_heatmap.png)" in md
    assert "## Failed runs" in md and "Boom: bad \\| worse" not in md  # errors are list items
    assert "Boom: bad | worse" in md
    table = md.split("## copy")[1].split("![")[0]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith(
        "| encoding | seeds | fit | ID exact match | min ID | OOD exact match |"
    )
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == ["alibi", "learned", "rope"]
    csv_lines = (exp / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 8 * 4  # 8 complete runs x 4 lengths
    assert report.counts == {"complete": 8, "failed": 1, "unfinished": 0}


def test_rich_tables_fit_80_columns():
    from rich.console import Console

    report = rp.build_report(hand_made_runs(), "hand", plots=False)
    console = Console(width=80, record=True)
    for table in rp.rich_tables(report):
        console.print(table)
    text = console.export_text()
    assert "alibi" in text and "0.43 ± 0.63" in text and "Boom: bad" in text
    assert "…" not in text  # nothing cut off


def test_summary_rows_carry_mean_training_minutes():
    runs = []
    for seed, seconds in enumerate((60.0, 120.0, 180.0)):
        m = metrics("copy", "rope", seed, {1: 1.0, 2: 1.0, 3: 0.0})
        m["train"] = {"seconds": seconds}
        runs.append(rp.record_from_metrics(m))
    (row,) = rp.summary_rows(runs, "copy")
    assert row.train_minutes.mean == pytest.approx(2.0)
    assert rp.table_cells(row)[rp.TABLE_HEADER.index("train min")].startswith("2.0 ± ")


# ---------------------------------------------------------------- recomputed summaries


def test_report_recomputes_old_summaries_from_per_length_with_the_run_threshold():
    m = metrics("copy", "rope", 0, {1: 0.86, 2: 1.0, 3: 0.95, 4: 0.92, 5: 0.2}, horizon=0)
    m["summary"]["extrapolation_horizon"] = 0  # as version 1 wrote it: ended by n = 1
    old = rp.record_from_metrics(m, config={"eval": {"threshold": 0.85}})
    assert old.summary_version == 1
    assert old.metrics["summary"]["extrapolation_horizon"] == 4
    assert old.metrics["summary"]["min_id_exact_match"] == 0.86
    strict = rp.record_from_metrics(m, config={"eval": {"threshold": 0.9}})
    assert strict.metrics["summary"]["fits_training_range"] is False  # 0.86 at n = 1
    assert strict.metrics["summary"]["extrapolation_horizon"] is None
    report = rp.build_report([old], "hand", plots=False)
    assert report.older_summaries == 1
    assert "1 runs were written under older definitions" in rp.render_markdown(report)


# ---------------------------------------------------------------- the paper column and τ


PAPER = {
    "source": "Kazemnejad et al. 2023",
    "metric": "ood_exact_match",
    "aggregation": "mean",
    "values": {"copy": {"t5": 0.42, "alibi": 0.33, "none": 0.31, "rope": 0.01}},
}


def paper_runs(order_ood: dict[str, list[float]], paper=PAPER) -> list[rp.RunRecord]:
    """One run per (encoding, seed) with the given OOD exact match at length 3 (train 1-2)."""
    return [
        rp.record_from_metrics(
            metrics("copy", enc, seed, {1: 1.0, 2: 1.0, 3: ood}), config={"paper": paper}
        )
        for enc, values in order_ood.items()
        for seed, ood in enumerate(values)
    ]


def test_paper_column_and_kendall_tau_on_hand_made_metrics():
    from scipy import stats

    # ours: t5 .3, none .2 (mean of .1 and .3), alibi .1, rope 0: one swap (alibi/none) vs paper
    runs = paper_runs({"t5": [0.3], "none": [0.1, 0.3], "alibi": [0.1], "rope": [0.0]})
    report = rp.build_report(runs, "hand", plots=False)
    rows = {r.encoding: r for r in report.tables["copy"]}
    assert rows["t5"].paper == 0.42 and rows["none"].as_paper == pytest.approx(0.2)
    comparison = report.papers["copy"]
    # 4 encodings, 6 pairs, 5 concordant, 1 discordant: tau = 4/6
    assert comparison.tau == pytest.approx(4 / 6)
    expected = stats.kendalltau([0.42, 0.31, 0.33, 0.01], [0.3, 0.2, 0.1, 0.0])
    assert comparison.p_value == pytest.approx(expected.pvalue)
    md = rp.render_markdown(report)
    header = next(line for line in md.splitlines() if line.startswith("| encoding"))
    assert header.endswith("| ours (as paper) | paper |")
    t5_line = next(line for line in md.splitlines() if line.startswith("| t5 |"))
    assert t5_line.endswith("| 0.300 | 0.420 |")
    assert "Kendall's τ = 0.67" in md and "Kazemnejad et al. 2023" in md


def test_paper_best_of_seeds_and_identical_order_gives_tau_one():
    paper = dict(PAPER, aggregation="best")
    runs = paper_runs(
        {"t5": [0.1, 0.9], "alibi": [0.5, 0.4], "none": [0.3, 0.2], "rope": [0.0]}, paper
    )
    report = rp.build_report(runs, "hand", plots=False)
    rows = {r.encoding: r for r in report.tables["copy"]}
    assert rows["t5"].as_paper == 0.9 and rows["alibi"].as_paper == 0.5
    assert report.papers["copy"].tau == pytest.approx(1.0)


def test_encodings_missing_from_the_paper_get_a_dash_and_no_paper_means_no_column():
    runs = paper_runs({"t5": [0.3], "learned": [0.0]})
    report = rp.build_report(runs, "hand", plots=False)
    assert report.papers["copy"].n == 1 and report.papers["copy"].tau is None
    assert "| learned |" in rp.render_markdown(report)
    plain = rp.build_report(hand_made_runs(), "hand", plots=False)
    assert plain.papers == {} and "paper" not in rp.render_markdown(plain)


def test_a_bad_paper_aggregation_is_one_line_with_the_choices():
    runs = paper_runs({"t5": [0.3]}, dict(PAPER, aggregation="median"))
    with pytest.raises(ConfigError, match="paper.aggregation 'median'; valid choices: mean, best"):
        rp.build_report(runs, "hand", plots=False)


def test_rich_paper_table_fits_80_columns():
    from rich.console import Console

    runs = paper_runs({"t5": [0.3], "none": [0.1, 0.3], "alibi": [0.1], "rope": [0.0]})
    console = Console(width=80, record=True)
    for table in rp.rich_tables(rp.build_report(runs, "hand", plots=False)):
        console.print(table)
    text = console.export_text()
    assert "Kendall's τ = 0.67" in text and "0.42" in text and "…" not in text


# ---------------------------------------------------------------- randomized lift


def test_randomized_lift_pairs_each_randomized_encoding_with_its_base():
    def run(enc, seed, ood, config):
        return rp.record_from_metrics(
            metrics("copy", enc, seed, {1: 1.0, 2: 1.0, 3: ood}), config=config
        )

    randomized = {"encoding": {"name": "randomized", "base": "rope"}}
    runs = [
        run("rope", 0, 0.1, {"encoding": {"name": "rope"}}),
        run("rope", 1, 0.3, {"encoding": {"name": "rope"}}),
        run("randomized_rope", 0, 0.6, randomized),
        run("randomized_rope", 1, 0.4, randomized),
        run("randomized_learned", 0, 0.5, {"encoding": {"name": "randomized", "base": "learned"}}),
    ]
    report = rp.build_report(runs, "hand", plots=False)
    (lift,) = report.lifts["copy"]  # learned was not run: no pair
    assert (lift.randomized, lift.base) == ("randomized_rope", "rope")
    assert lift.lift == pytest.approx(0.5 - 0.2)
    best = rp.randomized_lifts(runs, "copy", "ood_exact_match", "best")
    assert best[0].lift == pytest.approx(0.6 - 0.3)
    assert "| randomized_rope | rope | 0.500 | 0.200 | +0.300 |" in rp.render_markdown(report)


# ---------------------------------------------------------------- paired bootstrap


def example_runs(enc, per_seed: list[dict[int, str]], train=(1, 2)) -> list[rp.RunRecord]:
    """Runs whose per-length results carry per-example exact match strings."""
    out = []
    for seed, by_length in enumerate(per_seed):
        em = {n: text.count("1") / len(text) for n, text in by_length.items()}
        m = metrics("copy", enc, seed, em, train=train)
        for n, text in by_length.items():
            m["per_length"][str(n)]["examples"] = text
        out.append(rp.record_from_metrics(m))
    return out


def test_bootstrap_of_identical_runs_is_zero_with_zero_width():
    table = [
        {1: "1111", 2: "1101", 3: "1010", 4: "0110"},
        {1: "1111", 2: "1111", 3: "0011", 4: "1000"},
    ]
    d = rp.paired_difference(example_runs("a", table), example_runs("b", table))
    assert (d.mean, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.resampled == "seeds × examples" and d.seeds == [0, 1]


def test_bootstrap_of_always_right_against_always_wrong_is_one():
    good = [{1: "1111", 3: "1111", 4: "1111"}] * 3
    bad = [{1: "1111", 3: "0000", 4: "0000"}] * 3
    d = rp.paired_difference(example_runs("good", good), example_runs("bad", bad))
    assert (d.mean, d.low, d.high) == (1.0, 1.0, 1.0)


def test_bootstrap_interval_is_deterministic_and_brackets_the_difference():
    import random

    rnd = random.Random(5)

    def draw(p):
        return [{1: "1" * 20, **{n: "".join("1" if rnd.random() < p else "0" for _ in range(40)) for n in (3, 4, 5)}} for _ in range(3)]  # fmt: skip

    a, b = example_runs("a", draw(0.7)), example_runs("b", draw(0.3))
    d1, d2 = rp.paired_difference(a, b), rp.paired_difference(a, b)
    assert (d1.low, d1.high) == (d2.low, d2.high)  # seeded
    assert d1.low < d1.mean < d1.high and 0.2 < d1.mean < 0.6 and d1.low > 0.0
    assert d1.high - d1.low < 0.4


def test_bootstrap_without_per_example_results_resamples_seeds_only():
    a = [record("copy", "a", s, {1: 1.0, 2: 1.0, 3: v}) for s, v in enumerate((0.5, 0.7, 0.9))]
    b = [record("copy", "b", s, {1: 1.0, 2: 1.0, 3: 0.5}) for s in range(3)]
    d = rp.paired_difference(a, b)
    assert d.resampled == "seeds"
    assert d.mean == pytest.approx(0.2)
    assert 0.0 <= d.low < d.mean < d.high <= 0.4  # between the smallest and largest seed


def test_report_baseline_table_and_unknown_baseline(tmp_path):
    runs = example_runs("alibi", [{1: "11", 3: "11"}] * 2) + example_runs(
        "rope", [{1: "11", 3: "00"}] * 2
    )
    report = rp.build_report(runs, "hand", plots=False, baseline="rope")
    (d,) = report.differences["copy"]
    assert (d.encoding, d.mean, d.low, d.high) == ("alibi", 1.0, 1.0, 1.0)
    md = rp.render_markdown(report)
    assert "| alibi | 2 | +1.000 | [+1.000, +1.000] | seeds × examples |" in md
    with pytest.raises(ConfigError, match="baseline 't5' .*valid choices: alibi, rope"):
        rp.build_report(runs, "hand", plots=False, baseline="t5")


# ---------------------------------------------------------------- time to accuracy


def stop_run(encoding, seed, stopped_at, *, steps=3000, seconds=60.0, stop_at=0.99):
    m = metrics("copy", encoding, seed, {1: 1.0, 2: 1.0, 3: 0.0})
    m["train"] = {"steps": stopped_at or steps, "stopped_at": stopped_at, "seconds": seconds}
    return rp.record_from_metrics(m, config={"train": {"stop_at": stop_at, "steps": steps}})


def test_stop_rows_count_steps_over_the_runs_that_reached_the_threshold():
    runs = [
        stop_run("rope", 2, 1800, seconds=180.0),
        stop_run("rope", 0, None, seconds=300.0),
        stop_run("rope", 1, 1200, seconds=120.0),
        stop_run("alibi", 0, 600),
        stop_run("alibi", 1, 800),
    ]
    rope_fast = rp.record_from_metrics(
        metrics("copy", "nope", 0, {1: 1.0, 2: 1.0, 3: 0.0})
    )  # trained without stop_at: no row
    alibi, rope = rp.stop_rows([*runs, rope_fast], "copy")
    assert [alibi.encoding, rope.encoding] == ["alibi", "rope"]  # every run reached first
    assert rope.reached == [1200, 1800] and rope.not_reached == 1 and rope.limit == 3000
    assert rope.by_seed == [None, 1200, 1800]
    assert rope.steps.mean == pytest.approx(1500.0)
    half = T_TABLE[1] * statistics.stdev([1200, 1800]) / math.sqrt(2)
    assert rope.steps.ci == pytest.approx(half)
    assert rope.minutes.mean == pytest.approx(10 / 3)  # every run, reached or not
    assert rp.stop_cells(rope) == [
        "rope",
        "2 of 3",
        f"1500 ± {half:.0f}",
        "not by 3000, 1200, 1800",  # seed order
        rp.format_stat(rope.minutes, 1),
    ]
    alibi_half = T_TABLE[1] * statistics.stdev([600, 800]) / math.sqrt(2)
    assert rp.stop_cells(alibi)[:4] == ["alibi", "2 of 2", f"700 ± {alibi_half:.0f}", "600, 800"]
    assert rp.stop_rows([rope_fast], "copy") == []


def test_report_shows_steps_to_stop_at_only_when_runs_set_it(tmp_path):
    runs = [stop_run("rope", 0, 1200), stop_run("rope", 1, None)]
    text = rp.render_markdown(rp.build_report(runs, "speed", plots=False))
    assert "Steps to in-distribution exact match ≥ 0.99" in text
    assert "| rope | 1 of 2 | 1200 | 1200, not by 3000 | 1.0 ± 0.0 |" in text
    plain = [rp.record_from_metrics(metrics("copy", "rope", 0, {1: 1.0, 2: 1.0, 3: 0.0}))]
    assert "Steps to" not in rp.render_markdown(rp.build_report(plain, "x", plots=False))
    from rich.console import Console

    console = Console(width=80, record=True)
    for table in rp.rich_tables(rp.build_report(runs, "speed", plots=False)):
        console.print(table)
    shown = console.export_text()
    assert "steps to ID exact match ≥ 0.99" in shown and "not by 3000" in shown
    assert "…" not in shown


def test_a_table_whose_rows_trained_at_different_token_scales_says_which():
    """model.embed_init=auto trains ALiBi at gpt and the others at scaled: the table says so,
    in report.md and in the terminal table's caption; one scale throughout says nothing."""
    ems = {n: 1.0 if n <= 4 else 0.2 for n in range(1, 9)}

    def run(encoding, seed, init):
        m = metrics("copy", encoding, seed, ems, train=(1, 4), horizon=4)
        config = {"model": {"embed_init": init}} if init else {}  # None: an old run, no key
        return rp.record_from_metrics(m, config=config)

    mixed = [run("alibi", s, "gpt") for s in (0, 1)] + [run("rope", s, None) for s in (0, 1)]
    report = rp.build_report(mixed, "hand", plots=False)
    md = rp.render_markdown(report)
    assert (
        "Token embeddings differ between rows (`model.embed_init`): gpt for alibi; scaled for rope"
        in md
    )
    from posenc.report.sections import compact_summary_table

    caption = compact_summary_table(report, "copy").caption
    assert caption.endswith("token embeddings (model.embed_init): gpt for alibi; scaled for rope")
    same = [run("alibi", 0, "scaled"), run("rope", 0, None)]
    plain = rp.build_report(same, "hand", plots=False)
    assert "Token embeddings differ" not in rp.render_markdown(plain)
    assert "token embeddings" not in compact_summary_table(plain, "copy").caption
