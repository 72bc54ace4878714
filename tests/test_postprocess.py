"""Gaussian smoothing and upsampling of anomaly maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from anomaly.models.postprocess import gaussian_blur, gaussian_kernel1d, upsample_maps


def test_kernel_is_normalised_with_scipy_radius():
    kernel = gaussian_kernel1d(4.0)
    assert kernel.shape == (33,)
    assert float(kernel.sum()) == pytest.approx(1.0)
    assert int(kernel.argmax()) == 16


def test_blur_keeps_shape_and_constants():
    maps = torch.full((2, 10, 7), 3.0)
    out = gaussian_blur(maps, 4.0)  # kernel wider than the map: replicate padding still works
    assert out.shape == (2, 10, 7)
    torch.testing.assert_close(out, maps)


def test_blur_matches_scipy_away_from_borders():
    maps = torch.zeros(1, 64, 64)
    maps[0, 32, 30] = 1.0
    ours = gaussian_blur(maps, 2.0)[0].numpy()
    ref = gaussian_filter(maps[0].numpy(), sigma=2.0, mode="nearest")
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert ours.sum() == pytest.approx(1.0, abs=1e-5)


def test_zero_sigma_is_identity():
    maps = torch.rand(1, 5, 5)
    assert gaussian_blur(maps, 0.0) is maps


def test_upsample_maps():
    maps = torch.rand(3, 8, 8)
    assert upsample_maps(maps, (48, 40)).shape == (3, 48, 40)
    assert upsample_maps(maps, (8, 8)) is maps
    torch.testing.assert_close(upsample_maps(torch.ones(1, 4, 4), (9, 13)), torch.ones(1, 9, 13))
