"""Decision thresholds that need no defective image: a target false-reject rate, a pixel threshold.

Everything here is fitted on the scores (or maps) of GOOD images of ``train/good`` -- out-of-sample
cross-fitted scores (:mod:`anomaly.calibration`) or a validation split -- never on test images or
test masks. An image is called anomalous when its score >= the threshold.

:func:`frr_threshold` turns ``n`` good calibration scores and a target false-reject rate ``alpha``
into a threshold, with one of four estimators:

- ``conformal`` (default): reject a new score when it is above the ``k = ceil((n + 1)(1 - alpha))``-th
  smallest calibration score. With exchangeable good scores the expected false-reject rate is
  <= alpha (split conformal: Vovk et al., "Algorithmic Learning in a Random World", 2005; Bates et
  al., "Testing for outliers with conformal p-values", Ann. Statist. 2023). When ``k > n`` the
  target cannot be met with ``n`` scores: the largest score is used and ``reachable`` is False.
- ``empirical``: the ``ceil(n (1 - alpha))``-th smallest score (the plain quantile; no guarantee).
- ``conservative``: the smallest order statistic whose false-reject rate is <= alpha with 95 %
  confidence (the exceedance probability of the k-th of n order statistics is Beta(n + 1 - k, k)):
  a training-conditional (PAC) guarantee, paid for with a higher threshold.
- ``tail``: peaks over threshold: a generalised Pareto (exponential when it will not fit)
  distribution fitted to the top 20 % of scores, extrapolated to alpha; it can place a threshold
  beyond the largest score, which the order statistics cannot.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

ESTIMATORS = ("conformal", "empirical", "conservative", "tail")
DEFAULT_ESTIMATOR = "conformal"
DEFAULT_TARGET_FRR = 0.05
DEFAULT_PIXEL_FPR = 0.001
TAIL_FRACTION = 0.2  # share of the calibration scores the tail model is fitted to
CONFIDENCE = 0.95  # of the conservative estimator's bound


def check_rate(value: float, name: str = "target_frr") -> float:
    """``value`` as a float strictly between 0 and 1; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def check_decision(target_frr: float, estimator: str, pixel_fpr: float | None = None) -> None:
    """ValueError naming the argument unless the rates are in (0, 1) and the estimator is known."""
    check_rate(target_frr)
    if pixel_fpr is not None:
        check_rate(pixel_fpr, "pixel_fpr")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def frr_threshold(scores: np.ndarray, target_frr: float = DEFAULT_TARGET_FRR,
                  estimator: str = DEFAULT_ESTIMATOR) -> dict:
    """Threshold that rejects about ``target_frr`` of good parts, from good calibration scores.

    Args:
        scores: (n,) image scores of good calibration images (out-of-sample).
        target_frr: the false-reject rate the line accepts, in (0, 1).
        estimator: one of :data:`ESTIMATORS` (see the module docstring).

    Returns:
        ``dict(threshold, estimator, target_frr, n_scores, reachable, calibration_frr)``;
        ``calibration_frr`` is the share of calibration scores >= the threshold.

    Raises:
        ValueError: no or non-finite scores, a target outside (0, 1), an unknown estimator.
    """
    alpha = check_rate(target_frr)
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("frr_threshold needs at least one calibration score, got none")
    if not np.isfinite(values).all():
        raise ValueError("calibration scores contain NaN or infinite values")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    n = values.size
    if estimator == "tail":
        threshold, reachable = _tail_threshold(values, alpha), True
    else:
        k = calibration_rank(n, alpha, estimator)  # 1-based rank; > n = unreachable
        reachable = k <= n
        threshold = float(np.nextafter(values[min(k, n) - 1], np.inf))  # reject only scores above the k-th
    if not reachable:
        logger.warning("target FRR %.3g needs more than %d calibration scores with the %s estimator; "
                       "using the largest score", alpha, n, estimator)
    return {"threshold": threshold, "estimator": estimator, "target_frr": alpha, "n_scores": int(n),
            "reachable": bool(reachable), "calibration_frr": float(np.mean(values >= threshold))}


def calibration_rank(n: int, target_frr: float, estimator: str = DEFAULT_ESTIMATOR) -> int:
    """1-based rank ``k`` of the calibration score the threshold is set just above, with ``n`` good scores.

    ``conformal``: the split-conformal rank ``k = ceil((n + 1)(1 - alpha))``: rejecting a new good score above
    the ``k``-th smallest of ``n`` exchangeable good scores has an expected false-reject rate of
    ``(n + 1 - k) / (n + 1) <= alpha``. ``empirical``: ``ceil(n (1 - alpha))``. ``conservative``: the smallest
    ``k`` whose false-reject rate is <= alpha with 95 % confidence (``n + 1`` when none is).
    ``k > n`` means the target cannot be met with ``n`` scores (the largest score is used and the record says
    ``reachable: false``). ``tail`` fits a model instead of taking a rank: 0.

    Raises:
        ValueError: ``n < 1``, a target outside (0, 1), an unknown estimator.
    """
    check_decision(target_frr, estimator)
    n, alpha = int(n), float(target_frr)
    if n < 1:
        raise ValueError(f"the calibration rank needs at least one calibration score, got n={n}")
    if estimator == "tail":
        return 0
    if estimator == "conformal":
        return math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if estimator == "empirical":
        return max(1, math.ceil(n * (1.0 - alpha) - 1e-12))
    from scipy import stats  # lazily: the CLI imports this module for its defaults

    ranks = np.arange(1, n + 1)  # conservative: P(FRR of the k-th <= alpha) = BetaCDF(alpha; n + 1 - k, k)
    ok = stats.beta.cdf(alpha, n + 1 - ranks, ranks) >= CONFIDENCE
    return int(ranks[ok][0]) if ok.any() else n + 1


def min_calibration_size(target_frr: float, estimator: str = DEFAULT_ESTIMATOR, limit: int = 100_000) -> int | None:
    """The fewest good calibration scores with which ``target_frr`` is reachable (:func:`calibration_rank` <= n);
    conformal: ``ceil(1/alpha - 1)``. ``None`` when more than ``limit`` would be needed."""
    check_decision(target_frr, estimator)
    n = max(1, math.ceil(1.0 / float(target_frr) - 1.0 - 1e-9)) if estimator == "conformal" else 1
    while calibration_rank(n, target_frr, estimator) > n:  # conformal: a guard against rounding at the boundary
        if n >= limit:
            return None
        n += 1
    return n


def _tail_threshold(values: np.ndarray, alpha: float) -> float:
    """Peaks-over-threshold quantile: GPD (or exponential) on the excesses over the (1 - TAIL_FRACTION) quantile."""
    n = values.size
    n_tail = max(int(round(TAIL_FRACTION * n)), 1)
    if alpha >= n_tail / n or n_tail < 3:  # the target is inside the body: the empirical quantile
        return float(np.nextafter(values[calibration_rank(n, alpha, "empirical") - 1], np.inf))
    u = float(values[n - n_tail - 1]) if n_tail < n else float(values[0])
    excess = values[n - n_tail:] - u  # (n_tail,) >= 0
    p = alpha * n / n_tail  # exceedance probability wanted among the tail
    shape, scale = _fit_tail(excess)
    if abs(shape) < 1e-6:
        return u + scale * math.log(1.0 / p)
    return u + scale / shape * (p ** (-shape) - 1.0)


def _fit_tail(excess: np.ndarray) -> tuple[float, float]:
    """(shape, scale) of a generalised Pareto fit to ``excess``; exponential (0, mean) when it fails."""
    from scipy import stats

    mean = float(excess.mean())
    if excess.size >= 10 and mean > 0:
        try:
            shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
            if np.isfinite(shape) and np.isfinite(scale) and scale > 0 and -0.5 < shape < 0.5:
                return float(shape), float(scale)
        except (RuntimeError, ValueError, FloatingPointError):
            pass
    return 0.0, max(mean, 1e-12)


def pixel_threshold(map_quantiles: dict, target_fpr: float = DEFAULT_PIXEL_FPR) -> float:
    """Pixel threshold at a per-pixel false-positive rate on good calibration maps.

    Args:
        map_quantiles: ``{"fpr": [...], "value": [...]}`` from :func:`map_tail_quantiles`.
        target_fpr: share of good pixels allowed above the threshold, in (0, 1).

    Returns:
        The value exceeded by ``target_fpr`` of the good calibration pixels (log-fpr interpolation).
    """
    alpha = check_rate(target_fpr, "pixel_fpr")
    fpr, value = np.asarray(map_quantiles["fpr"], float), np.asarray(map_quantiles["value"], float)
    order = np.argsort(fpr)
    return float(np.interp(np.log(alpha), np.log(fpr[order]), value[order]))


def map_tail_quantiles(maps: np.ndarray, levels: int = 121) -> dict:
    """Exact upper quantiles of the pooled pixel values of good calibration maps, for :func:`pixel_threshold`.

    Args:
        maps: (N, H, W) float maps (cast to float32, never float16, before the quantiles); NaN marks
            pixels that are not the part's (the letterbox pad of non-square images) and is left out.

    Returns:
        ``{"fpr": (levels,), "value": (levels,)}`` lists: ``value[i]`` is exceeded by ``fpr[i]`` of the pixels,
        for ``fpr`` log-spaced from 1e-6 to 0.5, plus the minimum, median and maximum (``"summary"``).
    """
    values = np.asarray(maps, dtype=np.float32).ravel()
    values = np.sort(values[~np.isnan(values)])
    if values.size == 0:
        raise ValueError("map_tail_quantiles needs calibration maps, got none")
    fpr = np.logspace(-6, math.log10(0.5), levels)
    index = np.clip(np.ceil((1.0 - fpr) * values.size).astype(np.int64) - 1, 0, values.size - 1)
    summary = {str(q): float(values[min(int(q / 100 * values.size), values.size - 1)]) for q in (0, 50, 99, 100)}
    return {"fpr": fpr.tolist(), "value": values[index].astype(np.float64).tolist(), "summary": summary}


def scores_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Confusion counts and precision / recall / F1 when ``score >= threshold`` means anomalous.

    Args:
        labels: (N,) 0 good / 1 defective.
        scores: (N,) image anomaly scores.
        threshold: decision threshold (from ``frr_threshold``).

    Returns:
        ``dict(threshold, precision, recall, f1, tn, fp, fn, tp)`` of plain floats / ints;
        a ratio whose denominator is 0 is reported as 0.0.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {labels.shape} and {scores.shape}")
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must contain only 0 and 1")
    truth, predicted = labels.astype(bool), scores >= threshold
    tp = int(np.count_nonzero(truth & predicted))
    fp = int(np.count_nonzero(~truth & predicted))
    fn = int(np.count_nonzero(truth & ~predicted))
    tn = int(np.count_nonzero(~truth & ~predicted))
    return {
        "threshold": float(threshold),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else 0.0
