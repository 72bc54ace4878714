"""Sweeps over runs: the data-efficiency study (fit + evaluate at several training-set sizes and seeds).

Each point is an ordinary run folder written by :func:`anomaly.pipeline.fit_run` and
:func:`anomaly.pipeline.evaluate_run`; an evaluated full-training-set run with the same settings is
reused instead of refitted.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from anomaly import data as D
from anomaly.runs import is_evaluated
from anomaly.utils import make_config, read_json


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
