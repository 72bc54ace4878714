"""The run-folder reader of evaluated runs (``run_results.load_results``) on complete, partial and corrupt
folders, and the one display-range function."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly.config import RunConfig

from anomaly.inference import display_range
from anomaly.pipeline import evaluate_run, fit_run
from anomaly.study.run_results import load_results, pick_cases
from anomaly.runs import RunFolderError


@pytest.fixture(scope="module")
def evaluated(synthetic_root, tmp_path_factory) -> Path:
    run = fit_run(RunConfig(synthetic_root, "screw_like", "intensity", params={"image_size": 64}, device="cpu"),
                  tmp_path_factory.mktemp("rr") / "run")
    evaluate_run(run, device="cpu")
    return run


@pytest.fixture
def copy(evaluated, tmp_path) -> Path:
    return Path(shutil.copytree(evaluated, tmp_path / "run"))


def test_complete_run_is_read(evaluated):
    results = load_results(evaluated)
    n = results.metrics["n_test_images"]
    assert results.method == "intensity" and results.predictions["anomaly_maps"].dtype == np.float32
    assert len(results.predictions["image_scores"]) == n == len(results.predictions["image_paths"])
    assert results.display_range == tuple(display_range(evaluated).values())
    assert results.validation_scores.size > 0 and np.isfinite(results.threshold)
    assert sum(len(v) for k, v in pick_cases(results, n).items() if k != "highest-scoring good parts") <= n


def test_partial_runs_are_refused_with_the_missing_step(copy):
    (copy / "predictions.npz").unlink()
    with pytest.raises(RunFolderError, match="predictions.npz not found"):
        load_results(copy)
    (copy / "metrics.json").unlink()
    with pytest.raises(RunFolderError, match="no metrics.json"):
        load_results(copy)
    (copy / "threshold.json").unlink()
    with pytest.raises(RunFolderError, match="incomplete: threshold.json missing"):
        load_results(copy)


@pytest.mark.parametrize("name, content, message", [
    ("predictions.npz", b"not a zip", "not a readable predictions file"),
    ("threshold.json", b'{"threshold": NaN}', "finite number"),
    ("metrics.json", b"[1, 2]", "JSON object"),
    ("model.json", b"{", "not valid JSON"),
])
def test_corrupt_files_are_named(copy, name, content, message):
    (copy / name).write_bytes(content)
    with pytest.raises(RunFolderError, match=message):
        load_results(copy)


def test_predictions_missing_a_key_or_rows_are_refused(copy):
    with np.load(copy / "predictions.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(copy / "predictions.npz", **{**arrays, "labels": arrays["labels"][:-1]})
    with pytest.raises(RunFolderError, match="disagree"):
        load_results(copy)
    np.savez(copy / "predictions.npz", **{k: v for k, v in arrays.items() if k != "gt_masks"})
    with pytest.raises(RunFolderError, match="lacks gt_masks"):
        load_results(copy)


def test_display_range_without_map_quantiles_is_per_image(copy):
    calibration = json.loads((copy / "calibration.json").read_text())
    calibration.update(map_quantiles=None, summary=None)
    (copy / "calibration.json").write_text(json.dumps(calibration))
    assert display_range(copy) == {"vmin": None, "vmax": None}
    assert load_results(copy).display_range == (None, None)
