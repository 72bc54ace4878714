"""Decision thresholds and display normalisation that need no defective image.

Everything here is fitted on the scores (or maps) of GOOD validation images carved out of
``train/good`` -- never on test images or test masks -- following the EfficientAD practice of
quantile-based normalisation from a validation split (Batzner et al., "EfficientAD", WACV 2024).
An image is called anomalous when its score >= the threshold.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = ("quantile", "mean_std")


def fit_threshold(val_scores: np.ndarray, method: str = "quantile", q: float = 0.99, k: float = 3.0) -> float:
    """Threshold from the anomaly scores of good validation images.

    Args:
        val_scores: (M,) image scores of good validation images.
        method: ``"quantile"`` -> the q-quantile of ``val_scores`` (numpy's linear interpolation);
            ``"mean_std"`` -> mean + k * std (population std, ddof=0).
        q: quantile in [0, 1], used by ``"quantile"``.
        k: number of standard deviations, used by ``"mean_std"``.

    Returns:
        The threshold as a float.

    Raises:
        ValueError: empty or non-finite scores, unknown method, q outside [0, 1], non-finite k.
    """
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("fit_threshold needs at least one validation score, got none")
    if not np.isfinite(scores).all():
        raise ValueError("validation scores contain NaN or infinite values")
    if method == "quantile":
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        threshold = float(np.quantile(scores, q))
    elif method == "mean_std":
        if not np.isfinite(k):
            raise ValueError(f"k must be finite, got {k}")
        threshold = float(scores.mean() + k * scores.std())
    else:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")
    logger.info("threshold %.6g from %d validation scores (%s)", threshold, scores.size, method)
    return threshold


def scores_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Confusion counts and precision / recall / F1 when ``score >= threshold`` means anomalous.

    Args:
        labels: (N,) 0 good / 1 defective.
        scores: (N,) image anomaly scores.
        threshold: decision threshold (from ``fit_threshold``).

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


def fit_map_range(val_maps: np.ndarray, low_q: float = 0.5, high_q: float = 0.999) -> tuple[float, float]:
    """Display range ``(low, high)`` from the pixel values of good VALIDATION anomaly maps.

    Args:
        val_maps: (M, H, W) anomaly maps of good validation images (never test maps).
        low_q: quantile of the pooled pixel values mapped to 0 (0.5 = median, 0.0 = minimum).
        high_q: quantile mapped to 1. Passing the image threshold as ``high`` to
            ``normalise_maps`` instead is fine when the image score is the map maximum.

    Returns:
        ``(low, high)`` floats with low < high.
    """
    values = np.asarray(val_maps, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("fit_map_range needs validation maps, got none")
    if not 0.0 <= low_q < high_q <= 1.0:
        raise ValueError(f"need 0 <= low_q < high_q <= 1, got {low_q} and {high_q}")
    low, high = (float(v) for v in np.quantile(values, [low_q, high_q]))
    if not high > low:
        raise ValueError(f"validation maps are constant between the quantiles ({low}); no display range")
    return low, high


def normalise_maps(maps: np.ndarray, low: float, high: float) -> np.ndarray:
    """Min-max scale anomaly maps to [0, 1] for DISPLAY with a fixed range.

    ``low`` and ``high`` must come from validation data (``fit_map_range`` or the validation
    threshold), never from the maps being shown: fitting them on test maps would make every test
    image look equally anomalous and leak test information.

    Args:
        maps: (..., H, W) anomaly maps. low: value mapped to 0. high: value mapped to 1.

    Returns:
        float32 array of the same shape, clipped to [0, 1].
    """
    if not high > low:
        raise ValueError(f"need high > low, got low={low}, high={high}")
    scaled = (np.asarray(maps, dtype=np.float32) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0)


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else 0.0
