"""The accuracy check's verdict (posenc.report.accuracy_check): the stratified rank test's
exact p-values, Holm's correction, the fit rule, and the command's exit statuses."""

from __future__ import annotations

import csv
import itertools
import json
from fractions import Fraction

import pytest
from scipy import stats

from posenc.errors import ConfigError
from posenc.publish import render_tables
from posenc.report.accuracy_check import (
    Cells,
    holm_rejects,
    judge,
    main,
    midranks,
    range_rule,
    read_cells,
    stratified_rank_test,
)
from posenc.report.records import CSV_COLUMNS
from tests.test_report import metrics, write_run


def test_midranks_share_the_mean_rank_of_a_tie():
    assert midranks([0.5, 0.1, 0.5, 0.3]) == [Fraction(7, 2), 1, Fraction(7, 2), 2]
    assert midranks([0.0] * 4) == [Fraction(5, 2)] * 4


def test_one_stratum_by_hand():
    # candidate [4] against [1, 2, 3]: rank 4, expected 1 * 5 / 2, weight 1/5 -> +0.3; the four
    # relabellings give -0.3, -0.1, +0.1, +0.3, so two of four are as extreme
    t = stratified_rank_test([([1.0, 2.0, 3.0], [4.0])])
    assert t.statistic == Fraction(3, 10)
    assert t.p == Fraction(1, 2)
    assert t.strata == 1


def test_one_stratum_without_ties_is_the_exact_rank_sum_test():
    reference, candidate = [0.4, 0.5, 0.6, 0.7, 0.8], [0.1, 0.2, 0.35]
    t = stratified_rank_test([(reference, candidate)])
    exact = stats.mannwhitneyu(candidate, reference, alternative="two-sided", method="exact")
    assert float(t.p) == pytest.approx(exact.pvalue, abs=1e-12)
    assert t.p == Fraction(2, 56)  # the smallest a 3-against-5 encoding can give
    assert t.statistic < 0


def test_the_convolution_equals_brute_force_over_every_joint_relabelling():
    strata = [([0.1, 0.5], [0.3, 0.9]), ([0.2, 0.2, 0.7], [0.2]), ([0.0, 1.0, 0.4], [0.6, 0.4])]
    t = stratified_rank_test(strata)

    def statistic(labelled):
        total = Fraction(0)
        for pooled, chosen in labelled:
            ranks = midranks(pooled)
            n, size = len(chosen), len(pooled)
            total += (sum(ranks[i] for i in chosen) - Fraction(n * (size + 1), 2)) / (size + 1)
        return total

    pooled = [[*c, *r] for r, c in strata]
    observed = statistic([(p, range(len(c))) for p, (_, c) in zip(pooled, strata, strict=True)])
    choices = [
        list(itertools.combinations(range(len(p)), len(c)))
        for p, (_, c) in zip(pooled, strata, strict=True)
    ]
    every = [
        statistic(list(zip(pooled, pick, strict=True))) for pick in itertools.product(*choices)
    ]
    assert t.statistic == observed
    assert t.p == Fraction(sum(abs(s) >= abs(observed) for s in every), len(every))


def test_a_shift_the_same_way_in_every_encoding_is_detected():
    reference = [0.995, 0.996, 0.997, 0.998, 0.999]
    strata = [(reference, [0.990, 0.991, 0.992])] * 6
    t = stratified_rank_test(strata)
    assert t.p == Fraction(2, 56**6)
    assert t.statistic < 0


def test_tied_encodings_carry_no_weight_instead_of_failing():
    t = stratified_rank_test([([0.0] * 5, [0.0] * 3), ([1.0] * 5, [1.0] * 3)])
    assert (t.statistic, t.p, t.strata) == (0, 1, 0)
    # the range rule fails such a cell as soon as one side moves by an example
    assert not range_rule([0.0] * 5, [0.0, 0.0003, 0.0], "OOD")
    assert range_rule([0.0] * 5, [0.0] * 3, "OOD")


def test_holm_rejects_step_down():
    assert holm_rejects([Fraction(1, 100), Fraction(4, 100)]) == [True, True]
    assert holm_rejects([Fraction(3, 100), Fraction(4, 100)]) == [False, False]
    assert holm_rejects([Fraction(4, 100), Fraction(1, 100)]) == [True, True]
    assert holm_rejects([Fraction(1, 100), Fraction(6, 100)]) == [True, False]


def _cells(id_values, ood_values, fits=None) -> Cells:
    """One encoding per entry: {name: [seed values]}."""
    values = {
        k: {"ID": dict(enumerate(id_values[k])), "OOD": dict(enumerate(ood_values[k]))}
        for k in id_values
    }
    fits = fits or {k: dict.fromkeys(range(len(v)), True) for k, v in id_values.items()}
    return Cells(values, fits)


def test_judge_passes_seeds_that_interleave_and_fails_a_consistent_shift():
    names = [f"copy/e{i}" for i in range(6)]
    ref = _cells({k: [0.995, 0.997, 0.999] for k in names}, {k: [0.1, 0.3, 0.5] for k in names})
    same = _cells({k: [0.996, 0.998] for k in names}, {k: [0.2, 0.4] for k in names})
    verdict = judge(ref, same)
    assert verdict.passed and verdict.lines()[-1] == "PASS"
    assert verdict.markdown()[-2] == "- verdict: PASS"
    worse = _cells({k: [0.990, 0.991] for k in names}, {k: [0.2, 0.4] for k in names})
    verdict = judge(ref, worse)
    assert not verdict.passed
    assert verdict.rejected == {"ID": True, "OOD": False}
    assert "ID: the candidate's seeds rank lower" in verdict.lines()[-1]
    assert "OOD" not in verdict.lines()[-1]
    assert verdict.range_failures() == [f"{k} ID" for k in names]


def test_judge_fails_a_candidate_seed_that_does_not_fit_where_every_reference_seed_fits():
    ref = _cells({"copy/a": [0.99, 1.0]}, {"copy/a": [0.1, 0.2]})
    cand = _cells(
        {"copy/a": [0.99, 1.0]}, {"copy/a": [0.1, 0.2]}, fits={"copy/a": {0: True, 1: False}}
    )
    verdict = judge(ref, cand)
    assert not verdict.passed
    assert "copy/a: candidate seed(s) [1] do not fit" in verdict.lines()[-1]
    # where a reference seed does not fit either, the candidate's unfit seed is no failure
    ref.fits["copy/a"][0] = False
    assert judge(ref, cand).passed


def _write_results(folder, rows):
    folder.mkdir(parents=True)
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows(rows)


def _rows(encoding, seed, id_value, ood_value, fits=True):
    return [
        ["copy", encoding, seed, 1, True, id_value, 1.0, fits, False],
        ["copy", encoding, seed, 2, True, id_value, 1.0, fits, False],
        ["copy", encoding, seed, 30, False, ood_value, 0.5, fits, False],
    ]


def test_the_command_reads_results_and_exits_0_1_or_2(tmp_path, capsys):
    ref_rows = [
        r for e in ("rope", "alibi") for s in range(5) for r in _rows(e, s, 0.99 + s / 500, s / 10)
    ]
    _write_results(tmp_path / "ref", ref_rows)
    same = [
        r
        for e in ("rope", "alibi")
        for s in range(3)
        for r in _rows(e, s, 0.991 + s / 500, 0.05 + s / 10)
    ]
    _write_results(tmp_path / "same", same)
    cells = read_cells(tmp_path / "ref" / "results.csv")
    assert cells.values["copy/rope"]["ID"][4] == pytest.approx(0.998)
    assert cells.values["copy/rope"]["OOD"][2] == pytest.approx(0.2)
    assert main([str(tmp_path / "ref"), str(tmp_path / "same")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("PASS")
    # seeds made after the rule, judged alone
    assert main([str(tmp_path / "ref"), str(tmp_path / "same"), "--candidate-seeds", "1,2"]) == 0
    unfit = [
        r for e in ("rope", "alibi") for s in range(3) for r in _rows(e, s, 0.991, 0.1, fits=s != 1)
    ]
    _write_results(tmp_path / "unfit", unfit)
    assert main([str(tmp_path / "ref"), str(tmp_path / "unfit")]) == 1
    assert "do not fit" in capsys.readouterr().out
    assert main([str(tmp_path / "ref"), str(tmp_path / "unfit"), "--candidate-seeds", "0,2"]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "ref"), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results.csv in" in err and "nowhere" in err
    assert main([str(tmp_path / "ref"), str(tmp_path / "same"), "--candidate-seeds", "3,x"]) == 2
    assert "'3,x'" in capsys.readouterr().err
    assert main([str(tmp_path / "ref"), str(tmp_path / "same"), "--candidate-seeds", "7"]) == 2
    assert "no such seed" in capsys.readouterr().err


def _experiment(root, name, seeds, shift):
    """Two encodings on copy (trained on 1-2), exact match 1 - shift*seed-dependent."""
    exp = root / name
    for enc in ("rope", "alibi"):
        for seed in seeds:
            em = {1: 1.0, 2: 1.0, 3: 0.5 - shift + seed / 100, 4: 0.2 - shift + seed / 100}
            write_run(exp, f"copy/{enc}/seed{seed}", metrics("copy", enc, seed, em))
    return exp


def test_posenc_tables_renders_the_check_from_the_runs_and_keeps_it_current(tmp_path):
    docs = tmp_path / "docs"
    _experiment(docs, "ref", range(5), 0.0)
    _experiment(docs, "cand", range(3, 5), 0.001)
    block = "<!-- posenc check cand --reference ref --seeds 3,4 -->\n"
    text = render_tables(f"# p\n\n{block}stale\n<!-- /posenc -->\n", docs)
    body = text.split(block)[1].split("<!-- /posenc -->")[0]
    lines = body.splitlines()
    assert lines[0].startswith("| encoding | | reference seeds")
    assert lines[2] == (
        "| copy/alibi | ID | 1.0000 [1.0000, 1.0000] (5) | 1.0000 [1.0000, 1.0000] (2) | within |"
    )
    assert lines[3].startswith("| copy/alibi | OOD | 0.3700 [0.3500, 0.3900] (5) |")
    assert "- stratified rank test, OOD:" in body and "- verdict: PASS" in body
    assert "stale" not in body
    assert render_tables(text, docs) == text
    # the table follows the runs: a candidate seed that no longer fits changes it
    bad = metrics("copy", "rope", 4, {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0})
    bad["summary"]["fits_training_range"] = False
    (docs / "cand/copy/rope/seed4/metrics.json").write_text(json.dumps(bad))
    assert "do not fit where every reference seed fits" in render_tables(text, docs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("check cand", "needs --reference"),
        ("check cand --reference nowhere", "experiment folder .*nowhere of a posenc check block"),
        ("check cand --reference ref --seeds 3,x", "--seeds in .*'3,x': expected integers"),
        ("check cand --reference ref --seeds 9", "no finished candidate runs"),
        ("check cand --against ref", "unknown or incomplete check option '--against'"),
        ("check cand --reference ref --encodings t5", "--encodings t5: none of them in"),
    ],
)
def test_bad_check_blocks_are_one_line_errors(tmp_path, args, message):
    _experiment(tmp_path, "ref", range(5), 0.0)
    _experiment(tmp_path, "cand", range(3), 0.0)
    with pytest.raises(ConfigError, match=message):
        render_tables(f"<!-- posenc {args} -->\nx\n<!-- /posenc -->\n", tmp_path)


def test_a_check_block_can_keep_to_some_encodings_on_both_sides(tmp_path):
    _experiment(tmp_path, "ref", range(5), 0.0)
    _experiment(tmp_path, "cand", range(3), 0.0)
    (tmp_path / "ref" / "copy" / "t5").mkdir()  # an encoding the candidate lacks
    for seed in range(5):
        write_run(tmp_path / "ref", f"copy/t5/seed{seed}", metrics("copy", "t5", seed, {1: 1.0}))
    whole = render_tables(
        "<!-- posenc check cand --reference ref -->\nx\n<!-- /posenc -->\n", tmp_path
    )
    assert "FAIL: copy/t5: no candidate runs" in whole
    some = render_tables(
        "<!-- posenc check cand --reference ref --encodings rope,copy/alibi -->\nx\n<!-- /posenc -->\n",
        tmp_path,
    )
    assert "copy/t5" not in some and "| copy/rope | ID |" in some and "| copy/alibi | ID |" in some
    assert "- verdict: PASS" in some
