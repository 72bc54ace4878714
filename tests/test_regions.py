"""Defect regions from a known mask: bounding boxes, areas, scores, scaling and region-level rates."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.regions import defect_mask, find_regions, region_metrics, scale_regions


def _map() -> np.ndarray:
    amap = np.zeros((20, 30), np.float32)
    amap[2:5, 3:9] = 0.8  # 3 x 6 block
    amap[3, 4] = 0.9
    amap[10:15, 20:22] = 0.6  # 5 x 2 block
    amap[18, 0] = 0.7  # single pixel, diagonal-free
    return amap


def test_find_regions_from_a_known_mask():
    regions = find_regions(_map(), 0.5)
    assert regions == [
        {"bbox": [3, 2, 8, 4], "area_px": 18, "max_score": pytest.approx(0.9)},
        {"bbox": [0, 18, 0, 18], "area_px": 1, "max_score": pytest.approx(0.7)},
        {"bbox": [20, 10, 21, 14], "area_px": 10, "max_score": pytest.approx(0.6)},
    ]
    assert find_regions(_map(), 0.95) == []
    assert len(find_regions(_map(), 0.5, min_area=2)) == 2
    assert defect_mask(_map(), 0.5).sum() == 29


def test_diagonal_pixels_are_one_region():
    amap = np.eye(5, dtype=np.float32)
    assert len(find_regions(amap, 0.5)) == 1


def test_scale_regions_to_the_input_pixels():
    scaled = scale_regions([{"bbox": [3, 2, 8, 4], "area_px": 18, "max_score": 0.9}], (20, 30), (40, 90))
    assert scaled[0]["bbox"] == [9, 4, 26, 9] and scaled[0]["area_px"] == 18 * 6


def test_region_metrics_hits_and_false_regions():
    maps = np.zeros((3, 10, 10), np.float32)
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, 1:3, 1:3] = 1  # two GT regions in the defective image, one found
    masks[0, 6:9, 6:9] = 1
    maps[0, 2, 2] = 1.0
    maps[1, 0, 0] = maps[1, 9, 9] = 1.0  # a good image with two false regions
    labels = np.array([1, 0, 0])
    m = region_metrics(maps, masks, labels, 0.5)
    assert (m["gt_regions"], m["gt_regions_hit"], m["region_hit_rate"]) == (2, 1, 0.5)
    assert m["false_regions_per_good_image"] == pytest.approx(1.0) and m["n_good_images"] == 2
