from posenc.metrics import extrapolation_horizon, summarize


def _pl(ems):
    return {n: {"exact_match": v, "token_accuracy": v} for n, v in ems.items()}


def test_summary_figures_on_hand_made_accuracies():
    ems = {1: 1.0, 2: 0.95, 3: 0.9, 4: 0.5, 5: 0.95, 6: 0.0}
    s = summarize(_pl(ems), train_min=1, train_max=3)
    assert s["id_exact_match"] == (1.0 + 0.95 + 0.9) / 3
    assert s["ood_exact_match"] == (0.5 + 0.95 + 0.0) / 3
    assert s["extrapolation_horizon"] == 3  # length 4 breaks the run; 5 does not count


def test_horizon_edge_cases():
    assert extrapolation_horizon({1: 0.2, 2: 1.0}) == 0
    assert extrapolation_horizon({1: 1.0, 2: 1.0}) == 2
    assert extrapolation_horizon({1: 0.95, 2: 0.91}, threshold=0.95) == 1


def test_no_lengths_beyond_training_gives_none():
    assert summarize(_pl({1: 1.0, 2: 1.0}), 1, 2)["ood_exact_match"] is None
