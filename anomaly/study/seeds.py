"""Training seeds: a trained method refitted with other seeds, the spread of its metrics, and their folders.

A bootstrap over test images does not cover training randomness: an autoencoder trained for 30
epochs lands on different weights with another seed -- and, with the same seed, on another CPU or
library build, whose floating-point kernels round differently. For every method in
:data:`anomaly.models.TRAINED`, notebook 02 fits ``seeds`` runs (the run itself with its seed, then
``run_dir + "_seed<s>"`` for the next seeds) and records them in ``run_dir + "_seeds.json"``; 03
evaluates them; 05 and the index call a trained method's verdict real only when it holds for every
seed (:func:`anomaly.study.pairwise.margins_over_baseline`). Methods that are not trained (a closed-form fit)
are fitted once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from anomaly.config import RunConfig
from anomaly.models import BASELINES, TRAINED
from anomaly.pipeline import evaluate_run, fit_run
from anomaly.records import MetricsRecord
from anomaly.runs import is_evaluated
from anomaly.utils import read_json, write_json

logger = logging.getLogger(__name__)

SPREAD_METRICS = ("image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "f1", "recall", "frr")
_SAME_KEYS = ("data", "category", "method", "val_fraction", "batch_size", "target_frr", "estimator", "pixel_fpr",
              "folds", "max_train")


def manifest_path(run_dir: str | Path) -> Path:
    """Where the seed runs of ``run_dir`` are listed: ``<run_dir>_seeds.json`` beside it."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}_seeds.json")


def fit_seeds(config: RunConfig, run_dir: str | Path, seeds: int) -> list[Path]:
    """Fit ``config`` with seeds ``config.seed + 1 ..`` (``seeds`` runs in all, ``run_dir`` being the first).

    Only methods in :data:`anomaly.models.TRAINED` are refitted; the manifest is written either way.

    Returns:
        The run folders, ``run_dir`` first.
    """
    run_dir = Path(run_dir)
    dirs = [run_dir]
    if config.method in TRAINED:
        for s in range(config.seed + 1, config.seed + max(seeds, 1)):
            dirs.append(fit_run(config_with_seed(config, s), run_dir.with_name(f"{run_dir.name}_seed{s}")))
    write_json(manifest_path(run_dir), {"method": config.method, "runs": [Path(d).name for d in dirs]})  # siblings
    return dirs


def seed_runs(run_dir: str | Path) -> list[Path]:
    """The run folders of ``run_dir``'s seeds (``run_dir`` first); only ``run_dir`` when none were fitted.

    A listed folder that is missing, or whose configuration differs from ``run_dir``'s in anything but
    the seed (a later refit), is left out with a warning.
    """
    run_dir = Path(run_dir)
    path = manifest_path(run_dir)
    if not path.is_file():
        return [run_dir]
    listed = [run_dir.with_name(Path(name).name) for name in read_json(path).get("runs", [])][1:]
    base = _config(run_dir)
    kept = [run_dir]
    for other in listed:
        if not (other / "config.json").is_file() or _config(other) != base:
            logger.warning("ignoring seed run %s: missing, or not fitted like %s", other, run_dir)
            continue
        kept.append(other)
    return kept


def _config(run_dir: Path) -> dict[str, Any]:
    """The configuration of a run except its seed: ``config.json``'s run keys and the detector's config."""
    config = read_json(run_dir / "config.json")
    detector = dict(read_json(run_dir / "model.json")["config"]) if (run_dir / "model.json").is_file() else {}
    detector.pop("seed", None)
    return {**{k: config.get(k) for k in _SAME_KEYS}, "detector": detector}


def evaluate_seeds(run_dir: str | Path, device: str = "auto") -> list[Path]:
    """Evaluate every seed run of ``run_dir`` that has no current ``metrics.json``; returns all of them."""
    runs = seed_runs(run_dir)
    for other in runs:
        if not is_evaluated(other):
            evaluate_run(other, device=device)
    return runs


def seed_table(run_dir: str | Path, metrics: Sequence[str] = SPREAD_METRICS) -> pd.DataFrame:
    """One row per evaluated seed run (index: seed) with ``metrics``, then mean, sd and min-max rows."""
    rows = {}
    for other in seed_runs(run_dir):
        if not is_evaluated(other):
            continue
        m, seed = MetricsRecord.read(other), read_json(other / "config.json")["seed"]
        rows[f"seed {seed}"] = {k: m.get(k, np.nan) for k in metrics}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(metrics)).astype(float)
    if len(table) > 1:
        summary = pd.DataFrame({"mean": table.mean(), "sd": table.std(ddof=1), "min": table.min(),
                                "max": table.max()}).T
        table = pd.concat([table, summary])
    return table.rename_axis("run")


def spread(run_dir: str | Path, metric: str = "image_auroc") -> dict[str, Any] | None:
    """``{"n", "mean", "sd", "min", "max", "values"}`` of ``metric`` over the evaluated seed runs; None below 2."""
    values = [float(MetricsRecord.read(d)[metric]) for d in seed_runs(run_dir) if is_evaluated(d)]
    if len(values) < 2:
        return None
    arr = np.asarray(values)
    return {"n": arr.size, "mean": float(arr.mean()), "sd": float(arr.std(ddof=1)), "min": float(arr.min()),
            "max": float(arr.max()), "values": values}


def spread_text(run_dir: str | Path, method: str, metric: str = "image_auroc") -> str:
    """Markdown: the seed spread of ``metric`` beside the bootstrap interval, or why there is none."""
    if method in BASELINES:
        return f"`{method}` learns nothing: there is no training to vary, so it is fitted once."
    if method not in TRAINED:
        return (f"`{method}` is not trained by gradient descent (`anomaly.models.TRAINED`): its fit is one "
                f"deterministic pass for its seed, so it is fitted once. What its seed does move (PatchCore's "
                f"coreset, PaDiM's channel subset) shows in notebook 05's data-efficiency band at the full training "
                f"set, for the methods it sweeps (refitted per seed).")
    s = spread(run_dir, metric)
    if s is None:
        return (f"Only one training seed of `{method}` was evaluated: no statement about it can be told apart "
                f"from training randomness. Set `seeds` to 3 or more in notebook 02.")
    ci = MetricsRecord.read(run_dir).get(f"{metric}_ci") or [np.nan, np.nan]
    name = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3"}.get(metric, metric)
    return (f"Over {s['n']} training seeds the {name} is {s['mean']:.3f} on average (sd {s['sd']:.3f}, "
            f"range {s['min']:.3f}-{s['max']:.3f}); the first seed's 95 % bootstrap interval over test images is "
            f"{ci[0]:.3f}-{ci[1]:.3f}. The bootstrap covers which test images were drawn, the seeds cover training: "
            f"a conclusion about `{method}` must hold for every seed.")


def config_with_seed(config: RunConfig, seed: int) -> RunConfig:
    """``config`` with ``seed`` (and the detector's ``seed`` parameter, when set explicitly)."""
    params = dict(config.params)
    if "seed" in params:
        params["seed"] = seed
    return dataclasses.replace(config, seed=seed, params=params)
