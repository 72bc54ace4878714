"""Evaluation metrics for anomaly detection: numpy arrays in, Python floats out.

- ``image_auroc`` / ``pixel_auroc``: area under the ROC curve (scikit-learn) for image-level
  classification and for pixel-level segmentation.
- ``aupro``: normalised area under the per-region-overlap (PRO) curve up to a false-positive-rate
  limit, exactly as the official MVTec AD evaluation code (``pro_curve_util.compute_pro`` and
  ``generic_util.trapezoid``) computes it. Bergmann et al., "The MVTec Anomaly Detection Dataset",
  IJCV 2021, and "MVTec AD", CVPR 2019.
- ``aupro(..., fpr_limit=0.05)``: the same, integrated only to FPR 0.05 (stricter; the official code
  reports both), stored as ``aupro_fpr05``.
- ``f1_flag_all``: the F1 of flagging every part defective -- the floor any F1 must beat.
- ``detection_by_size``: recall at the threshold and mean score per ground-truth defect-area bin.
- ``f1_max``: the best F1 over all thresholds. It is an ORACLE: the threshold is chosen with the
  test labels, so it is an upper bound, not a deployable operating point (see ``thresholds.py``).

Conventions: labels are 0 (good) / 1 (defective), ``gt_masks`` are (N, H, W) arrays of 0/1,
``anomaly_maps`` and scores are real numbers where higher means more anomalous.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

logger = logging.getLogger(__name__)

# 8-connectivity inside each image and no connection across images when labelling a (N, H, W)
# stack: only the middle slice of the 3x3x3 structuring element is set.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level AUROC.

    Args:
        labels: (N,) 0 good / 1 defective.
        scores: (N,) image anomaly scores, higher = more anomalous.

    Returns:
        Area under the ROC curve in [0, 1].

    Raises:
        ValueError: on mismatched shapes, non-finite scores, labels other than 0/1, or when only
            one class is present (AUROC is undefined then).
    """
    labels, scores = _check_labels_scores(labels, scores)
    _require_both_classes(labels, "image_auroc", "images")
    return float(roc_auc_score(labels, scores))


def pixel_auroc(gt_masks: np.ndarray, anomaly_maps: np.ndarray) -> float:
    """Pixel-level AUROC over all pixels of all images pooled together.

    Args:
        gt_masks: (N, H, W) 0/1 ground-truth defect masks.
        anomaly_maps: (N, H, W) per-pixel anomaly scores.

    Returns:
        Area under the pixel ROC curve in [0, 1].

    Raises:
        ValueError: on invalid inputs or when all pixels are good (or all defective).
    """
    masks, maps = _check_masks_maps(gt_masks, anomaly_maps)
    _require_both_classes(masks.ravel(), "pixel_auroc", "pixels")
    return float(roc_auc_score(masks.ravel().view(np.uint8), maps.ravel()))


def pro_curve(gt_masks: np.ndarray, anomaly_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve of the official MVTec AD evaluation.

    For every threshold t (each distinct score, descending) a pixel is predicted defective when
    its score >= t. FPR = predicted good pixels / all good pixels; PRO = mean over all 8-connected
    ground-truth regions (of all images) of the fraction of the region predicted defective.
    Implemented by sorting all pixels once: each good pixel adds 1 / #good to the FPR, each pixel
    of region r adds 1 / area(r) to the PRO sum (divided by #regions at the end). Of a run of
    tied scores only the last cumulative point is kept, and (0, 0) / (1, 1) are added at the ends,
    as in ``compute_pro``. Sums are float64; the curve is clipped to <= 1 like the official code.

    Args:
        gt_masks: (N, H, W) 0/1 ground-truth masks (N good images with empty masks are allowed).
        anomaly_maps: (N, H, W) per-pixel anomaly scores.

    Returns:
        ``(fpr, pro)``: two (K,) float64 arrays, FPR non-decreasing from 0 to 1. K can be as large
        as the number of pixels + 2; thin it before plotting many images.

    Raises:
        ValueError: on invalid inputs, when there is no defect region or no good pixel.
    """
    masks, maps = _check_masks_maps(gt_masks, anomaly_maps)
    labeled, n_regions = ndimage.label(masks, structure=_STRUCTURE_8)  # (N, H, W) int32
    n_good = masks.size - int(np.count_nonzero(masks))
    if n_regions == 0:
        raise ValueError("pro_curve/aupro needs at least one defect region in gt_masks; all masks are empty")
    if n_good == 0:
        raise ValueError("pro_curve/aupro needs at least one good pixel; every gt_masks pixel is 1")
    weight = 1.0 / np.bincount(labeled.ravel())  # 1 / area per region id
    weight[0] = 0.0  # label 0 = good pixels, they add nothing to the PRO

    order = np.argsort(maps.ravel())[::-1]  # descending; order inside a tie run does not matter
    sorted_scores = maps.ravel()[order]
    keep = np.empty(sorted_scores.size, dtype=bool)  # last pixel of each tie run
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=keep[:-1])
    keep[-1] = True
    del sorted_scores
    sorted_labels = labeled.ravel()[order]
    del order, labeled

    is_good = sorted_labels == 0
    pro_sum = weight[sorted_labels]  # float64, summed in place below to save memory
    del sorted_labels
    np.cumsum(pro_sum, out=pro_sum)
    pro = pro_sum[keep] / n_regions
    del pro_sum
    fpr = np.cumsum(is_good, dtype=np.int64)[keep] / n_good  # exact integer counts
    np.clip(pro, None, 1.0, out=pro)
    logger.debug("pro_curve: %d regions, %d good pixels, %d curve points", n_regions, n_good, fpr.size)
    zero, one = np.zeros(1), np.ones(1)
    return np.concatenate([zero, fpr, one]), np.concatenate([zero, pro, one])


def aupro(gt_masks: np.ndarray, anomaly_maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit] (official MVTec AD AU-PRO).

    Args:
        gt_masks: (N, H, W) 0/1 ground-truth masks.
        anomaly_maps: (N, H, W) per-pixel anomaly scores.
        fpr_limit: integration limit in (0, 1]; the PRO value at the limit is interpolated
            linearly between the neighbouring curve points.

    Returns:
        Area divided by ``fpr_limit``, so 1.0 is perfect and ~0 is worst.

    Raises:
        ValueError: on invalid inputs or ``fpr_limit`` outside (0, 1].
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(gt_masks, anomaly_maps)
    return float(trapezoid(fpr, pro, x_max=fpr_limit) / fpr_limit)


def trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Trapezoidal area under the curve (x, y), optionally only up to ``x_max``.

    Same rules as the official MVTec ``generic_util.trapezoid``: ``x`` is sorted ascending and may
    repeat (vertical steps); if ``x_max`` is not one of the x values, y at ``x_max`` is linearly
    interpolated between the last point with x <= x_max and the next one.

    Args:
        x: (K,) ascending abscissae. y: (K,) ordinates. x_max: upper limit within [x[0], x[-1]].

    Returns:
        The area as a float.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    correction = 0.0
    if x_max is not None:
        if not x[0] <= x_max <= x[-1]:
            raise ValueError(f"x_max={x_max} lies outside the curve's range [{x[0]}, {x[-1]}]")
        ins = int(np.searchsorted(x, x_max, side="right"))  # first index with x > x_max
        if x[ins - 1] != x_max:  # interpolate between the last point <= x_max and the next one
            x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
            y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            correction = 0.5 * (y0 + y_at_max) * (x_max - x0)
        x, y = x[:ins], y[:ins]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction)


def f1_max_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ORACLE best F1 over all thresholds, and the threshold that reaches it.

    Uses the test labels to pick the threshold, so it is an optimistic upper bound, never a fair
    estimate of deployed performance. An image is called defective when score >= threshold.

    Args:
        labels: (N,) 0 good / 1 defective; at least one defective.
        scores: (N,) image anomaly scores.

    Returns:
        ``(f1, threshold)``.
    """
    labels, scores = _check_labels_scores(labels, scores)
    if not labels.any():
        raise ValueError("f1_max needs at least one defective (label 1) sample")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1[:-1]))  # the last point (recall 0) has no threshold
    return float(f1[best]), float(thresholds[best])


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """ORACLE best F1 over all thresholds (chosen with the test labels); see ``f1_max_threshold``."""
    return f1_max_threshold(labels, scores)[0]


def f1_flag_all(labels: np.ndarray) -> float:
    """F1 of calling every part defective: recall 1, precision = the defect rate, F1 = 2p / (1 + p).

    Any F1 (oracle or at a threshold) must be read against it: with 75 defective of 115 test images
    it is already 0.79.
    """
    labels = _as_binary(np.asarray(labels), "labels")
    rate = float(labels.mean()) if labels.size else 0.0
    return 2 * rate / (1 + rate)


SIZE_BINS = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.01, 1.0)  # defect area as a fraction of the image (0.05 % ... 1 %)


def detection_by_size(labels: np.ndarray, scores: np.ndarray, gt_masks: np.ndarray, threshold: float,
                      bins: tuple[float, ...] = SIZE_BINS) -> list[dict]:
    """Detection of defective images grouped by ground-truth mask area (fraction of the image).

    Args:
        labels: (N,) 0/1. scores: (N,) image scores. gt_masks: (N, H, W) 0/1. threshold: decision threshold.
        bins: ascending area-fraction edges; the last bin includes its upper edge.

    Returns:
        One dict per bin: ``area_from``, ``area_to``, ``n`` defective images, ``recall_at_threshold``
        (fraction with score >= threshold), ``mean_score``, and ``image_auroc`` of those images against
        all good images (comparable across methods, unlike raw scores); None where ``n`` is 0.
    """
    labels, scores = _check_labels_scores(labels, scores)
    area = np.asarray(gt_masks).reshape(len(labels), -1).astype(bool).mean(1)  # (N,)
    good = scores[~labels]
    rows = []
    for i, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
        last = i == len(bins) - 2
        keep = labels & (area >= lo) & ((area <= hi) if last else (area < hi))
        s = scores[keep]
        row = {"area_from": float(lo), "area_to": float(hi), "n": int(keep.sum()), "recall_at_threshold": None,
               "mean_score": None, "image_auroc": None}
        if s.size:
            row.update(recall_at_threshold=float((s >= threshold).mean()), mean_score=float(s.mean()))
            if good.size:
                row["image_auroc"] = float(roc_auc_score(np.r_[np.zeros(good.size), np.ones(s.size)], np.r_[good, s]))
        rows.append(row)
    return rows


def roc_curve_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve points for figures (thin wrapper of ``sklearn.metrics.roc_curve``).

    Args:
        labels: (N,) 0/1 (flatten masks for a pixel ROC). scores: (N,) anomaly scores.

    Returns:
        ``(fpr, tpr)``: (K,) arrays from (0, 0) to (1, 1), collinear points dropped.
    """
    labels, scores = _check_labels_scores(labels, scores)
    _require_both_classes(labels, "roc_curve_points", "samples")
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def _check_labels_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {labels.shape} and {scores.shape}")
    if labels.size == 0:
        raise ValueError("labels and scores are empty")
    return _as_binary(labels, "labels"), _as_finite(scores, "scores")


def _check_masks_maps(gt_masks: np.ndarray, anomaly_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(gt_masks), np.asarray(anomaly_maps)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(
            f"gt_masks and anomaly_maps must both be (N, H, W) of the same shape, got {masks.shape} and {maps.shape}"
        )
    if masks.size == 0:
        raise ValueError("gt_masks and anomaly_maps are empty")
    return _as_binary(masks, "gt_masks"), _as_finite(maps, "anomaly_maps")


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Bool copy of a 0/1 array; anything else raises."""
    if values.dtype != bool and not ((values == 0) | (values == 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1, found {np.unique(values)[:10]}")
    return values.astype(bool)


def _as_finite(values: np.ndarray, name: str) -> np.ndarray:
    """Real-valued array (dtype kept: converting to float64 would change no order or tie)."""
    if values.dtype == bool or values.dtype.kind not in "fiu":
        values = values.astype(np.float64)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return values


def _require_both_classes(labels: np.ndarray, metric: str, what: str) -> None:
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        kind = "defective" if n_pos else "good"
        raise ValueError(f"{metric} is undefined: all {labels.size} {what} are {kind}; both classes are needed")
