"""The one place that orchestrates a run: fit -> threshold -> save -> evaluate -> predict.

A run folder holds everything a run produced::

    config.json      what was asked for (data, category, method, params, seed, ...)
    model.json       method + detector config          (Detector.save)
    model.pt         detector state, tensors only      (Detector.save)
    fit.json         fit_seconds, training history (autoencoder loss per epoch)
    threshold.json   decision threshold fitted on validation *good* images only
    complete.json    completeness marker: the files + SHA-256 of model.pt (written last)
    metrics.json     test metrics + model_sha256       (evaluate_run)
    predictions.npz  test scores, labels, maps, masks  (evaluate_run)

A fit writes a hidden sibling folder and swaps it into place when complete (:mod:`anomaly.runs`),
so an interrupted re-fit leaves the previous run as it was, and a re-fit never keeps the previous
run's ``metrics.json``. :func:`load_run` checks the marker and every file it reads.

The decision threshold and any normalisation come from a validation split carved out of
``train/good``; the test set is only ever used to measure.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anomaly import data as D
from anomaly import metrics as M
from anomaly.models import Detector, create_detector
from anomaly.runs import atomic_run_dir, check_run_dir, read_config, read_dict, read_metrics, read_threshold
from anomaly.thresholds import fit_threshold, scores_at_threshold
from anomaly.utils import read_json, resolve_device, seed_everything, write_json

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = ("quantile", "mean_std")


@dataclass
class Run:
    """A trained run loaded from its folder."""

    run_dir: Path
    detector: Detector
    config: dict[str, Any]
    threshold: float
    metrics: dict[str, Any] | None
    model_sha256: str = ""  # fingerprint of model.pt from complete.json

    @property
    def image_size(self) -> int:
        return int(self.detector.config.image_size)


def make_loader(samples: Sequence[D.Sample], image_size: int, batch_size: int, shuffle: bool = False,
                seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A DataLoader of dict batches (image, mask, label, index) over ``samples``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(D.AnomalyDataset(list(samples), image_size), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, num_workers=num_workers)


def predict_loader(detector: Detector, loader: DataLoader, desc: str = "predict") -> dict[str, np.ndarray]:
    """Score every batch of ``loader``; returns scores (N,), maps (N,H,W), masks (N,H,W), labels (N,), ms/img."""
    scores, maps, masks, labels, seconds = [], [], [], [], 0.0
    for batch in tqdm(loader, desc=desc, leave=False):
        start = time.perf_counter()
        out = detector.predict(batch["image"])
        seconds += time.perf_counter() - start
        scores.append(out.image_scores)
        maps.append(out.anomaly_maps.astype(np.float16))
        masks.append(batch["mask"].numpy().astype(np.uint8))
        labels.append(np.asarray(batch["label"]))
    n = sum(len(s) for s in scores)
    return {"image_scores": np.concatenate(scores).astype(np.float64), "anomaly_maps": np.concatenate(maps),
            "gt_masks": np.concatenate(masks), "labels": np.concatenate(labels).astype(np.int64),
            "ms_per_image": 1000.0 * seconds / max(n, 1)}


@atomic_run_dir
def fit_run(data: str | Path, category: str, method: str, run_dir: str | Path,
            params: dict[str, Any] | None = None, device: str = "auto", seed: int = 0,
            val_fraction: float = 0.1, batch_size: int = 8, threshold_method: str = "quantile",
            threshold_q: float = 0.99, threshold_k: float = 3.0, max_train: int | None = None) -> Path:
    """Fit ``method`` on ``train/good`` of ``data/category`` and write a run folder.

    The folder is written beside ``run_dir`` and swapped in, marked complete, only when the fit has
    succeeded; until then a previous run in ``run_dir`` stays untouched.

    Args:
        max_train: keep only the first ``max_train`` training images (seeded shuffle) — for
            data-efficiency studies; ``None`` uses all.

    Returns:
        The run folder.
    """
    if threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {threshold_method!r}; choose one of {THRESHOLD_METHODS}")
    run_dir = Path(run_dir)
    seed_everything(seed)
    dev = resolve_device(device)
    params = dict(params or {})
    if _has_field(method, "seed"):
        params.setdefault("seed", seed)
    detector = create_detector(method, params, device=dev)  # validates params before any work
    splits = D.load_splits(data, category, val_fraction=val_fraction, seed=seed)
    train = _subsample(splits.train, max_train, seed)
    check_split_sizes(train, splits.validation, val_fraction)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"data": str(Path(data).resolve()), "category": category, "method": method, "params": params,
              "device": str(dev), "seed": seed, "val_fraction": val_fraction, "batch_size": batch_size,
              "threshold_method": threshold_method, "threshold_q": threshold_q, "threshold_k": threshold_k,
              "max_train": max_train, "n_train": len(train), "n_validation": len(splits.validation)}
    write_json(run_dir / "config.json", config)
    size = detector.config.image_size
    logger.info("fitting %s on %d %s/%s images (%d px) on %s", method, len(train), category, "train", size, dev)
    start = time.perf_counter()
    detector.fit(make_loader(train, size, batch_size, shuffle=True, seed=seed))
    fit_seconds = time.perf_counter() - start
    detector.save(run_dir)
    val = predict_loader(detector, make_loader(splits.validation, size, batch_size), desc="validation")
    threshold = fit_threshold(val["image_scores"], method=threshold_method, q=threshold_q, k=threshold_k)
    write_json(run_dir / "threshold.json", {
        "threshold": threshold, "method": threshold_method, "q": threshold_q, "k": threshold_k,
        "validation_scores": val["image_scores"], "validation_map_quantiles": _map_quantiles(val["anomaly_maps"])})
    write_json(run_dir / "fit.json", {"fit_seconds": fit_seconds, "n_train": len(train),
                                      "history": list(getattr(detector, "history", [])),
                                      "peak_rss_mib": peak_rss_mib()})
    return run_dir


def evaluate_run(run_dir: str | Path, device: str = "auto", data: str | Path | None = None) -> dict[str, Any]:
    """Score the test split of a fitted run; write ``metrics.json`` and ``predictions.npz``."""
    run = load_run(run_dir, device=device)
    cfg = run.config
    splits = D.load_splits(data or cfg["data"], cfg["category"], val_fraction=cfg["val_fraction"], seed=cfg["seed"])
    out = predict_loader(run.detector, make_loader(splits.test, run.image_size, cfg["batch_size"]), desc="test")
    metrics = compute_metrics(out, splits.test, run.threshold)
    fit_info = read_dict(Path(run_dir) / "fit.json", ("fit_seconds",))
    metrics.update({"method": cfg["method"], "category": cfg["category"], "fit_seconds": fit_info["fit_seconds"],
                    "predict_ms_per_image": out["ms_per_image"], "peak_rss_mib": peak_rss_mib(),
                    "model_sha256": run.model_sha256})
    np.savez_compressed(Path(run_dir) / "predictions.npz", image_scores=out["image_scores"],
                        labels=out["labels"], anomaly_maps=out["anomaly_maps"], gt_masks=out["gt_masks"],
                        defect_types=np.array([s.defect_type for s in splits.test]),
                        image_paths=np.array([str(s.image_path) for s in splits.test]))
    write_json(Path(run_dir) / "metrics.json", metrics)  # last: it marks the run as evaluated
    return metrics


def compute_metrics(out: dict[str, np.ndarray], samples: Sequence[D.Sample], threshold: float) -> dict[str, Any]:
    """Image/pixel AUROC, AUPRO, oracle F1-max, and precision/recall/F1 at the validation threshold."""
    labels, scores = out["labels"], out["image_scores"]
    maps, masks = out["anomaly_maps"].astype(np.float32), out["gt_masks"]
    result: dict[str, Any] = {
        "image_auroc": M.image_auroc(labels, scores), "pixel_auroc": M.pixel_auroc(masks, maps),
        "aupro": M.aupro(masks, maps), "f1_max_oracle": M.f1_max(labels, scores),
        **scores_at_threshold(labels, scores, threshold), "n_test_images": int(len(labels))}
    result["f1_max"] = result["f1_max_oracle"]  # same number, kept under the key name
    defect_types = np.array([s.defect_type for s in samples])
    good = defect_types == "good"
    per_type = {}
    for name in sorted(set(defect_types) - {"good"}):
        keep = good | (defect_types == name)
        per_type[name] = {"n": int((defect_types == name).sum()),
                          "image_auroc": M.image_auroc(labels[keep], scores[keep]),
                          "recall_at_threshold": float((scores[defect_types == name] >= threshold).mean())}
    result["per_defect_type"] = per_type
    return result


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Load a run folder written by :func:`fit_run`, checking every file it reads.

    Raises:
        FileNotFoundError: no such folder.
        anomaly.runs.RunFolderError: an incomplete or stale folder, or a malformed file (named).
    """
    run_dir = Path(run_dir)
    marker = check_run_dir(run_dir)
    detector = Detector.load(run_dir, device=resolve_device(device))
    config = read_config(run_dir, detector.name)
    metrics = read_metrics(run_dir, marker)
    return Run(run_dir, detector, config, read_threshold(run_dir), metrics, marker["model_sha256"])


def predict_paths(run: Run, paths: Sequence[str | Path], heatmap_dir: str | Path | None = None) -> list[dict]:
    """Score image files one by one; optionally write a heatmap PNG per image."""
    from anomaly.viz import save_heatmap_png

    results = []
    for path in paths:
        image = D.read_image(path)[None]  # (1, 3, H, W) at the file's resolution
        out = run.detector.predict(image)
        record = {"path": str(path), "score": float(out.image_scores[0]),
                  "is_anomalous": bool(out.image_scores[0] >= run.threshold), "heatmap": None}
        if heatmap_dir is not None:
            target = Path(heatmap_dir) / f"{Path(path).stem}_heatmap.png"
            save_heatmap_png(image[0], out.anomaly_maps[0], target, **display_range(run))
            record["heatmap"] = str(target)
        results.append(record)
    return results


def display_range(run: Run) -> dict[str, float]:
    """Heatmap colour range from validation good images: low = median map value, high = threshold-ish."""
    q = read_json(run.run_dir / "threshold.json")["validation_map_quantiles"]
    return {"vmin": float(q["50"]), "vmax": float(max(q["100"], q["50"] + 1e-8))}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def check_split_sizes(train: Sequence[D.Sample], validation: Sequence[D.Sample], val_fraction: float) -> None:
    """Refuse, before the fit, splits that leave nothing to fit on or nothing to set the threshold on."""
    if not validation:
        raise ValueError(f"the validation split is empty (--val-fraction {val_fraction} of {len(train)} train/good "
                         f"image(s), no validation/good folder): the threshold needs good validation images; "
                         f"use --val-fraction > 0 with at least 2 train/good images")
    if not train:
        raise ValueError(f"no training image is left after carving {len(validation)} validation image(s); "
                         f"lower --val-fraction or add train/good images")


def _map_quantiles(maps: np.ndarray) -> dict[str, float]:
    values = maps.astype(np.float32).ravel()
    return {str(q): float(np.percentile(values, q)) for q in (0, 50, 99, 100)}


def _subsample(samples: list[D.Sample], n: int | None, seed: int) -> list[D.Sample]:
    if n is None or n >= len(samples):
        return samples
    if n < 1:
        raise ValueError(f"max_train must be >= 1, got {n}")
    order = np.random.default_rng(seed).permutation(len(samples))[:n]
    return [samples[i] for i in sorted(order)]


def _has_field(method: str, name: str) -> bool:
    from dataclasses import fields

    from anomaly.models import get_detector_class

    return name in {f.name for f in fields(get_detector_class(method).config_class)}
