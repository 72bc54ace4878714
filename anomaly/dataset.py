"""Read indexed samples as tensors: images, masks, the torch Dataset and its DataLoader.

Every image -- a training file, a file given to ``predict`` or an HTTP upload -- goes through one
defensive decoder, :func:`anomaly.decoding.decode_image`: an allow-list of formats, regular files
only, a pixel cap and an aspect cap from the header, a per-process budget of pixels decoded at
once, a cheap PIL reduction of huge images, the EXIF orientation, and no NaN pixels. Grayscale,
RGBA and 16-bit images become 3-channel float in [0, 1]. Which files are samples is
:mod:`anomaly.layout`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from anomaly.decoding import decode_image, image_hw, mask_array
from anomaly.geometry import Letterbox
from anomaly.layout import Sample


def read_image(path: str | Path, image_size: int | None = None) -> torch.Tensor:
    """Read an image file as float32 (3, H, W) in [0, 1], or (3, S, S) when ``image_size`` is given.

    Grayscale becomes 3 identical channels, alpha is dropped, 16-bit images are scaled by 65535.
    Resizing is bilinear with antialiasing (see :func:`anomaly.decoding.decode_image` for the caps).
    """
    return decode_image(Path(path), image_size)


def read_mask(path: str | Path | None, size: tuple[int, int] | None) -> torch.Tensor:
    """Read a mask as float32 (H, W) in {0, 1} at ``size`` = (H, W) (nearest; ``None``: the file's own);
    a ``None`` path gives zeros."""
    if path is None:
        return torch.zeros(size, dtype=torch.float32)
    array = mask_array(Path(path))  # upright, as the image is
    if array.ndim == 3:
        array = array.max(axis=2)
    binary = array > (0 if array.max() <= 1 else array.max() / 2)  # 0/255 masks, 0/1 masks, 16-bit masks
    mask = Image.fromarray(binary.astype(np.uint8))
    if size is not None and mask.size != (size[1], size[0]):
        mask = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32))


class AnomalyDataset(Dataset):
    """Samples as dicts: image (3, S, S) float in [0, 1], mask (S, S) in {0, 1}, label, index, hw.

    Non-square images and their masks are letterboxed (:mod:`anomaly.geometry`), not squashed.
    """

    def __init__(self, samples: list[Sample], image_size: int) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """image (3, S, S) and mask (S, S) letterboxed alike; hw (2,) the file's (H, W)."""
        sample = self.samples[index]
        size = self.image_size
        hw = image_hw(sample.image_path)
        if sample.mask_path is None:
            mask = torch.zeros(size, size)
        else:
            native = read_mask(sample.mask_path, hw).numpy()  # (H, W)
            mask = torch.from_numpy(Letterbox(*hw, size).mask(native).astype(np.float32))  # (S, S)
        return {"image": read_image(sample.image_path, size), "mask": mask, "label": sample.label,
                "index": index, "hw": torch.tensor(hw)}


def make_loader(samples: Sequence[Sample], image_size: int, batch_size: int, shuffle: bool = False,
                seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A DataLoader of dict batches (image, mask, label, index, hw) over ``samples``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(AnomalyDataset(list(samples), image_size), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, num_workers=num_workers)


def mask_areas(samples: list[Sample]) -> pd.DataFrame:
    """Defect size per defective sample: columns defect_type, image_path, area_fraction, n_regions."""
    from scipy.ndimage import label as connected_components

    rows = []
    for s in samples:
        if s.mask_path is None:
            continue
        size = image_hw(s.mask_path)
        mask = read_mask(s.mask_path, size).numpy() > 0
        rows.append((s.defect_type, str(s.image_path), float(mask.mean()), int(connected_components(mask)[1])))
    return pd.DataFrame(rows, columns=["defect_type", "image_path", "area_fraction", "n_regions"])
