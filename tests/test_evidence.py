"""Margins over the best baseline, the comparison table and the generated answer (anomaly.evidence)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from anomaly import evidence
from anomaly.uncertainty import uncertainty_metrics
from anomaly import metrics as M


def _run(method: str, labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray):
    pred = {"labels": labels, "image_scores": scores, "gt_masks": masks, "anomaly_maps": maps,
            "defect_types": np.where(labels == 1, "spot", "good")}
    samples = [SimpleNamespace(defect_type=t) for t in pred["defect_types"]]
    metrics = {"method": method, "category": "toy", "image_auroc": M.image_auroc(labels, scores),
               "pixel_auroc": M.pixel_auroc(masks, maps), "aupro": M.aupro(masks, maps),
               "f1_max_oracle": M.f1_max(labels, scores), "f1": 0.5, "precision": 1.0, "recall": 0.33,
               **uncertainty_metrics(pred, samples, threshold=float(np.median(scores)), n_resamples=200)}
    return SimpleNamespace(method=method, predictions=pred, metrics=metrics, threshold=float(np.median(scores)))


def _toy():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20), np.ones(30)].astype(int)
    masks = np.zeros((50, 16, 16), np.uint8)
    masks[20:, 4:8, 4:8] = 1
    masks[40:, 8:14, 8:14] = 1  # bigger defects on the last ten
    noise = rng.random((50, 16, 16)).astype(np.float32)
    good_map = noise + 2 * masks  # finds every defect
    weak_map = noise + 0.05 * masks * rng.random((50, 1, 1)).astype(np.float32)  # hardly better than noise
    strong = _run("patchcore", labels, good_map.reshape(50, -1).max(1), masks, good_map)
    base = _run("intensity", labels, weak_map.reshape(50, -1).max(1), masks, weak_map)
    return [base, strong]


def test_margins_table_and_answer_name_the_baseline_and_call_only_real_differences_real():
    results = _toy()
    margins = evidence.margins_over_baseline(results, n_resamples=200)
    assert set(margins) == {"patchcore"} and margins["patchcore"]["image_auroc"]["real"]
    table = evidence.comparison_table(results, margins)
    assert list(table.index) == ["intensity", "patchcore", "flag every part"]
    assert table.loc["intensity", "image AUROC margin over intensity"] == "(baseline)"
    assert table.loc["patchcore", "image AUROC margin over intensity"].startswith("+")
    assert table.loc["flag every part", "F1-max (oracle)"] == f"{M.f1_flag_all(results[0].predictions['labels']):.3f}"
    text = evidence.answer_paragraph(results, margins)
    assert "intensity" in text and "a real gain" in text and "Flagging every part" in text


def test_a_difference_whose_interval_includes_zero_is_not_called_real():
    base, strong = _toy()
    twin = SimpleNamespace(**{**vars(base), "method": "padim"})
    margins = evidence.margins_over_baseline([base, twin], n_resamples=200)
    assert not margins["padim"]["image_auroc"]["real"]
    assert "not distinguishable from the baseline" in evidence.answer_paragraph([base, twin], margins)


def test_size_table_and_sentence():
    results = _toy()
    table = evidence.size_table(results)
    assert set(table["recall at threshold"].columns) == {"intensity", "patchcore"}
    assert table["n"]["patchcore"].sum() == 30
    assert "patchcore" in evidence.summarise_sizes(table)
    assert "| defect area |" in evidence.to_markdown(table)
    from anomaly import viz

    assert len(viz.detection_by_size_figure(table).axes) == 2
