"""Every figure function returns a matplotlib Figure with the expected axes; heatmap PNGs keep the image size."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from anomaly import viz

matplotlib.use("Agg")

H, W = 24, 32


def _image_axes(fig: Figure) -> list:
    """Axes that show something (colorbars excluded)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


@pytest.fixture
def predictions() -> dict[str, np.ndarray]:
    """A run-like predictions dict: 6 images, 3 good, 3 with a square defect the map finds."""
    rng = np.random.default_rng(0)
    masks = np.zeros((6, H, W), dtype=np.uint8)
    masks[3:, 8:14, 10:18] = 1
    maps = (rng.random((6, H, W)) + 2 * masks).astype(np.float16)
    return {"labels": np.array([0, 0, 0, 1, 1, 1]), "image_scores": maps.reshape(6, -1).max(1).astype(np.float64),
            "gt_masks": masks, "anomaly_maps": maps}


def test_to_display_accepts_chw_tensor_hwc_and_gray():
    chw = torch.rand(3, H, W)
    assert viz.to_display(chw).shape == (H, W, 3)
    assert viz.to_display(chw.numpy().transpose(1, 2, 0)).shape == (H, W, 3)
    assert viz.to_display(np.ones((H, W)) * 2).max() == 1.0  # clipped to [0, 1]


@pytest.mark.parametrize("n, ncols, shown", [(5, 4, 8 + 1), (2, 4, 2 + 1), (0, 4, 1)])  # + the colour bar
def test_heatmap_gallery_grid(n, ncols, shown):
    fig = viz.heatmap_gallery(torch.rand(n, 3, H, W), np.random.rand(n, H, W), np.zeros((n, H, W)),
                              [f"t{i}" for i in range(n)], ncols=ncols, vmin=0, vmax=1)
    assert isinstance(fig, Figure) and len(fig.axes) == shown


def test_heatmap_gallery_marks_the_threshold_on_its_colour_bar():
    fig = viz.heatmap_gallery(torch.rand(2, 3, H, W), np.random.rand(2, H, W), vmin=0, vmax=1, threshold=0.7)
    bar = fig.axes[-1]
    assert "threshold 0.7" in bar.get_ylabel() and any(np.allclose(line.get_ydata(), 0.7) for line in bar.lines)


def test_score_histogram_shows_the_calibration_scores():
    fig = viz.score_histogram(np.array([0, 1]), np.array([0.1, 0.9]), 0.5, validation_scores=np.array([0.1, 0.2]))
    assert any("calibration (n=2)" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_triptych_rows_of_three():
    fig = viz.triptych(torch.rand(2, 3, H, W), torch.rand(2, 3, H, W), np.random.rand(2, H, W),
                       np.ones((2, H, W)), ["a", "b"], vmin=0, vmax=1)
    axes = _image_axes(fig)
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["a: input", "reconstruction", "error map"]


def test_method_gallery_columns_per_method():
    maps = {"autoencoder": np.random.rand(2, H, W), "patchcore": np.random.rand(2, H, W)}
    fig = viz.method_gallery(torch.rand(2, 3, H, W), maps, np.zeros((2, H, W)), {"patchcore": (0.0, 1.0)},
                             scores_by_method={"autoencoder": [0.1, 0.9], "patchcore": [0.2, 0.3]},
                             thresholds={"autoencoder": 0.5, "patchcore": 0.5})
    assert len(fig.axes) == 6 + 2  # 2 rows x (image + 2 methods) + one colour bar per method
    titles = [ax.get_title() for ax in fig.axes[:6]]
    assert "patchcore 0.2" in titles and "autoencoder 0.9 flagged" in titles
    assert "threshold 0.5" in fig.axes[-1].get_xlabel()


def test_coreset_figure_and_threshold_explorer():
    from anomaly.study import explorer

    fig = viz.coreset_figure(np.random.rand(50, 2), [0, 3, 7], radius=0.3)
    assert "within 0.300" in fig.axes[0].get_title()
    labels = np.r_[np.zeros(10), np.ones(10)]
    scores = np.r_[np.linspace(0, 1, 10), np.linspace(0.5, 1.5, 10)]
    state = explorer.threshold_state(np.linspace(0, 1, 20), labels, scores, 0.75, 0.01)
    assert (state["tn"], state["fp"], state["fn"], state["tp"]) == (7, 3, 3, 7)
    assert state["frr"] == 0.3 and state["frr_ci"][0] < 0.3 < state["frr_ci"][1]
    lo, hi = state["precision_range"]
    assert 0 < lo < hi < 1
    fig = explorer.threshold_figure(np.linspace(0, 1, 20), labels, scores, 0.75, 0.01, calibrated=0.9)
    assert len(fig.axes) == 3 and "recall 0.700" in fig.axes[2].get_title()
    explorer.threshold_figure(np.linspace(0, 1, 20), labels, scores, 99.0, 0.01)  # 0 of n rejected: no error bar < 0
    slider = explorer.threshold_slider(np.linspace(0, 1, 20), labels, scores, 0.75, 0.01)
    bundle = slider._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "JupyterLab" in bundle["text/plain"]


def test_image_grid_and_mean_std():
    assert len(viz.image_grid(torch.rand(3, 3, H, W), torch.zeros(3, H, W), ["a", "b", "c"], ncols=2).axes) == 4
    fig = viz.mean_std_figure(torch.rand(3, H, W), torch.rand(H, W))
    assert len(_image_axes(fig)) == 2


def test_roc_figure_image_and_pixel_panels(predictions):
    fig = viz.roc_figure({"a": predictions, "b": predictions})
    image_ax, pixel_ax = fig.axes
    assert "image" in image_ax.get_title() and "pixel" in pixel_ax.get_title()
    assert len(image_ax.get_legend().get_texts()) == 2
    assert "AUROC 1.000" in image_ax.get_legend().get_texts()[0].get_text()  # defects score higher


def test_pro_figure_marks_the_limit(predictions):
    fig = viz.pro_figure({"a": predictions}, fpr_limit=0.3)
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("AUPRO@0.3" in t for t in texts) and any("limit 0.3" in t for t in texts)


def test_score_histogram_shows_both_thresholds(predictions):
    fig = viz.score_histogram(predictions["labels"], predictions["image_scores"], 1.5, oracle_threshold=2.0)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("calibrated threshold" in t for t in texts) and any("ORACLE" in t for t in texts)


def test_confusion_counts(predictions):
    fig = viz.confusion_figure(predictions["labels"], predictions["image_scores"], threshold=1.5)
    annotations = [t.get_text() for t in fig.axes[0].texts]
    assert annotations == ["3", "0", "0", "3"]  # tn, fp, fn, tp


def test_loss_efficiency_and_defect_size_figures():
    assert len(viz.loss_curve([1.0, 0.5, 0.25]).axes[0].lines) == 1
    table = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 2, "seed": [0, 0, 1, 1, 0, 0], "n_train": [5, 10] * 3,
                          "image_auroc": [0.6, 0.7, 0.5, 0.8, 0.8, 0.9], "aupro": [0.5] * 6})
    fig = viz.data_efficiency_figure(table, ("image_auroc", "aupro"), baselines={"intensity": {"image_auroc": 0.7}})
    lines = fig.axes[0].lines
    assert len(lines) == 4 and len(fig.axes[0].collections) == 2  # 2 methods + baseline + chance; 2 seed bands
    np.testing.assert_allclose(lines[0].get_ydata(), [0.55, 0.75])  # mean over seeds
    assert len(fig.axes[1].lines) == 2  # no chance line for AUPRO


def test_comparison_figure_draws_intervals():
    fig = viz.comparison_figure({"a": {"image_auroc": 0.8, "image_auroc_ci": [0.7, 0.9]}, "b": {"image_auroc": 0.6}},
                                keys=("image_auroc",))
    assert len(fig.axes[0].patches) == 2
    areas = pd.DataFrame({"defect_type": ["x", "x", "y"], "area_fraction": [0.005, 0.01, 0.02]})
    assert isinstance(viz.defect_size_figure(areas), Figure)


def test_save_heatmap_png_has_the_image_size(tmp_path):
    image = torch.rand(3, H, W)
    path = viz.save_heatmap_png(image, np.random.rand(H, W), tmp_path / "sub" / "h.png", vmin=0.0, vmax=1.0)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (W, H) and png.mode == "RGB"
    with Image.open(io.BytesIO(viz.heatmap_png_bytes(image, np.zeros((H, W))))) as png:
        assert png.size == (W, H)  # constant map: no division by zero


def test_heatmap_rgb_rejects_a_map_of_another_size():
    with pytest.raises(ValueError, match="does not match"):
        viz.heatmap_rgb(torch.rand(3, H, W), np.zeros((H + 1, W)))
