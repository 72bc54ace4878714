"""The one inference path: a loaded run carries its decision; one function turns images into the records that
``predict`` (JSON lines and CSV), the Ray engine and the service all give."""

from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from anomaly import inference as I
from anomaly.decoding import decode_with_hw
from anomaly.station.inspection import decode_batch, inspect_paths, score_batch
from anomaly.station.service import create_app

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def run(patchcore_run) -> I.Run:
    return I.load_run(patchcore_run)


@pytest.fixture(scope="module")
def images(synthetic_root) -> list:
    return sorted((synthetic_root / "screw_like" / "test").glob("*/*.png"))


def test_a_loaded_run_carries_its_decision_and_calibration(run, patchcore_run):
    record = json.loads((patchcore_run / "threshold.json").read_text())
    decision = run.decision
    assert (decision.threshold, decision.pixel_threshold) == (record["threshold"], record["pixel_threshold"])
    assert (decision.target_frr, decision.estimator, decision.n_scores) == (
        record["target_frr"], record["estimator"], record["n_scores"])
    assert decision.fields == {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
    assert (run.threshold, run.pixel_threshold) == (decision.threshold, decision.pixel_threshold)
    calibration = json.loads((patchcore_run / "calibration.json").read_text())
    assert run.calibration.kind == calibration["kind"] and run.calibration.n_scores == len(calibration["scores"])
    assert run.calibration.map_quantiles == calibration["map_quantiles"]["summary"]
    assert I.display_range(run) == I.display_range(patchcore_run)  # the loaded summary, or the folder read again


def test_records_of_a_batch(run, images):
    rows, decoded = decode_batch(images[:3], run.image_size)
    predictions = I.predict_images(run.decision, run.detector, torch.stack(decoded), images[:3],
                                   sizes=[row["_hw"] for row in rows])
    for path, p in zip(images, predictions):
        assert p.path == str(path) and not p.error and np.isfinite(p.score)
        assert p.is_anomalous == (p.score >= run.threshold)
        assert p.anomaly_map.shape == p.image.shape[-2:]  # the image's area, for heatmaps
        assert list(p.json_record()) == ["path", "score", "is_anomalous", "heatmap", "regions"]
        row = p.csv_row()
        assert row["regions"] == len(p.regions) and row["score"] == p.score and row["error"] == ""


def test_a_non_finite_score_is_an_error_not_a_verdict(run, images):
    class NaNScorer:
        def predict(self, batch):
            out = run.detector.predict(batch)
            out.image_scores[:] = np.nan
            return out

    rows, decoded = decode_batch(images[:2], run.image_size)
    [p, _] = score_batch(run.decision, NaNScorer(), rows, decoded)
    assert "non-finite score" in p.error and p.is_anomalous is None
    assert p.csv_row() == {"path": str(images[0]), "score": "", "is_anomalous": "", "regions": "", "error": p.error}
    with pytest.raises(ValueError, match="non-finite"):
        next(I.iter_predictions(run, images[:1], scorer=NaNScorer()))


def test_predict_csv_and_service_give_the_same_verdicts(run, patchcore_run, images, tmp_path):
    """The JSON lines (file at its own resolution: the test images are the model's size), the CSV and the service
    go through :func:`anomaly.inference.predict_images` and agree on every image."""
    lines = [p.json_record() for p in I.iter_predictions(run, images)]
    inspect_paths(run, images, tmp_path / "out.csv", runtime="torch", progress=False)
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with TestClient(create_app(patchcore_run, runtime="torch"), base_url=LOCAL) as client:
        files = [("files", (path.name, path.read_bytes(), "image/png")) for path in images]
        answers = client.post("/predict/batch", files=files).json()["results"]
    for line, row, answer in zip(lines, rows, answers, strict=True):
        assert line["path"] == row["path"]
        assert float(row["score"]) == pytest.approx(line["score"], rel=1e-5) == pytest.approx(answer["score"], rel=1e-5)
        assert str(line["is_anomalous"]) == row["is_anomalous"] == str(answer["is_anomalous"])
        assert len(line["regions"]) == int(row["regions"]) == len(answer["regions"])
        assert answer["threshold"] == run.threshold


def test_heatmaps_are_named_by_path_and_coloured_in_the_run_range(run, images, tmp_path):
    [p] = I.predict_images(run.decision, run.detector, I.decode_image(images[0])[None], [images[0]],
                           heatmap_dir=tmp_path, colours=I.display_range(run))
    assert p.heatmap == str(tmp_path / I.heatmap_name(images[0]))
    assert Image.open(p.heatmap).size == Image.open(images[0]).size
    other = I.heatmap_name(tmp_path / "elsewhere" / images[0].name)
    assert other != I.heatmap_name(images[0]) and other.startswith(images[0].stem)


def test_service_mask_is_the_records_map_at_the_pixel_threshold(run, patchcore_run, images):
    image, hw = decode_with_hw(images[-1], run.image_size)
    [p] = I.predict_images(run.decision, run.detector, image[None], [images[-1]], sizes=[hw])
    with TestClient(create_app(patchcore_run, runtime="torch"), base_url=LOCAL) as client:
        answer = client.post("/predict", files={"file": ("x.png", images[-1].read_bytes(), "image/png")},
                             data={"mask": "true"}).json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png_base64"])))) > 0
    assert np.array_equal(mask, p.anomaly_map >= run.pixel_threshold)
    assert answer["regions"] == p.regions
