"""PaDiM: streaming Gaussian statistics, vectorised Mahalanobis distance, detector properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly.models import Detector, create_detector, load_detector
from anomaly.models.padim import PaDiM, PaDiMConfig, gaussian_parameters, mahalanobis

SMALL = {"image_size": 64, "n_features": 20}


def _loader(images: torch.Tensor, batch_size: int = 3) -> list[dict]:
    return [{"image": images[i:i + batch_size]} for i in range(0, len(images), batch_size)]


def _textured(n: int, seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 6.28, size)
    base = 0.5 + 0.2 * torch.sin(3 * x)[None, :] * torch.cos(2 * x)[:, None]
    return (base + 0.02 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1).expand(-1, 3, -1, -1)


@pytest.fixture(scope="module")
def fitted() -> PaDiM:
    return PaDiM(SMALL).fit(_loader(_textured(8, seed=0)))


def test_vectorised_mahalanobis_equals_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    p, b, d = 5, 3, 4
    x = torch.randn(p, b, d, generator=g, dtype=torch.float64)
    mean = torch.randn(p, d, generator=g, dtype=torch.float64)
    a = torch.randn(p, d, d, generator=g, dtype=torch.float64)
    inv = a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64)  # SPD
    fast = mahalanobis(x, mean, inv)
    naive = np.zeros((p, b))
    for i in range(p):
        for j in range(b):
            delta = (x[i, j] - mean[i]).numpy()
            naive[i, j] = np.sqrt(delta @ inv[i].numpy() @ delta)
    np.testing.assert_allclose(fast.numpy(), naive, rtol=1e-10)


def test_streaming_statistics_equal_the_batch_covariance():
    g = torch.Generator().manual_seed(0)
    x = 100.0 + torch.randn(2, 50, 3, generator=g, dtype=torch.float64)  # (P, N, d), far from 0
    shift = x[:, :7].mean(1)
    total = torch.zeros(2, 3, dtype=torch.float64)
    outer = torch.zeros(2, 3, 3, dtype=torch.float64)
    for chunk in x.split(7, dim=1):  # streaming over batches
        c = chunk - shift[:, None]
        total += c.sum(1)
        outer += c.transpose(1, 2) @ c
    mean, inv = gaussian_parameters(shift, total, outer, 50, eps=0.01)
    for p in range(2):
        torch.testing.assert_close(mean[p].double(), x[p].mean(0), rtol=1e-6, atol=1e-5)
        cov = torch.cov(x[p].T) + 0.01 * torch.eye(3, dtype=torch.float64)
        torch.testing.assert_close(inv[p].double(), torch.linalg.inv(cov), rtol=1e-4, atol=1e-4)


def test_training_images_score_low_and_defects_high(fitted):
    good = _textured(2, seed=1)
    bad = good.clone()
    bad[:, :, 20:30, 30:40] = 1.0
    out = fitted.predict(torch.cat([good, bad]))
    assert out.anomaly_maps.shape == (4, 64, 64) and out.image_scores.shape == (4,)
    assert out.image_scores[2:].min() > out.image_scores[:2].max()
    assert out.anomaly_maps[2, 20:30, 30:40].mean() > out.anomaly_maps[2, :10, :10].mean()
    other = fitted.predict(torch.nn.functional.interpolate(good, size=(48, 72), mode="bilinear"))
    assert other.anomaly_maps.shape == (2, 48, 72)


def test_image_score_is_the_map_maximum(fitted):
    out = fitted.predict(_textured(2, seed=2))  # input already at image_size
    np.testing.assert_allclose(out.image_scores, out.anomaly_maps.reshape(2, -1).max(1), rtol=1e-6)


def test_save_load_gives_identical_predictions(fitted, tmp_path):
    fitted.save(tmp_path)
    loaded = load_detector(tmp_path)
    assert isinstance(loaded, PaDiM)
    images = _textured(2, seed=3)
    a, b = fitted.predict(images), loaded.predict(images)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    np.testing.assert_array_equal(a.anomaly_maps, b.anomaly_maps)


def test_statistics_shapes_and_seeded_channel_subset(fitted):
    p = (64 // 4) ** 2
    assert fitted.mean.shape == (p, 20) and fitted.inv_covariance.shape == (p, 20, 20)
    buffers = dict(fitted.model.named_buffers())  # the one module's buffers
    assert buffers["mean"] is fitted.mean and buffers["inv_covariance"] is fitted.inv_covariance
    same, other = PaDiM(SMALL), PaDiM({**SMALL, "seed": 1})
    assert torch.equal(same.channel_index, fitted.channel_index)
    assert not torch.equal(other.channel_index, fitted.channel_index)
    assert len(PaDiM({**SMALL, "n_features": 1000}).channel_index) == 24 + 40 + 112


def test_unknown_or_invalid_config_raises():
    with pytest.raises(ValueError, match="unknown parameter"):
        create_detector("padim", {"n_feature": 10})
    with pytest.raises(ValueError, match="eps"):
        PaDiMConfig(eps=0.0)
    with pytest.raises(RuntimeError, match="before fit"):
        PaDiM(SMALL).predict(torch.rand(1, 3, 64, 64))
