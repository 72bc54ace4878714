"""Tests for the no-learning ``intensity`` baseline: properties, save/load, and the full pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly.models import BASELINES, METHODS, Detector, create_detector, load_detector
from anomaly.config import RunConfig
from anomaly.pipeline import evaluate_run, fit_run


def test_map_is_smoothed_distance_to_the_image_median():
    images = torch.full((2, 3, 40, 40), 0.3)
    images[1, :, 10:14, 20:24] = 0.9  # a bright spot on image 1
    det = create_detector("intensity", {"image_size": 40, "smooth_sigma": 1.0})
    out = det.predict(images)
    assert out.anomaly_maps.shape == (2, 40, 40) and out.image_scores.shape == (2,)
    assert out.image_scores[0] == pytest.approx(0.0, abs=1e-6)  # a flat image has nothing to flag
    peak = np.unravel_index(out.anomaly_maps[1].argmax(), (40, 40))
    assert 10 <= peak[0] < 14 and 20 <= peak[1] < 24
    assert out.image_scores[1] == pytest.approx(out.anomaly_maps[1].max(), rel=1e-5)


def test_maps_come_back_at_the_input_resolution_and_save_load_is_identical(tmp_path):
    images = torch.rand(3, 3, 50, 70)
    det = create_detector("intensity", {"image_size": 32})
    det.save(tmp_path)
    again = load_detector(tmp_path)
    a, b = det.predict(images), again.predict(images)
    assert a.anomaly_maps.shape == (3, 50, 70)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)


def test_registered_as_a_baseline_and_bad_params_are_refused():
    assert "intensity" in METHODS and "intensity" in BASELINES
    with pytest.raises(ValueError):
        create_detector("intensity", {"smooth_sigma": -1})
    with pytest.raises(ValueError):
        create_detector("intensity", {"epochs": 3})


def test_fit_and_evaluate_like_any_method(synthetic_root, tmp_path):
    run = fit_run(RunConfig(synthetic_root, "screw_like", "intensity", params={"image_size": 64}, device="cpu"),
                  tmp_path / "run")
    metrics = evaluate_run(run, device="cpu")
    for key in ("image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "image_auroc_ci", "f1_flag_all"):
        assert key in metrics
    lo, hi = metrics["image_auroc_ci"]
    assert 0 <= lo <= hi <= 1 and 0.5 < metrics["pixel_auroc"] <= 1  # the screw differs from its background
