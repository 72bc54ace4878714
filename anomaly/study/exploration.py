"""Data-exploration statistics (notebook 01): split counts, example picks, intensity and defect-size tables.

Numbers only; the conclusions written from them are :func:`anomaly.study.summaries.summarise_data`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from anomaly import dataset as DS
from anomaly import layout as L


def split_counts(splits: L.Splits) -> pd.DataFrame:
    """Images per defect type (rows) and split (columns), with totals."""
    rows = [(s.defect_type, s.split) for part in (splits.train, splits.validation, splits.test) for s in part]
    frame = pd.DataFrame(rows, columns=["defect_type", "split"])
    return pd.crosstab(frame["defect_type"], frame["split"], margins=True, margins_name="total")


def examples(samples: Sequence[L.Sample], per_type: int = 2, seed: int = 0) -> list[L.Sample]:
    """``per_type`` seeded random samples of each defect type (good first)."""
    rng = np.random.default_rng(seed)
    types = sorted({s.defect_type for s in samples}, key=lambda t: (t != "good", t))
    chosen = []
    for t in types:
        pool = [s for s in samples if s.defect_type == t]
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), min(per_type, len(pool)), replace=False))]
    return chosen


def load_samples(samples: Sequence[L.Sample], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) in [0, 1] and masks (N, S, S) of ``samples``."""
    images = torch.stack([DS.read_image(s.image_path, image_size) for s in samples])
    masks = torch.stack([DS.read_mask(s.mask_path, (image_size, image_size)) for s in samples])
    return images, masks


def intensity_table(samples: Sequence[L.Sample], image_size: int) -> pd.DataFrame:
    """Per split and defect type: mean over images of each image's gray-level mean and std (and min, max)."""
    rows = []
    for s in tqdm(samples, desc="intensity", leave=False):
        gray = DS.read_image(s.image_path, image_size).mean(dim=0)  # (S, S)
        rows.append({"split": s.split, "defect_type": s.defect_type, "mean": float(gray.mean()),
                     "std": float(gray.std()), "min": float(gray.min()), "max": float(gray.max())})
    return pd.DataFrame(rows).groupby(["split", "defect_type"]).mean().round(3)


def defect_size_table(areas: pd.DataFrame) -> pd.DataFrame:
    """Per defect type (from ``data.mask_areas``): images, area in % of the image (min/median/max), mean regions."""
    frame = areas.assign(area_percent=100.0 * areas["area_fraction"]).groupby("defect_type")
    return frame.agg(images=("area_percent", "size"), min_percent=("area_percent", "min"),
                     median_percent=("area_percent", "median"), max_percent=("area_percent", "max"),
                     mean_regions=("n_regions", "mean")).round(3)


def mean_std_images(samples: Sequence[L.Sample], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean image (3, S, S) and gray-level std (S, S) over ``samples`` (e.g. train/good)."""
    images = torch.stack([DS.read_image(s.image_path, image_size) for s in samples])  # (N, 3, S, S)
    return images.mean(dim=0), images.mean(dim=1).std(dim=0)
