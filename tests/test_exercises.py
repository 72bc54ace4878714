"""Exercises check themselves: the solutions pass, wrong answers are refused with their reason, the student
version is blank (solutions run in the executed report: tests/test_notebooks.py)."""

from __future__ import annotations

import nbformat
import numpy as np
import pandas as pd
import pytest

from anomaly.study import exercises
from anomaly.rates import wilson_interval
from anomaly.study.report import notebook_dir, select_notebooks


@pytest.fixture
def counts():
    return pd.DataFrame({"test": [40, 15, 60, 115], "train": [180, 0, 0, 180], "total": [220, 15, 60, 295]},
                        index=["good", "scratch", "dent", "total"])


def _ok(verdict, expected=True, reason=""):
    assert verdict.ok is expected, verdict.why
    assert reason in verdict.why, verdict.why
    assert ("Right" if expected else "Not yet") in verdict._repr_markdown_()


def test_data_exercises(counts):
    p = 75 / 115
    _ok(exercises.check("01.1", p, counts=counts))
    _ok(exercises.check("01.1", 100 * p, counts=counts), False, "percentage")
    _ok(exercises.check("01.1", 75 / 295, counts=counts), False, "every split")
    _ok(exercises.check("01.2", 2 * p / (1 + p), counts=counts))
    _ok(exercises.check("01.2", p, counts=counts), False, "that is the precision")


def test_rank_exercises():
    _ok(exercises.check("02.1", (21, False), n=20, alpha=0.01))
    _ok(exercises.check("02.1", (20, True), n=20, alpha=0.01), False, "n + 1")
    _ok(exercises.check("02.1", (21, True), n=20, alpha=0.01), False, "reachable means k ≤ n")
    _ok(exercises.check("02.1", (191, True), n=200, alpha=0.05))
    _ok(exercises.check("02.2", 99, alpha=0.01))
    _ok(exercises.check("02.2", 100, alpha=0.01), False, "so do fewer")
    _ok(exercises.check("02.2", 98, alpha=0.01), False, "exceeds n")


def test_auroc_and_wilson_exercises():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.5, 0.5, 0.7, 0.9])
    wins = np.array([[b > g for g in scores[:3]] for b in scores[3:]], float)
    ties = np.array([[b == g for g in scores[:3]] for b in scores[3:]], float)
    auroc = (wins + 0.5 * ties).mean()
    metrics = {"image_auroc": auroc, "false_rejects": 0, "n_good": 40, "frr_ci": list(wilson_interval(0, 40))}
    _ok(exercises.check("03.1", auroc, labels=labels, scores=scores, metrics=metrics))
    _ok(exercises.check("03.1", wins.mean(), labels=labels, scores=scores, metrics=metrics), False, "one half")
    _ok(exercises.check("03.1", 1 - auroc, labels=labels, scores=scores, metrics=metrics), False, "good images above")
    _ok(exercises.check("03.2", wilson_interval(0, 40)[1], metrics=metrics))
    _ok(exercises.check("03.2", 0.0, metrics=metrics), False, "normal approximation")


def test_heatmap_exercises():
    amap = np.zeros((8, 8))
    amap[2, 5] = 1.0
    mask = np.zeros((8, 8), np.uint8)
    mask[2, 5] = 1
    _ok(exercises.check("04.1", (2, 5, True), anomaly_map=amap, gt_mask=mask))
    _ok(exercises.check("04.1", (5, 2, True), anomaly_map=amap, gt_mask=mask), False, "rows first")
    maps = [np.full((4, 4), 0.8), np.full((4, 4), 1.2)]
    _ok(exercises.check("04.2", 1, anomaly_maps=maps, scores=[1.1, 1.3], threshold=1.0))
    _ok(exercises.check("04.2", 2, anomaly_maps=maps, scores=[1.1, 1.3], threshold=1.0), False, "smoothed")


def test_comparison_exercises():
    a, b = {"method": "patchcore", "image_auroc": 0.86}, {"method": "autoencoder", "image_auroc": 0.44}
    _ok(exercises.check("05.1", 0.42, a=a, b=b))
    _ok(exercises.check("05.1", -0.42, a=a, b=b), False, "sign is reversed")
    metrics = {"image_auroc": 0.86, "image_auroc_ci": [0.79, 0.93]}
    _ok(exercises.check("05.2", [0.78, 0.925], metrics=metrics))
    _ok(exercises.check("05.2", [0.85, 0.87], metrics=metrics), False, "too narrow")


def test_no_answer_and_bad_forms_are_not_errors():
    v = exercises.check("02.1", None, n=20, alpha=0.01)
    assert v.ok is None and "No answer yet" in v._repr_markdown_()
    assert exercises.check("04.1", 3, anomaly_map=np.zeros((2, 2)), gt_mask=np.zeros((2, 2))).ok is False
    with pytest.raises(ValueError, match="unknown exercise"):
        exercises.check("09.9", 1)


def test_student_version_blanks_every_solution_and_keeps_the_task(tmp_path):
    written = exercises.write_student_version(select_notebooks(None), tmp_path)
    assert [p.name for p in written] == [p.name for p in sorted(notebook_dir().glob("[0-9][0-9]_*.ipynb"))]
    for path in written:
        source = nbformat.read(notebook_dir() / path.name, as_version=4)
        student = nbformat.read(path, as_version=4)
        solutions = [c for c in source.cells if exercises.SOLUTION_TAG in c.metadata.get("tags", [])]
        checks = [c for c in source.cells if "check" in c.metadata.get("tags", [])]
        assert len(solutions) >= 2 and len(checks) == len(solutions), path.name
        for before, after in zip(source.cells, student.cells):
            if exercises.SOLUTION_TAG in before.metadata.get("tags", []):
                code = [line for line in after.source.splitlines() if not line.lstrip().startswith("#")]
                assert code == [exercises.STUDENT_LINE], path.name
                assert after.source.splitlines()[0].startswith("# Exercise")  # the task is kept
            else:
                assert after.source == before.source
            assert after.get("outputs", []) == []


def test_cli_writes_the_student_version(tmp_path):
    from anomaly import cli

    assert cli.main(["report", "--student", "--out", str(tmp_path / "student"), "--notebooks", "03"]) == 0
    assert [p.name for p in (tmp_path / "student").iterdir()] == ["03_evaluation.ipynb"]


def test_own_parts_exercises():
    # 120 scores at alpha 0.02: k = ceil(121 * 0.98) = 119, expected rate 2/121
    _ok(exercises.check("06.1", 1000 * 2 / 121, n=120, alpha=0.02, good_parts=1000))
    _ok(exercises.check("06.1", 20.0, n=120, alpha=0.02, good_parts=1000), False, "alpha is the target")
    scores = np.arange(1.0, 41.0)[::-1]  # 40 scores, unsorted; alpha 0.05: k = ceil(41 * 0.95) = 39
    _ok(exercises.check("06.2", 39.0, scores=scores, alpha=0.05))
    _ok(exercises.check("06.2", 38.0, scores=scores, alpha=0.05), False, "you used n")
    _ok(exercises.check("06.2", 2.0, scores=scores, alpha=0.05), False, "LARGEST")
    _ok(exercises.check("06.2", 40.0, scores=scores[:10], alpha=0.05))  # k = 11 > 10: the largest score
