"""Summary figures on hand-made per-length tables (the horizon counts from the end
of the training range, so in-range wobbles do not end it)."""

import pytest

from posenc.metrics import extrapolation_horizon, summarize


def _pl(ems, tok=None):
    return {n: {"exact_match": v, "token_accuracy": (tok or ems)[n]} for n, v in ems.items()}


def test_summary_figures_on_hand_made_accuracies():
    ems = {1: 1.0, 2: 0.95, 3: 0.9, 4: 0.5, 5: 0.95, 6: 0.0}
    tok = {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.8, 5: 0.9, 6: 0.4}
    s = summarize(_pl(ems, tok), train_min=1, train_max=3)
    assert s["id_exact_match"] == pytest.approx((1.0 + 0.95 + 0.9) / 3)
    assert s["min_id_exact_match"] == 0.9
    assert s["ood_exact_match"] == pytest.approx((0.5 + 0.95 + 0.0) / 3)
    assert s["ood_token_accuracy"] == pytest.approx((0.8 + 0.9 + 0.4) / 3)
    assert s["extrapolation_horizon"] == 3  # length 4 fails at once; 5 does not count


def test_the_horizon_is_counted_from_the_training_maximum():
    # A lower length inside 1-20 (0.92) used to give horizon 3.
    ems = {3: 1.0, 4: 0.92, 5: 1.0, 20: 0.99, 21: 0.98, 22: 0.95, 25: 0.97, 30: 0.90, 40: 0.08}
    s = summarize(_pl(ems), train_min=1, train_max=20)
    assert s["extrapolation_horizon"] == 30
    assert s["fits_training_range"] is True


def test_a_run_that_does_not_fit_its_training_range_has_no_horizon():
    # 0.86 at n = 4 is below the threshold: the run did not fit, so no horizon (not 30, and
    # not the training maximum 20, which reads as success).
    ems = {3: 1.0, 4: 0.86, 5: 1.0, 20: 0.99, 21: 0.98, 22: 0.95, 25: 0.97, 30: 0.90, 40: 0.08}
    s = summarize(_pl(ems), train_min=1, train_max=20)
    assert s["fits_training_range"] is False
    assert s["extrapolation_horizon"] is None
    assert s["min_id_exact_match"] == 0.86
    assert summarize(_pl(ems), 1, 20, threshold=0.85)["extrapolation_horizon"] == 30


def test_a_dip_right_after_the_range_gives_the_training_max():
    ems = {1: 1.0, 2: 1.0, 3: 0.89, 4: 1.0, 5: 1.0}
    assert extrapolation_horizon(ems, train_max=2) == 2
    assert summarize(_pl(ems), 1, 2)["extrapolation_horizon"] == 2


def test_a_late_recovery_counts_only_up_to_the_first_failure():
    ems = {1: 1.0, 2: 1.0, 3: 0.95, 4: 0.92, 5: 0.3, 6: 0.99, 7: 1.0}
    assert extrapolation_horizon(ems, train_max=2) == 4


def test_gaps_between_evaluated_lengths_are_not_failures():
    assert extrapolation_horizon({10: 1.0, 20: 1.0, 30: 0.95, 40: 0.2}, train_max=20) == 30


def test_threshold_is_inclusive_and_configurable():
    ems = {1: 1.0, 2: 0.9, 3: 0.91}
    assert extrapolation_horizon(ems, train_max=1) == 3
    assert extrapolation_horizon(ems, train_max=1, threshold=0.95) == 1


def test_no_lengths_beyond_training_gives_none():
    s = summarize(_pl({1: 1.0, 2: 0.5}), 1, 2)
    assert s["ood_exact_match"] is None and s["ood_token_accuracy"] is None
    assert s["extrapolation_horizon"] is None
    assert s["min_id_exact_match"] == 0.5
    assert extrapolation_horizon({1: 1.0, 2: 1.0}, train_max=2) is None


def test_string_keys_from_metrics_json_are_read_as_lengths():
    s = summarize({"10": {"exact_match": 1.0, "token_accuracy": 1.0},
                   "9": {"exact_match": 1.0, "token_accuracy": 1.0},
                   "11": {"exact_match": 0.0, "token_accuracy": 0.5}}, 1, 9)  # fmt: skip
    assert s["extrapolation_horizon"] == 10  # 10 before 11 numerically, not as text
