"""The method registry: a toy detector defined in THIS file alone goes through every room of the package.

``MeanColour`` (method ``meancolour``) maps each pixel to its colour's distance from the good images' mean
colour; it declares cross-fitting. Registered here, it is fitted and evaluated through the CLI and
``fit_run``, predicted, exported to ONNX, served, and put through the report's machinery (its notebook
runs and parameters, explain's notes, the fit summary, the index page with the baseline) -- with no
file of the package changed. Also: every list of methods derives from the registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from anomaly import cli, export

from anomaly.study import explain, report, summaries
from anomaly.config import RunConfig
from anomaly.models import (BASELINES, CROSSFITS, EXPORTABLE, METHODS, TRAINED, Detector, MethodSpec, Prediction,
                            create_detector, method_spec, register, specs)
from anomaly.models.base import check_image_size, fold_ids, model_buffer, score_by_fold
from anomaly.models.registry import REPORT_METHODS, unregister
from anomaly.inference import load_run
from anomaly.pipeline import evaluate_run, fit_run
from anomaly.study.run_results import load_results
from anomaly.station.service import create_app

CATEGORY = "screw_like"


# -- the toy detector: nothing below this line until the tests is known to the package ------------------------
@dataclass
class MeanColourConfig:
    image_size: int = 32  # maps are computed at this side

    def __post_init__(self) -> None:
        check_image_size(self.image_size, 8)


class MeanColourModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)  # (3,) the good images' mean colour

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = torch.linalg.vector_norm(images - self.mean[None, :, None, None], dim=1)  # (B, S, S)
        return maps.flatten(1).mean(1), maps


class MeanColour(Detector):
    name = "meancolour"
    config_class = MeanColourConfig
    crossfits = True
    mean = model_buffer("mean", "(3,) mean colour of the good training images")

    def __init__(self, config=None, device="cpu") -> None:
        super().__init__(config, device)
        self.model = MeanColourModel().to(self.device)

    def _fit(self, train_loader: DataLoader) -> None:
        self.mean = torch.cat([b["image"].mean((2, 3)) for b in train_loader]).mean(0)  # (3,)

    def fit_crossfit(self, train_loader: DataLoader, folds: int = 5, seed: int = 0) -> Prediction:
        colours = torch.cat([b["image"].mean((2, 3)) for b in train_loader])  # (n, 3), dataset order
        ids = fold_ids(len(colours), folds, seed)
        out = score_by_fold(self, train_loader, ids, lambda f: setattr(self, "mean", colours[ids != f].mean(0)))
        self.mean = colours.mean(0)  # the deployed model: every image
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._check_state(state, {"mean": (3,)})
        self.mean = state["mean"]


def _notes(run_dir: Path, config: dict, n_train: int) -> str:
    mean = torch.load(Path(run_dir) / "model.pt", weights_only=True)["mean"]
    return f"**Mean colour.** The {n_train} good images average RGB {', '.join(f'{v:.3f}' for v in mean.tolist())}."


SPEC = MethodSpec("meancolour", MeanColour, "distance of each pixel's colour from the good images' mean colour",
                  exportable=True, report={"synthetic": {"image_size": 32}, "real": {"image_size": None}},
                  notes=_notes, fit_lines=lambda config, state, n: [f"- State: {len(state)} tensor(s)."],
                  score_note=lambda config: " The score is the map's mean, not its maximum.")


@pytest.fixture(scope="module")
def registered():
    register(SPEC)
    yield SPEC
    unregister(SPEC.name)


@pytest.fixture(scope="module")
def toy_run(registered, synthetic_root, tmp_path_factory) -> Path:
    """Fitted and evaluated through the CLI, as a user would."""
    run_dir = tmp_path_factory.mktemp("toy") / "meancolour"
    assert cli.main(["fit", "--method", "meancolour", "--data", str(synthetic_root), "--category", CATEGORY,
                     "--run-dir", str(run_dir), "--device", "cpu", "--batch-size", "4"]) in (0, None)
    assert cli.main(["evaluate", "--run-dir", str(run_dir), "--device", "cpu"]) in (0, None)
    return run_dir


@pytest.fixture(scope="module")
def baseline_run(registered, synthetic_root, toy_run) -> Path:
    """The no-learning baseline beside the toy run (the report compares against it)."""
    run_dir = fit_run(RunConfig(synthetic_root, CATEGORY, "intensity", params={"image_size": 32}, device="cpu"),
                      toy_run.parent / "intensity")
    evaluate_run(run_dir, device="cpu")
    return run_dir


def test_every_list_derives_from_the_registry(registered):
    assert "meancolour" in METHODS and "meancolour" in CROSSFITS and "meancolour" in EXPORTABLE
    assert "meancolour" not in BASELINES and "meancolour" not in TRAINED
    assert tuple(METHODS) == tuple(s.name for s in specs())
    assert REPORT_METHODS[0] in BASELINES and "meancolour" in report.METHODS and "meancolour" in export.EXPORTABLE
    assert method_spec("meancolour").config_class is MeanColourConfig
    fit_help = cli.build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert "meancolour" in fit_help and "mean colour" in fit_help
    assert RunConfig("d", "c", "meancolour").method == "meancolour"
    with pytest.raises(ValueError, match="unknown parameter"):
        create_detector("meancolour", {"image_sise": 32})


def test_registry_refuses_a_name_clash_and_undeclared_crossfits(registered):
    class Other(MeanColour):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register(MethodSpec("meancolour", Other, "a clash"))
    with pytest.raises(TypeError, match="does not implement fit_crossfit"):
        type("NoCrossfit", (Detector,), {"name": "x", "config_class": MeanColourConfig, "crossfits": True,
                                         "_fit": None, "state_dict": None, "load_state_dict": None})
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_spec("nope")


def test_unregistered_method_is_a_clear_cli_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", "--method", "nope", "--data", "d", "--category", "c", "--run-dir", "r"])
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_fit_calibrates_by_its_declared_crossfit_and_evaluates(toy_run):
    calibration = json.loads((toy_run / "calibration.json").read_text())
    assert calibration["kind"] == "crossfit" and calibration["folds"] == 5
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert metrics["method"] == "meancolour" and 0.0 <= metrics["image_auroc"] <= 1.0
    run = load_run(toy_run)
    assert isinstance(run.detector, MeanColour) and run.detector.mean.shape == (3,)


def test_predict_cli_and_onnx_export(toy_run, synthetic_root, capsys, tmp_path):
    image = sorted((synthetic_root / CATEGORY / "test").glob("*/*.png"))[0]
    capsys.readouterr()
    assert cli.main(["predict", "--run-dir", str(toy_run), "--runtime", "torch", "--device", "cpu",
                     str(image)]) in (0, None)
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = load_run(toy_run)
    assert record["is_anomalous"] == (record["score"] >= run.threshold)
    onnx_path = export.export_onnx(run.detector, tmp_path / "model.onnx")
    assert onnx_path.is_file()


def test_served(toy_run, synthetic_root):
    image = sorted((synthetic_root / CATEGORY / "test").glob("*/*.png"))[0]
    with TestClient(create_app(toy_run), base_url="http://127.0.0.1") as client:
        info = client.get("/model").json()
        assert info["method"] == "meancolour" and info["metrics"] is not None
        answer = client.post("/predict", files={"file": ("x.png", image.read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    pixels = np.asarray(Image.open(image).convert("RGB"), np.float32) / 255  # (H, W, 3)
    expected = load_run(toy_run).detector.predict(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    assert answer.json()["score"] == pytest.approx(float(expected.image_scores[0]), rel=1e-4)


def test_report_machinery(toy_run, baseline_run, tmp_path):
    jobs = report.plan_jobs(report.select_notebooks(["02", "03"]), "d", "c", str(toy_run.parent), "synthetic", {})
    toy_jobs = [j for j in jobs if j.stem.endswith("_meancolour")]
    assert [j.stem for j in toy_jobs] == ["02_training_meancolour", "03_evaluation_meancolour"]
    assert toy_jobs[0].parameters["method"] == "meancolour" and toy_jobs[0].parameters["image_size"] == 32
    n_train = json.loads((toy_run / "fit.json").read_text())["n_train"]
    assert f"**Mean colour.** The {n_train} good images" in explain.method_notes(toy_run)
    fit_text = summaries.summarise_fit(toy_run)
    assert "**meancolour** fitted on" in fit_text and "- State: 1 tensor(s)." in fit_text
    results = load_results(toy_run)
    assert "the map's mean, not its maximum" in summaries.outline_text(results, [0, 1])
    index = report.write_index(tmp_path, toy_run.parent, [], "toy")
    page = index.read_text()
    assert "meancolour" in page and "intensity" in page and (tmp_path / "figures" / "comparison.png").is_file()
