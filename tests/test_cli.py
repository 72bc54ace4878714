"""The CLI end to end on a tiny synthetic set: synth -> fit -> evaluate -> predict, and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly.cli import main

CATEGORY = "screw_like"


@pytest.fixture(scope="module")
def ae_run(synthetic_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "ae"
    argv = ["fit", "--method", "autoencoder", "--data", str(synthetic_root), "--category", CATEGORY,
            "--run-dir", str(run_dir), "--image-size", "32", "--epochs", "2", "--device", "cpu"]
    assert main(argv) == 0
    assert main(["evaluate", "--run-dir", str(run_dir), "--device", "cpu"]) == 0
    return run_dir


def test_synth_writes_mvtec_layout(tmp_path):
    argv = ["synth", "--out", str(tmp_path), "--seed", "3", "--image-size", "32", "--n-train", "3",
            "--n-test-good", "1", "--n-per-defect", "1"]
    assert main(argv) == 0
    assert len(list((tmp_path / CATEGORY / "train" / "good").iterdir())) == 3
    assert (tmp_path / CATEGORY / "ground_truth").is_dir()


@pytest.mark.slow
def test_fit_writes_a_complete_run_folder(ae_run):
    for name in ("config.json", "model.json", "model.pt", "threshold.json", "fit.json", "metrics.json",
                 "predictions.npz"):
        assert (ae_run / name).is_file(), name
    config = json.loads((ae_run / "config.json").read_text())
    assert config["method"] == "autoencoder" and config["params"]["epochs"] == 2
    assert len(json.loads((ae_run / "fit.json").read_text())["history"]) == 2


@pytest.mark.slow
def test_evaluate_writes_the_issue_metrics(ae_run):
    metrics = json.loads((ae_run / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "precision", "recall", "f1",
                "fit_seconds", "predict_ms_per_image", "n_test_images", "per_defect_type"):
        assert key in metrics, key
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_test_images"] == sum(v["n"] for v in metrics["per_defect_type"].values()) + 4


@pytest.mark.slow
def test_predict_prints_one_json_line_per_image(ae_run, synthetic_root, capsys, tmp_path):
    images = sorted((synthetic_root / CATEGORY / "test").glob("*/*.png"))[:2]
    capsys.readouterr()
    assert main(["predict", "--run-dir", str(ae_run), "--heatmap-dir", str(tmp_path), "--device", "cpu",
                 *map(str, images)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in images]
    threshold = json.loads((ae_run / "threshold.json").read_text())["threshold"]
    for line in lines:
        assert line["is_anomalous"] == (line["score"] >= threshold)
        assert Path(line["heatmap"]).is_file()


@pytest.mark.parametrize("argv, message", [
    (["fit", "--method", "nope", "--data", "x", "--category", "c", "--run-dir", "r"], "invalid choice"),
    (["fit", "--method", "autoencoder", "--data", "x", "--category", "c", "--run-dir", "r", "--bogus", "1"],
     "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_fail_clearly(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_detector_parameter_fails_before_any_work(synthetic_root, tmp_path, capsys):
    argv = ["fit", "--method", "autoencoder", "--data", str(synthetic_root), "--category", CATEGORY,
            "--run-dir", str(tmp_path / "run"), "--set", "epochz=3"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "epochz" in err and "epochs" in err  # names the typo and the valid keys
    assert not (tmp_path / "run").exists()


def test_wrong_data_path_names_the_path(tmp_path, capsys):
    missing = tmp_path / "no_such_root"
    argv = ["fit", "--method", "autoencoder", "--data", str(missing), "--category", CATEGORY,
            "--run-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "anomaly", "--help"], capture_output=True, text=True, check=True)
    for command in ("synth", "fit", "evaluate", "predict", "benchmark", "report"):
        assert command in out.stdout
