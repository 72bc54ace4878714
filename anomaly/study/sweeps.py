"""Sweeps over runs: the data-efficiency study (fit + evaluate at several training-set sizes and seeds).

Each point is an ordinary run folder written by :func:`anomaly.pipeline.fit_and_evaluate`; an evaluated full-training-set run with the same settings is
reused instead of refitted.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from anomaly import layout as L
from anomaly.config import RunConfig
from anomaly.models import get_detector_class, method_spec
from anomaly.pipeline import detector_params, fit_and_evaluate
from anomaly.records import MetricsRecord
from anomaly.runs import is_evaluated
from anomaly.utils import make_config, read_json


def data_efficiency(base: RunConfig, sizes: Sequence[int], out_dir: str | Path, reuse: Sequence[str | Path] = (),
                    seeds: int = 3) -> pd.DataFrame:
    """Fit + evaluate ``base`` with ``max_train = n`` for each size (plus the full training set), ``seeds`` times.

    Seed ``base.seed + k`` draws the subset, the validation carve and the detector's randomness; the
    test set is the same for every fit, so the spread over seeds is the spread due to *which* good
    parts were seen and to the fit's own randomness (notebook 05 plots it as a band). Every seed is
    fitted at every size, the full training set included: a cross-fitted method sees the same images
    there, and its band is then the fit-to-fit noise (coreset, folds, training), never a zero width.

    Args:
        reuse: evaluated run folders; one fitted on the full training set with the same settings as
            ``base`` (seed aside) supplies that point instead of an identical refit.

    Returns:
        One row per (seed, size): method, seed, n_train, image_auroc, pixel_auroc, aupro, aupro_fpr05,
        fit_seconds, run_dir.
    """
    rows, method = [], base.method
    for s in range(base.seed, base.seed + max(seeds, 1)):
        full_config = base.replace(seed=s, max_train=None)
        n_all = len(L.load_splits(base.data, base.category, val_fraction=_pool_fraction(method), seed=s).train)
        full = next((Path(r) for r in reuse if _same_run(r, full_config)), None)  # the same fit, already evaluated
        for n in tqdm(sorted({n for n in sizes if 0 < n < n_all} | {n_all}), desc=f"data efficiency, seed {s}"):
            run_dir = full if n == n_all and full is not None else None
            if run_dir is None:
                config = full_config if n == n_all else base.replace(seed=s, max_train=n)
                run_dir = fit_and_evaluate(config, Path(out_dir) / f"{method}_s{s}_n{n:04d}")
            m = MetricsRecord.read(run_dir)
            rows.append({"method": method, "seed": s, "n_train": n, "run_dir": str(run_dir), **{
                k: m.get(k, np.nan) for k in ("image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "fit_seconds")}})
    return pd.DataFrame(rows)


def _pool_fraction(method: str) -> float:
    """The validation share fit_run carves by default: none when the method is cross-fitted (all images fit)."""
    return 0.0 if method_spec(method).crossfits else 0.1


def _same_run(run_dir: str | Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` is an evaluated run of exactly ``config`` (device and resolved defaults aside)."""
    run_dir = Path(run_dir)
    if not is_evaluated(run_dir):
        return False
    recorded = read_json(run_dir / "config.json")
    wanted = {**dataclasses.asdict(config), "data": str(Path(config.data).resolve())}
    for key in ("params", "device", "val_fraction"):  # params: compared below, as typed; the others resolved
        wanted.pop(key)
    if any(recorded.get(k) != v for k, v in wanted.items()):
        return False
    config_class = get_detector_class(config.method).config_class
    expected = json.loads(json.dumps(dataclasses.asdict(make_config(config_class, detector_params(config)))))
    return read_json(run_dir / "model.json")["config"] == expected
