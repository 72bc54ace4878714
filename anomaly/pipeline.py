"""The one place that orchestrates a run: fit -> threshold -> save -> evaluate -> predict.

A run folder holds everything a run produced::

    config.json      what was asked for (data or folders, category, method, params, seed, ...) and the split
    datacheck.json   the data check `anomaly fit` ran first (anomaly.datacheck; absent when fit_run is called alone)
    model.json       method + detector config          (Detector.save)
    model.pt         detector state, tensors only      (Detector.save)
    fit.json         fit_seconds, training history (autoencoder loss per epoch)
    calibration.json out-of-sample scores of good training images + map quantiles  (anomaly.calibration)
    threshold.json   image threshold at a target false-reject rate, pixel threshold  (re-derivable)
    complete.json    completeness marker: the files + SHA-256 of model.pt (written last)
    metrics.json     test metrics, realised rates + model_sha256  (evaluate_run, rethreshold_run)
    predictions.npz  test scores, labels, maps (float16), masks   (evaluate_run)

A fit writes a hidden sibling folder and swaps it into place when complete (:mod:`anomaly.runs`),
so an interrupted re-fit leaves the previous run as it was, and a re-fit never keeps the previous
run's ``metrics.json``. :func:`load_run` checks the marker and every file it reads.

The decision thresholds and any normalisation come from good training images only (cross-fitted
out-of-sample scores, or a validation split for the autoencoder); the test set is only ever used
to measure. :func:`rethreshold_run` moves the operating point without refitting.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anomaly import calibration as C
from anomaly import data as D
from anomaly import folders as F
from anomaly import metrics as M
from anomaly.config import RunConfig
from anomaly.geometry import Letterbox
from anomaly.models import Detector, create_detector
from anomaly.regions import find_regions
from anomaly.records import MetricsRecord, ThresholdRecord
from anomaly.runs import atomic_run_dir, check_run_dir, read_config, read_dict, read_predictions
from anomaly.thresholds import DEFAULT_ESTIMATOR, DEFAULT_PIXEL_FPR, scores_at_threshold
from anomaly.uncertainty import uncertainty_metrics
from anomaly.utils import resolve_device, seed_everything, write_json

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """A trained run loaded from its folder."""

    run_dir: Path
    detector: Detector
    config: dict[str, Any]
    threshold: float
    metrics: dict[str, Any] | None
    model_sha256: str = ""  # fingerprint of model.pt from complete.json
    pixel_threshold: float | None = None  # defect-region threshold (None: no regions)

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
    scores, maps, masks, labels, hws, seconds = [], [], [], [], [], 0.0
    for batch in tqdm(loader, desc=desc, leave=False):
        start = time.perf_counter()
        out = detector.predict(batch["image"])
        seconds += time.perf_counter() - start
        scores.append(out.image_scores)
        maps.append(zero_pad(out.anomaly_maps.astype(np.float32), batch.get("hw")))  # float16 only when written
        masks.append(batch["mask"].numpy().astype(np.uint8))
        labels.append(np.asarray(batch["label"]))
        hws.append(np.asarray(batch["hw"]) if "hw" in batch else np.zeros((len(out.image_scores), 2), np.int64))
    n = sum(len(s) for s in scores)
    return {"image_scores": np.concatenate(scores).astype(np.float64), "anomaly_maps": np.concatenate(maps),
            "gt_masks": np.concatenate(masks), "labels": np.concatenate(labels).astype(np.int64),
            "hw": np.concatenate(hws), "ms_per_image": 1000.0 * seconds / max(n, 1)}


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


def zero_pad(maps: np.ndarray, hws: torch.Tensor | None) -> np.ndarray:
    """(B, S, S) canvas maps with the letterbox pad of non-square inputs (``hws`` (B, 2)) set to 0."""
    if hws is None:
        return maps
    for i, (h, w) in enumerate(hws.tolist()):
        if h != w:
            maps[i] = Letterbox(h, w, maps.shape[-1]).zero_pad(maps[i])
    return maps


@atomic_run_dir
def fit_run(config: RunConfig, run_dir: str | Path, data_check: Any = None) -> Path:
    """Fit ``config.method`` on the good training images (``train/good`` of ``config.data/config.category``,
    or the ``config.good`` folder), calibrate the decision, write a run folder (``config.json`` records
    ``config``, the resolved defaults, the split sizes and, for plain folders, the good images held out
    for the test).

    The folder is written beside ``run_dir`` and swapped in, marked complete, only when the fit has
    succeeded; until then a previous run in ``run_dir`` stays untouched.

    Args:
        data_check: the :class:`anomaly.datacheck.DataCheck` of this data (``anomaly fit`` runs it first):
            written as ``datacheck.json``; its held-out draw (duplicates kept together) is used.

    Returns:
        The run folder.
    """
    run_dir, c = Path(run_dir), config
    seed_everything(c.seed)
    dev = resolve_device(c.device)
    params = dict(c.params)
    if _has_field(c.method, "seed"):
        params.setdefault("seed", c.seed)
    detector = create_detector(c.method, params, device=dev)  # validates params before any work
    n_folds = C.resolve_folds(detector, c.folds)
    val_fraction = (0.0 if n_folds else 0.1) if c.val_fraction is None else c.val_fraction
    data = F.run_data(dataclasses.asdict(c), val_fraction, held_out=getattr(data_check, "held_out_good", None))
    splits = data.splits
    pool = splits.train + splits.validation if n_folds else splits.train  # cross-fit: every good image
    train = _subsample(pool, c.max_train, c.seed)
    if c.folds is None and n_folds:
        n_folds = min(n_folds, len(train))  # the default adapts to few-image fits (data-efficiency sweeps)
    if not n_folds:
        check_split_sizes(train, splits.validation, val_fraction)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {
        **dataclasses.asdict(c), "params": params, "device": str(dev), "val_fraction": val_fraction,
        "n_train": len(train), "n_validation": 0 if n_folds else len(splits.validation), **data.record})
    if data_check is not None:
        data_check.write(run_dir / "datacheck.json")
    size = detector.config.image_size
    logger.info("fitting %s on %d %s images (%d px) on %s, calibration: %s", c.method, len(train), c.category, size,
                dev, f"{n_folds}-fold cross-fit" if n_folds else "validation split")
    validation = None if n_folds else make_loader(splits.validation, size, c.batch_size)
    calibration, fit_seconds = C.fit_and_calibrate(
        detector, make_loader(train, size, c.batch_size, shuffle=not n_folds, seed=c.seed), n_folds, c.seed,
        validation)
    detector.save(run_dir)
    calibration.write(run_dir)
    C.write_decision(run_dir, calibration, target_frr=c.target_frr, estimator=c.estimator, pixel_fpr=c.pixel_fpr)
    write_json(run_dir / "fit.json", {"fit_seconds": fit_seconds, "n_train": len(train),
                                      "history": list(getattr(detector, "history", [])),
                                      "peak_rss_mib": peak_rss_mib()})
    return run_dir


def evaluate_run(run_dir: str | Path, device: str = "auto", data: str | Path | None = None,
                 runtime: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Score the test split of a fitted run; write ``predictions.npz`` and ``metrics.json``.

    Args:
        runtime: ``"auto"`` (onnxruntime when it passes the parity check, else PyTorch), ``"torch"``
            or ``"onnx"`` (:func:`anomaly.export.select_scorer`); ``predict_runtime`` in the
            metrics says which one ``predict_ms_per_image`` timed.
    """
    from anomaly.export import select_scorer

    run = load_run(run_dir, device=device)
    cfg = run.config
    test_data = F.run_data(cfg, cfg["val_fraction"], data=data)
    splits = test_data.splits
    labels = [s.label for s in splits.test]
    note = F.evaluation_note(labels.count(0), labels.count(1))
    if note:
        raise ValueError(f"run {run_dir} has no test evaluation -- {note}")
    scorer, used = select_scorer(run, runtime, threads=threads)
    out = predict_loader(scorer, make_loader(splits.test, run.image_size, cfg["batch_size"]), desc="test")
    decision = ThresholdRecord.read(run_dir)
    metrics = evaluation_metrics(image_area_only(out), splits.test, decision, pixel=test_data.has_masks)
    metrics["has_masks"] = test_data.has_masks
    fit_info = read_dict(Path(run_dir) / "fit.json", ("fit_seconds",))
    metrics.update({"method": cfg["method"], "category": cfg["category"], "fit_seconds": fit_info["fit_seconds"],
                    "predict_ms_per_image": out["ms_per_image"], "predict_runtime": used, "peak_rss_mib": peak_rss_mib(),
                    "model_sha256": run.model_sha256})
    np.savez_compressed(Path(run_dir) / "predictions.npz", image_scores=out["image_scores"],
                        labels=out["labels"], anomaly_maps=out["anomaly_maps"].astype(np.float16),
                        gt_masks=out["gt_masks"], defect_types=np.array([s.defect_type for s in splits.test]),
                        image_paths=np.array([str(s.image_path) for s in splits.test]))
    MetricsRecord.from_dict(metrics).write(run_dir)  # last: it marks the run as evaluated
    return metrics


def rethreshold_run(run_dir: str | Path, target_frr: float, estimator: str = DEFAULT_ESTIMATOR,
                    pixel_fpr: float | None = None) -> dict[str, Any]:
    """Move the operating point without refitting: re-derive ``threshold.json`` from ``calibration.json``.

    When the run was evaluated, ``metrics.json`` is recomputed from the stored ``predictions.npz``.

    Args:
        pixel_fpr: ``None`` keeps the run's per-pixel false-positive rate.

    Returns:
        ``{"threshold": threshold.json record, "metrics": new metrics or None}``.
    """
    run_dir = Path(run_dir)
    marker = check_run_dir(run_dir)
    calibration = C.read_calibration(run_dir)
    if pixel_fpr is None:
        pixel_fpr = ThresholdRecord.read(run_dir).pixel_fpr or DEFAULT_PIXEL_FPR
    decision = C.write_decision(run_dir, calibration, target_frr=target_frr, estimator=estimator,
                                pixel_fpr=pixel_fpr)
    record = MetricsRecord.read_current(run_dir, marker["model_sha256"])
    if record is None or not (run_dir / "predictions.npz").is_file():
        return {"threshold": decision.as_dict(), "metrics": None}
    out = read_predictions(run_dir)
    metrics = {**record.as_dict(), **evaluation_metrics(out, list(out["defect_types"]), decision,
                                                         pixel=record.get("has_masks", True))}
    MetricsRecord.from_dict(metrics).write(run_dir)
    return {"threshold": decision.as_dict(), "metrics": metrics}


def evaluation_metrics(out: dict[str, np.ndarray], samples: Sequence[D.Sample | str],
                       decision: ThresholdRecord, pixel: bool = True) -> dict[str, Any]:
    """:func:`compute_metrics` at the decision's threshold plus the realised rates and region detection
    (``pixel=False``: a test set without masks, image-level metrics only)."""
    return {**compute_metrics(out, samples, float(decision["threshold"]), pixel),
            **C.decision_metrics(out, decision, regions=pixel)}


def compute_metrics(out: dict[str, np.ndarray], samples: Sequence[D.Sample | str], threshold: float,
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
    metrics = MetricsRecord.read_current(run_dir, marker["model_sha256"])
    decision = ThresholdRecord.read(run_dir)
    return Run(run_dir, detector, config, decision.threshold, None if metrics is None else metrics.as_dict(),
               marker["model_sha256"], decision.pixel_threshold)


def predict_paths(run: Run, paths: Sequence[str | Path], heatmap_dir: str | Path | None = None,
                  scorer: Any = None) -> list[dict]:
    """Score image files one by one (with ``scorer``, default the detector); optionally write heatmap PNGs.

    The records of :func:`iter_predictions`, as a list.
    """
    return list(iter_predictions(run, paths, heatmap_dir, scorer))


def iter_predictions(run: Run, paths: Sequence[str | Path], heatmap_dir: str | Path | None = None,
                     scorer: Any = None) -> Iterator[dict]:
    """One record per image (path, score, is_anomalous, heatmap, regions), as each is scored.

    ``path`` and ``heatmap`` are :func:`anomaly.utils.printable` (a non-UTF-8 file name as ``\\xNN``).

    Raises:
        ValueError: an image that cannot be decoded, or a non-finite score (named).
    """
    from anomaly.utils import printable
    from anomaly.viz import save_heatmap_png

    scorer = run.detector if scorer is None else scorer
    for path in paths:
        image = D.read_image(path)[None]  # (1, 3, H, W) at the file's resolution
        out = scorer.predict(image)
        score = float(out.image_scores[0])
        if not np.isfinite(score):
            raise ValueError(f"{printable(str(path))}: the model produced a non-finite score ({score})")
        record = {"path": printable(str(path)), "score": score, "is_anomalous": bool(score >= run.threshold),
                  "heatmap": None, "regions": regions_of(run, out.anomaly_maps[0])}
        if heatmap_dir is not None:
            from anomaly.inspection import heatmap_name

            target = Path(heatmap_dir) / heatmap_name(path)  # same-named files in other folders do not collide
            save_heatmap_png(image[0], out.anomaly_maps[0], target, **display_range(run))
            record["heatmap"] = printable(str(target))
        yield record


def regions_of(run: Run, anomaly_map: np.ndarray) -> list[dict]:
    """Defect regions of one (H, W) map at the run's pixel threshold (bboxes in the map's = input's pixels)."""
    return [] if run.pixel_threshold is None else find_regions(anomaly_map, run.pixel_threshold)


def display_range(run: Run | str | Path) -> dict[str, float | None]:
    """Heatmap colour range of a run (or run folder) from good calibration maps: low = median map value,
    high = their maximum; both ``None`` (each map its own range) when the run recorded no map quantiles."""
    q = C.read_calibration(getattr(run, "run_dir", run)).map_summary()
    if q is None:
        return {"vmin": None, "vmax": None}
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
