"""Margins over the best baseline, the comparison table and the generated answer (anomaly.study.evidence)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from anomaly.study import evidence
from anomaly.tables import to_markdown
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


def test_size_table_uses_shared_bins_and_gives_intervals():
    results = _toy()
    table = evidence.size_table(results)
    assert set(table["method"]) == {"intensity", "patchcore"}
    per_method = table.groupby("method")["n"].sum()
    assert (per_method == 30).all()  # the same 30 defective images in every method's bins
    assert (table.groupby("defect area")["n"].nunique() == 1).all()
    assert ((table["recall_lo"] <= table["recall"]) & (table["recall"] <= table["recall_hi"])).all()
    assert ((table["auroc_lo"] <= table["auroc"] + 1e-9) & (table["auroc"] <= table["auroc_hi"] + 1e-9)).all()
    assert "patchcore" in evidence.summarise_sizes(table)
    from anomaly import viz
    from anomaly.study import sizes

    shown = sizes.display_table(table)
    assert shown.index[0].endswith("(n=20)") or "(n=" in shown.index[0]
    assert "| defect area (n) |" in to_markdown(shown)
    fig = viz.detection_by_size_figure(table)
    assert len(fig.axes) == 2 and "(n=" in fig.axes[0].get_xticklabels()[0].get_text()


def test_a_calibrated_f1_below_the_flag_all_floor_is_said_and_undefined_precision_spelled_once():
    base, strong = _toy()
    strong.metrics.update(f1=0.0, precision=0.0, recall=0.0, tp=0, fp=0)
    margins = evidence.margins_over_baseline([base, strong], n_resamples=200)
    table = evidence.comparison_table([base, strong], margins)
    assert table.loc["patchcore", "F1 at calibrated threshold (P / R)"] == \
        "0.00 (undefined / 0.00) below the flag-every-part floor"
    assert "falls below that floor" in evidence.answer_paragraph([base, strong], margins)
