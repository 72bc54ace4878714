"""Plain folders in (``fit --good DIR [--defective DIR] [--masks DIR]``): good only, with defective images,
with masks; the held-out draw is recorded and re-indexed; evaluate/threshold/predict work on such runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly import folders as F
from anomaly.cli import main
from anomaly.config import RunConfig
from anomaly.decoding import DataError
from anomaly.study.own_parts import write_example_folders

FAST = ["--image-size", "64", "--device", "cpu", "--batch-size", "8"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict:
    """24 good parts (dated sub-folders, PNG + JPEG, two sizes), 2 defective per type, masks, at 64 px."""
    return write_example_folders(tmp_path_factory.mktemp("parts") / "parts", n_good=24, n_per_defect=2,
                                 image_size=64, masks=True)


def _fit(capsys, *argv) -> int:
    code = main(["fit", *argv, *FAST])
    capsys.readouterr()
    return code


def test_good_only_fit_is_calibrated_and_says_it_has_no_test_evaluation(parts, tmp_path, capsys):
    run = tmp_path / "good_only"
    assert _fit(capsys, "--method", "patchcore", "--good", parts["good"], "--run-dir", str(run)) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["layout"] == "folders" and config["held_out_good"] == [] and config["n_train"] == 25
    assert config["category"] == "parts" and config["evaluation"].startswith("none: no defective images")
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["kind"] == "crossfit" and calibration["n_scores"] == 25  # every good image, out of sample
    assert (run / "datacheck.json").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--run-dir", str(run), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "has no test evaluation" in err and "Traceback" not in err
    assert main(["threshold", "--run-dir", str(run), "--target-frr", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] is None
    image = next(Path(parts["defective"]).rglob("*.png"))
    assert main(["predict", "--run-dir", str(run), "--device", "cpu", "--heatmap-dir", str(tmp_path), str(image)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["path"] == str(image)


def test_defective_without_masks_draws_test_good_and_evaluates_images_only(parts, tmp_path, capsys):
    run = tmp_path / "defective"
    argv = ["--method", "intensity", "--good", parts["good"], "--defective", parts["defective"], "--run-dir", str(run)]
    assert _fit(capsys, *argv) == 0
    config = json.loads((run / "config.json").read_text())
    held = config["held_out_good"]
    assert len(held) == 5 and config["n_test_good"] == 5 and config["n_test_defective"] == 10  # round(0.2 * 25)
    assert config["n_train"] + config["n_validation"] == 20 and config["evaluation"] is None
    assert main(["evaluate", "--run-dir", str(run), "--device", "cpu"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["has_masks"] is False and metrics["pixel_auroc"] is None and metrics["aupro"] is None
    assert 0 <= metrics["image_auroc"] <= 1 and metrics["n_test_images"] == 15
    assert set(metrics["per_defect_type"]) == {"manipulated_front", "scratch_head", "scratch_neck", "thread_side",
                                               "thread_top"}
    paths = np.load(run / "predictions.npz")["image_paths"]
    assert sorted(Path(p).relative_to(parts["good"]).as_posix() for p in paths if "/good/" in p) == sorted(held)
    assert main(["threshold", "--run-dir", str(run), "--target-frr", "0.2"]) == 0  # recomputed image-level only
    assert json.loads(capsys.readouterr().out)["metrics"]["frr"] is not None


def test_evaluation_reindexes_the_recorded_split_after_the_folder_grows(parts, tmp_path, capsys):
    good = tmp_path / "good"
    shutil.copytree(parts["good"], good)
    run = tmp_path / "run"
    assert _fit(capsys, "--method", "intensity", "--good", str(good), "--defective", parts["defective"],
                "--run-dir", str(run)) == 0
    held = json.loads((run / "config.json").read_text())["held_out_good"]
    for i in range(6):  # new photos arrive: the recorded test images stay the same
        shutil.copy(next(good.rglob("*.png")), good / f"new_{i}.png")
    assert main(["evaluate", "--run-dir", str(run), "--device", "cpu"]) == 0
    paths = np.load(run / "predictions.npz")["image_paths"]
    assert sorted(Path(p).relative_to(good).as_posix() for p in paths if str(good) in p) == sorted(held)
    (good / held[0]).unlink()
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--run-dir", str(run), "--device", "cpu"])
    assert exc.value.code == 2 and held[0] in capsys.readouterr().err


def test_masks_give_pixel_metrics_and_test_good_is_used_as_given(parts, tmp_path, capsys):
    run = tmp_path / "masks"
    test_good = tmp_path / "test_good"
    shutil.copytree(Path(parts["good"]) / "2026-03-04", test_good)
    good = tmp_path / "good"
    shutil.copytree(Path(parts["good"]) / "2026-03-02", good / "a")
    shutil.copytree(Path(parts["good"]) / "2026-03-03", good / "b")
    assert _fit(capsys, "--method", "intensity", "--good", str(good), "--defective", parts["defective"], "--masks",
                parts["masks"], "--test-good", str(test_good), "--run-dir", str(run)) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["held_out_good"] == [] and config["n_test_good"] == len(list(test_good.iterdir()))
    assert main(["evaluate", "--run-dir", str(run), "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["has_masks"] is True and 0 <= metrics["pixel_auroc"] <= 1 and 0 <= metrics["aupro"] <= 1


def test_masks_match_by_stem_in_a_flat_folder_and_by_path_with_the_mask_suffix(tmp_path):
    image = np.zeros((16, 16), np.uint8)
    for rel in ("good/a.png", "good/b.png", "bad/scratch/017.jpg", "bad/dent/018.png", "bad/loose.png",
                "masks/017.png", "masks/dent/018_mask.png", "masks/loose.png", "masks/nobody.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / rel)
    (tmp_path / "good" / "notes.txt").write_text("not an image")
    (tmp_path / "good" / ".DS_Store").write_text("hidden")
    index = F.index_folders(tmp_path / "good", tmp_path / "bad", tmp_path / "masks")
    assert [t for _, t in index.defective] == ["dent", "defective", "scratch"]  # loose files: "defective"
    assert {p.name: m.name for p, m in index.masks.items()} == {"017.jpg": "017.png", "018.png": "018_mask.png",
                                                                 "loose.png": "loose.png"}
    assert [p.name for p in index.masks_without_image] == ["nobody.png"] and not index.images_without_mask
    assert [p.name for p in index.skipped] == ["notes.txt"]
    (tmp_path / "bad" / "good").mkdir()
    Image.fromarray(image).save(tmp_path / "bad" / "good" / "x.png")
    with pytest.raises(DataError, match="cannot be called 'good'"):
        F.index_folders(tmp_path / "good", tmp_path / "bad")
    (tmp_path / "bad" / "good" / "x.png").unlink()
    with pytest.raises(DataError, match="nobody.png"):
        F.run_data({"good": str(tmp_path / "good"), "defective": str(tmp_path / "bad"),
                    "masks": str(tmp_path / "masks"), "seed": 0}, 0.0)


def test_held_out_draw_is_seeded_and_keeps_duplicate_groups_together():
    first = F.draw_held_out(20, [[0, 1, 2]], 0.2, seed=3)
    assert first == F.draw_held_out(20, [[0, 1, 2]], 0.2, seed=3) and 1 <= len(first) <= 6
    for seed in range(20):
        drawn = set(F.draw_held_out(20, [[0, 1, 2], [5, 9]], 0.2, seed))
        assert len(drawn & {0, 1, 2}) in (0, 3) and len(drawn & {5, 9}) in (0, 2)
    with pytest.raises(DataError, match="at least 2"):
        F.draw_held_out(1, [], 0.2, 0)


@pytest.mark.parametrize("values, message", [
    ({"data": "d", "category": "c", "good": "g"}, "not both"),
    ({"good": "g", "masks": "m"}, "masks needs defective"),
    ({"data": "d", "category": "c", "defective": "x"}, "go.*with good"),
    ({"category": "c"}, "needs data"),
])
def test_run_config_names_a_wrong_data_combination(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict({"method": "patchcore", **values})


@pytest.mark.parametrize("argv, message", [
    (["--good", "nowhere"], "nowhere does not exist"),
    (["--data", "d"], "needs data"),
])
def test_fit_with_bad_folder_options_exits_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--method", "intensity", *argv, "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
