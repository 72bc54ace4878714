"""Cross-fitting: every good training image gets an out-of-sample score (CPU, tiny images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly.models.base import fold_ids
from anomaly.models.padim import PaDiM
from anomaly.models.patchcore import PatchCore


class _Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": i}


def _textured(n: int, seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 6.28, size)
    base = 0.5 + 0.2 * torch.sin(3 * x)[None, :] * torch.cos(2 * x)[:, None]
    return (base + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1).expand(-1, 3, -1, -1).clone()


def _loader(images: torch.Tensor, shuffle: bool = False) -> DataLoader:
    return DataLoader(_Images(images), batch_size=3, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def test_fold_ids_balanced_and_seeded():
    ids = fold_ids(10, 3, seed=0)
    assert sorted(np.bincount(ids).tolist()) == [3, 3, 4]
    assert np.array_equal(ids, fold_ids(10, 3, seed=0)) and not np.array_equal(ids, fold_ids(10, 3, seed=1))
    with pytest.raises(ValueError, match="folds"):
        fold_ids(3, 4)
    with pytest.raises(ValueError, match="folds"):
        fold_ids(5, 1)


@pytest.mark.slow
def test_patchcore_own_patches_never_in_the_scoring_bank():
    """With the whole bank (no coreset), a training image scores 0 in-sample, > 0 out of sample."""
    images = _textured(7, seed=0)
    detector = PatchCore({"image_size": 64, "sampler": "none"})
    out = detector.fit_crossfit(_loader(images, shuffle=True), folds=3)
    assert out.image_scores.shape == (7,) and out.anomaly_maps.shape == (7, 64, 64)
    in_sample = detector.predict(images).image_scores
    assert np.abs(in_sample).max() < 1e-3  # the deployed bank holds every image's patches
    assert out.image_scores.min() > 10 * max(np.abs(in_sample).max(), 1e-4)


@pytest.mark.slow
def test_patchcore_crossfit_deploys_the_plain_fit():
    images = _textured(6, seed=1)
    config = {"image_size": 64, "coreset_ratio": 0.25, "coreset_min_size": 0}
    crossfit = PatchCore(config)
    crossfit.fit_crossfit(_loader(images), folds=2)
    plain = PatchCore(config).fit(_loader(images))
    assert torch.equal(crossfit.memory_bank, plain.memory_bank)


@pytest.mark.slow
def test_patchcore_crossfit_is_exact():
    """The held-out scores and maps (from cached features) equal a PatchCore fitted on the other folds."""
    images = _textured(8, seed=4)
    config = {"image_size": 64, "coreset_ratio": 0.25, "coreset_min_size": 0}
    out = PatchCore(config).fit_crossfit(_loader(images, shuffle=True), folds=2, seed=3)
    ids = fold_ids(8, 2, seed=3)
    for fold in range(2):
        others = PatchCore(config).fit(_loader(images[torch.as_tensor(ids != fold)]))
        expected = others.predict(images[torch.as_tensor(ids == fold)])
        np.testing.assert_allclose(out.image_scores[ids == fold], expected.image_scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.anomaly_maps[ids == fold], expected.anomaly_maps, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_padim_crossfit_is_exact():
    """The held-out scores equal those of a PaDiM fitted on the other folds only."""
    images = _textured(8, seed=2)
    config = {"image_size": 64, "n_features": 10}
    detector = PaDiM(config)
    out = detector.fit_crossfit(_loader(images, shuffle=True), folds=2, seed=3)
    ids = fold_ids(8, 2, seed=3)
    for fold in range(2):
        others = PaDiM(config).fit(_loader(images[torch.as_tensor(ids != fold)]))
        expected = others.predict(images[torch.as_tensor(ids == fold)]).image_scores
        np.testing.assert_allclose(out.image_scores[ids == fold], expected, rtol=2e-3)
    deployed = PaDiM(config).fit(_loader(images))
    torch.testing.assert_close(detector.mean, deployed.mean, rtol=1e-4, atol=1e-4)
    in_sample = detector.predict(images).image_scores
    assert out.image_scores.mean() > in_sample.mean()  # held-out images look less familiar


# -- the pipeline and the CLI: calibration files, re-thresholding without refit, bad targets ----------
CATEGORY = "screw_like"


@pytest.fixture(scope="module")
def padim_run(synthetic_root, tmp_path_factory):
    from anomaly.config import RunConfig
    from anomaly.pipeline import evaluate_run, fit_run

    run_dir = fit_run(RunConfig(synthetic_root, CATEGORY, "padim", params={"image_size": 64, "n_features": 10}, device="cpu", batch_size=4, folds=3),
                      tmp_path_factory.mktemp("cal") / "padim")
    evaluate_run(run_dir, device="cpu")
    return run_dir


@pytest.mark.slow
def test_run_records_how_it_was_calibrated(padim_run):
    calibration = json.loads((padim_run / "calibration.json").read_text())
    assert calibration["kind"] == "crossfit" and calibration["folds"] == 3 and calibration["n_scores"] == 12
    threshold = json.loads((padim_run / "threshold.json").read_text())
    assert threshold["estimator"] == "conformal" and threshold["target_frr"] == 0.05
    assert threshold["n_scores"] == 12 and threshold["calibration"] == "crossfit"
    assert not threshold["reachable"]  # (12 + 1) * 0.95 > 12: recorded, not hidden
    assert threshold["pixel_threshold"] is not None
    metrics = json.loads((padim_run / "metrics.json").read_text())
    for key in ("target_frr", "frr", "recall", "frr_ci", "recall_ci", "escape_rate", "oracle_recall_at_frr"):
        assert key in metrics, key
    assert {"region_hit_rate", "false_regions_per_good_image"} <= set(metrics["regions"])


@pytest.mark.slow
def test_threshold_command_rederives_without_refit(padim_run, capsys):
    from anomaly.cli import main

    model = (padim_run / "model.pt").read_bytes()
    before = json.loads((padim_run / "threshold.json").read_text())["threshold"]
    capsys.readouterr()
    assert main(["threshold", "--run-dir", str(padim_run), "--target-frr", "0.5", "--compare"]) == 0
    printed = json.loads(capsys.readouterr().out)
    after = json.loads((padim_run / "threshold.json").read_text())
    assert after["target_frr"] == 0.5 and after["reachable"] and after["threshold"] < before
    assert printed["threshold"]["threshold"] == after["threshold"]
    rows = printed["compare"]["estimators"]
    assert [row["estimator"] for row in rows] == ["conformal", "empirical", "conservative", "tail"]
    assert [row["n"] for row in printed["compare"]["conformal_with_fewer_scores"]] == [10]  # 12 scores
    metrics = json.loads((padim_run / "metrics.json").read_text())
    assert metrics["target_frr"] == 0.5 and metrics["threshold"] == pytest.approx(after["threshold"])
    assert (padim_run / "model.pt").read_bytes() == model  # no refit
    from anomaly.inference import load_run

    assert load_run(padim_run).threshold == pytest.approx(after["threshold"])  # the marker still holds


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["0", "1", "-0.1", "1.5", "abc"])
def test_bad_targets_are_refused_with_a_message(padim_run, bad, capsys, tmp_path):
    from anomaly.cli import main

    for argv in (["threshold", "--run-dir", str(padim_run), "--target-frr", bad],
                 ["fit", "--method", "padim", "--data", str(tmp_path), "--category", "x", "--run-dir",
                  str(tmp_path / "r"), "--target-frr", bad]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "strictly between 0 and 1" in capsys.readouterr().err


def test_fit_refuses_a_bad_target_in_python(synthetic_root, tmp_path):
    from anomaly.config import RunConfig
    from anomaly.pipeline import fit_run

    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        fit_run(RunConfig(synthetic_root, CATEGORY, "padim", params={"image_size": 64}, target_frr=1.0), tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_predict_returns_regions(padim_run, synthetic_root):
    from anomaly.inference import iter_predictions, load_run

    path = sorted((synthetic_root / CATEGORY / "test").glob("[!g]*/*.png"))[0]
    record = next(iter_predictions(load_run(padim_run), [path])).json_record()
    assert isinstance(record["regions"], list)
    for region in record["regions"]:
        x0, y0, x1, y1 = region["bbox"]
        assert 0 <= x0 <= x1 < 64 and 0 <= y0 <= y1 < 64 and region["area_px"] >= 1
