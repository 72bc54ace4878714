"""Resizing and anomaly-map post-processing shared by every detector.

PatchCore (Roth et al., CVPR 2022) and PaDiM (Defard et al., ICPR 2021) smooth their
patch-level maps with a Gaussian of sigma = 4 px before scoring; the autoencoder does the
same with its residual map (``1 - SSIM`` with :func:`ssim_map`, Wang et al. 2004, for AE-SSIM).
:func:`resize_images` brings input images to a detector's ``image_size``,
:func:`anomaly.geometry.upsample_maps` brings its maps back to the input's size. All are pure tensor maths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anomaly.geometry import upsample_maps  # noqa: F401  (maps back to the input's size: the geometry's job)

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


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


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of (B, 3, H, W) images to (B, 3, size, size); no-op when already there."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luma."""
    weights = torch.tensor(_GRAY_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004) of images in [0, 1], channel by channel.

    Args:
        x, y: (B, C, H, W) tensors with data range 1.
        window: side of the Gaussian window (odd).
        sigma: standard deviation of the window.

    Returns:
        (B, C, H, W) SSIM in [-1, 1]; 1 where ``x == y``. Borders use replicate padding.
    """
    c1, c2 = 0.01**2, 0.03**2
    g = gaussian_kernel1d(sigma, radius=window // 2).to(x.device, x.dtype)  # (window,)
    channels, pad = x.shape[1], window // 2
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window)  # (C, 1, w, w)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="replicate"), kernel, groups=channels)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).clamp(-1.0, 1.0)


def topk_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, H, W) -> (B,) mean of the largest ``fraction`` of each map's pixels (at least one)."""
    flat = maps.flatten(1)  # (B, H*W)
    k = max(1, round(fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)
