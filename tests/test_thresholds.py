"""Tests for anomaly.thresholds: fitted values, confusion counts, FRR estimators, pixel thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.thresholds import (ESTIMATORS, frr_threshold, map_tail_quantiles,
                                pixel_threshold, scores_at_threshold)


def test_conformal_rank_and_guarantee():
    scores = np.arange(1.0, 20.0)  # n = 19: k = ceil(20 * 0.9) = 18 -> reject scores above 18
    fitted = frr_threshold(scores, 0.1)
    assert fitted["estimator"] == "conformal" and fitted["reachable"] and fitted["n_scores"] == 19
    assert 18.0 < fitted["threshold"] < 18.0 + 1e-9
    assert fitted["calibration_frr"] == pytest.approx(1 / 19)


def test_unreachable_target_uses_the_largest_score():
    fitted = frr_threshold(np.arange(10.0), 0.05)  # (n + 1)(1 - alpha) = 10.45 > 10
    assert not fitted["reachable"]
    assert 9.0 < fitted["threshold"] < 9.0 + 1e-9


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_hit_the_target_on_a_known_distribution(estimator):
    """Exponential(1) scores: the 5 % false-reject threshold is ln(20); realised rates on fresh draws."""
    rng = np.random.default_rng(0)
    realised = []
    for _ in range(200):
        fitted = frr_threshold(rng.exponential(size=200), 0.05, estimator)
        realised.append(np.exp(-fitted["threshold"]))  # the true FRR of this threshold
    mean = float(np.mean(realised))
    if estimator == "conformal":
        assert 0.035 < mean <= 0.05 + 0.005  # expected FRR <= alpha (exact: (n + 1 - k) / (n + 1))
    elif estimator == "conservative":
        assert np.mean(np.array(realised) <= 0.05) >= 0.9 and mean < 0.045
    else:
        assert abs(mean - 0.05) < 0.01


def test_tail_extrapolates_beyond_the_largest_score():
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=40)
    fitted = frr_threshold(scores, 0.005, "tail")  # conformal could not go below 1 / 41
    assert fitted["threshold"] > scores.max() and fitted["reachable"]
    realised = [np.exp(-frr_threshold(rng.exponential(size=100), 0.005, "tail")["threshold"]) for _ in range(100)]
    assert 0.001 < np.median(realised) < 0.015  # the true exceedance of the extrapolated threshold


def test_frr_threshold_errors():
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            frr_threshold([1.0, 2.0], bad)
    with pytest.raises(ValueError, match="estimator"):
        frr_threshold([1.0, 2.0], 0.1, "otsu")
    with pytest.raises(ValueError, match="at least one"):
        frr_threshold([], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        frr_threshold([1.0, float("nan")], 0.1)


def test_pixel_threshold_from_map_quantiles():
    maps = np.random.default_rng(0).random((4, 50, 50)).astype(np.float16)  # uniform pixels
    quantiles = map_tail_quantiles(maps)
    assert pixel_threshold(quantiles, 0.01) == pytest.approx(0.99, abs=0.005)
    assert pixel_threshold(quantiles, 0.2) == pytest.approx(0.8, abs=0.01)
    assert quantiles["summary"]["100"] == pytest.approx(float(maps.max()))
    with pytest.raises(ValueError, match="pixel_fpr"):
        pixel_threshold(quantiles, 0.0)


def test_scores_at_threshold_hand_case():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.9, 0.4, 0.5, 0.8])
    # score >= 0.5 is anomalous: goods 0.5, 0.9 -> fp 2, good 0.1 -> tn 1;
    # defects 0.5, 0.8 -> tp 2, defect 0.4 -> fn 1.
    result = scores_at_threshold(labels, scores, 0.5)
    assert result == {
        "threshold": 0.5,
        "precision": pytest.approx(0.5),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(4 / 7),  # 2tp / (2tp + fp + fn)
        "tn": 1,
        "fp": 2,
        "fn": 1,
        "tp": 2,
    }
    assert all(type(result[key]) is int for key in ("tn", "fp", "fn", "tp"))


def test_scores_at_threshold_zero_division():
    result = scores_at_threshold(np.array([0, 1]), np.array([0.1, 0.2]), threshold=5.0)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (0, 0, 1, 1)
    assert result["precision"] == 0.0 and result["recall"] == 0.0 and result["f1"] == 0.0
    only_good = scores_at_threshold(np.array([0, 0]), np.array([0.1, 0.2]), threshold=0.0)
    assert only_good["recall"] == 0.0 and only_good["fp"] == 2


def test_scores_at_threshold_errors():
    with pytest.raises(ValueError, match="equal length"):
        scores_at_threshold(np.array([0, 1]), np.array([0.1]), 0.5)
    with pytest.raises(ValueError, match="only 0 and 1"):
        scores_at_threshold(np.array([0, 2]), np.array([0.1, 0.2]), 0.5)


