"""Aspect-preserving geometry between an input image (H, W) and a detector's square input (S, S).

An image that is not square is not squashed: its long side is resized to S, its short side by the
same factor, and it is centred on the S x S canvas (a "letterbox"). Everything computed on the
canvas -- anomaly maps, binary masks, defect-region boxes -- is mapped back to the input's pixels
by cropping the image's area and resizing it by the inverse factor, so a map or box lands on
the input pixels it was computed from. Square images are a plain resize (no pad), bit for bit the
previous behaviour, so MVTec AD results do not move.

Pad value: the image's own border pixels, replicated (``F.pad(mode="replicate")``). A constant pad
(black, grey) puts a sharp edge between image and pad that a CNN sees as structure no training
image had -- exactly the kind of feature a nearest-neighbour detector flags; a replicated border
continues the background without an edge. Maps are computed on the whole canvas, but the pad area
is never mapped back: :meth:`Letterbox.crop` / :meth:`Letterbox.to_input` keep only the image's
area, and :meth:`Letterbox.zero_pad` zeroes the pad in canvas-sized maps (evaluation), so the pad
can neither raise a defect region nor appear in a heatmap. The image score of a non-square image
is still the detector's score over the canvas; with the replicated border it rests on pixels the
image has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Letterbox:
    """Where an (height, width) image sits on the (size, size) canvas."""

    height: int
    width: int
    size: int

    @property
    def inner(self) -> tuple[int, int]:
        """(h, w) of the resized image on the canvas: the long side is ``size``."""
        scale = self.size / max(self.height, self.width)
        return (min(self.size, max(1, round(self.height * scale))), min(self.size, max(1, round(self.width * scale))))

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the image on the canvas."""
        h, w = self.inner
        return (self.size - h) // 2, (self.size - w) // 2

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H', W') image (any resolution of this aspect) -> (C, S, S): resized, then pad replicated."""
        h, w = self.inner
        if tuple(image.shape[-2:]) != (h, w):
            image = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp_(0.0, 1.0)  # (C, h, w)
        if (h, w) == (self.size, self.size):
            return image
        top, left = self.offset
        pads = (left, self.size - w - left, top, self.size - h - top)
        return F.pad(image[None], pads, mode="replicate")[0]  # (C, S, S)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) binary mask -> (S, S): nearest resize, zero pad."""
        from PIL import Image

        h, w = self.inner
        small = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))
        out = np.zeros((self.size, self.size), dtype=small.dtype)
        top, left = self.offset
        out[top:top + h, left:left + w] = small
        return out

    def crop(self, maps: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """(..., S, S) -> (..., h, w): the image's area of canvas maps."""
        (h, w), (top, left) = self.inner, self.offset
        return maps[..., top:top + h, left:left + w]

    def zero_pad(self, maps: np.ndarray) -> np.ndarray:
        """(..., S, S) canvas maps with the pad area set to 0 (a copy)."""
        out = np.zeros_like(maps)
        (h, w), (top, left) = self.inner, self.offset
        out[..., top:top + h, left:left + w] = self.crop(maps)
        return out

    def to_input(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, S, S) canvas maps -> (B, H, W) on the input's pixels (crop, bilinear resize)."""
        return upsample_maps(self.crop(maps), (self.height, self.width))

    def regions_to_input(self, regions: list[dict]) -> list[dict]:
        """Regions found on a canvas map (bboxes ``[x0, y0, x1, y1]``) in the input's pixels."""
        from anomaly.regions import scale_regions  # deferred: scipy.ndimage, not needed at CLI start-up

        top, left = self.offset
        shifted = [{**r, "bbox": [r["bbox"][0] - left, r["bbox"][1] - top, r["bbox"][2] - left, r["bbox"][3] - top]}
                   for r in regions]
        return scale_regions(shifted, self.inner, (self.height, self.width))


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


def letterbox_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, S, S), aspect kept (:class:`Letterbox`); a square batch is a plain resize."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h == w:
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    box = Letterbox(int(h), int(w), size)
    return torch.stack([box.image(image) for image in images])


def maps_to_input(maps: torch.Tensor, hw: tuple[int, int], size: int) -> torch.Tensor:
    """(B, S, S) canvas maps of (H, W) inputs -> (B, H, W) on the inputs' pixels (no-op when already there)."""
    h, w = int(hw[0]), int(hw[1])
    if h == w or tuple(maps.shape[-2:]) == (h, w):
        return upsample_maps(maps, (h, w))
    return Letterbox(h, w, size).to_input(maps)
