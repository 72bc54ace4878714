"""Metric assembly: a run's test scores, maps and labels -> ``metrics.json`` (and ``predictions.npz``).

:func:`evaluation_metrics` is every number a run reports about its test split: the threshold-free
ranking metrics (image and pixel AUROC, AUPRO, the oracle F1-max; :mod:`anomaly.metrics`) with
bootstrap intervals, per defect type and by defect size (:mod:`anomaly.uncertainty`), and the
precision / recall / F1 and realised rates at the run's calibrated decision
(:func:`anomaly.calibration.decision_metrics`). :func:`write_metrics` is the one writer of
``metrics.json``; :func:`write_predictions` stores what the metrics were computed from, so the
operating point can move without scoring again (:func:`anomaly.pipeline.rethreshold_run`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomaly import calibration as C
from anomaly import metrics as M
from anomaly.geometry import Letterbox
from anomaly.layout import Sample
from anomaly.records import MetricsRecord
from anomaly.thresholds import scores_at_threshold
from anomaly.uncertainty import uncertainty_metrics

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.npz"


def image_area_only(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``out`` with maps and masks cropped to the image's area of the canvas, for pixel metrics.

    The letterbox pad of non-square images is not part of the part: counted, its zeroed pixels would
    be easy true negatives that inflate pixel AUROC and AUPRO. When every image has the same
    non-square (H, W) -- one camera, as in MVTec AD -- the pad is cropped away; with mixed sizes the
    canvas is kept (pad zeroed) and a warning says the pixel metrics count the pad as background.
    """
    sizes = {tuple(hw) for hw in np.asarray(out.get("hw", np.zeros((0, 2)))).tolist()}
    if len(sizes) != 1 or next(iter(sizes))[0] == next(iter(sizes))[1]:
        if any(h != w for h, w in sizes):
            logger.warning("test images of %d different sizes: pixel metrics count the letterbox pad as "
                           "background", len(sizes))
        return out
    (h, w), size = sizes.pop(), out["anomaly_maps"].shape[-1]
    box = Letterbox(int(h), int(w), int(size))
    return {**out, "anomaly_maps": box.crop(out["anomaly_maps"]), "gt_masks": box.crop(out["gt_masks"])}


def evaluation_metrics(out: dict[str, np.ndarray], samples: Sequence[Sample | str],
                       decision: dict[str, Any], pixel: bool = True) -> dict[str, Any]:
    """:func:`compute_metrics` at the decision's threshold plus the realised rates and region detection
    (``pixel=False``: a test set without masks, image-level metrics only)."""
    return {**compute_metrics(out, samples, float(decision["threshold"]), pixel),
            **C.decision_metrics(out, decision, regions=pixel)}


def compute_metrics(out: dict[str, np.ndarray], samples: Sequence[Sample | str], threshold: float,
                    pixel: bool = True) -> dict[str, Any]:
    """Ranking metrics with bootstrap intervals, the oracle F1-max, and precision/recall/F1 (overall, per defect
    type and by defect size) at ``threshold``; the pixel metrics are ``None`` when ``pixel`` is False."""
    result: dict[str, Any] = {}
    result.update(ranking_metrics(out, pixel))
    result.update(scores_at_threshold(out["labels"], out["image_scores"], threshold))
    result.update(uncertainty_metrics(out, samples, threshold, pixel=pixel))  # intervals, per type, by size, flag-all
    return result


def ranking_metrics(out: dict[str, np.ndarray], pixel: bool = True) -> dict[str, Any]:
    """Threshold-free: image/pixel AUROC, AUPRO, F1-max (an oracle: it looks at the test labels)."""
    labels, scores = out["labels"], out["image_scores"]
    maps, masks = out["anomaly_maps"].astype(np.float32), out["gt_masks"]
    f1 = M.f1_max(labels, scores)
    return {"image_auroc": M.image_auroc(labels, scores), "pixel_auroc": M.pixel_auroc(masks, maps) if pixel else None,
            "aupro": M.aupro(masks, maps) if pixel else None, "f1_max_oracle": f1, "f1_max": f1,  # the name
            "n_test_images": int(len(labels))}


def write_predictions(run_dir: str | Path, out: dict[str, np.ndarray], samples: Sequence[Sample]) -> None:
    """``predictions.npz``: test scores, labels, maps (float16: storage only), masks, defect types, paths."""
    np.savez_compressed(Path(run_dir) / PREDICTIONS_FILE, image_scores=out["image_scores"],
                        labels=out["labels"], anomaly_maps=out["anomaly_maps"].astype(np.float16),
                        gt_masks=out["gt_masks"], defect_types=np.array([s.defect_type for s in samples]),
                        image_paths=np.array([str(s.image_path) for s in samples]))


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (the one place it is written); returns its path."""
    return MetricsRecord.from_dict(metrics).write(run_dir)
