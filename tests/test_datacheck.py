"""The data check (``anomaly check-data``, and the check at the start of ``fit``): planted duplicates across
splits are found and refused, a re-encoded resized copy is found, corrupt files and orphan masks are named,
too few good images for the target false-reject rate is reported."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from anomaly.cli import main
from anomaly.datacheck import check_data
from anomaly.datacheck_record import DataCheck, summary
from anomaly.study.own_parts import write_example_folders
from anomaly.thresholds import calibration_rank, min_calibration_size


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """12 good parts at 256 px (large enough for a thumbnail free of pixel noise), 1 defective per type."""
    return write_example_folders(tmp_path_factory.mktemp("photos") / "line", n_good=12, n_per_defect=1,
                                 image_size=256, masks=True)


@pytest.fixture
def line(photos, tmp_path) -> dict:
    """A private copy of ``photos`` that a test may change."""
    shutil.copytree(Path(photos["good"]).parent, tmp_path / "line")
    return {k: str(tmp_path / "line" / Path(v).name) for k, v in photos.items()}


def _config(folders: dict, **extra) -> dict:
    return {"method": "patchcore", "seed": 0, **folders, **extra}


def _reencoded(source: Path, target: Path, scale: float, quality: int) -> None:
    with Image.open(source) as img:
        copy = img.convert("RGB").resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    copy.save(buffer, "JPEG", quality=quality)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())


def test_clean_photos_pass_and_the_built_in_near_duplicate_is_found(photos):
    check = check_data(_config(photos))
    assert not check.errors()
    assert check.counts["train"] == {"good": 13} and sum(check.counts["test"].values()) == 5
    near = [g for g in check.duplicates if g.kind == "near"]
    assert len(near) == 1 and near[0].scope == "within training"  # the part photographed twice (own_parts)
    assert sorted(Path(p).name for p in near[0].train) == ["IMG_0000.png", "IMG_0012.jpg"]
    assert {"256x256", "320x320", "192x192"} == set(check.sizes) and check.modes.keys() == {"L", "RGB"}
    held = set(check.held_out_good)  # the draw keeps the two photos of one part on one side
    assert len(held & {"2026-03-02/IMG_0000.png", "2026-03-04/IMG_0012.jpg"}) in (0, 2)


def test_a_planted_duplicate_across_splits_is_found_and_refused(line, tmp_path, capsys):
    good = sorted(Path(line["good"]).rglob("*.png"))[3]
    leak = Path(line["defective"]) / "scratch_head" / "leak.png"
    shutil.copy(good, leak)
    shutil.copy(next((Path(line["masks"]) / "scratch_head").iterdir()), Path(line["masks"]) / "scratch_head" / "leak.png")
    check = check_data(_config(line))
    [problem] = check.errors()
    assert problem.code == "leakage" and str(good) in problem.message and str(leak) in problem.message
    assert [g.kind for g in check.duplicates if g.scope == "across training and test"] == ["exact"]
    argv = ["fit", "--method", "intensity", "--good", line["good"], "--defective", line["defective"], "--masks",
            line["masks"], "--run-dir", str(tmp_path / "run"), "--image-size", "64", "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and str(good) in err and str(leak) in err and "--allow-duplicates" in err
    assert not (tmp_path / "run").exists()
    assert main(argv + ["--allow-duplicates"]) == 0  # told otherwise: fits, and the run keeps the check
    recorded = DataCheck.read(tmp_path / "run" / "datacheck.json")
    assert recorded.errors() and not recorded.errors(allow_duplicates=True)


def test_a_reencoded_resized_jpeg_is_a_near_duplicate_across_splits(line):
    good = sorted(Path(line["good"]).rglob("*.png"))[5]
    copy = Path(line["defective"]) / "thread_top" / "copy.jpg"
    _reencoded(good, copy, scale=0.6, quality=90)
    shutil.copy(next((Path(line["masks"]) / "thread_top").iterdir()), Path(line["masks"]) / "thread_top" / "copy.png")
    check = check_data(_config(line))
    leaks = [g for g in check.duplicates if g.scope == "across training and test"]
    assert [(g.kind, g.train, g.test) for g in leaks] == [("near", [str(good)], [str(copy)])]
    assert [p.code for p in check.errors()] == ["leakage"]


def test_corrupt_file_and_orphan_mask_are_named(line, tmp_path, capsys):
    corrupt = Path(line["good"]) / "2026-03-03" / "IMG_9999.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    orphan = Path(line["masks"]) / "thread_side" / "part_077_mask.png"
    shutil.copy(next((Path(line["masks"]) / "thread_side").iterdir()), orphan)
    out = tmp_path / "check.json"
    with pytest.raises(SystemExit) as exc:
        main(["check-data", "--good", line["good"], "--defective", line["defective"], "--masks", line["masks"],
              "--json", str(out)])
    printed = capsys.readouterr().out
    assert exc.value.code == 1 and str(corrupt) in printed and str(orphan) in printed
    record = json.loads(out.read_text())
    assert [u["path"] for u in record["unreadable"]] == [str(corrupt)]
    assert record["masks_without_image"] == [str(orphan)]
    assert {p["code"] for p in record["problems"] if p["severity"] == "error"} == {"unreadable", "orphan_masks"}


def test_a_defective_image_without_its_mask_is_named(line):
    missing = next((Path(line["masks"]) / "scratch_neck").iterdir())
    missing.unlink()
    check = check_data(_config(line))
    assert [p.code for p in check.errors()] == ["missing_masks"] and "scratch_neck/part_000" in check.errors()[0].message


def test_too_few_good_images_for_the_target_is_reported(line):
    cal = check_data(_config({"good": line["good"]}, target_frr=0.01)).calibration
    assert cal.n_scores == 13 and not cal.reachable and cal.n_needed == 99  # ceil(1 / 0.01 - 1)
    check = check_data(_config({"good": line["good"]}, target_frr=0.1))
    assert check.calibration.reachable and check.calibration.rank == 13  # ceil(14 * 0.9) = 13 <= 13
    low = check_data(_config({"good": line["good"]}, target_frr=0.01))
    [problem] = [p for p in low.problems if p.code == "too_few_good"]
    assert problem.severity == "warning" and "at least 99" in problem.message and "0.0714" in problem.message
    assert "NOT reachable" in summary(low) and "no test evaluation" in summary(low)
    assert calibration_rank(19, 0.05) == 19 and calibration_rank(18, 0.05) == 19  # 19 > 18: out of reach
    assert min_calibration_size(0.05) == 19 and min_calibration_size(0.05, "conservative") == 59


def test_check_data_on_the_mvtec_layout(tiny_mvtec, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check-data", "--data", str(tiny_mvtec), "--category", "widget", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["counts"] == {"train": {"good": 5}, "test": {"good": 2, "crack": 2}} and record["n_masks"] == 2
    assert record["layout"] == "mvtec" and "Data check of `widget`" in capsys.readouterr().out
