"""ONNX export: one graph (backbone + scoring), dynamic batch, parity with PyTorch, onnxruntime service, latency."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from anomaly.cli import main
from anomaly.export import ONNX_FILE, PARITY_FILE, OnnxScorer, export_graph, export_run
from anomaly.station.loadtest import latency_markdown, measure_latency
from anomaly.models import create_detector
from anomaly.config import RunConfig
from anomaly.inference import load_run
from anomaly.pipeline import fit_run
from anomaly.station.service import create_app

CATEGORY = "screw_like"


@functools.cache
def _loaded(run_dir: Path):
    return load_run(run_dir)


def _fit(synthetic_root: Path, tmp_path_factory, method: str) -> Path:
    torch.set_num_threads(2)
    return fit_run(RunConfig(synthetic_root, CATEGORY, method, params={"image_size": 64}, device="cpu", batch_size=4),
                   tmp_path_factory.mktemp(method))


@pytest.fixture(scope="module")
def run_dir(patchcore_run, tmp_path_factory) -> Path:
    """A private copy of the session's tiny PatchCore run (64 px; export writes into it), without cached graphs."""
    ignore = shutil.ignore_patterns(ONNX_FILE, PARITY_FILE)
    return Path(shutil.copytree(patchcore_run, tmp_path_factory.mktemp("patchcore") / "run", ignore=ignore))


@pytest.fixture(scope="module")
def exported(run_dir) -> dict:
    return export_run(load_run(run_dir))


@pytest.fixture(scope="module")
def padim_dir(synthetic_root, tmp_path_factory) -> Path:
    """A tiny PaDiM run (64 px), exported."""
    path = _fit(synthetic_root, tmp_path_factory, "padim")
    export_run(load_run(path))
    return path


SLOW_PADIM = pytest.param("padim", marks=pytest.mark.slow)  # fits a PaDiM run: left out of `make test-fast`


@pytest.mark.parametrize("method, scoring_op", [("patchcore", "TopK"), pytest.param("padim", "Einsum", marks=pytest.mark.slow)])
def test_export_writes_one_checked_graph_and_parity_record(method, scoring_op, request):
    import onnx

    path = request.getfixturevalue("padim_dir" if method == "padim" else "run_dir")
    if method == "patchcore":
        request.getfixturevalue("exported")
    model = onnx.load(str(path / ONNX_FILE))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["image_scores", "anomaly_maps"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", scoring_op} <= ops  # backbone and scoring live in the same graph
    record = json.loads((path / PARITY_FILE).read_text())
    assert record["method"] == method and record["n_images"] == 4
    assert record["max_rel_diff_scores"] < 1e-4 and record["max_rel_diff_maps"] < 1e-4


@pytest.mark.parametrize("method", ["patchcore", SLOW_PADIM])
@pytest.mark.parametrize("batch, side", [(1, 64), (5, 64), (2, 96)])
def test_onnx_matches_torch_for_any_batch(method, batch, side, request):
    """Dynamic batch axis; inputs at other sizes are resized to S and maps resized back, as in PyTorch."""
    if method == "patchcore":
        request.getfixturevalue("exported")
    run_dir = request.getfixturevalue("padim_dir" if method == "padim" else "run_dir")
    run = _loaded(run_dir)
    scorer = OnnxScorer(run_dir / ONNX_FILE, run.image_size, threads=1)
    images = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(batch))
    ref, got = run.detector.predict(images), scorer.predict(images)
    assert got.image_scores.shape == (batch,) and got.anomaly_maps.shape == (batch, side, side)
    scale = float(np.abs(ref.image_scores).max())
    np.testing.assert_allclose(got.image_scores, ref.image_scores, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(got.anomaly_maps, ref.anomaly_maps, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.slow
def test_onnx_service_exports_on_the_fly(run_dir, synthetic_root, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.onnx", PARITY_FILE))
    image = sorted((synthetic_root / CATEGORY / "test").glob("*/*.png"))[-1].read_bytes()
    local = "http://127.0.0.1"  # the service answers loopback Host names only
    with TestClient(create_app(copy, runtime="onnx"), base_url=local) as onnx_client, \
            TestClient(create_app(copy), base_url=local) as torch_client:
        assert (copy / ONNX_FILE).is_file() and (copy / PARITY_FILE).is_file()
        assert onnx_client.get("/model").json()["runtime"] == "onnx"
        files = {"file": ("a.png", image, "image/png")}
        got, ref = onnx_client.post("/predict", files=files).json(), torch_client.post("/predict", files=files).json()
        assert got["score"] == pytest.approx(ref["score"], rel=1e-4)
        assert got["is_anomalous"] == ref["is_anomalous"]
        assert onnx_client.post("/predict", files={"file": ("b.txt", b"text", "text/plain")}).status_code == 415


@pytest.mark.parametrize("method", ["patchcore", SLOW_PADIM])
def test_predict_and_export_share_one_module(method, request, tmp_path, monkeypatch):
    """The exported graph IS ``detector.model``: a change to its forward changes predict and ONNX alike."""
    import onnxruntime as ort

    from anomaly.export import export_onnx

    detector = _loaded(request.getfixturevalue("padim_dir" if method == "padim" else "run_dir")).detector
    assert export_graph(detector) is detector.model
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    before = detector.predict(images)
    forward = type(detector.model).forward
    monkeypatch.setattr(type(detector.model), "forward", lambda self, x: tuple(2.0 * t for t in forward(self, x)))
    after = detector.predict(images)
    np.testing.assert_allclose(after.image_scores, 2.0 * before.image_scores, rtol=1e-6)
    np.testing.assert_allclose(after.anomaly_maps, 2.0 * before.anomaly_maps, rtol=1e-6)
    session = ort.InferenceSession(str(export_onnx(detector, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    scores, maps = session.run(None, {"images": images.numpy()})
    scale = float(np.abs(after.image_scores).max())
    np.testing.assert_allclose(scores, after.image_scores, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(maps, after.anomaly_maps, rtol=1e-4, atol=1e-4 * scale)


def test_export_refuses_unsupported_method():
    detector = create_detector("autoencoder", {"image_size": 32, "base_channels": 4, "latent_dim": 8})
    with pytest.raises(ValueError, match="cannot be exported"):
        export_graph(detector)
    with pytest.raises(ValueError, match="not fitted"):
        export_graph(create_detector("padim", {"image_size": 64, "n_features": 8}))


def test_latency_table(exported, run_dir):
    result = measure_latency(run_dir, repeats=2, batch_sizes=(1, 2), threads=1)
    assert {(r["runtime"], r["batch_size"]) for r in result["results"]} == {
        (rt, b) for rt in ("torch", "onnxruntime") for b in (1, 2)}
    assert all(r["ms_p95"] >= r["ms_p50"] > 0 for r in result["results"])
    assert json.loads((run_dir / "latency.json").read_text())["image_size"] == 64
    table = latency_markdown(result)
    assert table.count("| onnxruntime |") == 2 and "p95" in table


def test_cli_export_and_latency(exported, run_dir, tmp_path, capsys):
    out = tmp_path / "pc.onnx"
    assert main(["export", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    assert out.is_file() and json.loads(capsys.readouterr().out)["onnx"] == str(out)
    assert main(["latency", "--run-dir", str(run_dir), "--repeats", "1", "--threads", "1"]) == 0
    assert "| torch | 8 |" in capsys.readouterr().out
