"""Folder inspection (``anomaly predict --csv``): streaming rows, resume, corrupt files, heatmap names."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from anomaly.cli import main
from anomaly.dataset import read_image
from anomaly.inference import heatmap_name, load_run
from anomaly.station.inspection import COLUMNS, inspect_paths, list_images

CATEGORY = "screw_like"


@pytest.fixture(scope="module")
def run(patchcore_run):
    return load_run(patchcore_run)


@pytest.fixture
def folder(synthetic_root, tmp_path) -> Path:
    """6 test images in two sub-folders (two pairs share a file name) and one corrupt file."""
    root = tmp_path / "parts"
    sources = sorted((synthetic_root / CATEGORY / "test").glob("*/*.png"))
    for i, src in enumerate(sources[:6]):
        target = root / ("a" if i < 3 else "b") / f"{i % 3:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    (root / "notes.txt").write_text("not an image, and not listed: wrong extension")
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_list_images_is_sorted_recursive_and_checks_inputs(folder, tmp_path):
    paths = list_images([folder])
    assert [p.relative_to(folder).as_posix() for p in paths] == [
        "a/000.png", "a/001.png", "a/002.png", "b/000.png", "b/001.png", "b/002.png", "b/broken.png"]
    assert list_images([paths[0], paths[0]]) == [paths[0]]
    with pytest.raises(FileNotFoundError, match="no such"):
        list_images([tmp_path / "missing"])


def test_rows_match_the_detector_and_corrupt_file_is_a_row(run, folder, tmp_path):
    out = tmp_path / "results.csv"
    summary = inspect_paths(run, [folder], out, heatmap_dir=tmp_path / "heat", batch_size=4, progress=False)
    rows = read_rows(out)
    assert tuple(rows[0]) == COLUMNS and len(rows) == 7
    assert summary["written"] == 7 and summary["errors"] == 1 and summary["skipped"] == 0
    broken = [r for r in rows if r["path"].endswith("broken.png")][0]
    assert broken["score"] == "" and "broken.png" in broken["error"]
    first = rows[0]
    expected = run.detector.predict(read_image(first["path"], run.image_size)[None]).image_scores[0]
    assert float(first["score"]) == pytest.approx(float(expected), rel=1e-4)
    assert first["is_anomalous"] == str(float(first["score"]) >= run.threshold)
    if run.pixel_threshold is not None:  # the number of defect regions at the run's pixel threshold
        assert all(r["regions"].isdigit() for r in rows if not r["error"])
    heatmaps = sorted(p.name for p in (tmp_path / "heat").iterdir())
    assert len(heatmaps) == 6 and len(set(heatmaps)) == 6  # a/000.png and b/000.png do not overwrite each other
    assert heatmap_name(folder / "a" / "000.png") in heatmaps


def test_resume_skips_finished_rows_and_drops_a_cut_row(run, folder, tmp_path):
    out = tmp_path / "results.csv"
    inspect_paths(run, [folder / "a"], out, progress=False)
    text = out.read_text()
    out.write_text(text + str(folder / "b" / "000.png") + ",12.")  # killed while writing a row
    summary = inspect_paths(run, [folder], out, batch_size=2, progress=False)
    assert summary["skipped"] == 3 and summary["written"] == 4
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [str(p) for p in list_images([folder])]
    assert inspect_paths(run, [folder], out, progress=False)["written"] == 0


def test_foreign_csv_is_refused(run, folder, tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an inspection CSV"):
        inspect_paths(run, [folder], out, progress=False)


def test_cli_csv_mode_and_json_mode(patchcore_run, folder, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    assert main(["predict", "--run-dir", str(patchcore_run), "--device", "cpu", "--csv", str(out),
                 "--batch-size", "3", "--runtime", "onnx", str(folder)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 7 and summary["errors"] == 1 and len(read_rows(out)) == 7
    good = [str(p) for p in list_images([folder / "a"])]
    assert main(["predict", "--run-dir", str(patchcore_run), "--device", "cpu", "--heatmap-dir", str(tmp_path / "h"),
                 str(folder / "a")]) == 0
    assert [json.loads(line)["path"] for line in capsys.readouterr().out.strip().splitlines()] == good
    assert main(["predict", "--run-dir", str(patchcore_run), "--device", "cpu", "--heatmap-dir", str(tmp_path / "j"),
                 str(folder / "a" / "000.png"), str(folder / "b" / "000.png")]) == 0
    assert len({json.loads(line)["heatmap"] for line in capsys.readouterr().out.strip().splitlines()}) == 2
    assert len(list((tmp_path / "j").iterdir())) == 2  # same file name, different folders: two heatmaps
    with pytest.raises(SystemExit) as exc:  # JSON mode still stops with exit 2 on an unreadable image
        main(["predict", "--run-dir", str(patchcore_run), "--device", "cpu", str(folder / "b" / "broken.png")])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--run-dir", str(patchcore_run), "--csv", str(out), str(tmp_path / "nowhere")])
    assert exc.value.code == 2 and "no such" in capsys.readouterr().err


def test_heatmap_options_belong_to_their_mode(patchcore_run, folder, tmp_path, capsys):
    for extra in (["--heatmaps", str(tmp_path / "h")], ["--csv", str(tmp_path / "x.csv"), "--heatmap-dir", "h"]):
        with pytest.raises(SystemExit) as exc:
            main(["predict", "--run-dir", str(patchcore_run), *extra, str(folder)])
        assert exc.value.code == 2 and "--heatmaps OUT goes with --csv" in capsys.readouterr().err
