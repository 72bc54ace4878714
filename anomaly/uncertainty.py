"""The uncertainty block of ``metrics.json``: bootstrap intervals, strict AUPRO, the flag-all floor, sizes.

:func:`uncertainty_metrics` is merged into :func:`anomaly.evaluation.compute_metrics` and adds

- ``image_auroc_ci``, ``pixel_auroc_ci``, ``aupro_ci``: 95 % stratified-bootstrap intervals
  (1000 resamples over test images, seed 0; see :mod:`anomaly.bootstrap`);
- ``aupro_fpr05`` (exact, official algorithm) and ``aupro_fpr05_ci``;
- ``f1_flag_all``: the F1 of flagging every part, the floor of every F1 in the tables;
- ``per_defect_type``: per type ``n``, ``image_auroc`` + ``image_auroc_ci``, ``recall_at_threshold``,
  ``aupro`` + ``aupro_ci`` (that type's images and all good images);
- ``by_defect_size``: :func:`anomaly.metrics.detection_by_size`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from anomaly import bootstrap as B
from anomaly import metrics as M


def uncertainty_metrics(out: dict[str, np.ndarray], samples: Sequence[Any], threshold: float,
                        n_resamples: int = B.N_RESAMPLES, seed: int = B.SEED, pixel: bool = True) -> dict[str, Any]:
    """Intervals and the extra metrics for one method's test predictions.

    Args:
        out: ``labels`` (N,), ``image_scores`` (N,), ``anomaly_maps`` and ``gt_masks`` (N, H, W).
        samples: the N test samples (their ``defect_type``), in the same order.
        threshold: the calibrated decision threshold (for recall by type and by size).
        pixel: ``False`` for test sets without masks: the pixel metrics (AUPRO@0.05, by defect size, the
            pixel intervals) are ``None`` / left out.
    """
    labels, scores = np.asarray(out["labels"]), np.asarray(out["image_scores"], dtype=np.float64)
    masks, maps = np.asarray(out["gt_masks"]), np.asarray(out["anomaly_maps"], dtype=np.float32)
    binned = B.bin_maps(masks, maps) if pixel else None
    intervals = _intervals(labels, scores, binned, n_resamples, seed)
    result: dict[str, Any] = {f"{key}_ci": ci for key, ci in intervals.items()}
    result["aupro_fpr05"] = M.aupro(masks, maps, fpr_limit=0.05) if pixel else None
    result["f1_flag_all"] = M.f1_flag_all(labels)
    result["by_defect_size"] = M.detection_by_size(labels, scores, masks, threshold) if pixel else None
    defect_types = np.array([getattr(s, "defect_type", s) for s in samples])  # samples or their defect types
    per_type = {}
    for name in sorted(set(defect_types) - {"good"}):
        keep = (defect_types == "good") | (defect_types == name)
        sub = None if binned is None else B.BinnedMaps(binned.good[keep], binned.defect[keep],
                                                       binned.region_cover[keep], binned.n_regions[keep])
        cis = _intervals(labels[keep], scores[keep], sub, n_resamples, seed)
        per_type[name] = {"n": int((defect_types == name).sum()),
                          "image_auroc": M.image_auroc(labels[keep], scores[keep]),
                          "image_auroc_ci": cis["image_auroc"],
                          "recall_at_threshold": float((scores[defect_types == name] >= threshold).mean())}
        if "aupro" in cis:
            per_type[name].update(aupro=M.aupro(masks[keep], maps[keep]), aupro_ci=cis["aupro"])
    result["per_defect_type"] = per_type
    return result


def _intervals(labels: np.ndarray, scores: np.ndarray, binned: B.BinnedMaps | None, n_resamples: int,
               seed: int) -> dict[str, list[float]]:
    if labels.all() or not labels.any():
        return {}
    weights = B.stratified_weights(labels, n_resamples, seed)
    return {key: B.percentile_interval(values) for key, values in
            B.metric_samples(labels, scores, binned, weights).items()}
