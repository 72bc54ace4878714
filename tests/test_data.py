"""The MVTec AD layout reader: indexing, clear errors that name the path, image/mask decoding, splits."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly import dataset as DS
from anomaly import decoding
from anomaly import layout as L

CAT = "widget"  # the category of the tiny_mvtec fixture
REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_ad"


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


# ----------------------------------------------------------------------------- indexing and splits

def test_index_lists_every_sample_with_its_fields(tiny_mvtec):
    samples = L.index_category(tiny_mvtec, CAT)
    assert [(s.split, s.defect_type) for s in samples] == [("train", "good")] * 5 + [("test", "crack")] * 2 + [
        ("test", "good")] * 2
    crack = next(s for s in samples if s.defect_type == "crack")
    assert crack == L.Sample(CAT, "test", "crack", tiny_mvtec / CAT / "test" / "crack" / "000.png",
                             tiny_mvtec / CAT / "ground_truth" / "crack" / "000_mask.png", 1)
    assert all(s.mask_path is None and s.label == 0 for s in samples if s.defect_type == "good")
    with pytest.raises(dataclasses.FrozenInstanceError):
        crack.label = 0
    assert L.list_categories(tiny_mvtec) == [CAT]


def test_validation_split_is_seeded_disjoint_and_never_test(synthetic_root):
    a = L.load_splits(synthetic_root, "screw_like", val_fraction=0.25, seed=0)
    b = L.load_splits(synthetic_root, "screw_like", val_fraction=0.25, seed=0)
    c = L.load_splits(synthetic_root, "screw_like", val_fraction=0.25, seed=1)
    paths = lambda samples: [s.image_path for s in samples]  # noqa: E731
    assert paths(a.validation) == paths(b.validation) and paths(a.validation) != paths(c.validation)
    assert len(a.validation) == 3 and len(a.train) == 9
    assert not set(paths(a.train)) & set(paths(a.validation))
    assert all(p.parts[-3:-1] == ("train", "good") for p in paths(a.validation))
    assert {s.split for s in a.validation} == {"validation"} and {s.split for s in a.train} == {"train"}
    assert {s.split for s in a.test} == {"test"} and len(a.test) == 4 + 5 * 2


@pytest.mark.parametrize("n_train, fraction, expected", [(5, 0.1, 1), (2, 0.1, 1), (1, 0.1, 0), (5, 0.0, 0)])
def test_validation_takes_at_least_one_image_when_possible(tiny_mvtec, n_train, fraction, expected):
    for p in sorted((tiny_mvtec / CAT / "train" / "good").iterdir())[n_train:]:
        p.unlink()
    splits = L.load_splits(tiny_mvtec, CAT, val_fraction=fraction)
    assert (len(splits.validation), len(splits.train)) == (expected, n_train - expected)


def test_validation_good_folder_adds_validation_images(tiny_mvtec):
    extra = _write(tiny_mvtec / CAT / "validation" / "good" / "v0.png", np.zeros((32, 32, 3), np.uint8))
    splits = L.load_splits(tiny_mvtec, CAT, val_fraction=0.0)
    assert [s.image_path for s in splits.validation] == [extra]
    assert splits.validation[0].split == "validation" and len(splits.train) == 5


def test_unknown_folders_and_loose_files_are_ignored(tiny_mvtec, caplog):
    (tiny_mvtec / CAT / "notes").mkdir()
    (tiny_mvtec / CAT / "SOURCE.txt").write_text("where the data came from")
    (tiny_mvtec / CAT / "ground_truth" / "good").mkdir()
    with caplog.at_level(logging.INFO, logger="anomaly.layout"):
        samples = L.index_category(tiny_mvtec, CAT)
    assert len(samples) == 9
    assert str(tiny_mvtec / CAT / "notes") in caplog.text


def test_non_image_and_hidden_files_are_skipped_with_a_warning(tiny_mvtec, caplog):
    good = tiny_mvtec / CAT / "train" / "good"
    (good / "labels.csv").write_text("a,b\n")
    (good / ".DS_Store").write_bytes(b"\0\1")
    _write(good / "UPPER.PNG", np.zeros((32, 32), np.uint8))
    _write(good / "photo.jpg", np.zeros((32, 32, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="anomaly.layout"):
        train = L.load_splits(tiny_mvtec, CAT, val_fraction=0.0).train
    assert {p.name for p in (s.image_path for s in train)} >= {"UPPER.PNG", "photo.jpg"} and len(train) == 7
    assert str(good / "labels.csv") in caplog.text and ".DS_Store" not in caplog.text


def _counts(samples) -> Counter:
    return Counter((s.split, s.defect_type, s.label) for s in samples)


def test_splits_count_per_split_and_defect_type(tiny_mvtec):
    splits = L.load_splits(tiny_mvtec, CAT)
    assert _counts(splits.train + splits.validation + splits.test) == {
        ("train", "good", 0): 4, ("validation", "good", 0): 1, ("test", "good", 0): 2, ("test", "crack", 1): 2}
    areas = DS.mask_areas(splits.test)
    assert list(areas["area_fraction"]) == [16 / 1024] * 2 and list(areas["n_regions"]) == [1, 1]


# ----------------------------------------------------------------------------- errors name the path

def test_missing_root_names_it(tmp_path):
    root = tmp_path / "nowhere"
    for call in (lambda: L.load_splits(root, CAT), lambda: L.list_categories(root)):
        with pytest.raises(decoding.DataError, match=re.escape(str(root))):
            call()


def test_missing_category_lists_the_available_ones(tiny_mvtec):
    with pytest.raises(decoding.DataError, match="available categories") as err:
        L.load_splits(tiny_mvtec, "gadget")
    assert str(tiny_mvtec / "gadget") in str(err.value) and CAT in str(err.value)


def test_missing_or_empty_train_good(tiny_mvtec):
    good = tiny_mvtec / CAT / "train" / "good"
    for p in good.iterdir():
        p.unlink()
    with pytest.raises(decoding.DataError, match=re.escape(f"{good} contains no images")):
        L.load_splits(tiny_mvtec, CAT)
    good.rmdir()
    with pytest.raises(decoding.DataError, match=re.escape(str(good))):
        L.load_splits(tiny_mvtec, CAT)


def test_defect_image_without_mask(tiny_mvtec):
    (tiny_mvtec / CAT / "ground_truth" / "crack" / "001_mask.png").unlink()
    image = tiny_mvtec / CAT / "test" / "crack" / "001.png"
    with pytest.raises(decoding.DataError, match=re.escape(f"defect image {image} has no mask")):
        L.load_splits(tiny_mvtec, CAT)


def test_mask_without_image(tiny_mvtec):
    (tiny_mvtec / CAT / "test" / "crack" / "001.png").unlink()
    mask = tiny_mvtec / CAT / "ground_truth" / "crack" / "001_mask.png"
    with pytest.raises(decoding.DataError, match=re.escape(f"mask {mask} has no image")):
        L.load_splits(tiny_mvtec, CAT)


def test_masks_of_a_defect_type_without_test_folder(tiny_mvtec):
    shutil.rmtree(tiny_mvtec / CAT / "test" / "crack")
    with pytest.raises(decoding.DataError, match="has no image"):
        L.load_splits(tiny_mvtec, CAT)


def test_undecodable_image_is_reported_when_indexing_and_reading(tiny_mvtec):
    bad = tiny_mvtec / CAT / "train" / "good" / "002.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(decoding.DataError, match=re.escape(f"cannot read image file {bad}")):
        L.load_splits(tiny_mvtec, CAT)
    with pytest.raises(decoding.DataError, match=re.escape(str(bad))):
        DS.read_image(bad)
    with pytest.raises(decoding.DataError, match="does not exist"):
        DS.read_image(bad.with_name("999.png"))


def test_truncated_image_is_reported_when_read(tiny_mvtec):
    path = tiny_mvtec / CAT / "train" / "good" / "000.png"
    path.write_bytes(path.read_bytes()[:120])  # header intact, pixel data cut
    with pytest.raises(decoding.DataError, match=re.escape(str(path))):
        DS.read_image(path)


# ----------------------------------------------------------------------------- pixels

def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    image = DS.read_image(_write(tmp_path / "g.png", gray))
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.equal(image[0], image[2]) and torch.allclose(image[0], torch.from_numpy(gray / 255.0).float())


def test_rgba_and_palette_become_rgb(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    image = DS.read_image(_write(tmp_path / "a.png", rgba))
    assert image.shape == (3, 8, 8)
    assert torch.allclose(image, torch.from_numpy(rgba[..., :3] / 255.0).float().permute(2, 0, 1))
    assert DS.read_image(_write(tmp_path / "p.png", rgba[..., :3], mode="P")).shape == (3, 8, 8)


def test_sixteen_bit_images_scale_to_unit_range(tmp_path):
    deep = np.array([[0, 1000], [30000, 65535]], np.uint16)
    path = _write(tmp_path / "deep.png", deep)
    assert Image.open(path).mode in ("I;16", "I")
    image = DS.read_image(path)
    assert torch.allclose(image[0], torch.from_numpy(deep / 65535.0).float())
    tif = _write(tmp_path / "deep.tif", deep)
    assert torch.allclose(DS.read_image(tif), image)


def test_resize_gives_square_unit_range(tmp_path):
    path = _write(tmp_path / "wide.jpg", np.full((20, 40, 3), 200, np.uint8))
    image = DS.read_image(path, image_size=16)
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1


def test_mixed_gray_and_rgb_warns_once_and_reads_three_channels(tiny_mvtec, caplog):
    _write(tiny_mvtec / CAT / "train" / "good" / "gray.png", np.zeros((32, 32), np.uint8))
    with caplog.at_level(logging.WARNING, logger="anomaly.layout"):
        splits = L.load_splits(tiny_mvtec, CAT)
    assert caplog.text.count("mixes grayscale and colour") == 1
    dataset = DS.AnomalyDataset(splits.train + splits.validation, image_size=16)
    assert {tuple(dataset[i]["image"].shape) for i in range(len(dataset))} == {(3, 16, 16)}


@pytest.mark.parametrize("size", [(8, 8), (50, 50), (32, 32)])
def test_masks_resize_nearest_to_zero_one(tiny_mvtec, size):
    mask = DS.read_mask(tiny_mvtec / CAT / "ground_truth" / "crack" / "000_mask.png", size)
    assert mask.shape == size and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.mean().item() == pytest.approx(16 / 1024, rel=0.35)


def test_zero_one_masks_and_missing_masks(tmp_path):
    ones = np.zeros((4, 4), np.uint8)
    ones[1, 1] = 1
    assert DS.read_mask(_write(tmp_path / "m.png", ones), (4, 4)).sum() == 1
    assert torch.equal(DS.read_mask(None, (3, 5)), torch.zeros(3, 5))


def test_dataset_items_have_the_contract_shapes(tiny_mvtec):
    splits = L.load_splits(tiny_mvtec, CAT)
    dataset = DS.AnomalyDataset(splits.test, image_size=16)
    items = [dataset[i] for i in range(len(dataset))]
    for i, (item, sample) in enumerate(zip(items, splits.test)):
        assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
        assert item["label"] == sample.label and item["index"] == i
        assert (item["mask"].sum() > 0) == (sample.label == 1)


@pytest.mark.skipif(not (REAL_ROOT / "screw").is_dir(), reason="MVTec AD screw not available")
def test_real_mvtec_screw_indexes_with_official_counts():
    splits = L.load_splits(REAL_ROOT, "screw", val_fraction=0.1)
    by_type = {f"{d}/{split}": n for (split, d, _), n in _counts(splits.train + splits.validation + splits.test).items()}
    assert by_type["good/train"] + by_type["good/validation"] == 320 and by_type["good/test"] == 41
    assert sum(s.label for s in splits.test) == 119
