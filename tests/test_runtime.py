"""Runtime selection: ``auto`` takes onnxruntime when the exported graph passes the parity check, else PyTorch."""

from __future__ import annotations

import logging
import shutil

import pytest

from anomaly import export as E
from anomaly.inference import load_run, select_scorer
from anomaly.pipeline import evaluate_run
from anomaly.runs import check_run_dir


@pytest.fixture
def run(patchcore_run, tmp_path):
    """A private copy of the session's tiny PatchCore run (export writes into the folder), without any graph
    that earlier tests cached in the shared run."""
    ignore = shutil.ignore_patterns(E.ONNX_FILE, E.PARITY_FILE)
    return load_run(shutil.copytree(patchcore_run, tmp_path / "run", ignore=ignore))


def test_auto_picks_onnx_when_parity_passes_and_caches_the_graph(run, monkeypatch):
    scorer, used = select_scorer(run, "auto", threads=1)
    assert used == "onnx" and isinstance(scorer, E.OnnxScorer)
    assert (run.run_dir / E.ONNX_FILE).is_file() and (run.run_dir / E.PARITY_FILE).is_file()
    check_run_dir(run.run_dir)  # the cached graph does not make the folder incomplete or mixed

    def fail(*args, **kwargs):
        raise AssertionError("exported twice")

    monkeypatch.setattr(E, "export_onnx", fail)
    assert select_scorer(load_run(run.run_dir), "auto")[1] == "onnx"  # cached: not exported again


def test_auto_falls_back_to_torch_when_export_fails(run, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(E, "export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="anomaly.inference"):
        scorer, used = select_scorer(run, "auto")
    assert used == "torch" and scorer is run.detector
    assert "ONNX export failed" in caplog.text and "unsupported operator" in caplog.text
    with pytest.raises(RuntimeError):  # an explicit onnx choice is not silently replaced
        select_scorer(run, "onnx")


def test_auto_falls_back_to_torch_when_parity_fails(run, monkeypatch, caplog):
    real = E.check_parity

    def off(*args, **kwargs):
        return {**real(*args, **kwargs), "max_rel_diff_maps": 0.5}

    monkeypatch.setattr(E, "check_parity", off)
    with caplog.at_level(logging.WARNING, logger="anomaly.inference"):
        assert select_scorer(run, "auto")[1] == "torch"
    assert "parity check failed" in caplog.text and "max_rel_diff_maps" in caplog.text


def test_auto_falls_back_for_a_method_without_export(run, monkeypatch, caplog):
    monkeypatch.setattr(E, "EXPORTABLE", ("padim",))
    with caplog.at_level(logging.INFO, logger="anomaly.inference"):
        assert select_scorer(run, "auto")[1] == "torch"
    assert "has no ONNX export" in caplog.text
    assert not (run.run_dir / E.ONNX_FILE).exists()


def test_explicit_choices_and_unknown_runtime(run):
    assert select_scorer(run, "torch") == (run.detector, "torch")
    assert select_scorer(run, "onnx")[1] == "onnx"
    with pytest.raises(ValueError, match="unknown runtime"):
        select_scorer(run, "tensorrt")


def test_parity_failure_bounds():
    assert E.parity_failure({"max_rel_diff_scores": 1e-6, "max_rel_diff_maps": 1e-5}) is None
    assert "max_rel_diff_scores" in E.parity_failure({"max_rel_diff_scores": float("nan"), "max_rel_diff_maps": 0})
    assert E.parity_failure({}) is not None


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["auto", "torch"])
def test_evaluate_records_the_timed_runtime(run, runtime):
    metrics = evaluate_run(run.run_dir, device="cpu", runtime=runtime)
    assert metrics["predict_runtime"] == ("onnx" if runtime == "auto" else "torch")
    assert metrics["predict_ms_per_image"] > 0
    assert load_run(run.run_dir).metrics["predict_runtime"] == metrics["predict_runtime"]


INT8_RTOL = 0.25  # stated bound: int8 backbone scores within 25 % of the float graph's largest score


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_graph_stays_close_to_the_float_one(run, mode):
    from anomaly.station.quantize import quantize_run

    path = quantize_run(run, mode, n_calibration=4)
    int8 = E.OnnxScorer(path, run.image_size).predict(E.parity_images(run))
    ref = E.load_onnx_scorer(run).predict(E.parity_images(run))
    scale = float(abs(ref.image_scores).max())
    assert float(abs(int8.image_scores - ref.image_scores).max()) / scale < INT8_RTOL
    check_run_dir(run.run_dir)
