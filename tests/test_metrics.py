"""Tests for anomaly.metrics: exact values on hand cases, a brute-force AU-PRO reference, errors."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.metrics import (
    aupro,
    f1_max,
    f1_max_threshold,
    image_auroc,
    pixel_auroc,
    pro_curve,
    roc_curve_points,
    trapezoid,
)

# ---------------------------------------------------------------------------------------------
# Slow, obviously-correct reference for the PRO curve (independent of scipy's labelling).


def _components_8(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a 2-D 0/1 mask by flood fill: a list of pixel lists."""
    seen = np.zeros(mask.shape, dtype=bool)
    components = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], stack, pixels = True, [start], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    inside = 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1]
                    if inside and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        components.append(pixels)
    return components


def _reference_curve(masks: np.ndarray, maps: np.ndarray) -> list[tuple[float, float]]:
    """One (FPR, PRO) point per distinct threshold, highest first, framed by (0, 0) and (1, 1)."""
    regions = [(i, pixels) for i, mask in enumerate(masks) for pixels in _components_8(mask)]
    good = masks == 0
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= t
        fpr = (predicted & good).sum() / good.sum()
        overlaps = [np.mean([predicted[i][p] for p in pixels]) for i, pixels in regions]
        points.append((float(fpr), float(np.mean(overlaps))))
    points.append((1.0, 1.0))
    return points


def _reference_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Trapezoids up to ``limit``, the last one cut at ``limit`` with linear interpolation."""
    area = 0.0
    points = _reference_curve(masks, maps)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            if x0 < limit:
                y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += 0.5 * (y0 + y_limit) * (limit - x0)
            break
    return area / limit


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """5 images 9x11: scattered defects (many diagonal-only links), one good image, tied scores."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((5, 9, 11)) < 0.15).astype(np.uint8)
    masks[4] = 0  # a good image
    masks[0, :4, :4] = np.eye(4, dtype=np.uint8)  # one region connected only diagonally
    masks[0, 4, :5] = 0
    masks[0, :5, 4] = 0
    noise = rng.random(masks.shape)
    maps = np.round((0.6 * masks + noise) * 6) / 6  # ~10 distinct values -> many ties
    return masks, maps.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# AU-PRO


# Hand case: one 2x4 image.
#   mask            scores
#   1 0 0 1         0.9 0.6 0.8 0.6
#   0 1 0 0         0.2 0.4 0.4 0.1
# With 8-connectivity the diagonal pair {(0,0), (1,1)} is ONE region A (area 2); (0,3) is region
# B (area 1) -> 2 regions (4-connectivity would give 3). Good pixels: 5.
# Thresholds, descending (a pixel is positive when score >= t):
#   t=0.9: A gets 1 of 2 px          FPR 0/5 = 0.0   PRO (1/2 + 0)/2 = 0.25
#   t=0.8: + good (0,2)              FPR 1/5 = 0.2   PRO 0.25
#   t=0.6: + B and good (0,1) (tie)  FPR 2/5 = 0.4   PRO (1/2 + 1)/2 = 0.75
#   t=0.4: + A's (1,1), good (1,2)   FPR 3/5 = 0.6   PRO 1.0
#   t=0.2: + good (1,0)              FPR 0.8         PRO 1.0
#   t=0.1: + good (1,3)              FPR 1.0         PRO 1.0
# Ties keep only the last point, so no half-step point at t=0.6.
HAND_MASK = np.array([[[1, 0, 0, 1], [0, 1, 0, 0]]], dtype=np.uint8)
HAND_MAP = np.array([[[0.9, 0.6, 0.8, 0.6], [0.2, 0.4, 0.4, 0.1]]])


def test_pro_curve_hand_case():
    fpr, pro = pro_curve(HAND_MASK, HAND_MAP)
    np.testing.assert_allclose(fpr, [0, 0, 0.2, 0.4, 0.6, 0.8, 1, 1], atol=1e-12)
    np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.75, 1, 1, 1, 1], atol=1e-12)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        # [0, 0.2] at PRO 0.25 -> 0.05; PRO at 0.3 interpolated between (0.2, .25) and (0.4, .75)
        # = 0.5 -> 0.5 * (0.25 + 0.5) * 0.1 = 0.0375; (0.05 + 0.0375) / 0.3 = 7/24.
        (0.3, 7 / 24),
        # 0.05 + 0.5 * (0.25 + 0.75) * 0.2 = 0.15; PRO at 0.5 = 0.875 -> 0.5 * (0.75 + 0.875) * 0.1
        # = 0.08125; 0.23125 / 0.5 = 0.4625.
        (0.5, 0.4625),
        # 0.15 + 0.5 * (0.75 + 1) * 0.2 = 0.325, then PRO 1 over [0.6, 1] -> 0.725. No interpolation.
        (1.0, 0.725),
        # Limit exactly on a curve point: 0.05 / 0.2 = 0.25.
        (0.2, 0.25),
    ],
)
def test_aupro_hand_case(limit, expected):
    assert aupro(HAND_MASK, HAND_MAP, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("limit", [0.01, 0.05, 0.1, 0.3, 0.5, 1.0])
def test_aupro_matches_brute_force_reference(seed, limit):
    masks, maps = _random_case(seed)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(_reference_aupro(masks, maps, limit), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_pro_curve_points_match_reference(seed):
    masks, maps = _random_case(seed)
    fpr, pro = pro_curve(masks, maps)
    expected = np.array(_reference_curve(masks, maps))
    np.testing.assert_allclose(np.stack([fpr, pro], axis=1), expected, atol=1e-9)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


def test_aupro_perfect_and_inverted():
    masks, _ = _random_case(3)
    rng = np.random.default_rng(0)
    perfect = masks + 0.5 * rng.random(masks.shape)  # every defect pixel above every good pixel
    inverted = -perfect
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, inverted) == pytest.approx(0.0, abs=1e-12)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)


def test_aupro_invariant_to_monotone_rescaling_and_dtype():
    masks, maps = _random_case(4)
    base = aupro(masks, maps)
    assert aupro(masks, np.exp(3.0 * maps.astype(np.float64)) - 7.0) == pytest.approx(base, abs=1e-12)
    assert aupro(masks.astype(bool), maps.astype(np.float16)) == pytest.approx(base, abs=1e-12)


def test_aupro_errors():
    masks, maps = _random_case(0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=1.5)
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="good pixel"):
        aupro(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="same shape"):
        aupro(masks, maps[:, :-1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        aupro(masks * 2, maps)
    with pytest.raises(ValueError, match="NaN"):
        aupro(masks, np.where(masks, np.nan, maps))


def test_trapezoid_matches_numpy_without_limit_and_handles_vertical_steps():
    x, y = np.array([0.0, 0.0, 0.5, 0.5, 1.0]), np.array([0.0, 0.4, 0.4, 0.8, 1.0])
    assert trapezoid(x, y) == pytest.approx(np.trapezoid(y, x))
    # Limit inside [0.5, 1]: interpolation starts from the TOP of the vertical step (0.8).
    assert trapezoid(x, y, x_max=0.75) == pytest.approx(0.2 + 0.5 * (0.8 + 0.9) * 0.25)


# ---------------------------------------------------------------------------------------------
# AUROC, F1, ROC points


def test_image_auroc_values():
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert image_auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    # 4 (good, defect) pairs; (0.4, 0.35) is mis-ordered -> 3/4.
    assert image_auroc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert image_auroc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)


def test_pixel_auroc_values():
    masks, _ = _random_case(1)
    assert pixel_auroc(masks, masks + 0.1) == 1.0
    assert pixel_auroc(masks, -masks.astype(float)) == 0.0
    flat_good_vs_defect = np.where(masks == 1, 2.0, 1.0)
    assert pixel_auroc(masks, flat_good_vs_defect) == 1.0


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="all 3 images are good"):
        image_auroc(np.zeros(3), np.arange(3.0))
    with pytest.raises(ValueError, match="defective"):
        image_auroc(np.ones(3), np.arange(3.0))
    with pytest.raises(ValueError, match="pixels are good"):
        pixel_auroc(np.zeros((2, 3, 3)), np.random.default_rng(0).random((2, 3, 3)))
    with pytest.raises(ValueError, match="equal length"):
        image_auroc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_f1_max_hand_case():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    # t=0.4 -> predicted {0.4, 0.6, 0.7, 0.9}: tp 3, fp 1, fn 0 -> F1 = 6 / (6 + 1) = 6/7 (best).
    f1, threshold = f1_max_threshold(labels, scores)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.4)
    assert f1_max(labels, np.array([0.1, 0.2, 0.7, 0.8, 0.9])) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(40) < 0.4).astype(int)
    scores = np.round(rng.random(40) + 0.3 * labels, 1)  # ties
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp, fp, fn = (pred & (labels == 1)).sum(), (pred & (labels == 0)).sum(), (~pred & (labels == 1)).sum()
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    assert f1_max(labels, scores) == pytest.approx(best, abs=1e-12)


def test_f1_max_needs_a_defect():
    with pytest.raises(ValueError, match="defective"):
        f1_max(np.zeros(4), np.arange(4.0))


def test_roc_curve_points():
    fpr, tpr = roc_curve_points(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr[0] == 0.0 and tpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
