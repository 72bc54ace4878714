"""Properties of the convolutional autoencoder detector (CPU, tiny images, a few epochs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly.models.autoencoder import AutoencoderConfig, ConvAutoencoder, ssim_map, to_grayscale
from anomaly.models import load_detector
from anomaly.models.base import Detector

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; tiny models gain nothing from more threads
    yield
    torch.set_num_threads(threads)


class _Images(Dataset):
    """Dict samples like ``AnomalyDataset``: smooth gray gradients with small random jitter."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        ramp = torch.linspace(0.2, 0.8, size)
        base = (ramp[None, :] + ramp[:, None]) / 2  # (S, S)
        noise = 0.02 * torch.randn(n, 1, size, size, generator=g)
        self.images = (base + noise).clamp(0, 1).expand(n, 3, size, size).contiguous()  # (N, 3, S, S)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": 0, "index": index}


def _loader(n: int = 8, size: int = SIZE) -> DataLoader:
    return DataLoader(_Images(n, size), batch_size=4, shuffle=False)


def _fit(**params) -> ConvAutoencoder:
    params = {"image_size": SIZE, "epochs": 3, "batch_size": 4, "base_channels": 8, "latent_dim": 16} | params
    return ConvAutoencoder(params).fit(_loader())


@pytest.fixture(scope="module")
def fitted() -> ConvAutoencoder:
    return _fit()


def test_loss_falls_over_epochs():
    detector = _fit(epochs=5)
    assert len(detector.history) == 5
    assert detector.history[-1] < detector.history[0]


def test_maps_have_the_input_size(fitted):
    images = torch.rand(2, 3, 48, 40)  # not image_size, not square
    pred = fitted.predict(images)
    assert pred.anomaly_maps.shape == (2, 48, 40)
    assert pred.image_scores.shape == (2,)
    assert pred.anomaly_maps.dtype == np.float32 and pred.image_scores.dtype == np.float32
    assert np.isfinite(pred.anomaly_maps).all() and (pred.anomaly_maps >= 0).all()


def test_train_loader_at_another_size_is_resized():
    detector = ConvAutoencoder({"image_size": SIZE, "epochs": 1, "base_channels": 8, "latent_dim": 8})
    detector.fit(_loader(n=4, size=48))
    assert detector.predict(torch.rand(1, 3, 48, 48)).anomaly_maps.shape == (1, 48, 48)


def test_save_load_gives_identical_predictions(fitted, tmp_path):
    images = torch.rand(3, 3, SIZE, SIZE)
    before = fitted.predict(images)
    fitted.save(tmp_path)
    loaded = load_detector(tmp_path)  # dispatches on model.json's method
    assert isinstance(loaded, ConvAutoencoder)
    after = loaded.predict(images)
    np.testing.assert_array_equal(before.image_scores, after.image_scores)
    np.testing.assert_array_equal(before.anomaly_maps, after.anomaly_maps)
    torch.testing.assert_close(loaded.mean, fitted.mean)
    assert loaded.history == pytest.approx(fitted.history)


def test_normalisation_comes_from_the_training_images(fitted):
    train = _loader().dataset.images
    torch.testing.assert_close(fitted.mean, train.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(fitted.std, train.std(dim=(0, 2, 3)))


def test_score_options(fitted, tmp_path):
    images = torch.rand(2, 3, SIZE, SIZE)
    fitted.save(tmp_path)
    state = fitted.state_dict()

    def variant(**params) -> ConvAutoencoder:
        config = AutoencoderConfig(**{**fitted.config.__dict__, **params})
        detector = ConvAutoencoder(config)
        detector.load_state_dict(state)
        return detector

    raw = variant(smooth_sigma=0.0).predict(images)
    np.testing.assert_allclose(raw.image_scores, raw.anomaly_maps.reshape(2, -1).max(axis=1))
    mean_all = variant(smooth_sigma=0.0, score="topk_mean", topk=1.0).predict(images)
    np.testing.assert_allclose(mean_all.image_scores, raw.anomaly_maps.reshape(2, -1).mean(axis=1), rtol=1e-5)
    top = variant(score="topk_mean", topk=0.05).predict(images)
    smooth = variant().predict(images)
    assert (top.image_scores <= smooth.image_scores + 1e-6).all()
    assert smooth.anomaly_maps.std() < raw.anomaly_maps.std()  # smoothing flattens the map


def test_ssim_map_range_and_identity():
    x = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x))
    s = ssim_map(x, torch.rand(2, 3, 24, 24))
    assert s.shape == x.shape and (s >= -1).all() and (s <= 1).all() and s.mean() < 0.5
    assert to_grayscale(x).shape == (2, 1, 24, 24)


def test_ssim_detector_maps(fitted):
    detector = ConvAutoencoder({**fitted.config.__dict__, "map": "ssim"})
    detector.load_state_dict(fitted.state_dict())
    pred = detector.predict(torch.rand(2, 3, 40, 40))
    assert pred.anomaly_maps.shape == (2, 40, 40)
    assert (pred.anomaly_maps >= 0).all() and (pred.anomaly_maps <= 2).all()


def test_ssim_loss_trains():
    detector = _fit(loss="ssim", map="ssim", epochs=2)
    assert len(detector.history) == 2 and all(np.isfinite(detector.history))


def test_reconstruct_is_in_unit_range_at_input_size(fitted):
    x_hat = fitted.reconstruct(torch.rand(2, 3, 48, 40))
    assert x_hat.shape == (2, 3, 48, 40)
    assert x_hat.min() >= 0 and x_hat.max() <= 1


def test_seeded_training_is_deterministic():
    a, b, c = _fit(epochs=2), _fit(epochs=2), _fit(epochs=2, seed=1)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    assert a.history == b.history
    assert not torch.equal(a.state_dict()["network.encoder.0.0.weight"], c.state_dict()["network.encoder.0.0.weight"])


@pytest.mark.parametrize(
    "params",
    [{"epoch": 3}, {"map": "l2"}, {"score": "mean"}, {"topk": 0.0}, {"image_size": 40}, {"loss": "l1"}],
)
def test_bad_config_raises(params):
    with pytest.raises(ValueError):
        ConvAutoencoder(params)


def test_unfitted_and_bad_loader_raise():
    detector = ConvAutoencoder({"image_size": SIZE, "epochs": 1})
    with pytest.raises(RuntimeError, match="not fitted"):
        detector.predict(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="dicts"):
        detector.fit([torch.rand(2, 3, SIZE, SIZE)])
    with pytest.raises(ValueError, match="no images"):
        detector.fit([])
