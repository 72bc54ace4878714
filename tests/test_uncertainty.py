"""Tests for issue 10's metrics: aupro_fpr05, the flag-all F1, detection by size, the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import norm

from anomaly import bootstrap as B
from anomaly.metrics import aupro, detection_by_size, f1_flag_all, image_auroc, pixel_auroc
from anomaly.uncertainty import uncertainty_metrics
from test_metrics import HAND_MAP, HAND_MASK, _random_case, _reference_aupro


def test_aupro_fpr05_matches_an_independent_computation():
    for seed in range(3):
        masks, maps = _random_case(seed)
        assert aupro(masks, maps, fpr_limit=0.05) == pytest.approx(_reference_aupro(masks, maps, 0.05), abs=1e-9)
    # hand case: the curve is (0, 0.25) -> (0.2, 0.25); at FPR <= 0.05 PRO is 0.25 everywhere but (0, 0)
    assert aupro(HAND_MASK, HAND_MAP, fpr_limit=0.05) == pytest.approx(0.25)


def test_f1_flag_all_is_2p_over_1_plus_p():
    assert f1_flag_all(np.r_[np.zeros(40), np.ones(75)]) == pytest.approx(2 * 75 / 115 / (1 + 75 / 115))
    assert f1_flag_all(np.r_[np.zeros(40), np.ones(75)]) == pytest.approx(0.7895, abs=1e-4)
    assert f1_flag_all(np.zeros(3)) == 0.0


def test_detection_by_size_on_known_masks():
    masks = np.zeros((5, 100, 100), np.uint8)  # image area 10 000 px
    masks[2, :2, :2] = 1  # 4 px = 0.04 %  -> bin [0, 0.05 %)
    masks[3, :3, :5] = 1  # 15 px = 0.15 % -> bin [0.1 %, 0.2 %)
    masks[4, :20, :20] = 1  # 400 px = 4 %  -> bin [1 %, 100 %]
    labels, scores = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.15, 0.5, 0.9])
    rows = detection_by_size(labels, scores, masks, threshold=0.3)
    assert [r["n"] for r in rows] == [1, 0, 1, 0, 0, 1]
    assert rows[0]["recall_at_threshold"] == 0.0 and rows[0]["mean_score"] == pytest.approx(0.15)
    assert rows[0]["image_auroc"] == pytest.approx(0.5)  # 0.15 beats one of the two good parts
    assert rows[2]["recall_at_threshold"] == 1.0 and rows[-1]["image_auroc"] == 1.0
    assert rows[1]["recall_at_threshold"] is None


def _smooth_case(seed: int, n_good: int = 20, n_bad: int = 40, size: int = 48):
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.normal(size=(n_good + n_bad, size, size)), (0, 2, 2)).astype(np.float32)
    masks = np.zeros(maps.shape, np.uint8)
    for i in range(n_good, n_good + n_bad):
        r, (y, x) = rng.integers(2, 7), rng.integers(8, size - 8, 2)
        masks[i, y - r:y + r, x - r:x + r] = 1
        maps[i][masks[i] == 1] += rng.uniform(0, 0.6)
    labels = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(int)
    return labels, masks, maps


def test_binned_metrics_are_within_0002_of_exact():
    labels, masks, maps = _smooth_case(0)
    binned, full = B.bin_maps(masks, maps), np.ones((1, len(labels)))
    assert B.pixel_auroc_samples(binned, full)[0] == pytest.approx(pixel_auroc(masks, maps), abs=0.002)
    for limit in (0.3, 0.05):
        assert B.aupro_samples(binned, full, limit)[0] == pytest.approx(aupro(masks, maps, limit), abs=0.002)
    scores = maps.reshape(len(labels), -1).max(1)
    assert B.image_auroc_samples(labels, scores, full)[0] == pytest.approx(image_auroc(labels, scores))


def test_bootstrap_is_seeded_and_stratified():
    labels = np.r_[np.zeros(7), np.ones(11)]
    w1, w2 = B.stratified_weights(labels, 50, seed=0), B.stratified_weights(labels, 50, seed=0)
    assert np.array_equal(w1, w2) and not np.array_equal(w1, B.stratified_weights(labels, 50, seed=1))
    assert (w1[:, :7].sum(1) == 7).all() and (w1[:, 7:].sum(1) == 11).all()
    labels, masks, maps = _smooth_case(1)
    out = {"labels": labels, "image_scores": maps.reshape(len(labels), -1).max(1), "gt_masks": masks,
           "anomaly_maps": maps}
    samples = [type("S", (), {"defect_type": "good" if y == 0 else "spot"})() for y in labels]
    a, b = uncertainty_metrics(out, samples, 1.0, n_resamples=200), uncertainty_metrics(out, samples, 1.0, n_resamples=200)
    assert a["image_auroc_ci"] == b["image_auroc_ci"] and a["aupro_ci"] == b["aupro_ci"]
    assert a["pixel_auroc_ci"][0] < pixel_auroc(masks, maps) < a["pixel_auroc_ci"][1]
    assert a["per_defect_type"]["spot"]["image_auroc_ci"] == a["image_auroc_ci"]


def test_bootstrap_interval_covers_a_known_auroc():
    """Binormal scores with true AUROC = Phi(d / sqrt 2): the 95 % interval covers it ~95 % of the time."""
    d, truth, hits, trials = 1.0, norm.cdf(1.0 / np.sqrt(2)), 0, 200
    labels = np.r_[np.zeros(40), np.ones(75)]
    rng = np.random.default_rng(0)
    for trial in range(trials):
        scores = np.r_[rng.normal(size=40), rng.normal(d, size=75)]
        samples = B.image_auroc_samples(labels, scores, B.stratified_weights(labels, 300, seed=trial))
        lo, hi = B.percentile_interval(samples)
        hits += lo <= truth <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_paired_margin_calls_a_difference_real_only_when_the_interval_excludes_zero():
    labels, masks, maps = _smooth_case(2)
    scores = maps.reshape(len(labels), -1).max(1)
    strong = {"labels": labels, "image_scores": scores + 5 * labels, "gt_masks": masks, "anomaly_maps": maps}
    weak = {"labels": labels, "image_scores": scores}
    same = B.paired_margins(weak, dict(weak))
    assert same["image_auroc"]["margin"] == 0 and not same["image_auroc"]["real"]
    better = B.paired_margins(strong, weak)
    assert better["image_auroc"]["real"] and better["image_auroc"]["ci"][0] > 0
    assert set(better) == {"image_auroc"}  # pixel metrics only when both methods have maps
    with pytest.raises(ValueError, match="same test images"):
        B.paired_margins(weak, {"labels": labels[::-1], "image_scores": scores})
