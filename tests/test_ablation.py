"""The PatchCore ablation: a table against the defaults, paired differences, resume, bad variants."""

from __future__ import annotations

import pandas as pd
import pytest

from anomaly.study import ablation as A
from anomaly.cli import main
from anomaly.utils import read_json

SMALL = {"default": {"image_size": 64}, "max-score": {"image_size": 64, "num_neighbors": 1},
         "flip-tta": {"image_size": 64, A.FLIP: True},
         "ensemble": {A.ENSEMBLE: [{"image_size": 64}, {"image_size": 64, "strides": [8]}]}}


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(A, "VARIANTS", SMALL)
    monkeypatch.setattr(A, "EVAL_SIZE", 64)


@pytest.mark.slow
def test_table_against_defaults_and_resume(small, synthetic_root, tmp_path, monkeypatch):
    table = A.run_ablation(synthetic_root, ["texture"], tmp_path, ["max-score", "flip-tta", "ensemble"], device="cpu")
    frame = pd.DataFrame(read_json(tmp_path / "ablation.json")["rows"])
    assert list(frame["variant"]) == ["default", "max-score", "flip-tta", "ensemble"]  # default added: the reference
    assert pd.isna(frame.loc[0, "image_auroc_delta"])
    for _, row in frame.iloc[1:].iterrows():
        lo, hi = row["image_auroc_delta_ci"]
        assert lo <= row["image_auroc_delta"] <= hi
        assert 0 <= row["aupro"] <= 1 and row["fit_seconds"] > 0
    assert "| texture | flip-tta |" in table and (tmp_path / "ablation.md").read_text().strip() == table

    def refit(*args, **kwargs):
        raise AssertionError("a finished variant was fitted again")

    monkeypatch.setattr(A, "_run_variant", refit)
    assert A.run_ablation(synthetic_root, ["texture"], tmp_path, ["max-score", "flip-tta", "ensemble"], device="cpu") == table


def test_unknown_variant_is_refused(small, synthetic_root, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown ablation variant"):
        A.run_ablation(synthetic_root, ["texture"], tmp_path, ["bogus"])
    with pytest.raises(SystemExit) as exit_info:
        main(["ablation", "--data", str(synthetic_root), "--categories", "texture", "--out", str(tmp_path),
              "--variants", "bogus"])
    assert exit_info.value.code == 2 and "unknown ablation variant" in capsys.readouterr().err


@pytest.mark.slow
def test_a_changed_variant_or_a_corrupt_result_is_fitted_again(small, synthetic_root, tmp_path, monkeypatch):
    A.run_ablation(synthetic_root, ["texture"], tmp_path, ["max-score"], device="cpu")
    fitted = []
    original = A._run_variant
    monkeypatch.setattr(A, "_run_variant", lambda splits, name, *a: fitted.append(name) or original(splits, name, *a))
    (tmp_path / "texture" / "default.npz").write_bytes(b"not a zip")  # corrupt
    monkeypatch.setitem(A.VARIANTS, "max-score", {"image_size": 64, "num_neighbors": 2})  # redefined
    A.run_ablation(synthetic_root, ["texture"], tmp_path, ["max-score"], device="cpu")
    assert fitted == ["default", "max-score"]
    A.run_ablation(synthetic_root, ["texture"], tmp_path, ["max-score"], device="cpu")
    assert fitted == ["default", "max-score"]  # both stored now, with their configurations
