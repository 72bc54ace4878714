"""Markdown conclusions written from a run's (or a study's) own numbers, so no notebook types one in.

One ``summarise_*`` per notebook section: the data (01), a fit (02), a run's metrics (03), the
true/false positives (04), the method comparison and the data-efficiency sweep (05).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from anomaly.calibration import read_calibration
from anomaly.run_results import RunResults, fitted_state_table
from anomaly.utils import read_json


def summarise_metrics(metrics: dict[str, Any]) -> str:
    """Markdown conclusions written from one run's ``metrics.json`` (no typed-in numbers)."""
    m = metrics
    auroc = m["image_auroc"]
    verdict = ("near perfect" if auroc >= 0.98 else "good" if auroc >= 0.9 else "useful but imperfect"
               if auroc >= 0.75 else "weak" if auroc >= 0.6 else "close to chance, which is 0.5")
    per_type = m.get("per_defect_type", {})
    ci = m.get("image_auroc_ci") or [np.nan, np.nan]
    flag_all = m.get("f1_flag_all", np.nan)
    lines = [f"**{m['method']}** on `{m['category']}` ({m['n_test_images']} test images):",
             f"- Image AUROC **{auroc:.3f}** (95 % bootstrap interval {ci[0]:.3f}-{ci[1]:.3f}; {verdict}): a random "
             f"defective image outscores a random good one {100 * auroc:.0f}% of the time.",
             f"- At the threshold set from good calibration images only ({m['threshold']:.4g}): recall {m['recall']:.2f} "
             f"({m['tp']} of {m['tp'] + m['fn']} defective caught), precision {m['precision']:.2f}, "
             f"{m['fp']} of {m['fp'] + m['tn']} good images falsely rejected; F1 {m['f1']:.3f}.",
             f"- Flagging every part, with no model at all, gives F1 {flag_all:.3f} (recall 1, precision = the test "
             f"set's defect rate). The ORACLE F1-max (threshold picked with the test labels) is "
             f"{m['f1_max_oracle']:.3f}, {m['f1_max_oracle'] - flag_all:+.3f} over that floor"
             + (": the ranking adds little beyond it." if m['f1_max_oracle'] - flag_all < 0.02 else ".")
             + f" The honest F1 at the calibrated threshold is {m['f1']:.3f}.",
             f"- Localisation: pixel AUROC {m['pixel_auroc']:.3f}, AUPRO@0.3 {m['aupro']:.3f}, AUPRO@0.05 "
             f"{m.get('aupro_fpr05', np.nan):.3f} (AUPRO weights every defect region equally; the 0.05 limit only "
             f"credits maps that flag few good pixels)."]
    if per_type:
        ranked = sorted(per_type.items(), key=lambda kv: kv[1]["image_auroc"])
        lines.append(f"- Hardest defect type: `{ranked[0][0]}` (AUROC {ranked[0][1]['image_auroc']:.3f}); easiest: "
                     f"`{ranked[-1][0]}` (AUROC {ranked[-1][1]['image_auroc']:.3f}).")
    return "\n".join(lines)


def summarise_comparison(table: pd.DataFrame, margins: dict[str, Any] | None = None) -> str:
    """Markdown: which method wins on each metric, each method's margin over the best baseline (with its paired
    interval, from :func:`anomaly.evidence.margins_over_baseline`), the flag-all F1, and how fast each is."""
    from anomaly.evidence import fmt_ci

    lines = []
    for method, margin in (margins or {}).items():
        parts = [f"{key.replace('_', ' ')} {fmt_ci(m['margin'], m['ci'], signed=True)}{'' if m['real'] else ' (not real)'}"
                 for key, m in sorted(margin.items())]
        lines.append(f"- **{method}** over the best baseline: " + "; ".join(parts) + ".")
    if "f1_flag_all" in table and table["f1_flag_all"].notna().any():
        lines.append(f"- Flagging every part gives F1 {table['f1_flag_all'].dropna().iloc[0]:.3f}; oracle F1-max per "
                     "method: " + ", ".join(f"{k} {v:.3f}" for k, v in table["f1_max_oracle"].items()) + ".")
    for column, label in (("image_auroc", "detection (image AUROC)"), ("pixel_auroc", "localisation (pixel AUROC)"),
                          ("aupro", "region overlap (AUPRO@0.3)"), ("f1", "F1 at the calibrated threshold")):
        ranked = table[column].sort_values(ascending=False)
        others = ", ".join(f"{k} {v:.3f}" for k, v in ranked.iloc[1:].items())
        lines.append(f"- Best {label}: **{ranked.index[0]}** ({ranked.iloc[0]:.3f}){'; ' + others if others else ''}.")
    fastest = table["predict_ms_per_image"].idxmin()
    lines.append(f"- Fastest inference: **{fastest}** ({table.loc[fastest, 'predict_ms_per_image']:.1f} ms/image on "
                 f"this machine); fit times: " + ", ".join(f"{k} {v:.0f} s" for k, v in table["fit_seconds"].items())
                 + ".")
    return "\n".join(lines)


def summarise_efficiency(table: pd.DataFrame, metric: str = "image_auroc") -> str:
    """Markdown: how ``metric`` (mean over seeds) grows with the number of good training images (:func:`anomaly.sweeps.data_efficiency`)."""
    lines = []
    table = table.groupby(["method", "n_train"], as_index=False)[metric].mean()  # mean over seeds
    for method, rows in table.groupby("method"):
        rows = rows.sort_values("n_train")
        best = rows[metric].max()
        enough = rows[rows[metric] >= best - 0.02].iloc[0]
        lines.append(f"- **{method}**: {metric} {rows[metric].iloc[0]:.3f} with {rows['n_train'].iloc[0]} good images, "
                     f"{rows[metric].iloc[-1]:.3f} with all {rows['n_train'].iloc[-1]}; it first comes within 0.02 of "
                     f"its best ({best:.3f}) at {int(enough['n_train'])} images.")
    return "\n".join(lines)


def summarise_cases(results: RunResults, cases: dict[str, np.ndarray]) -> str:
    """Markdown: how many TP/FN/FP there are and which defect types are missed."""
    p, thr = results.predictions, results.threshold
    labels, flagged = p["labels"].astype(bool), p["image_scores"] >= thr
    missed = pd.Series(p["defect_types"][labels & ~flagged]).value_counts()
    lines = [f"At the calibrated threshold {thr:.4g}, **{results.method}** catches {int((labels & flagged).sum())} of "
             f"{int(labels.sum())} defective images and falsely rejects {int((~labels & flagged).sum())} of "
             f"{int((~labels).sum())} good ones."]
    lines.append("- Missed defects by type: " + ", ".join(f"`{k}` {v}" for k, v in missed.items()) + "."
                 if len(missed) else "- No defective image is missed.")
    if len(cases["false positives"]):
        worst = p["image_scores"][cases["false positives"][0]]
        lines.append(f"- The worst false positive scores {worst:.4g}, {worst / thr:.2f}x the threshold.")
    return "\n".join(lines)


def summarise_data(counts: pd.DataFrame, areas: pd.DataFrame, std_image: torch.Tensor) -> str:
    """Markdown conclusions of the data exploration, from the counts, defect areas and per-pixel std."""
    n_defect_types = len(counts.index) - 2  # minus good and total
    percent = 100.0 * areas["area_fraction"]
    by_type = percent.groupby(areas["defect_type"]).median().sort_values()
    std = std_image.flatten()
    good = counts.loc["good"]
    lines = [f"- {int(good.get('train', 0) + good.get('validation', 0))} good images for training and validation, "
             f"{int(counts.loc['total'].get('test', 0))} test images over {n_defect_types} defect types.",
             f"- Defects are small: the median defect covers {percent.median():.2f}% of the image "
             f"(smallest type `{by_type.index[0]}`: {by_type.iloc[0]:.2f}%, largest `{by_type.index[-1]}`: "
             f"{by_type.iloc[-1]:.2f}%): an image score must react to a change in that small a share of the pixels.",
             f"- Good images differ from each other: the per-pixel gray-level std over train/good averages "
             f"{float(std.mean()):.3f} and reaches {float(std.max()):.3f} (on a 0..1 scale). Where it is high, "
             f"the part's position or rotation varies, so a method that compares each pixel position with the "
             f"same position in other good images must accept large changes as normal there."]
    return "\n".join(lines)


def summarise_fit(run_dir: str | Path) -> str:
    """Markdown: what the run fitted, on how many images, how long it took, and its calibrated threshold."""
    run_dir = Path(run_dir)
    config, fit, thr = (read_json(run_dir / f) for f in ("config.json", "fit.json", "threshold.json"))
    model = read_json(run_dir / "model.json")
    state = fitted_state_table(run_dir)
    calibration = read_calibration(run_dir)
    val = np.asarray(calibration["scores"])
    rule = f"{thr.get('estimator', 'conformal')} threshold for a {thr.get('target_frr', 0.05):g} false-reject rate"
    lines = [f"- **{config['method']}** fitted on {fit['n_train']} good `{config['category']}` images at "
             f"{model['config']['image_size']} px in {fit['fit_seconds']:.1f} s on {config['device']}; the saved "
             f"state holds {state['values'].sum():,} numbers ({state['MiB'].sum():.1f} MiB).",
             f"- Threshold {thr['threshold']:.4g}: the {rule} from {len(val)} good {calibration['kind']} scores "
             f"(range {val.min():.4g} .. {val.max():.4g}); no test image was used."]
    lines += _feature_lines(model["config"], state, fit["n_train"])
    history = fit.get("history") or []
    if len(history) > 1:
        lines.append(f"- Training loss went from {history[0]:.4g} to {history[-1]:.4g} over {len(history)} epochs "
                     f"({history[-1] / history[0]:.2f}x); the last {min(5, len(history) - 1)} epoch(s) changed it by "
                     f"{100 * (history[-1] / history[-1 - min(5, len(history) - 1)] - 1):+.1f}% (a large change means "
                     f"more epochs would still help).")
    return "\n".join(lines)


def _feature_lines(config: dict[str, Any], state: pd.DataFrame, n_train: int) -> list[str]:
    """Feature-grid and memory-bank facts for backbone methods (nothing for the autoencoder)."""
    if "strides" not in config:
        return []
    stride, size = min(config["strides"]), config["image_size"]
    grid = -(-size // stride)
    lines = [f"- Features: `{config['backbone']}` maps each image to a {grid} x {grid} grid of patch features "
             f"(stride {stride} px at {size} px, strides {config['strides']} concatenated)."]
    if "memory_bank" in state.index:
        rows, dims = state.loc["memory_bank", "shape"]
        total = n_train * grid * grid
        lines.append(f"- Memory bank: {rows:,} of the {total:,} training patch features ({100 * rows / total:.2f}%, "
                     f"coreset ratio {config['coreset_ratio']:g}), each {dims}-dimensional.")
    if "inv_covariance" in state.index:
        positions, dims, _ = state.loc["inv_covariance", "shape"]
        lines.append(f"- Gaussians: one per position, {positions:,} positions, each a {dims}-dimensional mean and "
                     f"a {dims} x {dims} inverse covariance ({state.loc['inv_covariance', 'MiB']:.0f} MiB in all); "
                     f"the {dims} channels are a seeded random subset of the concatenated features.")
    return lines
