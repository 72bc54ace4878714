"""An evaluated run's results, as the notebooks show them: predictions, tables and example selections.

:func:`load_results` reads what ``evaluate_run`` wrote (predictions, metrics, threshold, calibration);
the rest turns it into tables (:func:`metrics_table`, :func:`per_defect_table`, :func:`fitted_state_table`)
and figure arguments (:func:`pick_cases`, :func:`comparison_examples`, :func:`reconstruction_examples`).
The prose written from the same numbers lives in :mod:`anomaly.study.summaries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from anomaly import dataset as DS
from anomaly import metrics as M
from anomaly.calibration import read_calibration
from anomaly.study.exploration import examples, load_samples
from anomaly.folders import run_data
from anomaly.inference import display_range, load_run
from anomaly.records import MetricsRecord, RunFolderError, ThresholdRecord
from anomaly.runs import check_run_dir, read_dict, read_predictions
from anomaly.utils import read_json
from anomaly.study.wording import fmt_ci


@dataclass
class RunResults:
    """What a run folder holds after ``evaluate_run``: predictions, metrics and the calibrated threshold."""

    run_dir: Path
    method: str
    predictions: dict[str, np.ndarray]  # image_scores, labels, defect_types, image_paths, anomaly_maps, gt_masks
    metrics: dict[str, Any]
    threshold: float
    validation_scores: np.ndarray
    display_range: tuple[float | None, float | None]  # colour range of good calibration maps (median .. max)

    @property
    def oracle_threshold(self) -> float:
        """The F1-maximising threshold chosen with the TEST labels (an oracle, for comparison only)."""
        return M.f1_max_threshold(self.predictions["labels"], self.predictions["image_scores"])[1]

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """Test images ``indices`` at the maps' resolution: (K, 3, S, S)."""
        size = self.predictions["anomaly_maps"].shape[-1]
        images = [DS.read_image(self.predictions["image_paths"][i], size) for i in indices]
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
    """Read an evaluated run through the same checked readers as :func:`anomaly.inference.load_run`.

    Raises:
        FileNotFoundError: no such folder.
        anomaly.runs.RunFolderError: an incomplete folder, a run not evaluated (or evaluated with another
            model), or a malformed file (named).
    """
    run_dir = Path(run_dir)
    marker = check_run_dir(run_dir)
    metrics = MetricsRecord.read_current(run_dir, marker["model_sha256"])
    if metrics is None:
        raise RunFolderError(f"{run_dir} has no metrics.json of its own model: run `anomaly evaluate` "
                             f"(or notebook 03) first")
    method = read_dict(run_dir / "model.json", ("method",))["method"]
    rng = display_range(run_dir)
    return RunResults(run_dir, method, read_predictions(run_dir), metrics.as_dict(),
                      ThresholdRecord.read(run_dir).threshold, np.asarray(read_calibration(run_dir).scores),
                      (rng["vmin"], rng["vmax"]))


def metrics_table(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per evaluated run (index: method): the test metrics, fit time and speed from ``metrics.json``, and
    the detector's input side (``input_px``, from ``model.json``). A precision with no part flagged is NaN
    (undefined), not 0."""
    columns = ["input_px", "image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "f1", "precision", "recall",
               "f1_max_oracle", "f1_flag_all", "fit_seconds", "predict_ms_per_image"]
    rows = {}
    for run_dir in run_dirs:
        metrics = MetricsRecord.read(run_dir)
        row = {c: metrics.get(c, np.nan) for c in columns}
        row["input_px"] = read_json(Path(run_dir) / "model.json")["config"]["image_size"]
        if metrics.get("tp", 1) + metrics.get("fp", 0) == 0:
            row["precision"] = np.nan
        rows[metrics["method"]] = row
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("method")


def per_defect_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Per defect type (rounded): test images, image AUROC (that type vs good) with its 95 % interval, recall
    at the threshold, AUPRO@0.3 with its interval."""
    rows = {name: {"n": e["n"], "image AUROC [95 % CI]": fmt_ci(e["image_auroc"], e.get("image_auroc_ci")),
                   "recall at threshold": round(e["recall_at_threshold"], 2),
                   "AUPRO@0.3 [95 % CI]": fmt_ci(e.get("aupro"), e.get("aupro_ci"))}
            for name, e in metrics["per_defect_type"].items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("defect_type")


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
            "ranges": {r.method: r.display_range for r in results}, "titles": [str(types[i]) for i in chosen],
            "scores_by_method": {r.method: r.predictions["image_scores"][chosen] for r in results},
            "thresholds": {r.method: r.threshold for r in results},
            "sizes": {r.method: read_json(Path(r.run_dir) / "model.json")["config"]["image_size"] for r in results}}


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


def reconstruction_examples(run_dir: str | Path, n: int = 4, device: str = "cpu") -> dict[str, Any]:
    """Autoencoder figure material for ``n`` test images (one per defect type, then good).

    Returns:
        dict(images (K,3,S,S), reconstructions (K,3,S,S), anomaly_maps (K,S,S), gt_masks (K,S,S), titles,
        vmin, vmax) for :func:`anomaly.viz.triptych`.
    """
    run = load_run(run_dir, device=device)
    if not hasattr(run.detector, "reconstruct"):
        raise ValueError(f"{run_dir} is a {run.config['method']} run; reconstructions need an autoencoder run")
    test = run_data(run.config, run.config["val_fraction"]).splits.test
    chosen = examples([s for s in test if s.label == 1], per_type=1)[: max(n - 1, 1)]
    chosen += [s for s in test if s.label == 0][:1]
    images, masks = load_samples(chosen, run.image_size)
    out = run.detector.predict(images)
    return {"images": images, "reconstructions": run.detector.reconstruct(images), "anomaly_maps": out.anomaly_maps,
            "gt_masks": masks.numpy(), "titles": [f"{s.defect_type} {v:.3g}" for s, v in zip(chosen, out.image_scores)],
            **display_range(run)}
