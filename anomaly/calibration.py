"""Calibration: out-of-sample scores of good training images, and the decision a line uses.

PaDiM and PatchCore are *cross-fitted* (they declare ``Detector.crossfits``): ``train/good`` is split into
``folds`` folds, each fold is scored by the model fitted on the others, so every good training
image gets an out-of-sample score and map, while the deployed model is fitted on all of them
(cross-conformal calibration: Vovk, "Cross-conformal predictors", 2015; Barber et al.,
"Predictive inference with the jackknife+", 2021). The autoencoder has no cheap cross-fit (it
would train ``folds`` extra networks) and keeps a validation split carved out of ``train/good``.

Two files in a run folder:

- ``calibration.json`` (written once by the fit): how the scores were made (``kind``
  ``crossfit``/``validation``, ``folds``), the ``n_scores`` calibration scores and exact upper
  quantiles of the pooled calibration map values (enough to set a pixel threshold at any rate).
- ``threshold.json`` (re-derived by ``anomaly threshold`` without refitting): the image threshold
  for a target false-reject rate and estimator, and the pixel threshold for a per-pixel FPR.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from anomaly.decoding import image_hw
from anomaly.geometry import Letterbox
from anomaly.models import Detector
from anomaly.rates import operating_point_metrics
from anomaly.regions import region_metrics
from anomaly.records import CalibrationRecord, RunFolderError, ThresholdRecord
from anomaly.thresholds import (DEFAULT_ESTIMATOR, DEFAULT_PIXEL_FPR, DEFAULT_TARGET_FRR, frr_threshold,
                                map_tail_quantiles, pixel_threshold)

logger = logging.getLogger(__name__)

CALIBRATION_FILE = CalibrationRecord.FILE
DEFAULT_FOLDS = 5


def fit_and_calibrate(detector: Detector, train_loader: DataLoader, folds: int, seed: int = 0,
                      validation_loader: DataLoader | None = None) -> tuple[CalibrationRecord, float]:
    """Fit ``detector`` and collect good calibration scores and maps.

    Args:
        train_loader: the images the deployed model is fitted on (unshuffled when ``folds`` >= 2).
        folds: >= 2 cross-fits over ``train_loader``; 0 scores ``validation_loader`` instead.
        validation_loader: good validation images (``folds`` == 0 only).

    Returns:
        The ``calibration.json`` record and the fit time in seconds (cross-fitting included).
    """
    start = time.perf_counter()
    if folds:
        out = detector.fit_crossfit(train_loader, folds=folds, seed=seed)
        fit_seconds = time.perf_counter() - start
        scores, maps, kind = out.image_scores, out.anomaly_maps, "crossfit"
        note = f"each of the {len(scores)} training images scored by the model fitted on the other {folds - 1} folds"
    else:
        if validation_loader is None:
            raise ValueError("calibration without cross-fitting needs a validation split")
        detector.fit(train_loader)
        fit_seconds = time.perf_counter() - start
        scores, maps = _predict_all(detector, validation_loader)
        kind, note = "validation", "good validation images carved out of train/good, not used for the fit"
    maps = pad_as_nan(maps, (validation_loader if not folds else train_loader).dataset)
    record = CalibrationRecord.from_dict({
        "kind": kind, "folds": int(folds) if folds else None, "n_scores": int(len(scores)), "note": note,
        "scores": np.asarray(scores, dtype=np.float64).tolist(), "map_quantiles": map_tail_quantiles(maps)})
    return record, fit_seconds


def pad_as_nan(maps: np.ndarray, dataset: object) -> np.ndarray:
    """Canvas maps (N, S, S) of ``dataset``'s images with the letterbox pad of non-square ones set to NaN.

    The pad is not part of the part: its pixels must not enter the pixel threshold's quantiles.
    Datasets without ``samples`` (image files) are returned unchanged.
    """
    maps = np.asarray(maps, dtype=np.float32)
    for i, sample in enumerate(getattr(dataset, "samples", None) or []):
        h, w = image_hw(sample.image_path)
        if h != w:
            keep = np.zeros(maps.shape[-2:], dtype=bool)
            Letterbox(h, w, maps.shape[-1]).crop(keep)[...] = True  # the image's area of the canvas
            maps[i][~keep] = np.nan
    return maps


def _predict_all(detector: Detector, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) and float32 maps (N, H, W) of every image of ``loader``."""
    parts = [detector.predict(batch["image"]) for batch in loader]
    return (np.concatenate([p.image_scores for p in parts]),
            np.concatenate([p.anomaly_maps for p in parts]).astype(np.float32))


def decide(calibration: CalibrationRecord, target_frr: float = DEFAULT_TARGET_FRR,
           estimator: str = DEFAULT_ESTIMATOR, pixel_fpr: float | None = DEFAULT_PIXEL_FPR) -> ThresholdRecord:
    """The ``threshold.json`` record: image threshold at ``target_frr`` and pixel threshold at ``pixel_fpr``."""
    record = frr_threshold(np.asarray(calibration.scores), target_frr, estimator)
    record.update({"calibration": calibration.kind, "folds": calibration.folds, "pixel_fpr": None,
                   "pixel_threshold": None})
    quantiles = calibration.map_quantiles
    if pixel_fpr is not None and quantiles:
        record.update({"pixel_fpr": float(pixel_fpr),
                       "pixel_threshold": pixel_threshold(quantiles.model_dump(), pixel_fpr)})
    logger.info("threshold %.6g for target FRR %.3g (%s, %d %s scores); pixel threshold %s", record["threshold"],
                record["target_frr"], estimator, record["n_scores"], record["calibration"], record["pixel_threshold"])
    return ThresholdRecord.from_dict(record)


def write_decision(run_dir: Path, calibration: CalibrationRecord, **kwargs: Any) -> ThresholdRecord:
    """Derive the decision (:func:`decide`) and write ``threshold.json``; returns the record."""
    record = decide(calibration, **kwargs)
    record.write(run_dir)
    return record


def read_calibration(run_dir: str | Path) -> CalibrationRecord:
    """``calibration.json``; for runs from before it existed, the validation scores of ``threshold.json``."""
    run_dir = Path(run_dir)
    if (run_dir / CALIBRATION_FILE).is_file():
        record = CalibrationRecord.read(run_dir)
    else:
        old = ThresholdRecord.read(run_dir)
        if "validation_scores" not in old:
            raise RunFolderError(f"{run_dir} has no {CALIBRATION_FILE} (nor validation scores in threshold.json); "
                                 f"run `anomaly fit` again")
        record = CalibrationRecord.from_dict(
            {"kind": "validation", "folds": None, "scores": old["validation_scores"], "map_quantiles": None,
             "summary": old.get("validation_map_quantiles")}, run_dir / ThresholdRecord.FILE)
    record.n_scores = len(record.scores)
    return record


def resolve_folds(detector: Detector, folds: int | None) -> int:
    """0 (validation split) or the number of cross-fitting folds for ``detector``."""
    if folds is None:
        return DEFAULT_FOLDS if detector.crossfits else 0
    if folds == 0:
        return 0
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (or 0 for a validation split), got {folds}")
    if not detector.crossfits:
        raise ValueError(f"{detector.name} cannot be cross-fitted (it would train {folds} extra models); "
                         f"leave --folds out to calibrate on a validation split")
    return folds


def decision_metrics(out: dict[str, np.ndarray], decision: ThresholdRecord, regions: bool = True) -> dict[str, Any]:
    """Realised FRR / recall with Wilson intervals, the oracle recall, and region detection (``regions``;
    left out when ``regions`` is False: a test set without masks)."""
    result = operating_point_metrics(out["labels"], out["image_scores"], float(decision["threshold"]),
                                     decision.get("target_frr"))
    result.update({"estimator": decision.get("estimator"), "calibration": decision.get("calibration"),
                   "n_calibration_scores": decision.get("n_scores"), "target_reachable": decision.get("reachable")})
    if regions and decision.get("pixel_threshold") is not None:
        result["regions"] = {"pixel_fpr": decision.get("pixel_fpr"),
                             **region_metrics(out["anomaly_maps"], out["gt_masks"], out["labels"],
                                              float(decision["pixel_threshold"]))}
    return result


__all__ = ["CALIBRATION_FILE", "DEFAULT_FOLDS", "decide", "fit_and_calibrate", "read_calibration",
           "resolve_folds", "decision_metrics", "write_decision"]
