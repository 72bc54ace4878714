"""Anomaly-map post-processing shared by every detector: Gaussian smoothing and upsampling.

PatchCore (Roth et al., CVPR 2022) and PaDiM (Defard et al., ICPR 2021) smooth their
patch-level maps with a Gaussian of sigma = 4 px before scoring; the autoencoder does the
same with its residual map. Both functions are pure tensor maths on ``(B, H, W)`` maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(truncate * sigma)`` (scipy's default), or ``radius``.

    Returns:
        (2 * radius + 1,) float32 summing to 1.
    """
    if radius is None:
        radius = max(1, math.ceil(truncate * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of a batch of maps; ``sigma <= 0`` returns ``maps`` unchanged.

    Borders use replicate padding (well defined for any map size, even one smaller than the
    kernel), so a constant map stays constant.

    Args:
        maps: (B, H, W) float tensor.
        sigma: standard deviation in pixels of ``maps``.

    Returns:
        (B, H, W) smoothed maps, same dtype and device.
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)  # (K,)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)  # (B, 1, H, W)
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))  # blur along W
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))  # blur along H
    return x.squeeze(1)  # (B, H, W)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a batch of maps to ``size`` (no-op when already that size).

    Args:
        maps: (B, h, w) float tensor.
        size: target (H, W).

    Returns:
        (B, H, W) tensor.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    out = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)  # (B, 1, H, W)
    return out.squeeze(1)
