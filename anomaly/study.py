"""Helpers the notebooks call: tables, example selection, and conclusions written from a run's numbers.

The notebooks stay thin (a parameters cell, short calls): loading a run's predictions
(:func:`load_results`), the data-exploration statistics, what a detector fitted, which test images are
true/false positives and negatives, the data-efficiency sweep, and the markdown conclusions
(``summarise_*``) that quote the run's own numbers, so no number in a notebook is typed in by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from anomaly import data as D
from anomaly import metrics as M
from anomaly.calibration import map_summary, read_calibration
from anomaly.runs import is_evaluated
from anomaly.utils import make_config, read_json


@dataclass
class RunResults:
    """What a run folder holds after ``evaluate_run``: predictions, metrics and the calibrated threshold."""

    run_dir: Path
    method: str
    predictions: dict[str, np.ndarray]  # image_scores, labels, defect_types, image_paths, anomaly_maps, gt_masks
    metrics: dict[str, Any]
    threshold: float
    validation_scores: np.ndarray
    display_range: tuple[float, float]  # heatmap colour range from validation good maps (median .. max)

    @property
    def oracle_threshold(self) -> float:
        """The F1-maximising threshold chosen with the TEST labels (an oracle, for comparison only)."""
        return M.f1_max_threshold(self.predictions["labels"], self.predictions["image_scores"])[1]

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """Test images ``indices`` at the maps' resolution: (K, 3, S, S)."""
        size = self.predictions["anomaly_maps"].shape[-1]
        images = [D.read_image(self.predictions["image_paths"][i], size) for i in indices]
        return torch.stack(images) if images else torch.empty(0, 3, size, size)

    def titles(self, indices: Sequence[int]) -> list[str]:
        """``"<defect type> <score>"`` for each index."""
        p = self.predictions
        return [f"{p['defect_types'][i]} {p['image_scores'][i]:.3g}" for i in indices]

    def gallery(self, indices: Sequence[int]) -> dict[str, Any]:
        """Keyword arguments of :func:`anomaly.viz.heatmap_gallery` for test images ``indices``."""
        indices = np.asarray(indices, dtype=int)
        return {"images": self.images(indices), "anomaly_maps": self.predictions["anomaly_maps"][indices],
                "gt_masks": self.predictions["gt_masks"][indices], "titles": self.titles(indices),
                "vmin": self.display_range[0], "vmax": self.display_range[1], "threshold": self.threshold}


def load_results(run_dir: str | Path) -> RunResults:
    """Read ``predictions.npz``, ``metrics.json`` and ``threshold.json`` of an evaluated run."""
    run_dir = Path(run_dir)
    if not (run_dir / "predictions.npz").is_file():
        raise FileNotFoundError(f"{run_dir}/predictions.npz not found: run evaluate_run (notebook 03) first")
    with np.load(run_dir / "predictions.npz") as npz:
        predictions = {k: npz[k] for k in npz.files}
    predictions["anomaly_maps"] = predictions["anomaly_maps"].astype(np.float32)
    thr, calibration = read_json(run_dir / "threshold.json"), read_calibration(run_dir)
    q = map_summary(calibration)
    metrics = read_json(run_dir / "metrics.json")
    return RunResults(run_dir, metrics["method"], predictions, metrics, float(thr["threshold"]),
                      np.asarray(calibration["scores"]), (float(q["50"]), float(max(q["100"], q["50"] + 1e-8))))


def metrics_table(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per evaluated run (index: method): the test metrics, fit time and speed from ``metrics.json``."""
    columns = ["image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "f1", "precision", "recall", "f1_max_oracle",
               "f1_flag_all", "fit_seconds", "predict_ms_per_image"]
    rows = {}
    for run_dir in run_dirs:
        metrics = read_json(Path(run_dir) / "metrics.json")
        rows[metrics["method"]] = {c: metrics.get(c, np.nan) for c in columns}
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("method")


def per_defect_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Per defect type (rounded): test images, image AUROC (that type vs good) with its 95 % interval, recall
    at the threshold, AUPRO@0.3 with its interval."""
    from anomaly.evidence import fmt_ci

    rows = {name: {"n": e["n"], "image AUROC [95 % CI]": fmt_ci(e["image_auroc"], e.get("image_auroc_ci")),
                   "recall at threshold": round(e["recall_at_threshold"], 2),
                   "AUPRO@0.3 [95 % CI]": fmt_ci(e.get("aupro"), e.get("aupro_ci"))}
            for name, e in metrics["per_defect_type"].items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("defect_type")


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
    """Markdown: how ``metric`` (mean over seeds) grows with the number of good training images (:func:`data_efficiency`)."""
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


def data_efficiency(data: str | Path, category: str, method: str, sizes: Sequence[int], out_dir: str | Path,
                    params: dict[str, Any] | None = None, device: str = "auto", seed: int = 0,
                    reuse: Sequence[str | Path] = (), seeds: int = 3) -> pd.DataFrame:
    """Fit + evaluate ``method`` with ``max_train = n`` for each size (plus the full training set), ``seeds`` times.

    Seed ``seed + k`` draws the subset, the validation carve and the detector's randomness; the test
    set is the same for every fit, so the spread over seeds is the spread due to *which* good parts
    were seen (notebook 05 plots it as a band).

    Args:
        reuse: evaluated run folders; one fitted on the full training set with the same data, method,
            parameters and seed supplies that point instead of an identical refit.

    Returns:
        One row per (seed, size): method, seed, n_train, image_auroc, pixel_auroc, aupro, aupro_fpr05,
        fit_seconds, run_dir.
    """
    from anomaly.pipeline import evaluate_run, fit_run

    rows = []
    for s in range(seed, seed + max(seeds, 1)):
        n_all = len(D.load_splits(data, category, val_fraction=_pool_fraction(method), seed=s).train)
        full = next((Path(r) for r in reuse if _same_run(r, data, category, method, params, s)), None)
        for n in tqdm(sorted({n for n in sizes if 0 < n < n_all} | {n_all}), desc=f"data efficiency, seed {s}"):
            run_dir = full if n == n_all and full is not None else None
            if run_dir is None:
                run_dir = fit_run(data, category, method, Path(out_dir) / f"{method}_s{s}_n{n:04d}", params=params,
                                  device=device, seed=s, max_train=n)
                evaluate_run(run_dir, device=device)
            m = read_json(Path(run_dir) / "metrics.json")
            rows.append({"method": method, "seed": s, "n_train": n, "run_dir": str(run_dir), **{
                k: m.get(k, np.nan) for k in ("image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "fit_seconds")}})
    return pd.DataFrame(rows)


def _pool_fraction(method: str) -> float:
    """The validation share fit_run carves by default: none when the method is cross-fitted (all images fit)."""
    from anomaly.models import get_detector_class

    return 0.0 if hasattr(get_detector_class(method), "fit_crossfit") else 0.1


def _same_run(run_dir: str | Path, data: str | Path, category: str, method: str, params: dict[str, Any] | None,
              seed: int) -> bool:
    """Whether ``run_dir`` is an evaluated full-training-set run of exactly this fit (fit_run's defaults)."""
    from anomaly.models import get_detector_class
    from anomaly.pipeline import fit_run

    run_dir = Path(run_dir)
    if not is_evaluated(run_dir):
        return False
    config = read_json(run_dir / "config.json")
    defaults = {k: p.default for k, p in inspect.signature(fit_run).parameters.items()
                if k in ("batch_size", "target_frr", "estimator", "pixel_fpr", "folds")}
    wanted = {"data": str(Path(data).resolve()), "category": category, "method": method, "seed": seed,
              "max_train": None, **defaults}
    if any(config.get(k) != v for k, v in wanted.items()):
        return False
    config_class = get_detector_class(method).config_class
    detector_params = dict(params or {})
    if "seed" in {f.name for f in dataclasses.fields(config_class)}:
        detector_params.setdefault("seed", seed)
    expected = json.loads(json.dumps(dataclasses.asdict(make_config(config_class, detector_params))))
    return read_json(run_dir / "model.json")["config"] == expected


def model_params(method: str, image_size: int | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Detector parameters from notebook parameters: None = the method's default (the one sentinel, as an absent
    CLI flag); ``epochs`` is autoencoder-only and ignored for the other methods."""
    params: dict[str, Any] = {"image_size": image_size} if image_size is not None else {}
    if epochs is not None and method == "autoencoder":
        params["epochs"] = epochs
    return params


def pick_cases(results: RunResults, n: int = 4) -> dict[str, np.ndarray]:
    """Test indices of true positives (highest scores), false negatives (lowest), false positives (highest) and
    the highest-scoring good parts (flagged or not)."""
    scores, labels = results.predictions["image_scores"], results.predictions["labels"].astype(bool)
    flagged = scores >= results.threshold
    order = np.argsort(-scores)  # most anomalous first
    cases = {"true positives": order[(labels & flagged)[order]][:n],
             "false negatives": order[(labels & ~flagged)[order]][::-1][:n],
             "false positives": order[(~labels & flagged)[order]][:n],
             "highest-scoring good parts": order[(~labels)[order]][:n]}  # shown when there is no false positive
    return cases


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


def comparison_examples(results: Sequence[RunResults], n: int | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`anomaly.viz.method_gallery`: the same test images under every run.

    One defective image per defect type (up to ``n - 1``; None = every type) and one good image; maps of runs
    evaluated at different resolutions are resized bilinearly to the largest one.
    """
    first = results[0].predictions
    for other in results[1:]:
        if not np.array_equal(other.predictions["image_paths"], first["image_paths"]):
            raise ValueError(f"{other.run_dir} was evaluated on other test images than {results[0].run_dir}")
    types = first["defect_types"]
    n = len(set(types)) if n is None else n
    chosen = [int(np.flatnonzero(types == t)[0]) for t in sorted(set(types) - {"good"})][: max(n - 1, 1)]
    chosen = (chosen + [int(i) for i in np.flatnonzero(types == "good")[:1]])[:n]
    big = max(results, key=lambda r: r.predictions["anomaly_maps"].shape[-1])
    size = big.predictions["anomaly_maps"].shape[-2:]
    maps = {r.method: torch.nn.functional.interpolate(torch.from_numpy(r.predictions["anomaly_maps"][chosen])[:, None],
                                                       size=size, mode="bilinear")[:, 0].numpy() for r in results}
    return {"images": big.images(chosen), "maps_by_method": maps, "gt_masks": big.predictions["gt_masks"][chosen],
            "ranges": {r.method: r.display_range for r in results}, "titles": [str(types[i]) for i in chosen]}


# -- data exploration (notebook 01) and training (notebook 02) -----------------------------------------
def split_counts(splits: D.Splits) -> pd.DataFrame:
    """Images per defect type (rows) and split (columns), with totals."""
    rows = [(s.defect_type, s.split) for part in (splits.train, splits.validation, splits.test) for s in part]
    frame = pd.DataFrame(rows, columns=["defect_type", "split"])
    return pd.crosstab(frame["defect_type"], frame["split"], margins=True, margins_name="total")


def examples(samples: Sequence[D.Sample], per_type: int = 2, seed: int = 0) -> list[D.Sample]:
    """``per_type`` seeded random samples of each defect type (good first)."""
    rng = np.random.default_rng(seed)
    types = sorted({s.defect_type for s in samples}, key=lambda t: (t != "good", t))
    chosen = []
    for t in types:
        pool = [s for s in samples if s.defect_type == t]
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), min(per_type, len(pool)), replace=False))]
    return chosen


def load_samples(samples: Sequence[D.Sample], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) in [0, 1] and masks (N, S, S) of ``samples``."""
    images = torch.stack([D.read_image(s.image_path, image_size) for s in samples])
    masks = torch.stack([D.read_mask(s.mask_path, (image_size, image_size)) for s in samples])
    return images, masks


def intensity_table(samples: Sequence[D.Sample], image_size: int) -> pd.DataFrame:
    """Per split and defect type: mean over images of each image's gray-level mean and std (and min, max)."""
    rows = []
    for s in tqdm(samples, desc="intensity", leave=False):
        gray = D.read_image(s.image_path, image_size).mean(dim=0)  # (S, S)
        rows.append({"split": s.split, "defect_type": s.defect_type, "mean": float(gray.mean()),
                     "std": float(gray.std()), "min": float(gray.min()), "max": float(gray.max())})
    return pd.DataFrame(rows).groupby(["split", "defect_type"]).mean().round(3)


def defect_size_table(areas: pd.DataFrame) -> pd.DataFrame:
    """Per defect type (from ``data.mask_areas``): images, area in % of the image (min/median/max), mean regions."""
    frame = areas.assign(area_percent=100.0 * areas["area_fraction"]).groupby("defect_type")
    return frame.agg(images=("area_percent", "size"), min_percent=("area_percent", "min"),
                     median_percent=("area_percent", "median"), max_percent=("area_percent", "max"),
                     mean_regions=("n_regions", "mean")).round(3)


def mean_std_images(samples: Sequence[D.Sample], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean image (3, S, S) and gray-level std (S, S) over ``samples`` (e.g. train/good)."""
    images = torch.stack([D.read_image(s.image_path, image_size) for s in samples])  # (N, 3, S, S)
    return images.mean(dim=0), images.mean(dim=1).std(dim=0)


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


def fitted_state_table(run_dir: str | Path) -> pd.DataFrame:
    """What was fitted: the tensors in ``model.pt`` grouped by name prefix (``network.*`` -> ``network``).

    Returns:
        One row per group: number of tensors, shape (when the group is one tensor), values, MiB.
    """
    state = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)
    groups: dict[str, list[torch.Tensor]] = {}
    for name, tensor in state.items():
        groups.setdefault(name.split(".")[0], []).append(tensor)
    rows = [{"name": name, "tensors": len(ts), "shape": tuple(ts[0].shape) if len(ts) == 1 else "",
             "dtype": str(ts[0].dtype).replace("torch.", ""), "values": sum(t.numel() for t in ts),
             "MiB": round(sum(t.numel() * t.element_size() for t in ts) / 2**20, 3)} for name, ts in groups.items()]
    return pd.DataFrame(rows).set_index("name")


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


def reconstruction_examples(run_dir: str | Path, n: int = 4, device: str = "cpu") -> dict[str, Any]:
    """Autoencoder figure material for ``n`` test images (one per defect type, then good).

    Returns:
        dict(images (K,3,S,S), reconstructions (K,3,S,S), anomaly_maps (K,S,S), gt_masks (K,S,S), titles,
        vmin, vmax) for :func:`anomaly.viz.triptych`.
    """
    from anomaly.pipeline import display_range, load_run

    run = load_run(run_dir, device=device)
    if not hasattr(run.detector, "reconstruct"):
        raise ValueError(f"{run_dir} is a {run.config['method']} run; reconstructions need an autoencoder run")
    test = D.load_splits(run.config["data"], run.config["category"], run.config["val_fraction"],
                         run.config["seed"]).test
    chosen = examples([s for s in test if s.label == 1], per_type=1)[: max(n - 1, 1)]
    chosen += [s for s in test if s.label == 0][:1]
    images, masks = load_samples(chosen, run.image_size)
    out = run.detector.predict(images)
    return {"images": images, "reconstructions": run.detector.reconstruct(images), "anomaly_maps": out.anomaly_maps,
            "gt_masks": masks.numpy(), "titles": [f"{s.defect_type} {v:.3g}" for s, v in zip(chosen, out.image_scores)],
            **display_range(run)}
