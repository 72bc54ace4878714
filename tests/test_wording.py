"""Sentences about the operating point come from the run's records: the conformal rank, precision as a range."""

from __future__ import annotations

import math

import pytest

from anomaly.study import wording
from anomaly.thresholds import calibration_rank, frr_threshold, min_calibration_size


@pytest.mark.parametrize("n, alpha, k, reachable", [(20, 0.01, 21, False), (20, 0.05, 20, True),
                                                    (200, 0.01, 199, True), (200, 0.05, 191, True)])
def test_calibration_text_names_the_rank_and_whether_it_is_reachable(n, alpha, k, reachable):
    scores = [float(i) for i in range(n)]
    assert calibration_rank(n, alpha) == k
    assert frr_threshold(scores, alpha)["reachable"] == reachable  # the package's threshold agrees
    text = wording.conformal_text(n, alpha, scores)
    assert f"α = {alpha:g} with n = {n}" in text and f"⌈{n + 1} × {1 - alpha:g}⌉ = {k}" in text
    assert "99th percentile" not in text and "0.99" not in text.replace(f"{1 - alpha:g}", "")
    if reachable:
        assert f"above the {wording.ordinal(k)} smallest ({scores[k - 1]:.4g})" in text
        assert f"{n + 1 - k}/{n + 1} = {(n + 1 - k) / (n + 1):.3f}" in text
    else:
        assert "cannot be reached" in text and f"at least {min_calibration_size(alpha)} calibration scores" in text
        assert f"1/(n + 1) = {1 / (n + 1):.3f}" in text and "`reachable: false`" in text
    assert ("k = n" in text) == (k == n)


def test_min_calibration_size_is_the_first_reachable_n():
    for alpha in (0.01, 0.05, 0.1, 0.2, 0.003):
        n = min_calibration_size(alpha)
        assert calibration_rank(n, alpha) <= n and calibration_rank(n - 1, alpha) > n - 1 or n == 1


def test_precision_is_a_range_from_the_wilson_bounds_and_undefined_has_one_spelling():
    # 0 false rejects of 40 good parts: the point estimate says precision 1.00, the upper FRR bound much less
    metrics = {"tp": 46, "fp": 0, "fn": 29, "tn": 40, "n_test_images": 115, "recall_ci": [0.50, 0.72],
               "frr_ci": [0.0, 0.0876]}
    lo, hi = wording.precision_range(metrics["recall_ci"], metrics["frr_ci"], 0.01)
    assert lo == pytest.approx(0.005 / (0.005 + 0.0876 * 0.99)) and hi == 1.0
    text = wording.precision_text(metrics, 0.01)
    assert f"{lo:.3f} to 1.000" in text and "46 of 46" in text
    none_flagged = {**metrics, "tp": 0, "fp": 0, "fn": 75, "recall_ci": [0.0, 0.049]}
    text = wording.precision_text(none_flagged, 0.01)
    assert "precision is undefined (no part is flagged)" in text and "nan" not in text.lower()
    assert wording.fmt(None) == wording.fmt(float("nan")) == wording.UNDEFINED
    assert wording.precision_at(0.0, 0.0, 0.5) is None


def test_decimals_text_reads_the_interval():
    assert "1st decimal" in wording.decimals_text(0.863, [0.789, 0.927])
    assert "3rd decimal" in wording.decimals_text(0.99, [0.985, 0.994])
    assert "no interval" in wording.decimals_text(0.5, None)
    assert math.isclose(0.927 - 0.789, 0.138)
