"""Aspect ratio: non-square images are letterboxed (long side S, replicated border) and mapped back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly import dataset as DS
from anomaly import decoding
from anomaly import layout as L
from anomaly.evaluation import image_area_only
from anomaly.geometry import Letterbox, letterbox_batch, maps_to_input
from anomaly.models.postprocess import resize_images
from anomaly.inference import iter_predictions, load_run
from anomaly.pipeline import zero_pad
from anomaly.regions import find_regions


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def strips(tmp_path) -> Path:
    """``ROOT/strip``: 40x80 (H x W) RGB images, one ``scratch`` image with its mask."""
    rng = np.random.default_rng(0)
    cat = tmp_path / "strip"
    for i in range(3):
        _write(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))
    _write(cat / "test" / "good" / "000.png", rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))
    _write(cat / "test" / "scratch" / "000.png", rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))
    mask = np.zeros((40, 80), np.uint8)
    mask[5:9, 60:75] = 255  # thin and off-centre: squashing would move and thicken it
    _write(cat / "ground_truth" / "scratch" / "000_mask.png", mask)
    return tmp_path


def test_geometry_of_a_wide_and_a_tall_image():
    assert (Letterbox(40, 80, 64).inner, Letterbox(40, 80, 64).offset) == ((32, 64), (16, 0))
    assert (Letterbox(90, 30, 60).inner, Letterbox(90, 30, 60).offset) == ((60, 20), (0, 20))
    assert Letterbox(50, 50, 64).inner == (64, 64) and Letterbox(50, 50, 64).offset == (0, 0)


@pytest.mark.parametrize("hw, size", [((40, 80), 80), ((30, 90), 90), ((80, 40), 80)])
def test_a_non_square_mask_round_trips_exactly(hw, size):
    rng = np.random.default_rng(1)
    mask = (rng.random(hw) > 0.7).astype(np.uint8)
    box = Letterbox(*hw, size)
    canvas = box.mask(mask)  # (S, S)
    assert canvas.shape == (size, size) and canvas.sum() == mask.sum()  # nothing in the pad
    np.testing.assert_array_equal(box.crop(canvas), mask)
    back = maps_to_input(torch.from_numpy(canvas[None].astype(np.float32)), hw, size)[0].numpy()  # (H, W)
    np.testing.assert_array_equal(back, mask)


def test_a_downscaled_mask_round_trips_on_its_blocks():
    mask = np.kron(np.random.default_rng(2).random((16, 32)) > 0.6, np.ones((4, 4))).astype(np.uint8)  # (64, 128)
    box = Letterbox(64, 128, 64)  # factor 1/4
    back = maps_to_input(torch.from_numpy(box.mask(mask)[None].astype(np.float32)), (64, 128), 64)[0].numpy()
    np.testing.assert_array_equal(back >= 0.5, mask.astype(bool))


@pytest.mark.parametrize("hw, size", [((48, 96), 96), ((64, 128), 64), ((96, 48), 64)])
def test_a_defect_box_lands_on_the_input_pixels(hw, size):
    amap = np.zeros(hw, np.float32)
    y0, y1, x0, x1 = (8, 15, 32, 43) if hw[1] > hw[0] else (60, 75, 8, 15)
    amap[y0:y1 + 1, x0:x1 + 1] = 1.0
    box = Letterbox(*hw, size)
    canvas = box.image(torch.from_numpy(amap)[None])[0].numpy()  # (S, S), as a map computed on the canvas
    regions = box.regions_to_input(find_regions(canvas, 0.5))
    assert len(regions) == 1
    tolerance = hw[0] / box.inner[0]  # one canvas pixel, in input pixels
    np.testing.assert_allclose(regions[0]["bbox"], [x0, y0, x1, y1], atol=tolerance)


def test_square_images_are_unchanged():
    images = torch.rand(2, 3, 100, 100)
    torch.testing.assert_close(letterbox_batch(images, 64), resize_images(images, 64), rtol=0, atol=0)
    array = np.random.default_rng(3).random((100, 100, 3)).astype(np.float32)
    old = F.interpolate(torch.from_numpy(array).permute(2, 0, 1)[None], size=(64, 64), mode="bilinear",
                        antialias=True, align_corners=False)[0].clamp(0, 1)
    torch.testing.assert_close(decoding.to_image_tensor(array, 64), old, rtol=0, atol=0)


def test_the_pad_replicates_the_border_and_keeps_the_aspect():
    image = torch.rand(3, 40, 80)
    canvas = Letterbox(40, 80, 80).image(image.clone())  # (3, 80, 80), no resize
    torch.testing.assert_close(canvas[:, 20:60], image)
    torch.testing.assert_close(canvas[:, 0], image[:, 0])  # top pad = first row
    torch.testing.assert_close(canvas[:, -1], image[:, -1])


def test_dataset_letterboxes_image_and_mask_alike(strips):
    test = L.load_splits(strips, "strip", val_fraction=0.0).test
    index = [s.defect_type for s in test].index("scratch")
    item = DS.AnomalyDataset(test, 80)[index]
    assert item["image"].shape == (3, 80, 80) and item["hw"].tolist() == [40, 80]
    native = DS.read_mask(test[index].mask_path, None).numpy()
    np.testing.assert_array_equal(item["mask"][20:60].numpy(), native)  # (40, 80) mask on its own pixels
    assert item["mask"][:20].sum() == 0 and item["mask"][60:].sum() == 0
    maps = zero_pad(np.ones((1, 80, 80), np.float32), item["hw"][None])
    assert maps[0, :20].sum() == 0 and maps[0, 20:60].min() == 1  # the pad never scores


def test_predict_maps_a_non_square_file_back_to_its_pixels(patchcore_run, tmp_path):
    run = load_run(patchcore_run)
    path = _write(tmp_path / "wide.png", np.random.default_rng(4).integers(0, 256, (30, 90, 3), dtype=np.uint8))
    out = run.detector.predict(DS.read_image(path)[None])
    assert out.anomaly_maps.shape == (1, 30, 90)
    canvas = run.detector.predict(DS.read_image(path, run.image_size)[None])  # the decoded, letterboxed path
    box = Letterbox(30, 90, run.image_size)
    expected = maps_to_input(torch.from_numpy(canvas.anomaly_maps), (30, 90), run.image_size).numpy()
    np.testing.assert_allclose(out.anomaly_maps, expected, rtol=1e-4, atol=1e-4)
    assert box.crop(canvas.anomaly_maps).shape == (1, 21, 64)  # 30 x 90 -> 21.3 x 64
    record = next(iter_predictions(run, [path], heatmap_dir=tmp_path / "heat")).json_record()
    assert Image.open(record["heatmap"]).size == (90, 30)  # the heatmap is on the input's pixels
    for region in record["regions"]:
        x0, y0, x1, y1 = region["bbox"]
        assert 0 <= x0 <= x1 < 90 and 0 <= y0 <= y1 < 30


def test_pixel_metrics_leave_the_pad_out():
    """One non-square size: maps and masks cropped to the image's area; square or mixed sizes: unchanged."""
    maps, masks = np.random.rand(3, 80, 80).astype(np.float32), np.zeros((3, 80, 80), np.uint8)
    out = {"anomaly_maps": maps, "gt_masks": masks, "hw": np.array([[40, 80]] * 3)}
    cropped = image_area_only(out)
    assert cropped["anomaly_maps"].shape == (3, 40, 80) and cropped["gt_masks"].shape == (3, 40, 80)
    np.testing.assert_array_equal(cropped["anomaly_maps"], maps[:, 20:60])
    for hw in ([[64, 64]] * 3, [[40, 80], [80, 40], [40, 80]]):
        assert image_area_only({**out, "hw": np.array(hw)})["anomaly_maps"].shape == (3, 80, 80)


def test_calibration_quantiles_leave_the_pad_out(strips):
    from types import SimpleNamespace

    from anomaly.calibration import pad_as_nan
    from anomaly.thresholds import map_tail_quantiles

    train = L.load_splits(strips, "strip", val_fraction=0.0).train  # 40 x 80 images
    maps = np.zeros((len(train), 64, 64), np.float32)
    maps[:, 16:48] = 1.0  # the image's area on the canvas (32 x 64 at offset 16); the pad scores 0
    out = pad_as_nan(maps, SimpleNamespace(samples=train))
    assert np.isnan(out[:, :16]).all() and np.isnan(out[:, 48:]).all() and (out[:, 16:48] == 1).all()
    assert map_tail_quantiles(out)["summary"]["0"] == 1.0  # the pad's zeros are not calibration pixels
