"""PatchCore and its coreset samplers: properties in the spirit of the official tests (CPU, tiny images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly.models import Detector, create_detector, load_detector
from anomaly.models.coreset import GreedyCoresetSampler, RandomSampler, coreset_size, lazy_greedy
from anomaly.models.patchcore import PatchCore, PatchCoreConfig, nearest_neighbours, reweighted_scores

SMALL = {"image_size": 64, "coreset_ratio": 0.25, "coreset_min_size": 0}


def _loader(images: torch.Tensor, batch_size: int = 4) -> list[dict]:
    return [{"image": images[i:i + batch_size]} for i in range(0, len(images), batch_size)]


def _textured(n: int, seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 6.28, size)
    base = 0.5 + 0.2 * torch.sin(3 * x)[None, :] * torch.cos(2 * x)[:, None]  # (S, S) shared pattern
    return (base + 0.02 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1).expand(-1, 3, -1, -1)


@pytest.fixture(scope="module")
def fitted() -> PatchCore:
    return PatchCore(SMALL).fit(_loader(_textured(6, seed=0)))


def test_constant_training_images_score_zero():
    images = torch.full((4, 3, 64, 64), 0.5)
    detector = PatchCore(SMALL).fit(_loader(images))
    out = detector.predict(images[:2])
    assert np.abs(out.image_scores).max() < 1e-2
    assert np.abs(out.anomaly_maps).max() < 1e-2


def test_maps_have_the_input_size_and_defects_score_higher(fitted):
    good = _textured(2, seed=1)
    bad = good.clone()
    bad[:, :, 20:30, 30:40] = 1.0  # a bright square
    out = fitted.predict(torch.cat([good, bad]))
    assert out.anomaly_maps.shape == (4, 64, 64) and out.image_scores.shape == (4,)
    assert out.image_scores[2:].min() > out.image_scores[:2].max()
    assert out.anomaly_maps[2, 20:30, 30:40].mean() > out.anomaly_maps[2, :10, :10].mean()
    other = fitted.predict(torch.nn.functional.interpolate(good, size=(80, 96), mode="bilinear"))
    assert other.anomaly_maps.shape == (2, 80, 96)


def test_save_load_gives_identical_predictions(fitted, tmp_path):
    fitted.save(tmp_path)
    loaded = load_detector(tmp_path)
    assert isinstance(loaded, PatchCore) and loaded.config == fitted.config
    images = _textured(2, seed=3)
    a, b = fitted.predict(images), loaded.predict(images)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    np.testing.assert_array_equal(a.anomaly_maps, b.anomaly_maps)
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"memory_bank"}


def test_memory_bank_has_the_coreset_size(fitted):
    n_patches = 6 * 8 * 8  # 6 images, 64 px at stride 8
    assert fitted.memory_bank.shape == (coreset_size(n_patches, 0.25), 2 * 64)
    assert dict(fitted.model.named_buffers())["memory_bank"] is fitted.memory_bank  # a buffer of the one module


def test_unknown_or_invalid_config_raises():
    with pytest.raises(ValueError, match="unknown parameter"):
        create_detector("patchcore", {"coreset_ration": 0.1})
    with pytest.raises(ValueError, match="sampler"):
        PatchCoreConfig(sampler="kmeans")
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCoreConfig(coreset_ratio=0.0)
    assert PatchCoreConfig(strides=[8, 16]).strides == (8, 16)  # JSON lists become tuples


def test_predict_before_fit_raises():
    with pytest.raises(RuntimeError, match="before fit"):
        PatchCore(SMALL).predict(torch.rand(1, 3, 64, 64))


# -- nearest neighbours and the image score ------------------------------------------------------
def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    full = torch.cdist(queries.double(), bank.double())
    dist, idx = nearest_neighbours(queries, bank, k=3, chunk_size=64)
    ref_dist, ref_idx = full.topk(3, dim=1, largest=False)
    torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-4, atol=1e-4)
    assert torch.equal(idx, ref_idx)


def test_reweighting_follows_eq7():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(20, 4, generator=g)
    feats = torch.randn(2, 5, 4, generator=g)  # (B, P, C)
    dist, idx = nearest_neighbours(feats.reshape(-1, 4), bank)
    dist, idx = dist.view(2, 5), idx.view(2, 5)
    plain = reweighted_scores(dist, idx, feats, bank, num_neighbors=1)
    torch.testing.assert_close(plain, dist.max(1).values)
    scores = reweighted_scores(dist, idx, feats, bank, num_neighbors=3)
    for b in range(2):
        p = int(dist[b].argmax())
        m_star = bank[idx[b, p]]
        support = torch.cdist(m_star[None], bank)[0].topk(3, largest=False).indices
        d = torch.cdist(feats[b, p][None], bank[support])[0]
        expected = (1 - torch.exp(d[0]) / torch.exp(d).sum()) * dist[b, p]
        torch.testing.assert_close(scores[b], expected, rtol=1e-4, atol=1e-5)


# -- coreset samplers ----------------------------------------------------------------------------
def _clusters(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One big cluster of 900 points and 9 small ones of 5 points, far apart, in 8 dims."""
    g = torch.Generator().manual_seed(seed)
    centres = 50.0 * torch.randn(10, 8, generator=g)
    labels = torch.cat([torch.zeros(900, dtype=torch.long), torch.arange(1, 10).repeat_interleave(5)])
    return centres[labels] + torch.randn(len(labels), 8, generator=g), labels


def _covering_radius(points: torch.Tensor, chosen: torch.Tensor) -> float:
    return float(torch.cdist(points, points[chosen]).min(1).values.max())


def test_greedy_coreset_has_the_requested_size_and_unique_rows():
    points = torch.randn(1000, 32)
    for ratio in (0.01, 0.1, 0.5):
        idx = GreedyCoresetSampler(ratio, projection_dim=16).run(points)
        assert len(idx) == coreset_size(1000, ratio) == len(set(idx.tolist()))
    assert len(RandomSampler(0.1).run(points)) == 100
    assert torch.equal(GreedyCoresetSampler(1.0).run(points), torch.arange(1000))


def test_coreset_minimum_size_floors_small_banks():
    points = torch.randn(1000, 32)
    assert coreset_size(1000, 0.01, minimum=300) == 300  # the floor wins over 1 % = 10
    assert coreset_size(1000, 0.5, minimum=300) == 500  # the ratio wins
    assert coreset_size(200, 0.01, minimum=300) == 200  # never more rows than there are
    idx = GreedyCoresetSampler(0.01, projection_dim=16, minimum=300).run(points)
    assert len(idx) == len(set(idx.tolist())) == 300
    assert len(RandomSampler(0.01, minimum=300).run(points)) == 300
    with pytest.raises(ValueError, match="minimum"):
        coreset_size(10, 0.1, minimum=-1)


def test_few_shot_fit_keeps_the_floor_of_patches():
    detector = PatchCore({"image_size": 64, "coreset_ratio": 0.01, "coreset_min_size": 100})
    detector.fit(_loader(_textured(4, seed=1)))  # 4 x 64 patches: 1 % alone would keep 2
    assert len(detector.memory_bank) == 100
    with pytest.raises(ValueError, match="coreset_min_size"):
        PatchCoreConfig(coreset_min_size=-1)


def test_greedy_covers_every_cluster_and_beats_random():
    points, labels = _clusters()
    greedy = GreedyCoresetSampler(10 / len(points), projection_dim=128).run(points)
    assert set(labels[greedy].tolist()) == set(range(10))  # one point in every cluster
    random = RandomSampler(10 / len(points)).run(points)
    assert _covering_radius(points, greedy) < _covering_radius(points, random)


def test_lazy_greedy_equals_the_plain_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(700, 6, generator=g)
    sq = (x * x).sum(1)
    start = torch.rand(700, generator=g) * 100
    plain, min_d2 = [], start.clone()
    for _ in range(40):  # the reference's O(kN) loop
        i = int(torch.argmax(min_d2))
        plain.append(i)
        min_d2 = torch.minimum(min_d2, ((x - x[i]) ** 2).sum(1))
        min_d2[i] = float("-inf")
    for block_size in (1, 64, 1000):
        lazy = lazy_greedy(x, sq, start.clone(), 40, block_size=block_size, max_pending=7)
        assert lazy.tolist() == plain
