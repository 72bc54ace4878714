"""Cross-fitting: every good training image gets an out-of-sample score (CPU, tiny images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly.models.base import fold_ids
from anomaly.models.padim import PaDiM
from anomaly.models.patchcore import PatchCore


class _Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": i}


def _textured(n: int, seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 6.28, size)
    base = 0.5 + 0.2 * torch.sin(3 * x)[None, :] * torch.cos(2 * x)[:, None]
    return (base + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1).expand(-1, 3, -1, -1).clone()


def _loader(images: torch.Tensor, shuffle: bool = False) -> DataLoader:
    return DataLoader(_Images(images), batch_size=3, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def test_fold_ids_balanced_and_seeded():
    ids = fold_ids(10, 3, seed=0)
    assert sorted(np.bincount(ids).tolist()) == [3, 3, 4]
    assert np.array_equal(ids, fold_ids(10, 3, seed=0)) and not np.array_equal(ids, fold_ids(10, 3, seed=1))
    with pytest.raises(ValueError, match="folds"):
        fold_ids(3, 4)
    with pytest.raises(ValueError, match="folds"):
        fold_ids(5, 1)


def test_patchcore_own_patches_never_in_the_scoring_bank():
    """With the whole bank (no coreset), a training image scores 0 in-sample, > 0 out of sample."""
    images = _textured(7, seed=0)
    detector = PatchCore({"image_size": 64, "sampler": "none"})
    out = detector.fit_crossfit(_loader(images, shuffle=True), folds=3)
    assert out.image_scores.shape == (7,) and out.anomaly_maps.shape == (7, 64, 64)
    in_sample = detector.predict(images).image_scores
    assert np.abs(in_sample).max() < 1e-3  # the deployed bank holds every image's patches
    assert out.image_scores.min() > 10 * max(np.abs(in_sample).max(), 1e-4)


def test_patchcore_crossfit_deploys_the_plain_fit():
    images = _textured(6, seed=1)
    config = {"image_size": 64, "coreset_ratio": 0.25, "coreset_min_size": 0}
    crossfit = PatchCore(config)
    crossfit.fit_crossfit(_loader(images), folds=2)
    plain = PatchCore(config).fit(_loader(images))
    assert torch.equal(crossfit.memory_bank, plain.memory_bank)


def test_padim_crossfit_is_exact():
    """The held-out scores equal those of a PaDiM fitted on the other folds only."""
    images = _textured(8, seed=2)
    config = {"image_size": 64, "n_features": 10}
    detector = PaDiM(config)
    out = detector.fit_crossfit(_loader(images, shuffle=True), folds=2, seed=3)
    ids = fold_ids(8, 2, seed=3)
    for fold in range(2):
        others = PaDiM(config).fit(_loader(images[torch.as_tensor(ids != fold)]))
        expected = others.predict(images[torch.as_tensor(ids == fold)]).image_scores
        np.testing.assert_allclose(out.image_scores[ids == fold], expected, rtol=2e-3)
    deployed = PaDiM(config).fit(_loader(images))
    torch.testing.assert_close(detector.mean, deployed.mean, rtol=1e-4, atol=1e-4)
    in_sample = detector.predict(images).image_scores
    assert out.image_scores.mean() > in_sample.mean()  # held-out images look less familiar
