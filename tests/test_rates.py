"""Wilson intervals on known counts; realised rates and the oracle recall at an operating point."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.rates import (compare_estimators, operating_point_metrics, oracle_recall_at_frr, small_n_cost,
                          wilson_interval)


@pytest.mark.parametrize("k, n, expected", [
    (2, 41, (0.0135, 0.1614)),  # hand-checked against the Wilson formula with z = 1.95996
    (0, 20, (0.0, 0.1611)),
    (20, 20, (0.8389, 1.0)),
    (50, 100, (0.4038, 0.5962)),
])
def test_wilson_interval_known_counts(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_operating_point_metrics_counts():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.6, 0.8, 0.95, 0.05])
    m = operating_point_metrics(labels, scores, threshold=0.55, target_frr=0.05)
    assert m["frr"] == pytest.approx(1 / 4) and m["false_rejects"] == 1
    assert m["recall"] == pytest.approx(3 / 5) and m["escape_rate"] == pytest.approx(2 / 5) and m["escapes"] == 2
    assert m["frr_ci"] == pytest.approx(list(wilson_interval(1, 4)))
    assert m["target_frr"] == 0.05
    # the oracle may also reject 1 of 4 good parts: the best such threshold is just above 0.3 -> 4 of 5 caught
    assert m["oracle_recall_at_frr"] == pytest.approx(4 / 5)


def test_oracle_recall_at_zero_frr_and_all():
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.4, 0.6])
    assert oracle_recall_at_frr(labels, scores, 0.0) == pytest.approx(0.5)
    assert oracle_recall_at_frr(labels, scores, 1.0) == 1.0


def test_compare_estimators_rows():
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=100)
    labels = np.r_[np.zeros(200, int), np.ones(50, int)]
    scores = np.r_[rng.normal(size=200), rng.normal(3.0, 1.0, size=50)]
    rows = compare_estimators(calibration, labels, scores, 0.05)
    assert [r["estimator"] for r in rows] == ["conformal", "empirical", "conservative", "tail"]
    by = {r["estimator"]: r for r in rows}
    assert by["conservative"]["threshold"] >= by["empirical"]["threshold"]
    assert all(0.0 <= r["frr"] <= 0.15 for r in rows)


def test_operating_point_figure_has_two_panels():
    from anomaly.viz import operating_point_figure

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20, int), np.ones(30, int)]
    scores = np.r_[rng.normal(size=20), rng.normal(2.0, 1.0, size=30)]
    metrics = {**operating_point_metrics(labels, scores, 1.5, 0.05), "threshold": 1.5}
    fig = operating_point_figure(rng.normal(size=50), labels, scores, metrics)
    assert len(fig.axes) == 2 and fig.axes[1].get_xlabel().startswith("false-reject rate")


def test_small_n_cost_few_scores_cannot_reach_the_target():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    scores = np.r_[rng.normal(size=100), rng.normal(2.0, 1.0, size=100)]
    rows = small_n_cost(rng.normal(size=200), labels, scores, 0.05, sizes=(10, 100, 500), draws=20)
    assert [r["n"] for r in rows] == [10, 100]
    assert rows[0]["reachable_share"] == 0.0 and rows[1]["reachable_share"] == 1.0
    assert rows[0]["mean_frr"] > 0.06  # the largest of 10 scores rejects ~1 / 11 of good parts: target missed
