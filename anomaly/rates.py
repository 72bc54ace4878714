"""Honest rates at an operating point: realised false-reject rate and recall with 95 % intervals.

- :func:`wilson_interval`: the Wilson score interval of a binomial proportion (Wilson, JASA 1927),
  which, unlike the normal approximation, stays inside [0, 1] and is sensible at 0 of n.
- :func:`operating_point_metrics`: what a line sees at a threshold set from good images only:
  ``frr`` (good test parts rejected), ``recall`` (defective parts caught), ``escape_rate``
  (defective parts passed = 1 - recall), their intervals, and ``oracle_recall_at_frr``, the best
  recall ANY threshold reaches at the same realised false-reject rate (chosen with the test labels:
  an upper bound, shown so that the cost of not seeing defects at calibration time is visible).
- :func:`compare_estimators`: the realised rates of every threshold estimator on one test set.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from anomaly.thresholds import ESTIMATORS, frr_threshold


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials; ``(0.0, 1.0)`` when ``n == 0``."""
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def operating_point_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float,
                            target_frr: float | None = None) -> dict:
    """Realised rates when ``score >= threshold`` rejects a part.

    Args:
        labels: (N,) 0 good / 1 defective test labels.
        scores: (N,) test image scores.
        threshold: decision threshold from good calibration images.
        target_frr: the false-reject rate the threshold was set for (recorded as is).

    Returns:
        ``target_frr, frr, frr_ci, recall, recall_ci, escape_rate, escape_rate_ci, oracle_recall_at_frr,
        n_good, n_defective, false_rejects, escapes``; a rate with no parts to measure it is None.
    """
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {labels.shape} and {scores.shape}")
    rejected = scores >= threshold
    n_good, n_bad = int((~labels).sum()), int(labels.sum())
    fr, caught = int((rejected & ~labels).sum()), int((rejected & labels).sum())
    frr = fr / n_good if n_good else None
    recall = caught / n_bad if n_bad else None
    lo, hi = wilson_interval(caught, n_bad)
    return {"target_frr": target_frr, "frr": frr, "frr_ci": list(wilson_interval(fr, n_good)),
            "recall": recall, "recall_ci": [lo, hi],
            "escape_rate": None if recall is None else 1.0 - recall, "escape_rate_ci": [1.0 - hi, 1.0 - lo],
            "oracle_recall_at_frr": oracle_recall_at_frr(labels, scores, frr) if frr is not None else None,
            "n_good": n_good, "n_defective": n_bad, "false_rejects": fr, "escapes": n_bad - caught}


def oracle_recall_at_frr(labels: np.ndarray, scores: np.ndarray, frr: float) -> float | None:
    """Best recall of any threshold whose false-reject rate on these labels is <= ``frr`` (an oracle)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    good, bad = np.sort(scores[~labels]), scores[labels]
    if bad.size == 0 or good.size == 0:
        return None
    allowed = int(math.floor(frr * good.size + 1e-9))  # good parts the oracle may reject
    if allowed >= good.size:
        return 1.0
    # the lowest threshold rejecting at most `allowed` good parts: just above the (allowed+1)-th largest good score
    threshold = float(np.nextafter(good[good.size - allowed - 1], np.inf))
    return float(np.mean(bad >= threshold))


def compare_estimators(calibration_scores: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                       target_frr: float, estimators: tuple[str, ...] = ESTIMATORS) -> list[dict]:
    """Realised test FRR and recall of each estimator's threshold from the same calibration scores.

    Returns:
        One dict per estimator: ``estimator, threshold, reachable, frr, frr_ci, recall, recall_ci,
        oracle_recall_at_frr, false_rejects, n_good``.
    """
    rows = []
    for name in estimators:
        fitted = frr_threshold(calibration_scores, target_frr, name)
        op = operating_point_metrics(labels, scores, fitted["threshold"], target_frr)
        rows.append({"estimator": name, "threshold": fitted["threshold"], "reachable": fitted["reachable"],
                     **{k: op[k] for k in ("frr", "frr_ci", "recall", "recall_ci", "oracle_recall_at_frr",
                                           "false_rejects", "n_good")}})
    return rows


def small_n_cost(calibration_scores: np.ndarray, labels: np.ndarray, scores: np.ndarray, target_frr: float,
                 sizes: tuple[int, ...] = (10, 20, 40, 80, 160), draws: int = 200, seed: int = 0,
                 estimator: str = "conformal") -> list[dict]:
    """What fewer calibration scores cost: mean realised test FRR and recall over random subsets of size n.

    Returns:
        One dict per usable size: ``n, reachable_share, mean_frr, mean_recall, draws``.
    """
    rng = np.random.default_rng(seed)
    calibration_scores = np.asarray(calibration_scores, dtype=np.float64)
    rows = []
    for n in (s for s in sizes if s <= calibration_scores.size):
        frr, recall, reachable = [], [], []
        for _ in range(draws):
            fitted = frr_threshold(rng.choice(calibration_scores, n, replace=False), target_frr, estimator)
            op = operating_point_metrics(labels, scores, fitted["threshold"])
            frr.append(op["frr"]), recall.append(op["recall"]), reachable.append(fitted["reachable"])
        rows.append({"n": n, "reachable_share": float(np.mean(reachable)), "mean_frr": float(np.mean(frr)),
                     "mean_recall": float(np.mean(recall)), "draws": draws})
    return rows
