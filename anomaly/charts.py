"""Charts of the study's numbers (ROC, PRO, score histograms, operating point, sweeps); every function RETURNS a Figure.

Built with ``matplotlib.figure.Figure``, not ``pyplot`` (headless, never shown twice, freed when
dropped), like the image figures of :mod:`anomaly.viz`, which re-exports these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from anomaly import metrics as M

if TYPE_CHECKING:
    import pandas as pd


def defect_size_figure(areas: pd.DataFrame) -> Figure:
    """Box + strip plot of defect area (% of the image, log scale) per defect type.

    Args:
        areas: one row per defective image with ``defect_type`` and ``area_fraction`` (``data.mask_areas``).
    """
    import seaborn as sns

    frame = areas.assign(area_percent=100.0 * areas["area_fraction"])
    types = sorted(frame["defect_type"].unique())
    fig, axes = new_figure(1, 1, cell=4.5)
    ax = axes[0, 0]
    ax.boxplot([frame.loc[frame["defect_type"] == t, "area_percent"] for t in types], positions=range(len(types)),
               tick_labels=types, showfliers=False)
    sns.stripplot(data=frame, x="defect_type", y="area_percent", order=types, ax=ax, size=3, color="tab:red")
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set(xlabel="defect type", ylabel="defect area (% of image, log scale)")
    ax.tick_params(axis="x", rotation=30)
    return fig


def roc_figure(predictions: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Image-level (left) and pixel-level (right) ROC curves, one line per method.

    Args:
        predictions: method -> dict with ``labels`` (N,), ``image_scores`` (N,), ``gt_masks`` (N, H, W)
            and ``anomaly_maps`` (N, H, W) (as in a run's ``predictions.npz``).
    """
    fig, axes = new_figure(1, 2, cell=4.2)
    for name, p in predictions.items():
        for ax, (labels, scores) in zip(axes[0], ((p["labels"], p["image_scores"]),
                                                  (p["gt_masks"].ravel(), p["anomaly_maps"].ravel()))):
            fpr, tpr = M.roc_curve_points(labels, scores)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {M.trapezoid(fpr, tpr):.3f})")
    for ax, level in zip(axes[0], ("image", "pixel")):
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{level}-level ROC",
               xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
    return fig


def pro_figure(predictions: Mapping[str, Mapping[str, np.ndarray]], fpr_limit: float = 0.3) -> Figure:
    """PRO curves (per-region overlap vs pixel FPR) with the integration limit marked; legend shows AUPRO."""
    fig, axes = new_figure(1, 1, cell=4.5)
    ax = axes[0, 0]
    grid = np.linspace(0.0, 1.0, 1001)
    for name, p in predictions.items():
        fpr, pro = M.pro_curve(p["gt_masks"], p["anomaly_maps"].astype(np.float32))
        score = M.trapezoid(fpr, pro, x_max=fpr_limit) / fpr_limit
        ax.plot(grid, np.interp(grid, fpr, pro), label=f"{name} (AUPRO@{fpr_limit:g} {score:.3f})")
    ax.axvline(fpr_limit, color="black", linestyle="--", linewidth=1, label=f"FPR limit {fpr_limit:g}")
    ax.axvspan(0, fpr_limit, color="gray", alpha=0.1)
    ax.set(xlabel="pixel false positive rate", ylabel="per-region overlap (PRO)", xlim=(0, 1), ylim=(0, 1.01),
           title="PRO curve")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def score_histogram(labels: np.ndarray, scores: np.ndarray, threshold: float,
                    oracle_threshold: float | None = None, bins: int = 30,
                    validation_scores: np.ndarray | None = None) -> Figure:
    """Histograms of image scores, good vs defective, with the validation and ORACLE thresholds.

    ``validation_scores``: the good calibration scores the threshold was set from (cross-fitted training
    images, or a validation split),
    drawn as an outline histogram.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fig, axes = new_figure(1, 1, cell=4.5)
    ax = axes[0, 0]
    calib = np.asarray(validation_scores if validation_scores is not None else [], dtype=np.float64)
    edges = np.histogram_bin_edges(np.concatenate([scores, calib, [threshold]]), bins=bins)
    if calib.size:
        ax.hist(calib, bins=edges, histtype="step", linewidth=2, color="tab:blue",
                label=f"good, out-of-sample calibration (n={calib.size})")
    ax.hist(scores[labels == 0], bins=edges, alpha=0.6, color="tab:green", label=f"good (n={int((labels == 0).sum())})")
    ax.hist(scores[labels == 1], bins=edges, alpha=0.6, color="tab:red",
            label=f"defective (n={int((labels == 1).sum())})")
    ax.axvline(threshold, color="black", linewidth=1.5, label=f"calibrated threshold {threshold:.4g}")
    if oracle_threshold is not None:
        ax.axvline(oracle_threshold, color="purple", linestyle="--", linewidth=1.5,
                   label=f"ORACLE F1 threshold {oracle_threshold:.4g} (uses test labels)")
    ax.set(xlabel="image anomaly score", ylabel="images per bin (filled: test; outline: calibration)",
           title="score distributions")
    ax.legend(fontsize=8)
    return fig


def confusion_figure(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Figure:
    """2x2 confusion matrix (seaborn heatmap) when ``score >= threshold`` means defective."""
    import seaborn as sns

    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    counts = np.zeros((2, 2), dtype=int)
    np.add.at(counts, (labels, predicted), 1)
    fig, axes = new_figure(1, 1, cell=3.8)
    names = ["good", "defective"]
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=axes[0, 0],
                xticklabels=names, yticklabels=names)
    axes[0, 0].set(xlabel="predicted", ylabel="true", title=f"threshold {threshold:.4g}")
    return fig


def loss_curve(history: Sequence[float], title: str = "autoencoder training loss") -> Figure:
    """Mean training loss per epoch (log scale)."""
    fig, axes = new_figure(1, 1, cell=4.0)
    ax = axes[0, 0]
    ax.plot(np.arange(1, len(history) + 1), history, marker="o", markersize=3)
    ax.set(xlabel="epoch", ylabel="mean loss", yscale="log", title=title)
    ax.grid(alpha=0.3)
    return fig


def data_efficiency_figure(table: pd.DataFrame, metrics: Sequence[str] = ("image_auroc", "pixel_auroc", "aupro"),
                           baselines: Mapping[str, Mapping[str, float]] | None = None) -> Figure:
    """Each metric vs number of good training images (log x): mean over seeds with a min-max band per method.

    Args:
        table: rows of ``method, seed, n_train`` and the metric columns (:func:`anomaly.study.sweeps.data_efficiency`).
        baselines: ``{name: {metric: value}}`` drawn as dotted horizontal lines (e.g. the no-learning baseline).
    """
    fig, axes = new_figure(1, len(metrics), cell=4.0)
    for ax, metric in zip(axes[0], metrics):
        for method, rows in table.groupby("method"):
            stats = rows.groupby("n_train")[metric].agg(["mean", "min", "max"])
            n_seeds = rows["seed"].nunique() if "seed" in rows else 1
            line, = ax.plot(stats.index, stats["mean"], marker="o",
                            label=f"{method} (mean of {n_seeds} fits; band: min-max)")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
        for name, values in (baselines or {}).items():
            if metric in values:
                ax.axhline(values[metric], color="grey", linestyle=":", label=f"{name} (no learning)")
        if metric.endswith("auroc"):
            ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--", label="chance")
        ax.set(xscale="log", xlabel="good training images", ylabel=metric.replace("_", " "), title=metric)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    return fig


def comparison_figure(metrics_by_method: Mapping[str, Mapping], keys: Sequence[str] = (
        "image_auroc", "pixel_auroc", "aupro", "aupro_fpr05")) -> Figure:
    """Grouped bars of each metric per method with its 95 % interval (``<key>_ci``) as an error bar."""
    fig, axes = new_figure(1, 1, cell=5.0)
    ax = axes[0, 0]
    methods = list(metrics_by_method)
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        m = metrics_by_method[method]
        values = np.array([m.get(k, np.nan) for k in keys], dtype=float)
        cis = np.array([m.get(f"{k}_ci") or [v, v] for k, v in zip(keys, values)], dtype=float)
        err = np.abs(cis.T - values)  # (2, K)
        ax.bar(np.arange(len(keys)) + j * width, values, width, yerr=err, capsize=3, label=method)
    for i, key in enumerate(keys):  # chance is 0.5 for an AUROC only; AUPRO has no such line
        if key.endswith("auroc"):
            ax.hlines(0.5, i - width / 2, i + 0.8 - width / 2, color="black", linewidth=0.8, linestyle="--",
                      label="chance (AUROC only)" if i == 0 else None)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [k.replace("_", " ") for k in keys])
    ax.set(ylim=(0, 1.05), ylabel="value (95 % bootstrap interval)", title="test metrics per method")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def operating_point_figure(calibration_scores: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                           metrics: Mapping) -> Figure:
    """The operating point: calibration vs test scores with the threshold, and the FRR-recall trade-off.

    Args:
        calibration_scores: (n,) out-of-sample scores of good TRAINING images (what set the threshold).
        labels: (N,) test labels. scores: (N,) test scores.
        metrics: ``metrics.json`` (``threshold, target_frr, frr, frr_ci, recall, recall_ci``).

    Returns:
        Left: histograms of calibration, test-good and test-defective scores and the threshold.
        Right: recall vs false-reject rate over all thresholds (an ORACLE curve: it uses test labels)
        with the target FRR and the realised point with its 95 % Wilson intervals.
    """
    cal, labels, scores = (np.asarray(a, dtype=np.float64) for a in (calibration_scores, labels, scores))
    threshold = float(metrics["threshold"])
    fig, axes = new_figure(1, 2, cell=4.5)
    ax = axes[0, 0]
    edges = np.histogram_bin_edges(np.concatenate([cal, scores, [threshold]]), bins=40)
    for values, colour, name in ((cal, "tab:blue", "calibration good (train, out-of-sample)"),
                                 (scores[labels == 0], "tab:green", "test good"),
                                 (scores[labels == 1], "tab:red", "test defective")):
        ax.hist(values, bins=edges, density=True, alpha=0.45, color=colour, label=f"{name} (n={len(values)})")
    ax.axvline(threshold, color="black", linewidth=1.5, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="image anomaly score", ylabel="density (each histogram has area 1)", title="scores")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    fpr, tpr = M.roc_curve_points(labels.astype(int), scores)
    ax.plot(fpr, tpr, color="purple", label="all thresholds (ORACLE: test labels)")
    if metrics.get("target_frr") is not None:
        ax.axvline(metrics["target_frr"], color="grey", linestyle="--", label=f"target FRR {metrics['target_frr']:g}")
    frr, recall = metrics["frr"], metrics["recall"]
    xerr = np.abs(np.array(metrics["frr_ci"])[:, None] - frr)
    yerr = np.abs(np.array(metrics["recall_ci"])[:, None] - recall)
    ax.errorbar([frr], [recall], xerr=xerr, yerr=yerr, fmt="o", color="black", capsize=3,
                label=f"realised: FRR {frr:.3f}, recall {recall:.3f} (95 % CI)")
    ax.set(xlabel="false-reject rate (good parts rejected)", ylabel="recall (defects caught)",
           xlim=(0, max(0.3, 2 * frr)), ylim=(0, 1.02), title="false rejects vs escapes")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def detection_by_size_figure(table: pd.DataFrame) -> Figure:
    """Recall at the threshold (Wilson) and image AUROC vs good (bootstrap), per defect-area bin, with 95 % intervals.

    Args:
        table: :func:`anomaly.study.sizes.size_table` (long: method, defect area, n, value and interval columns). Every
            method's bins hold the same images (areas from the original masks); x labels give their n.
    """
    fig, axes = new_figure(1, 2, cell=4.2)
    areas = list(dict.fromkeys(table["defect area"]))
    n = table.groupby("defect area", sort=False)["n"].first()
    labels = [f"{area}\n(n={n[area]})" for area in areas]
    methods = list(dict.fromkeys(table["method"]))
    offset = np.linspace(-0.15, 0.15, len(methods)) if len(methods) > 1 else np.zeros(1)
    for ax, (key, title) in zip(axes[0], (("recall", "recall at threshold (95 % Wilson)"),
                                          ("auroc", "image AUROC vs good (95 % bootstrap)"))):
        for j, method in enumerate(methods):
            rows = table[table["method"] == method].set_index("defect area").reindex(areas)
            x = np.arange(len(areas)) + offset[j]
            value = rows[key].to_numpy(dtype=float)
            err = np.abs(rows[[f"{key}_lo", f"{key}_hi"]].to_numpy(dtype=float).T - value)
            ax.errorbar(x, value, yerr=err, marker="o", capsize=2, label=method)
        if key == "auroc":
            ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--", label="chance")
        ax.set_xticks(np.arange(len(areas)), labels, fontsize=7)
        ax.set(ylim=(-0.02, 1.02), xlabel="defect area, % of image (n: the same images for every method)",
               ylabel=title.split(" (")[0], title=title)
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=8)
    return fig


def new_figure(nrows: int, ncols: int, cell: float = 3.0, squeeze: bool = False) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cell * ncols, cell * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=squeeze)
    return fig, axes
