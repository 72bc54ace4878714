"""PatchCore ablation: one change at a time from the defaults, scored on the same test images.

``anomaly ablation --data ROOT --categories screw,bottle --out DIR`` fits every variant of
:data:`VARIANTS` on all of ``train/good`` as an ordinary run (:func:`anomaly.pipeline.fit_and_evaluate`:
cross-fitted calibration, ``metrics.json``) in ``DIR/<category>/<variant>/`` (an ensemble's members
in ``member-<k>/`` below it), scores the test split with the loaded runs and reports image AUROC,
pixel AUROC and AUPRO (FPR <= 0.3) with 95 % bootstrap intervals, and each variant's
paired-bootstrap difference from ``default`` on the same images
(:func:`anomaly.bootstrap.paired_margins`) -- the evidence a change of default needs, regressions
included. Maps and masks are compared at one resolution (:data:`EVAL_SIZE`) whatever the variant's
input size. Fit seconds (the run's fit, cross-fitting included) and PyTorch milliseconds per test
image are recorded beside the load average, as costs.

Nothing here is tuned on test labels by a program: the table is for a person to read, over
several categories, before changing a default in :class:`anomaly.models.patchcore.PatchCoreConfig`.
Each (category, variant)'s scores and maps at :data:`EVAL_SIZE` are kept in
``DIR/<category>/<variant>.npz`` with the full configuration it was fitted with (:func:`variant_config`), so an interrupted run resumes and a redefined variant, a
changed default or an unreadable file is fitted again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from anomaly import bootstrap as B
from anomaly import dataset as DS
from anomaly import layout as L
from anomaly import metrics as M
from anomaly.config import RunConfig
from anomaly.study.evidence import fmt_ci
from anomaly.models.patchcore import PatchCore, PatchCoreConfig
from anomaly.inference import load_run
from anomaly.pipeline import fit_and_evaluate
from anomaly.tables import to_markdown
from anomaly.utils import make_config, read_json, write_json

logger = logging.getLogger(__name__)

EVAL_SIZE = 320  # maps and masks compared at this side whatever the variant's input size
FLIP = "flip_tta"  # not a PatchCore parameter: average the maps and scores of the image and its mirror
ENSEMBLE = "ensemble"  # members (variants); each scaled by its own cross-fitted good scores, then averaged
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed-1": {"seed": 1},  # the defaults refitted with another coreset seed: the size of fit-to-fit noise
    "seed-2": {"seed": 2},
    "size-256": {"image_size": 256},
    "size-384": {"image_size": 384},
    "lite1": {"backbone": "efficientnet_lite1"},
    "lite2": {"backbone": "efficientnet_lite2"},
    "strides-8": {"strides": [8]},
    "strides-8-16-32": {"strides": [8, 16, 32]},
    "layer-dim-128": {"layer_dim": 128},
    "max-score": {"num_neighbors": 1},
    "k-3": {"num_neighbors": 3},
    "sigma-2": {"smooth_sigma": 2.0},
    "sigma-6": {"smooth_sigma": 6.0},
    "sigma-8": {"smooth_sigma": 8.0},
    "coreset-2pct": {"coreset_ratio": 0.02},
    "flip-tta": {FLIP: True},
    "ensemble-lite0-lite2": {ENSEMBLE: [{}, {"backbone": "efficientnet_lite2"}]},
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def run_ablation(data: str | Path, categories: Sequence[str], out: str | Path, variants: Sequence[str] | None = None,
                 device: str = "auto", batch_size: int = 8) -> str:
    """Run every (category, variant) not already in ``out`` and return the Markdown table (also written)."""
    variants = list(variants or VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if "default" not in variants:
        variants.insert(0, "default")  # every difference is taken against it
    out = Path(out)
    rows = []
    for category in categories:
        splits = L.load_splits(data, category, val_fraction=0.0)
        masks = _eval_masks(splits.test)
        predictions = {}
        for name in variants:
            path = out / category / f"{name}.npz"
            found = _load(path, masks, len(splits.test), variant_config(name))
            if found is None:
                runs = variant_runs(data, category, name, out / category / name, device, batch_size)
                _save(path, {**_run_variant(splits, name, device, batch_size, runs), "config": variant_config(name)})
                found = _load(path, masks, len(splits.test), variant_config(name))
            predictions[name] = found
        rows += _rows(category, predictions)
    frame = pd.DataFrame(rows)
    write_json(out / "ablation.json", {"eval_size": EVAL_SIZE, "variants": {v: VARIANTS[v] for v in variants},
                                       "rows": frame.to_dict(orient="records")})
    table = ablation_markdown(frame)
    (out / "ablation.md").write_text(table + "\n")
    (out / "summary.md").write_text(summary_markdown(frame) + "\n")
    return table


def variant_runs(data: str | Path, category: str, name: str, run_dir: Path, device: str,
                 batch_size: int) -> list[tuple[RunConfig, Path]]:
    """The run configuration and folder of each member of a variant (one, or an ensemble's ``member-<k>``)."""
    members = VARIANTS[name].get(ENSEMBLE) or [VARIANTS[name]]
    configs = [RunConfig(str(data), category, "patchcore", {k: v for k, v in m.items() if k != FLIP}, device=device,
                         val_fraction=0.0, batch_size=batch_size) for m in members]
    if len(configs) == 1:
        return [(configs[0], run_dir)]
    return [(config, run_dir / f"member-{k}") for k, config in enumerate(configs)]


def _run_variant(splits: L.Splits, name: str, device: str, batch_size: int,
                 runs: Sequence[tuple[RunConfig, Path]]) -> dict[str, Any]:
    """Fit the variant's runs on train/good and score the test split; scores, maps at EVAL_SIZE and costs."""
    members = VARIANTS[name].get(ENSEMBLE) or [VARIANTS[name]]
    load_before = os.getloadavg()[0]
    fitted = [_fit_member(splits, member, config, run_dir, batch_size, normalise=len(members) > 1)
              for member, (config, run_dir) in zip(members, runs)]
    fit_seconds = sum(float(read_json(run_dir / "fit.json")["fit_seconds"]) for _, run_dir in runs)
    size = max(detector.config.image_size for detector, _, _ in fitted)
    for detector, _, _ in fitted:  # warm-up: the first call pays for thread pools and caches
        detector.predict(torch.rand(1, 3, size, size))
    scores, maps, seconds = [], [], 0.0
    for batch in DS.make_loader(splits.test, size, batch_size):
        start = time.perf_counter()
        parts = [_predict(detector, batch["image"], flip) for detector, flip, _ in fitted]
        seconds += time.perf_counter() - start
        scores.append(np.mean([s / scale[0] for (s, _), (_, _, scale) in zip(parts, fitted)], axis=0))
        mean_map = np.mean([m / scale[1] for (_, m), (_, _, scale) in zip(parts, fitted)], axis=0)
        maps.append(F.interpolate(torch.from_numpy(mean_map)[:, None], size=(EVAL_SIZE, EVAL_SIZE), mode="bilinear",
                                  align_corners=False)[:, 0].numpy().astype(np.float16))
    logger.info("%s: fit %.1f s, %.1f ms per test image", name, fit_seconds, 1000 * seconds / len(splits.test))
    return {"image_scores": np.concatenate(scores), "anomaly_maps": np.concatenate(maps),
            "labels": np.array([s.label for s in splits.test]), "fit_seconds": fit_seconds,
            "ms_per_image": 1000 * seconds / len(splits.test), "load": [load_before, os.getloadavg()[0]]}


def _fit_member(splits: L.Splits, member: dict[str, Any], config: RunConfig, run_dir: Path, batch_size: int,
                normalise: bool) -> tuple[PatchCore, bool, tuple[float, float]]:
    """A fitted PatchCore (an ordinary run in ``run_dir``), its flip flag and the (score, map) scales that put
    ensemble members on one footing.

    Without ``normalise`` the scales are 1. With it, the scales are the median of the member's good
    cross-fitted calibration scores and the 99th percentile of its good calibration map values --
    good training images only, never the test split. ``calibration.json`` keeps the scores but only
    tail quantiles of the maps, so the (deterministic) cross-fit is run again here for the maps.
    """
    fit_and_evaluate(config, run_dir)
    detector = load_run(run_dir, device=config.device).detector
    flip = bool(member.get(FLIP, False))
    if not normalise:
        return detector, flip, (1.0, 1.0)
    loader = DS.make_loader(splits.train, detector.config.image_size, batch_size)
    calibration = detector.fit_crossfit(loader, folds=read_json(run_dir / "calibration.json")["folds"],
                                        seed=config.seed)
    scales = float(np.median(calibration.image_scores)), float(np.quantile(calibration.anomaly_maps, 0.99))
    return detector, flip, scales


def _predict(detector: PatchCore, images: torch.Tensor, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores (B,) and maps (B, S, S); with ``flip`` the mean over the image and its left-right mirror."""
    out = detector.predict(images)
    if not flip:
        return out.image_scores, out.anomaly_maps
    mirrored = detector.predict(images.flip(-1))
    return (out.image_scores + mirrored.image_scores) / 2, (out.anomaly_maps + mirrored.anomaly_maps[..., ::-1]) / 2


def _eval_masks(samples: Sequence[L.Sample]) -> np.ndarray:
    """(N, EVAL_SIZE, EVAL_SIZE) uint8 ground-truth masks, letterboxed like the images."""
    dataset = DS.AnomalyDataset(list(samples), EVAL_SIZE)
    return np.stack([dataset[i]["mask"].numpy() for i in range(len(dataset))]).astype(np.uint8)


def _save(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, **{k: np.asarray(v) for k, v in result.items()})
    partial.replace(path)  # a half-written file never looks complete


def variant_config(name: str) -> str:
    """The full PatchCore configuration(s) of a variant as JSON: what a stored result must have been fitted with."""
    members = VARIANTS[name].get(ENSEMBLE) or [VARIANTS[name]]
    configs = [dataclasses.asdict(make_config(PatchCoreConfig, {k: v for k, v in m.items() if k != FLIP}))
               | {FLIP: bool(m.get(FLIP, False))} for m in members]
    return json.dumps(configs, sort_keys=True)


def _load(path: Path, masks: np.ndarray, n_test: int, config: str) -> dict[str, Any] | None:
    """A stored result, or None when there is none, it is unreadable, or it was fitted with another configuration."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            out = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        logger.warning("%s is unreadable (%s): fitting it again", path, err)
        return None
    if str(out.get("config", "")) != config or len(out.get("image_scores", ())) != n_test:
        logger.info("%s was fitted with other settings or another test split: fitting it again", path)
        return None
    out["gt_masks"] = masks
    out["anomaly_maps"] = out["anomaly_maps"].astype(np.float32)
    return out


def _rows(category: str, predictions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: metrics with bootstrap intervals and the paired difference from ``default``.

    Every variant is resampled once, with the same weights (the test labels are shared), which
    pairs the resamples for the differences.
    """
    weights = B.stratified_weights(predictions["default"]["labels"])
    resampled = {name: B.resampled_metrics(pred, weights) for name, pred in predictions.items()}
    rows = []
    for name, pred in predictions.items():
        row = {"category": category, "variant": name, "fit_seconds": float(pred["fit_seconds"]),
               "ms_per_image": float(pred["ms_per_image"]), "load": [float(x) for x in pred["load"]]}
        row["image_auroc"] = M.image_auroc(pred["labels"], pred["image_scores"])
        row["pixel_auroc"] = M.pixel_auroc(pred["gt_masks"], pred["anomaly_maps"])
        row["aupro"] = M.aupro(pred["gt_masks"], pred["anomaly_maps"])
        diff = B.margins_from_samples(resampled[name], resampled["default"]) if name != "default" else {}
        for key in METRICS:
            row[f"{key}_ci"] = B.percentile_interval(resampled[name][key][1])
            row[f"{key}_delta"] = diff.get(key, {}).get("margin")
            row[f"{key}_delta_ci"] = diff.get(key, {}).get("ci")
        rows.append(row)
    return rows


def ablation_markdown(frame: pd.DataFrame) -> str:
    """The table: per category and variant, each metric with its interval and its difference from default."""
    table = pd.DataFrame({
        "category": frame["category"], "variant": frame["variant"],
        **{key: [fmt_ci(v, ci) for v, ci in zip(frame[key], frame[f"{key}_ci"])] for key in METRICS},
        **{f"Δ {key}": [fmt_ci(v, ci, signed=True) for v, ci in zip(frame[f"{key}_delta"], frame[f"{key}_delta_ci"])]
           for key in METRICS},
        "fit s": frame["fit_seconds"].round(1), "ms/img": frame["ms_per_image"].round(1)})
    return to_markdown(table.set_index(["category", "variant"]))


def summary_markdown(frame: pd.DataFrame, metrics: Sequence[str] = ("image_auroc", "aupro")) -> str:
    """Variants (rows) x (category, metric) differences from default with their paired intervals.

    A difference whose interval excludes 0 is in bold: the only ones the data distinguish from noise.
    """
    def cell(row: pd.Series, key: str) -> str:
        text = fmt_ci(row[f"{key}_delta"], row[f"{key}_delta_ci"], signed=True)
        lo, hi = row[f"{key}_delta_ci"] if isinstance(row[f"{key}_delta_ci"], list) else (0, 0)
        return f"**{text}**" if lo > 0 or hi < 0 else text

    short = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}
    table = {}
    for category, part in frame.groupby("category", sort=False):
        part = part.set_index("variant")
        base = part.loc["default"]
        for key in metrics:
            column = f"{category} {short[key]} ({base[key]:.3f})"
            table[column] = {v: cell(r, key) if v != "default" else "" for v, r in part.iterrows()}
    first = frame[frame["category"] == frame["category"].iloc[0]].set_index("variant")
    table[f"{frame['category'].iloc[0]} fit s / ms per image"] = {
        v: f"{r['fit_seconds']:.1f} / {r['ms_per_image']:.1f}" for v, r in first.iterrows()}
    return to_markdown(pd.DataFrame(table).rename_axis("variant"))
