"""Seeded, stratified bootstrap intervals for image AUROC, pixel AUROC and AUPRO (Efron & Tibshirani, 1993).

A resample draws, with replacement, as many good test images from the good ones and as many
defective images from the defective ones as the test set has (stratified by label, so every
resample has both classes). It is represented by a weight vector ``w`` (N,) of draw counts, so a
metric of a resample is a weighted sum:

- image AUROC: ``w_pos @ C @ w_neg / (sum w_pos * sum w_neg)`` with ``C[i, j]`` = 1 when defective
  image i scores above good image j (0.5 on ties) -- the Mann-Whitney form of the AUROC;
- pixel AUROC and AUPRO: each image's map is reduced once to histograms over ~1000 shared bins
  (:func:`bin_maps`): good pixels, defect pixels, and for its ground-truth regions the summed
  fraction of each region at or above every bin. A resample's ROC / PRO curve is then
  ``w @ histograms``: no pixel is touched again. The bin edges are quantiles of the good and
  of the defect pixels (dense in the good pixels' top 10 %, where FPR <= 0.3 lives), which keeps
  the binned metrics within 0.002 of the exact ones (tested).

The interval is the 2.5th-97.5th percentile of the resampled values (percentile bootstrap). A
paired bootstrap applies the same resamples to two methods scored on the same test images, so
the interval of their difference accounts for the images both find hard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

N_RESAMPLES = 1000
SEED = 0
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)  # 8-connected regions, as the official AU-PRO


@dataclass
class BinnedMaps:
    """Per-image histograms of anomaly maps over shared bins (``B`` bins, ``N`` images).

    Attributes:
        good: (N, B) count of good (mask 0) pixels per bin.
        defect: (N, B) count of defect pixels per bin.
        region_cover: (N, B + 1) summed over the image's regions: fraction of the region with bin >= k.
        n_regions: (N,) number of 8-connected ground-truth regions per image.
    """

    good: np.ndarray
    defect: np.ndarray
    region_cover: np.ndarray
    n_regions: np.ndarray


def stratified_weights(labels: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(R, N) draw counts of ``n_resamples`` label-stratified bootstrap resamples (seeded, reproducible)."""
    labels = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_resamples, labels.size))
    for group in (np.flatnonzero(~labels), np.flatnonzero(labels)):
        if group.size == 0:
            continue
        draws = rng.integers(0, group.size, size=(n_resamples, group.size))  # (R, n_group)
        rows = np.repeat(np.arange(n_resamples), group.size)
        np.add.at(weights, (rows, group[draws.ravel()]), 1.0)
    return weights


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """``[lo, hi]`` percentile interval of bootstrap ``values`` (R,), NaNs ignored."""
    alpha = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(np.asarray(values, dtype=np.float64), [alpha, 100 - alpha])
    return [float(lo), float(hi)]


def image_auroc_samples(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Image AUROC of every resample (R,) from (R, N) weights (Mann-Whitney with weights)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (P, G)
    w_pos, w_neg = weights[:, labels], weights[:, ~labels]  # (R, P), (R, G)
    total = np.einsum("rp,pg,rg->r", w_pos, wins, w_neg)
    return total / (w_pos.sum(1) * w_neg.sum(1))


def bin_edges(gt_masks: np.ndarray, anomaly_maps: np.ndarray, n_bins: int = 1000) -> np.ndarray:
    """Sorted unique cut points (<= n_bins - 1): quantiles of the good and of the defect pixel values."""
    masks, maps = np.asarray(gt_masks).astype(bool), np.asarray(anomaly_maps, dtype=np.float32)
    good, defect = maps[~masks], maps[masks]
    n_good = (n_bins * 6) // 10
    levels = np.concatenate([np.linspace(0, 0.9, n_good // 5, endpoint=False), np.linspace(0.9, 1, n_good - n_good // 5)])
    cuts = [np.quantile(good, levels)] if good.size else []
    if defect.size:
        cuts.append(np.quantile(defect, np.linspace(0, 1, n_bins - n_good - 1)))
    return np.unique(np.concatenate(cuts))


def bin_maps(gt_masks: np.ndarray, anomaly_maps: np.ndarray, edges: np.ndarray | None = None) -> BinnedMaps:
    """Reduce (N, H, W) masks and maps to :class:`BinnedMaps` (bin k = values in [edge k-1, edge k))."""
    masks, maps = np.asarray(gt_masks).astype(bool), np.asarray(anomaly_maps, dtype=np.float32)
    edges = bin_edges(masks, maps) if edges is None else edges
    n_bins = edges.size + 1
    n = maps.shape[0]
    good, defect = np.zeros((n, n_bins)), np.zeros((n, n_bins))
    cover, n_regions = np.zeros((n, n_bins + 1)), np.zeros(n)
    for i in range(n):
        index = np.searchsorted(edges, maps[i].ravel(), side="right")  # (H*W,) bin of every pixel
        mask = masks[i].ravel()
        good[i] = np.bincount(index[~mask], minlength=n_bins)
        defect[i] = np.bincount(index[mask], minlength=n_bins)
        regions, k = ndimage.label(masks[i], structure=_STRUCTURE_8)
        if k:
            ids = regions.ravel()[mask] - 1  # (defect pixels,) region of each
            counts = np.bincount(ids * n_bins + index[mask], minlength=k * n_bins).reshape(k, n_bins)
            at_or_above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1] / counts.sum(1, keepdims=True)  # (k, B)
            cover[i, :n_bins] = at_or_above.sum(0)
        n_regions[i] = k
    return BinnedMaps(good, defect, cover, n_regions)


def pixel_auroc_samples(binned: BinnedMaps, weights: np.ndarray) -> np.ndarray:
    """Pixel AUROC of every resample (R,) from binned maps; pixels in one bin count as ties."""
    pos, neg = weights @ binned.defect, weights @ binned.good  # (R, B)
    neg_below = np.cumsum(neg, axis=1) - neg  # good pixels in lower bins
    wins = (pos * (neg_below + 0.5 * neg)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (pos.sum(1) * neg.sum(1))


def aupro_samples(binned: BinnedMaps, weights: np.ndarray, fpr_limit: float = 0.3) -> np.ndarray:
    """Normalised AUPRO up to ``fpr_limit`` of every resample (R,) from binned maps."""
    good = weights @ binned.good  # (R, B)
    fpr = np.cumsum(good[:, ::-1], axis=1)[:, ::-1] / good.sum(1, keepdims=True)  # (R, B) FPR at threshold bin k
    fpr = np.concatenate([fpr, np.zeros((len(weights), 1))], axis=1)[:, ::-1]  # (R, B+1) ascending
    with np.errstate(invalid="ignore", divide="ignore"):
        pro = ((weights @ binned.region_cover) / (weights @ binned.n_regions)[:, None])[:, ::-1]  # (R, B+1)
    return np.array([_area(f, p, fpr_limit) for f, p in zip(fpr, pro)])


def _area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area of PRO over FPR in [0, limit] (PRO interpolated at the limit), divided by limit."""
    grid_pro = np.interp(limit, fpr, pro)
    keep = fpr < limit
    x, y = np.append(fpr[keep], limit), np.append(pro[keep], grid_pro)
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) / limit)


def metric_samples(labels: np.ndarray, scores: np.ndarray, binned: BinnedMaps | None,
                   weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every bootstrapped metric (R,) for one method under the resamples ``weights`` (R, N)."""
    out = {"image_auroc": image_auroc_samples(labels, scores, weights)}
    if binned is not None and binned.defect.sum() > 0:
        out["pixel_auroc"] = pixel_auroc_samples(binned, weights)
        out["aupro"] = aupro_samples(binned, weights, 0.3)
        out["aupro_fpr05"] = aupro_samples(binned, weights, 0.05)
    return out


def paired_margins(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_resamples: int = N_RESAMPLES,
                   seed: int = SEED) -> dict[str, dict[str, float | list[float]]]:
    """Margin (method a - method b) per metric with a paired-bootstrap 95 % interval.

    Args:
        a, b: predictions of two methods on the SAME test images in the same order: ``labels`` (N,),
            ``image_scores`` (N,), and optionally ``anomaly_maps`` / ``gt_masks`` (N, H, W).

    Returns:
        ``{metric: {"margin": float, "ci": [lo, hi], "real": bool}}``; ``real`` when the interval excludes 0.
    """
    labels = np.asarray(a["labels"])
    if not np.array_equal(labels, np.asarray(b["labels"])):
        raise ValueError("paired bootstrap needs both methods scored on the same test images (labels differ)")
    weights = stratified_weights(labels, n_resamples, seed)
    return margins_from_samples(resampled_metrics(a, weights), resampled_metrics(b, weights))


def resampled_metrics(pred: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """``{metric: (value on all images, (R,) values under the resamples weights)}`` for one method's predictions.

    Methods resampled with the SAME ``weights`` are paired (:func:`margins_from_samples`).
    """
    labels = np.asarray(pred["labels"])
    binned = bin_maps(pred["gt_masks"], pred["anomaly_maps"]) if "anomaly_maps" in pred else None
    samples = metric_samples(labels, pred["image_scores"], binned, weights)
    points = metric_samples(labels, pred["image_scores"], binned, np.ones((1, labels.size)))
    return {key: (float(points[key][0]), samples[key]) for key in samples}


def margins_from_samples(a: dict[str, tuple[float, np.ndarray]],
                         b: dict[str, tuple[float, np.ndarray]]) -> dict[str, dict[str, float | list[float]]]:
    """Margin (a - b) per metric with its paired-bootstrap 95 % interval, from :func:`resampled_metrics` of both."""
    result = {}
    for key in a.keys() & b.keys():
        ci = percentile_interval(a[key][1] - b[key][1])
        result[key] = {"margin": a[key][0] - b[key][0], "ci": ci, "real": bool(ci[0] > 0 or ci[1] < 0)}
    return result
