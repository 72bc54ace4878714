"""The typed run records: threshold.json, calibration.json and metrics.json round-trip through one model each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from anomaly.calibration import read_calibration
from anomaly.inference import load_run
from anomaly.pipeline import evaluate_run
from anomaly.records import CalibrationRecord, MetricsRecord, RunFolderError, ThresholdRecord

RECORDS = (ThresholdRecord, CalibrationRecord, MetricsRecord)


@pytest.fixture(scope="module")
def evaluated(patchcore_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("records") / "run"
    shutil.copytree(patchcore_run, run)
    evaluate_run(run, device="cpu")
    return run


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.FILE)
def test_round_trip_is_byte_identical(evaluated, tmp_path, record):
    """What a fit/evaluation wrote reads back with the same keys and values, and writes back the same bytes."""
    original = (evaluated / record.FILE).read_bytes()
    read = record.read(evaluated)
    assert read.as_dict() == json.loads(original)
    assert list(read.as_dict()) == list(json.loads(original))  # same key order
    read.write(tmp_path)
    assert (tmp_path / record.FILE).read_bytes() == original
    assert record.read(tmp_path) == read


def test_records_read_like_the_dicts_they_replace(evaluated):
    decision = ThresholdRecord.read(evaluated)
    assert decision["threshold"] == decision.threshold and decision.get("nope", 7) == 7 and "pixel_fpr" in decision
    assert decision.scalars()["estimator"] == "conformal"
    calibration = read_calibration(evaluated)
    assert calibration["scores"] == calibration.scores and calibration.n_scores == len(calibration.scores)
    assert set(calibration.map_summary()) == {"0", "50", "99", "100"}
    metrics = MetricsRecord.read(evaluated)
    assert metrics["per_defect_type"] == metrics.get("per_defect_type")  # an undeclared block, kept as written
    run = load_run(evaluated)
    assert run.threshold == decision.threshold and run.metrics == metrics.as_dict()


@pytest.mark.parametrize("record, change, words", [
    (ThresholdRecord, {"threshold": float("nan")}, "threshold must be a finite number"),
    (ThresholdRecord, {"threshold": "high"}, "threshold must be a finite number"),
    (ThresholdRecord, {"target_frr": 1.5}, "target_frr must be strictly between 0 and 1"),
    (ThresholdRecord, {"n_scores": "20"}, "n_scores"),
    (CalibrationRecord, {"kind": "guess"}, "kind"),
    (CalibrationRecord, {"scores": [1.0, float("nan")]}, "finite numbers"),
    (CalibrationRecord, {"scores": []}, "non-empty"),
    (MetricsRecord, {"tp": -1}, "tp"),
    (MetricsRecord, {"image_auroc": "0.9"}, "image_auroc"),
])
def test_a_bad_field_is_named_with_the_file(evaluated, tmp_path, record, change, words):
    values = {**json.loads((evaluated / record.FILE).read_text()), **change}
    (tmp_path / record.FILE).write_text(json.dumps(values))
    with pytest.raises(RunFolderError) as err:
        record.read(tmp_path)
    assert words in str(err.value) and record.FILE in str(err.value)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.FILE)
def test_missing_or_not_an_object(tmp_path, record):
    with pytest.raises(RunFolderError, match="not found"):
        record.read(tmp_path)
    (tmp_path / record.FILE).write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="JSON object"):
        record.read(tmp_path)


def test_required_keys_are_named(tmp_path):
    (tmp_path / "calibration.json").write_text('{"scores": [1.0]}')
    with pytest.raises(RunFolderError, match="calibration.json lacks kind"):
        CalibrationRecord.read(tmp_path)


def test_runs_from_before_calibration_json_still_load(tmp_path):
    """An old run kept its validation scores in threshold.json; its extra keys survive a read and a write."""
    old = {"threshold": 0.5, "quantile": 0.99, "validation_scores": [0.1, 0.2, 0.4],
           "validation_map_quantiles": {"0": 0.0, "50": 0.1, "99": 0.3, "100": 0.4}}
    (tmp_path / "threshold.json").write_text(json.dumps(old))
    calibration = read_calibration(tmp_path)
    assert calibration.kind == "validation" and calibration.n_scores == 3 and calibration.map_summary()["99"] == 0.3
    decision = ThresholdRecord.read(tmp_path)
    assert decision.estimator is None and decision.get("estimator", "conformal") == "conformal"
    decision.write(tmp_path)
    assert json.loads((tmp_path / "threshold.json").read_text()) == old
