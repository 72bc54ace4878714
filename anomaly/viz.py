"""Figures for the study: every function RETURNS a matplotlib ``Figure`` (never shows or prints).

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``, so nothing is
registered with a GUI backend: they work headless (Agg), are not shown twice in notebooks, and
are freed when dropped. Images are ``(3, H, W)`` tensors/arrays in [0, 1] (or ``(H, W, 3)``,
``(H, W)``); anomaly maps are ``(H, W)``; ground-truth masks ``(H, W)`` of 0/1.

Heatmap colour ranges (``vmin``/``vmax``) should come from validation GOOD images
(``run_results.RunResults.display_range``), never from the maps being shown -- otherwise every
image, good or not, is stretched to look equally anomalous.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from anomaly.charts import (  # noqa: F401  (re-exported: viz.* is the notebooks' one namespace for figures)
    comparison_figure, confusion_figure, data_efficiency_figure, defect_size_figure, detection_by_size_figure,
    loss_curve, new_figure, operating_point_figure, pro_figure, roc_figure, score_histogram)

CMAP = "jet"  # the colour map of the original study's heatmaps
CONTOUR_COLOUR = "lime"


def to_display(image) -> np.ndarray:
    """(3, H, W) / (H, W, 3) / (H, W) tensor or array in [0, 1] -> (H, W, 3) float32 numpy."""
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.clip(array, 0.0, 1.0)


def _draw_overlay(ax, image, anomaly_map=None, gt_mask=None, vmin=None, vmax=None, alpha=0.5, title=None):
    """Image, optional heatmap (alpha-blended) and optional GT contours on one axes; returns the heatmap artist."""
    ax.imshow(to_display(image))
    artist = None
    if anomaly_map is not None:
        artist = ax.imshow(np.asarray(anomaly_map, dtype=np.float32), cmap=CMAP, alpha=alpha, vmin=vmin, vmax=vmax)
    if gt_mask is not None and np.asarray(gt_mask).any():
        ax.contour(np.asarray(gt_mask, dtype=np.float32), levels=[0.5], colors=CONTOUR_COLOUR, linewidths=1.2)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return artist


def heatmap_gallery(images: Sequence, anomaly_maps: Sequence, gt_masks: Sequence | None = None,
                    titles: Sequence[str] | None = None, *, ncols: int = 4, vmin: float | None = None,
                    vmax: float | None = None, alpha: float = 0.5, threshold: float | None = None) -> Figure:
    """A grid of overlays (one per image), all with the same colour range and one colour bar, GT outlines in green.

    ``threshold``: marked on the colour bar and outlined (white dashes) where a map reaches it. For methods whose
    image score is the map's maximum, a map crossing it is a flagged part (PatchCore scores its unsmoothed
    worst patch, so its smoothed map can stay below the threshold of a flagged part).
    """
    n = len(images)
    if n == 0:  # e.g. no false negatives at this threshold
        fig, axes = new_figure(1, 1, cell=2.0)
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
        axes[0, 0].set_axis_off()
        return fig
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols)
    artist = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        mask = None if gt_masks is None else gt_masks[i]
        artist = _draw_overlay(ax, images[i], anomaly_maps[i], mask, vmin, vmax, alpha, titles[i] if titles else None)
        if threshold is not None and np.nanmax(anomaly_maps[i]) >= threshold:
            ax.contour(np.asarray(anomaly_maps[i], dtype=np.float32), levels=[threshold], colors="white",
                       linewidths=1.0, linestyles="dashed")
    bar = fig.colorbar(artist, ax=axes, shrink=0.8, label="anomaly score")
    if threshold is not None:
        bar.ax.axhline(threshold, color="white", linewidth=2, linestyle="--")
        bar.ax.set_ylabel(f"anomaly score (dashed: threshold {threshold:.3g})")
    return fig


def triptych(images: Sequence, reconstructions: Sequence, anomaly_maps: Sequence,
             gt_masks: Sequence | None = None, titles: Sequence[str] | None = None, *,
             vmin: float | None = None, vmax: float | None = None) -> Figure:
    """The original study's figure: one row per image, columns input | reconstruction | error heatmap."""
    fig, axes = new_figure(len(images), 3, cell=2.6)
    for i, row in enumerate(axes):
        prefix = f"{titles[i]}: " if titles else ""
        _draw_overlay(row[0], images[i], title=f"{prefix}input")
        _draw_overlay(row[1], reconstructions[i], title="reconstruction")
        mask = None if gt_masks is None else gt_masks[i]
        artist = row[2].imshow(np.asarray(anomaly_maps[i], dtype=np.float32), cmap=CMAP, vmin=vmin, vmax=vmax)
        if mask is not None and np.asarray(mask).any():
            row[2].contour(np.asarray(mask, dtype=np.float32), levels=[0.5], colors="white", linewidths=1.0)
        row[2].set_axis_off()
        row[2].set_title("error map", fontsize=9)
        fig.colorbar(artist, ax=row[2], shrink=0.8)
    return fig


def method_gallery(images: Sequence, maps_by_method: Mapping[str, Sequence], gt_masks: Sequence | None = None,
                   ranges: Mapping[str, tuple[float, float]] | None = None,
                   titles: Sequence[str] | None = None, scores_by_method: Mapping[str, Sequence[float]] | None = None,
                   thresholds: Mapping[str, float] | None = None, sizes: Mapping[str, int] | None = None) -> Figure:
    """The same images (rows) under each method's heatmap (columns), each method in its own colour range.

    Each method's column gets its colour bar (with its threshold dashed on it) and each panel the image's score
    (``flagged`` when ``score >= threshold``): colours of two methods are not comparable,
    their scores against their own thresholds are. ``sizes``: each method's input side (px), named on its bar.
    """
    methods = list(maps_by_method)
    fig, axes = new_figure(len(images), 1 + len(methods), cell=2.6)
    for j, method in enumerate(methods, 1):
        vmin, vmax = (ranges or {}).get(method, (None, None))
        thr = (thresholds or {}).get(method)
        artist = None
        for i, ax in enumerate(axes[:, j]):
            mask = None if gt_masks is None else gt_masks[i]
            title = method
            if scores_by_method is not None:
                score = float(scores_by_method[method][i])
                title += f" {score:.3g}" + (" flagged" if thr is not None and score >= thr else "")
            artist = _draw_overlay(ax, images[i], maps_by_method[method][i], mask, vmin, vmax, title=title)
        if len(images):
            bar = fig.colorbar(artist, ax=axes[:, j], shrink=0.6, location="bottom")
            if thr is not None:
                bar.ax.axvline(thr, color="white", linewidth=2, linestyle="--")
                size = f" at {sizes[method]} px" if sizes and method in sizes else ""
                bar.set_label(f"{method}{size} score (dashed: threshold {thr:.3g})", fontsize=7)
    for i, row in enumerate(axes):
        mask = None if gt_masks is None else gt_masks[i]
        _draw_overlay(row[0], images[i], gt_mask=mask, title=titles[i] if titles else "image")
    return fig


def image_grid(images: Sequence, gt_masks: Sequence | None = None, titles: Sequence[str] | None = None,
               ncols: int = 4) -> Figure:
    """A grid of images with ground-truth mask outlines (green) where a mask is given and non-empty."""
    n = len(images)
    fig, axes = new_figure(max(1, -(-n // ncols)), ncols, cell=2.4)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _draw_overlay(ax, images[i], gt_mask=None if gt_masks is None else gt_masks[i],
                          title=titles[i] if titles else None)
        else:
            ax.set_axis_off()
    return fig


def mean_std_figure(mean_image: np.ndarray, std_image: np.ndarray, title: str = "train/good") -> Figure:
    """Per-pixel mean and standard deviation over a set of images: where do good images vary?"""
    fig, axes = new_figure(1, 2, cell=4.0)
    axes[0, 0].imshow(to_display(mean_image))
    artist = axes[0, 1].imshow(np.asarray(std_image, dtype=np.float32), cmap="magma")
    fig.colorbar(artist, ax=axes[0, 1], shrink=0.8, label="std of gray level")
    for ax, name in zip(axes[0], ("mean image", "per-pixel std")):
        ax.set_title(f"{title}: {name}", fontsize=10)
        ax.set_axis_off()
    return fig


def heatmap_rgb(image, anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                alpha: float = 0.5) -> np.ndarray:
    """Blend the colour-mapped ``anomaly_map`` (H, W) over ``image``; returns (H, W, 3) uint8 at the image's size."""
    base = to_display(image)  # (H, W, 3)
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape != base.shape[:2]:
        raise ValueError(f"anomaly map {amap.shape} does not match image {base.shape[:2]}")
    low = float(np.min(amap)) if vmin is None else vmin
    high = float(np.max(amap)) if vmax is None else vmax
    scaled = np.clip((amap - low) / max(high - low, 1e-12), 0.0, 1.0)
    colours = matplotlib.colormaps[CMAP](scaled)[..., :3]  # (H, W, 3)
    return np.round(255 * ((1 - alpha) * base + alpha * colours)).astype(np.uint8)


def heatmap_png_bytes(image, anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                      alpha: float = 0.5) -> bytes:
    """PNG-encoded :func:`heatmap_rgb` (for the HTTP service)."""
    buffer = io.BytesIO()
    Image.fromarray(heatmap_rgb(image, anomaly_map, vmin, vmax, alpha)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_heatmap_png(image, anomaly_map: np.ndarray, path: str | Path, vmin: float | None = None,
                     vmax: float | None = None, alpha: float = 0.5) -> Path:
    """Write :func:`heatmap_rgb` as a PNG of the image's size; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(heatmap_png_bytes(image, anomaly_map, vmin, vmax, alpha))
    return path


def patch_pair_figure(test_image, test_cell: tuple[int, int], good_image, good_cell: tuple[int, int], cell_px: int,
                      stride: int, title_test: str = "test patch", title_good: str = "nearest good patch") -> Figure:
    """A test image and a good image side by side, each with a box around one patch cell (row, col) of the grid.

    The box spans the patch's neighbourhood (``cell_px`` px), centred on the cell (``stride`` px per cell).
    """
    from matplotlib.patches import Rectangle

    fig, axes = new_figure(1, 2, cell=4.0)
    for ax, image, (r, c), title in ((axes[0, 0], test_image, test_cell, title_test),
                                     (axes[0, 1], good_image, good_cell, title_good)):
        ax.imshow(to_display(image))
        y, x = (r + 0.5) * stride - cell_px / 2, (c + 0.5) * stride - cell_px / 2
        ax.add_patch(Rectangle((x, y), cell_px, cell_px, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return fig




def coreset_figure(points: np.ndarray, chosen: Sequence[int], radius: float) -> Figure:
    """2-D points, the greedy k-centre picks (numbered in order) and the covering radius around each pick.

    Args:
        points: (N, 2). chosen: indices in selection order. radius: largest distance of any point to its nearest pick.
    """
    from matplotlib.patches import Circle

    fig, axes = new_figure(1, 1, cell=4.5)
    ax = axes[0, 0]
    points = np.asarray(points)
    ax.scatter(points[:, 0], points[:, 1], s=6, color="grey", label=f"all points (n={len(points)})")
    picks = points[list(chosen)]
    ax.scatter(picks[:, 0], picks[:, 1], s=30, color="tab:red", label=f"coreset (k={len(picks)})")
    for order, (x, y) in enumerate(picks):
        ax.add_patch(Circle((x, y), radius, fill=False, color="tab:red", alpha=0.3))
        ax.annotate(str(order), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(aspect="equal", title=f"greedy k-centre: every point within {radius:.3f} of a pick", xlabel="feature 1",
           ylabel="feature 2")
    ax.legend(fontsize=7, loc="upper right")
    return fig
