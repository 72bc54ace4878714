"""Tests for anomaly.thresholds: fitted values, confusion counts, display normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.thresholds import fit_map_range, fit_threshold, normalise_maps, scores_at_threshold


def test_fit_threshold_quantile():
    scores = np.arange(101.0)  # 0, 1, ..., 100
    assert fit_threshold(scores) == pytest.approx(99.0)  # default q=0.99
    assert fit_threshold(scores, q=0.5) == pytest.approx(50.0)
    assert fit_threshold(scores, q=1.0) == pytest.approx(100.0)
    assert fit_threshold([1.0, 2.0], q=0.25) == pytest.approx(1.25)  # linear interpolation


def test_fit_threshold_mean_std():
    scores = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population std sqrt(1.25)
    assert fit_threshold(scores, method="mean_std", k=2.0) == pytest.approx(2.5 + 2.0 * np.sqrt(1.25))
    assert fit_threshold(scores, method="mean_std", k=0.0) == pytest.approx(2.5)
    assert isinstance(fit_threshold(scores, method="mean_std"), float)


def test_fit_threshold_errors():
    with pytest.raises(ValueError, match="unknown threshold method 'otsu'"):
        fit_threshold([1.0, 2.0], method="otsu")
    with pytest.raises(ValueError, match="at least one"):
        fit_threshold([])
    with pytest.raises(ValueError, match="q must be"):
        fit_threshold([1.0, 2.0], q=99)
    with pytest.raises(ValueError, match="NaN"):
        fit_threshold([1.0, float("nan")])


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


def test_fit_map_range_and_normalise_maps():
    val_maps = np.arange(101.0).reshape(1, 1, 101)
    low, high = fit_map_range(val_maps, low_q=0.5, high_q=1.0)
    assert (low, high) == (pytest.approx(50.0), pytest.approx(100.0))
    shown = normalise_maps(np.array([[[0.0, 50.0, 75.0, 100.0, 200.0]]]), low, high)
    np.testing.assert_allclose(shown, [[[0.0, 0.0, 0.5, 1.0, 1.0]]])
    assert shown.dtype == np.float32 and shown.shape == (1, 1, 5)
    with pytest.raises(ValueError, match="high > low"):
        normalise_maps(shown, 1.0, 1.0)
    with pytest.raises(ValueError, match="constant"):
        fit_map_range(np.ones((2, 4, 4)))
