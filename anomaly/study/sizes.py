"""Detection by defect size, the same images in the same bins for every method, with intervals.

A defect's area is measured ONCE, on its original ground-truth mask (:func:`anomaly.dataset.mask_areas`),
not on the mask resized to each model's input (a 128 px and a 256 px model would otherwise put the same
image in different bins). Per method and area bin: the number of defective images, recall at the run's
threshold with its 95 % Wilson interval, and the image AUROC of that bin's images against all good test
images with a 95 % stratified-bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from anomaly import bootstrap as B
from anomaly import dataset as DS
from anomaly import layout as L
from anomaly import metrics as M
from anomaly.rates import wilson_interval
from anomaly.utils import read_json

COLUMNS = ["method", "defect area", "area_from", "n", "recall", "recall_lo", "recall_hi", "auroc", "auroc_lo",
           "auroc_hi"]


def original_areas(result: Any) -> np.ndarray:
    """(N,) defect area (fraction of the image) of each test image of ``result``, from the original masks.

    Good images get 0. A run without a folder (a toy result) falls back to its own ``gt_masks``.
    """
    p = result.predictions
    run_dir = getattr(result, "run_dir", None)
    if run_dir is None or not (Path(run_dir) / "config.json").is_file():
        return np.asarray(p["gt_masks"]).reshape(len(p["labels"]), -1).astype(bool).mean(1)

    cfg = read_json(Path(run_dir) / "config.json")
    test = L.load_splits(cfg["data"], cfg["category"], val_fraction=cfg["val_fraction"], seed=cfg["seed"]).test
    areas = DS.mask_areas([s for s in test if s.label == 1])
    by_path = dict(zip(areas["image_path"], areas["area_fraction"]))
    return np.array([by_path.get(str(path), 0.0) for path in p["image_paths"]], dtype=np.float64)


def area_label(lo: float, hi: float) -> str:
    """``0.05-0.1 %`` (``>= 1 %`` for the last, open bin)."""
    return f">= {100 * lo:.2g} %" if hi >= 1.0 else f"{100 * lo:.2g}-{100 * hi:.2g} %"


def size_table(results: Sequence[Any], bins: Sequence[float] = M.SIZE_BINS, n_resamples: int = B.N_RESAMPLES,
               seed: int = B.SEED) -> pd.DataFrame:
    """Long table, one row per (method, non-empty area bin): n, recall and AUROC vs good with their intervals."""
    areas = original_areas(results[0])
    labels = np.asarray(results[0].predictions["labels"]).astype(bool)
    rows = []
    for i, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
        last = i == len(bins) - 2
        in_bin = labels & (areas >= lo) & ((areas <= hi) if last else (areas < hi))
        if not in_bin.any():
            continue
        keep = in_bin | ~labels  # this bin's defective images and every good one
        weights = B.stratified_weights(labels[keep], n_resamples, seed)
        for r in results:
            scores = np.asarray(r.predictions["image_scores"], dtype=np.float64)
            caught = int((scores[in_bin] >= r.threshold).sum())
            rec_lo, rec_hi = wilson_interval(caught, int(in_bin.sum()))
            row = {"method": r.method, "defect area": area_label(lo, hi), "area_from": lo, "n": int(in_bin.sum()),
                   "recall": caught / in_bin.sum(), "recall_lo": rec_lo, "recall_hi": rec_hi,
                   "auroc": np.nan, "auroc_lo": np.nan, "auroc_hi": np.nan}
            if (~labels).any():
                row["auroc"] = M.image_auroc(labels[keep], scores[keep])
                samples = B.image_auroc_samples(labels[keep], scores[keep], weights)
                row["auroc_lo"], row["auroc_hi"] = B.percentile_interval(samples)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rows: area bins (with n); columns: per method, recall and AUROC vs good as ``value [lo, hi]`` strings."""
    def cell(v: float, lo: float, hi: float) -> str:
        return "" if np.isnan(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"

    frame = table.assign(**{"recall at threshold": [cell(*r) for r in table[["recall", "recall_lo", "recall_hi"]].to_numpy()],
                            "image AUROC vs good": [cell(*r) for r in table[["auroc", "auroc_lo", "auroc_hi"]].to_numpy()]})
    frame["defect area (n)"] = frame["defect area"] + " (n=" + frame["n"].astype(str) + ")"
    wide = frame.pivot_table(index="defect area (n)", columns="method", values=["recall at threshold",
                             "image AUROC vs good"], aggfunc="first", sort=False)
    order = list(dict.fromkeys(frame["defect area (n)"]))
    return wide.reindex(order)[["recall at threshold", "image AUROC vs good"]]


def summarise(table: pd.DataFrame, floor: float = 0.7, min_n: int = 5) -> str:
    """One line per method: the area bins (of >= ``min_n`` images) whose AUROC interval stays below ``floor``,
    or those whose interval includes chance (0.5)."""
    lines = []
    for method, rows in table.groupby("method", sort=False):
        rows = rows[rows["n"] >= min_n]
        weak = [f"{r['defect area']} (AUROC {r['auroc']:.2f} [{r['auroc_lo']:.2f}, {r['auroc_hi']:.2f}], n={r['n']})"
                for _, r in rows.iterrows() if r["auroc_hi"] < floor]
        chance = [r["defect area"] for _, r in rows.iterrows() if r["auroc_lo"] <= 0.5 <= r["auroc_hi"]]
        if weak:
            text = f"cannot separate defects of area {', '.join(weak)} from good parts (whole interval below {floor:g})"
        else:
            text = f"has no area bin of >= {min_n} images whose AUROC interval lies wholly below {floor:g}"
        if chance:
            text += f"; its interval includes chance (0.5) for {', '.join(chance)}"
        lines.append(f"- **{method}** {text}.")
    return "\n".join(lines)
