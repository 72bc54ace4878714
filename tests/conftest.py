"""Shared fixtures: a tiny synthetic MVTec-like data set (once per session) and a hand-made fake MVTec folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.synthetic import generate_dataset

TINY = dict(image_size=64, n_train=12, n_test_good=4, n_per_defect=2)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Data root holding ``screw_like`` and ``texture`` at 64 px: 12 train, 4 test good, 2 per defect type."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), seed=0, **TINY)


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def tiny_mvtec(tmp_path) -> Path:
    """A hand-made MVTec folder ``ROOT/widget``: 5 train good, 2 test good, 2 ``crack`` images with masks.

    Images are 32x32 RGB; masks are 32x32 {0, 255} with a 4x4 square. Tests may change it freely.
    """
    rng = np.random.default_rng(0)
    cat = tmp_path / "widget"
    for i in range(5):
        _write(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for i in range(2):
        _write(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        _write(cat / "test" / "crack" / f"{i:03d}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        mask[8:12, 8 + i:12 + i] = 255
        _write(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return tmp_path


@pytest.fixture(scope="session")
def patchcore_run(synthetic_root, tmp_path_factory) -> Path:
    """A tiny PatchCore run folder on ``screw_like`` (64 px), fitted once per session."""
    import torch

    from anomaly.config import RunConfig

    from anomaly.pipeline import fit_run

    torch.set_num_threads(2)
    return fit_run(RunConfig(synthetic_root, "screw_like", "patchcore", params={"image_size": 64}, device="cpu", batch_size=4),
                   tmp_path_factory.mktemp("patchcore_run") / "run")


def mutate(data: bytes, kind: int, rng: np.random.Generator) -> bytes:
    """One seeded mutation of an encoded image, the fuzz tests' four kinds: 0 byte flips (half of them in
    the first 64 bytes, where the headers are), 1 a truncation, 2 a 16-byte overwrite, 3 an insertion."""
    data = bytearray(data)
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            limit = 64 if rng.random() < 0.5 else len(data)
            data[int(rng.integers(0, min(limit, len(data))))] = int(rng.integers(0, 256))
    elif kind == 1:
        data = data[: int(rng.integers(1, len(data)))]
    elif kind == 2:
        start = int(rng.integers(0, len(data)))
        data[start:start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    else:
        at = int(rng.integers(0, len(data)))
        data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return bytes(data)
