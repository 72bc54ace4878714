"""Defect regions: a binary mask from the pixel threshold, its connected regions, and region-level rates.

The pixel threshold comes from good calibration maps at a target per-pixel false-positive rate
(:func:`anomaly.thresholds.pixel_threshold`). A region is an 8-connected component of the mask
(``scipy.ndimage.label``); it is reported with its bounding box ``[x0, y0, x1, y1]`` (inclusive
pixel coordinates of the map it was found in, which is the input image's resolution for
``predict``), its area in pixels and the largest anomaly score inside it.

Region-level detection on a test set (:func:`region_metrics`): a ground-truth region is *hit* when
at least one of its pixels is in the predicted mask; a *false region* is a predicted region in a
good image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


def defect_mask(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """(H, W) bool mask of the pixels whose score >= ``pixel_threshold``."""
    return np.asarray(anomaly_map, dtype=np.float32) >= pixel_threshold


def find_regions(anomaly_map: np.ndarray, pixel_threshold: float, min_area: int = 1) -> list[dict]:
    """Connected regions of one map above the pixel threshold, largest score first.

    Args:
        anomaly_map: (H, W) anomaly map.
        pixel_threshold: scores >= it are defective pixels.
        min_area: regions smaller than this many pixels are dropped.

    Returns:
        ``[{"bbox": [x0, y0, x1, y1], "area_px": int, "max_score": float}, ...]``.
    """
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"expected one (H, W) map, got shape {amap.shape}")
    labels, n = ndimage.label(amap >= pixel_threshold, structure=_EIGHT)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(amap), labels, index)
    peaks = ndimage.maximum(amap, labels, index)
    regions = []
    for i, box in enumerate(ndimage.find_objects(labels)):
        if areas[i] < min_area:
            continue
        ys, xs = box
        regions.append({"bbox": [int(xs.start), int(ys.start), int(xs.stop) - 1, int(ys.stop) - 1],
                        "area_px": int(areas[i]), "max_score": float(peaks[i])})
    return sorted(regions, key=lambda r: -r["max_score"])


def region_metrics(anomaly_maps: np.ndarray, gt_masks: np.ndarray, labels: np.ndarray,
                   pixel_threshold: float) -> dict:
    """Region-level detection at ``pixel_threshold`` on a test set.

    Args:
        anomaly_maps: (N, H, W) maps. gt_masks: (N, H, W) 0/1 masks. labels: (N,) 0 good / 1 defective.

    Returns:
        ``pixel_threshold, gt_regions, gt_regions_hit, region_hit_rate, false_regions_per_good_image,
        n_good_images``.
    """
    maps, masks = np.asarray(anomaly_maps), np.asarray(gt_masks).astype(bool)
    labels = np.asarray(labels).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3 or len(labels) != len(maps):
        raise ValueError(f"maps {maps.shape}, masks {masks.shape} and labels {labels.shape} do not match")
    n_gt = hit = false = 0
    for amap, mask, bad in zip(maps, masks, labels):
        predicted = defect_mask(amap, pixel_threshold)
        if bad:
            gt, k = ndimage.label(mask, structure=_EIGHT)
            n_gt += k
            hit += len(np.unique(gt[predicted & mask]))  # ids of GT regions touched by the mask (0 excluded)
        else:
            false += ndimage.label(predicted, structure=_EIGHT)[1]
    n_good = int((~labels).sum())
    return {"pixel_threshold": float(pixel_threshold), "gt_regions": int(n_gt), "gt_regions_hit": int(hit),
            "region_hit_rate": hit / n_gt if n_gt else None,
            "false_regions_per_good_image": false / n_good if n_good else None, "n_good_images": n_good}


def scale_regions(regions: list[dict], from_hw: tuple[int, int], to_hw: tuple[int, int]) -> list[dict]:
    """Regions found on a (h, w) map, expressed in the pixels of the (H, W) image it was resized from."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    scaled = []
    for r in regions:
        x0, y0, x1, y1 = r["bbox"]
        bbox = [int(x0 * sx), int(y0 * sy), min(int(np.ceil((x1 + 1) * sx)) - 1, to_hw[1] - 1),
                min(int(np.ceil((y1 + 1) * sy)) - 1, to_hw[0] - 1)]
        scaled.append({**r, "bbox": bbox, "area_px": int(round(r["area_px"] * sx * sy))})
    return scaled
