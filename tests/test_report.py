"""Aggregation of an experiment on hand-made metrics: statistics, tables, results.csv, files."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from posenc import report as rp

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
def test_t_quantile_matches_printed_table(df):
    assert rp.t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=1e-4)


def test_t_quantile_is_symmetric_and_tends_to_normal():
    assert rp.t_quantile(0.025, 5) == pytest.approx(-rp.t_quantile(0.975, 5))
    assert rp.t_quantile(0.975, 10_000) == pytest.approx(1.95996, abs=1e-3)


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
    assert [r.encoding for r in rows] == ["alibi", "rope", "learned"]  # by mean OOD
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
    assert alibi.best == {
        "id_exact_match": 0.95,
        "ood_exact_match": 0.7,
        "extrapolation_horizon": 3,
    }
    learned = rows[2]
    assert learned.seeds == [0] and learned.ood_exact_match.ci is None
    assert [r.seed for r in learned.failed] == [1] and learned.unfinished == 1
    assert rp.table_cells(learned)[-1] == "1 failed, 1 unfinished"


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
        "task,encoding,seed,length,in_train_range,exact_match,token_accuracy\n"
        "copy,alibi,0,1,True,1.0,1.0\n"
        "copy,alibi,0,3,False,0.0,0.125\n"
        "copy,rope,1,1,True,1.0,1.0\n"
        "copy,rope,1,2,True,0.5,0.75\n"
        "copy,rope,1,3,False,0.25,0.5\n"
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
    assert lines[0].startswith("| encoding | seeds | ID exact match | OOD exact match |")
    assert [line.split(" | ")[0][2:] for line in lines[1:]] == ["alibi", "rope", "learned"]
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
