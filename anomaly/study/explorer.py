"""Explore the threshold: what one threshold does to the calibration and test scores of a run.

:func:`threshold_state` computes, for any threshold, the confusion counts on the test set, the
realised false-reject rate and recall with 95 % Wilson intervals, the share of calibration scores
above it, and the precision range at a chosen defect rate (:func:`anomaly.study.wording.precision_range`).
:func:`threshold_figure` draws it (the HTML report shows it at the calibrated threshold, statically);
:func:`threshold_slider` wraps the same figure in an ipywidgets slider for JupyterLab, redrawn as it
moves. Moving the threshold here uses the TEST labels: it is for understanding the trade-off, the
deployed threshold still comes from good images only (``anomaly threshold --target-frr``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from anomaly.charts import new_figure
from anomaly.rates import wilson_interval
from anomaly.study.wording import fmt, precision_range


def threshold_state(calibration_scores: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float,
                    defect_rate: float) -> dict[str, Any]:
    """Counts and rates at ``threshold`` (``score >= threshold`` rejects): ``tn, fp, fn, tp, frr, frr_ci,
    recall, recall_ci, calibration_frr, precision_range`` (at ``defect_rate``)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    rejected = scores >= threshold
    tp, fp = int((rejected & labels).sum()), int((rejected & ~labels).sum())
    fn, tn = int(labels.sum()) - tp, int((~labels).sum()) - fp
    frr_ci, recall_ci = wilson_interval(fp, fp + tn), wilson_interval(tp, tp + fn)
    return {"threshold": float(threshold), "tn": tn, "fp": fp, "fn": fn, "tp": tp,
            "frr": fp / (fp + tn) if fp + tn else None, "frr_ci": frr_ci,
            "recall": tp / (tp + fn) if tp + fn else None, "recall_ci": recall_ci,
            "calibration_frr": float(np.mean(np.asarray(calibration_scores) >= threshold)),
            "defect_rate": defect_rate, "precision_range": precision_range(recall_ci, frr_ci, defect_rate)}


def threshold_figure(calibration_scores: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float,
                     defect_rate: float, calibrated: float | None = None) -> Figure:
    """Scores with the threshold (left), the test confusion matrix (middle), the rates with intervals (right).

    Args:
        calibrated: the run's calibrated threshold, drawn dashed for reference when it differs.
    """
    state = threshold_state(calibration_scores, labels, scores, threshold, defect_rate)
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    cal = np.asarray(calibration_scores, dtype=np.float64)
    fig, axes = new_figure(1, 3, cell=3.8)
    ax = axes[0, 0]
    edges = np.histogram_bin_edges(np.concatenate([cal, scores, [threshold]]), bins=30)
    ax.hist(cal, bins=edges, histtype="step", linewidth=2, color="tab:blue", label=f"calibration good (n={cal.size})")
    ax.hist(scores[~labels], bins=edges, alpha=0.5, color="tab:green", label=f"test good (n={(~labels).sum()})")
    ax.hist(scores[labels], bins=edges, alpha=0.5, color="tab:red", label=f"test defective (n={labels.sum()})")
    ax.axvline(threshold, color="black", linewidth=1.5, label=f"threshold {threshold:.4g}")
    if calibrated is not None and calibrated != threshold:
        ax.axvline(calibrated, color="grey", linestyle="--", label=f"calibrated {calibrated:.4g}")
    ax.set(xlabel="image anomaly score", ylabel="images per bin", title="scores")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    counts = np.array([[state["tn"], state["fp"]], [state["fn"], state["tp"]]])
    ax.imshow(counts, cmap="Blues")
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=12,
                color="white" if v > counts.max() / 2 else "black")
    ax.set_xticks([0, 1], ["passed", "rejected"])
    ax.set_yticks([0, 1], ["good", "defective"])
    ax.set(xlabel="decision", ylabel="truth (test set)", title="test confusion matrix")
    ax = axes[0, 2]
    rows = [("FRR (good rejected)", state["frr"], state["frr_ci"]), ("recall (defects caught)", state["recall"],
                                                                     state["recall_ci"])]
    for y, (name, value, ci) in enumerate(rows):
        if value is not None:
            err = [[max(value - ci[0], 0.0)], [max(ci[1] - value, 0.0)]]  # Wilson bounds can miss 0 of n by 1e-17
            ax.errorbar([value], [y], xerr=err, fmt="o", capsize=4, color="black")
    lo, hi = state["precision_range"]
    if lo is not None and hi is not None:
        ax.plot([lo, hi], [2, 2], color="tab:purple", linewidth=4, solid_capstyle="butt")
    ax.set_yticks([0, 1, 2], ["FRR", "recall", f"precision at\n{100 * defect_rate:g} % defects"])
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.5, 2.5), xlabel="rate (95 % Wilson interval; precision: the range)",
           title=(f"FRR {fmt(state['frr'], '.3f')}, recall {fmt(state['recall'], '.3f')}\n"
                  f"precision {fmt(lo, '.2f')}-{fmt(hi, '.2f')}; calibration FRR {state['calibration_frr']:.3f}"))
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    return fig


def threshold_slider(calibration_scores: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float,
                     defect_rate: float) -> Any:
    """An ipywidgets slider over the scores' range that redraws :func:`threshold_figure` (JupyterLab).

    Papermill runs headless: the report shows :func:`threshold_figure` at the calibrated threshold instead,
    and this widget's plain-text form says where to move it.
    """
    import ipywidgets as widgets
    from IPython.display import display

    values = np.concatenate([np.asarray(calibration_scores, float), np.asarray(scores, float)])
    slider = widgets.FloatSlider(value=float(threshold), min=float(values.min()), max=float(values.max()),
                                 step=float(np.ptp(values)) / 200 or 1e-6, description="threshold",
                                 continuous_update=False, readout_format=".4g",
                                 layout=widgets.Layout(width="60%"))
    output = widgets.Output()

    def redraw(change: Any = None) -> None:
        output.clear_output(wait=True)
        with output:
            display(threshold_figure(calibration_scores, labels, scores, slider.value, defect_rate, threshold))

    slider.observe(redraw, names="value")  # nothing drawn until it moves: the figure above shows the start, and a
    # headless run (papermill) never waits on the widget's output messages
    return _Explorer(widgets.VBox([slider, output]))


class _Explorer:
    """A widget whose plain-text form (what a headless run and the HTML keep) tells the reader where it lives."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle = dict(bundle)
        bundle["text/plain"] = ("Interactive threshold slider: open this notebook in JupyterLab and run it to move "
                                "the threshold; the figure above shows the calibrated threshold.")
        return bundle
