"""The built-in synthetic data set: deterministic bytes, MVTec layout, masks that are exactly the defects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_fill_holes

from anomaly import dataset as DS
from anomaly import layout as L
from anomaly.synthetic import CATEGORIES, DEFECT_TYPES, generate_dataset, render_sample

SMALL = dict(image_size=32, n_train=2, n_test_good=1, n_per_defect=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def tiny(synthetic_root) -> dict:
    """The sizes the session fixture was generated with (from the marker file the generator writes)."""
    return json.loads((synthetic_root / "screw_like" / "synthetic.json").read_text())


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a, b, c = (_files(generate_dataset(tmp_path / name, seed=seed, **SMALL)) for name, seed in
               (("a", 7), ("b", 7), ("c", 8)))
    assert a == b and len(a) == 2 * (2 + 1 + 5 * 2)
    images = [k for k in a if "ground_truth" not in k]
    assert sum(a[k] != c[k] for k in images) == len(images)


def test_layout_counts_and_formats(synthetic_root, tiny):
    for category in CATEGORIES:
        cat = synthetic_root / category
        assert len(list((cat / "train" / "good").glob("*.png"))) == tiny["n_train"]
        assert len(list((cat / "test" / "good").glob("*.png"))) == tiny["n_test_good"]
        assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(DEFECT_TYPES[category] + ("good",))
        for defect_type in DEFECT_TYPES[category]:
            names = sorted(p.name for p in (cat / "test" / defect_type).iterdir())
            assert names == [f"{i:03d}.png" for i in range(tiny["n_per_defect"])]
            masks = sorted(p.name for p in (cat / "ground_truth" / defect_type).iterdir())
            assert masks == [f"{i:03d}_mask.png" for i in range(tiny["n_per_defect"])]
        image = Image.open(cat / "train" / "good" / "000.png")
        assert image.size == (tiny["image_size"],) * 2
        assert image.mode == ("L" if category == "screw_like" else "RGB")
        assert json.loads((cat / "synthetic.json").read_text())["seed"] == tiny["seed"]


@pytest.mark.parametrize("category", CATEGORIES)
def test_mask_is_exactly_the_pixels_the_defect_changed(synthetic_root, tiny, category):
    size = tiny["image_size"]
    for defect_type in DEFECT_TYPES[category]:
        for index in range(tiny["n_per_defect"]):
            image = _load(synthetic_root / category / "test" / defect_type / f"{index:03d}.png")
            mask = _load(synthetic_root / category / "ground_truth" / defect_type / f"{index:03d}_mask.png")
            clean, _ = render_sample(category, size, tiny["seed"], "test", defect_type, index, apply_defect=False)
            changed = image != clean
            changed = changed.any(axis=2) if changed.ndim == 3 else changed
            assert set(np.unique(mask)) == {0, 255}, defect_type
            assert np.array_equal(changed, mask > 0), defect_type
            assert mask.mean() / 255 < 0.05, f"{defect_type} should be a small defect, not a blob"


@pytest.mark.parametrize("category", CATEGORIES)
def test_defects_are_visible_solid_regions(category):
    size = 128
    for defect_type in DEFECT_TYPES[category]:
        for index in range(3):
            image, mask = render_sample(category, size, 0, "test", defect_type, index)
            clean, _ = render_sample(category, size, 0, "test", defect_type, index, apply_defect=False)
            inside = mask > 0
            step = np.abs(image.astype(int) - clean.astype(int))
            step = step.max(axis=2) if step.ndim == 3 else step
            assert step[inside].mean() >= 12, f"{defect_type} is too faint"
            assert binary_fill_holes(inside).sum() <= 1.1 * inside.sum(), f"{defect_type} mask has holes"


def test_good_files_match_the_generator(synthetic_root, tiny):
    image, mask = render_sample("screw_like", tiny["image_size"], tiny["seed"], "train", "good", 3)
    assert np.array_equal(_load(synthetic_root / "screw_like" / "train" / "good" / "003.png"), image)
    assert not mask.any()


def test_images_vary_between_samples(synthetic_root):
    images = [_load(p).astype(int) for p in sorted((synthetic_root / "screw_like" / "train" / "good").iterdir())]
    assert min(np.abs(images[0] - other).mean() for other in images[1:]) > 2


def test_loads_through_the_data_module(synthetic_root, tiny):
    for category in CATEGORIES:
        splits = L.load_splits(synthetic_root, category)
        assert len(splits.train) + len(splits.validation) == tiny["n_train"]
        assert sum(s.label for s in splits.test) == 5 * tiny["n_per_defect"]
        dataset = DS.AnomalyDataset(splits.test, image_size=32)
        for i, sample in enumerate(splits.test):
            item = dataset[i]
            assert item["image"].shape == (3, 32, 32)
            assert (item["mask"].sum() > 0) == (sample.label == 1)


def test_regenerating_replaces_and_foreign_folders_are_kept(tmp_path):
    generate_dataset(tmp_path, seed=0, categories=("texture",), **SMALL)
    (tmp_path / "texture" / "train" / "good" / "099.png").write_bytes(b"stale")
    generate_dataset(tmp_path, seed=0, categories=("texture",), **SMALL)
    assert not (tmp_path / "texture" / "train" / "good" / "099.png").exists()
    (tmp_path / "screw_like").mkdir()
    (tmp_path / "screw_like" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_dataset(tmp_path, categories=("screw_like",), **SMALL)
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        generate_dataset(tmp_path, categories=("bottle",), **SMALL)


def test_screw_aligned_fixes_the_pose_and_keeps_everything_else():
    from anomaly.synthetic import ALL_CATEGORIES

    assert "screw_aligned" in ALL_CATEGORIES and "screw_aligned" not in CATEGORIES  # not generated by default
    a = [render_sample("screw_aligned", 64, 0, "train", "good", i)[0].astype(float) for i in range(4)]
    free = [render_sample("screw_like", 64, 0, "train", "good", i)[0].astype(float) for i in range(4)]
    spread = lambda images: float(np.std(np.stack(images), axis=0).mean())  # per-pixel variation across parts
    assert spread(a) < 0.5 * spread(free)
    image, mask = render_sample("screw_aligned", 64, 0, "test", "scratch_head", 0)
    assert mask.any()
