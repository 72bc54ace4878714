"""The one place that orchestrates a run: fit -> threshold -> save -> evaluate (predicting: :mod:`anomaly.inference`).

:func:`fit_and_evaluate` is both in turn: the one way the benchmark, sweeps and ablation make a run.
A run folder holds everything a run produced::

    config.json      what was asked for (data or folders, category, method, params, seed, ...) and the split
    datacheck.json   the data check `anomaly fit` ran first (anomaly.datacheck; absent when fit_run is called alone)
    model.json       method + detector config          (Detector.save)
    model.pt         detector state, tensors only      (Detector.save)
    fit.json         fit_seconds, training history (autoencoder loss per epoch)
    calibration.json out-of-sample scores of good training images + map quantiles  (anomaly.calibration)
    threshold.json   image threshold at a target false-reject rate, pixel threshold  (re-derivable)
    complete.json    completeness marker: the files + SHA-256 of model.pt (written last)
    metrics.json     test metrics, realised rates + model_sha256  (anomaly.evaluation, via evaluate_run)
    predictions.npz  test scores, labels, maps (float16), masks   (anomaly.evaluation, via evaluate_run)

A fit writes a hidden sibling folder and swaps it into place when complete (:mod:`anomaly.runs`),
so an interrupted re-fit leaves the previous run as it was, and a re-fit never keeps the previous
run's ``metrics.json``. :func:`anomaly.inference.load_run` checks the marker and every file it reads.

The decision thresholds and any normalisation come from good training images only (cross-fitted
out-of-sample scores, or a validation split for the autoencoder); the test set is only ever used
to measure. :func:`rethreshold_run` moves the operating point without refitting.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anomaly import calibration as C
from anomaly import evaluation as E
from anomaly import folders as F
from anomaly import layout as L
from anomaly.config import RunConfig
from anomaly.dataset import make_loader
from anomaly.geometry import Letterbox
from anomaly.inference import load_run, select_scorer
from anomaly.memory import peak_rss_mib
from anomaly.models import Detector, create_detector, get_detector_class
from anomaly.records import MetricsRecord, ThresholdRecord
from anomaly.runs import atomic_run_dir, check_run_dir, read_dict, read_predictions
from anomaly.thresholds import DEFAULT_ESTIMATOR, DEFAULT_PIXEL_FPR
from anomaly.utils import resolve_device, seed_everything, write_json

logger = logging.getLogger(__name__)




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
    params = detector_params(c)
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


def fit_and_evaluate(config: RunConfig, run_dir: str | Path) -> Path:
    """Fit ``config`` into ``run_dir`` (:func:`fit_run`) and score its test split (:func:`evaluate_run`):
    the one fit + evaluate that the benchmark, the sweeps and the ablation run. Returns the run folder."""
    run_dir = fit_run(config, run_dir)
    evaluate_run(run_dir, device=config.device)
    return run_dir


def evaluate_run(run_dir: str | Path, device: str = "auto", data: str | Path | None = None,
                 runtime: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Score the test split of a fitted run; write ``predictions.npz`` and ``metrics.json``.

    Args:
        runtime: ``"auto"`` (onnxruntime when it passes the parity check, else PyTorch), ``"torch"``
            or ``"onnx"`` (:func:`anomaly.inference.select_scorer`); ``predict_runtime`` in the
            metrics says which one ``predict_ms_per_image`` timed.
    """
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
    metrics = E.evaluation_metrics(E.image_area_only(out), splits.test, decision, pixel=test_data.has_masks)
    metrics["has_masks"] = test_data.has_masks
    fit_info = read_dict(Path(run_dir) / "fit.json", ("fit_seconds",))
    metrics.update({"method": cfg["method"], "category": cfg["category"], "fit_seconds": fit_info["fit_seconds"],
                    "predict_ms_per_image": out["ms_per_image"], "predict_runtime": used, "peak_rss_mib": peak_rss_mib(),
                    "model_sha256": run.model_sha256})
    E.write_predictions(run_dir, out, splits.test)
    E.write_metrics(run_dir, metrics)  # last: it marks the run as evaluated
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
    metrics = {**record.as_dict(), **E.evaluation_metrics(out, list(out["defect_types"]), decision,
                                                           pixel=record.get("has_masks", True))}
    E.write_metrics(run_dir, metrics)
    return {"threshold": decision.as_dict(), "metrics": metrics}


def check_split_sizes(train: Sequence[L.Sample], validation: Sequence[L.Sample], val_fraction: float) -> None:
    """Refuse, before the fit, splits that leave nothing to fit on or nothing to set the threshold on."""
    if not validation:
        raise ValueError(f"the validation split is empty (--val-fraction {val_fraction} of {len(train)} train/good "
                         f"image(s), no validation/good folder): the threshold needs good validation images; "
                         f"use --val-fraction > 0 with at least 2 train/good images")
    if not train:
        raise ValueError(f"no training image is left after carving {len(validation)} validation image(s); "
                         f"lower --val-fraction or add train/good images")


def _subsample(samples: list[L.Sample], n: int | None, seed: int) -> list[L.Sample]:
    if n is None or n >= len(samples):
        return samples
    if n < 1:
        raise ValueError(f"max_train must be >= 1, got {n}")
    order = np.random.default_rng(seed).permutation(len(samples))[:n]
    return [samples[i] for i in sorted(order)]


def detector_params(config: RunConfig) -> dict[str, Any]:
    """The detector parameters a fit of ``config`` uses: ``config.params``, with the run's seed when the
    detector has one and the parameters do not set it."""
    params = dict(config.params)
    if "seed" in {f.name for f in dataclasses.fields(get_detector_class(config.method).config_class)}:
        params.setdefault("seed", config.seed)
    return params
