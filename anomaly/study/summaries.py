"""Markdown conclusions written from a run's (or a study's) own numbers, so no notebook types one in.

One ``summarise_*`` per notebook section: the data (01), a fit (02), a run's metrics (03), the
true/false positives (04), the method comparison and the data-efficiency sweep (05).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from anomaly.calibration import read_calibration
from anomaly.study.evidence import precision_of
from anomaly.study.pairwise import verdict
from anomaly.models.registry import method_spec
from anomaly.records import MetricsRecord, ThresholdRecord
from anomaly.study.run_results import RunResults, fitted_state_table
from anomaly.runs import is_evaluated
from anomaly.study.seeds import seed_runs
from anomaly.utils import read_json
from anomaly.study.wording import fmt, fmt_ci, plural


_NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3", "aupro_fpr05": "AUPRO@0.05"}


def summarise_metrics(metrics: dict[str, Any]) -> str:
    """Markdown conclusions written from one run's ``metrics.json`` (no typed-in numbers)."""
    m = metrics
    auroc = m["image_auroc"]
    ci = m.get("image_auroc_ci") or [np.nan, np.nan]
    verdict = ("its interval includes chance (0.5): this ranking cannot be told apart from a coin toss"
               if ci[0] <= 0.5 <= ci[1] else "below chance (0.5) for the whole interval" if ci[1] < 0.5
               else "above chance (0.5) for the whole interval")
    per_type = m.get("per_defect_type", {})
    flag_all = m.get("f1_flag_all", np.nan)
    flagged = m["tp"] + m["fp"]
    lines = [f"**{m['method']}** on `{m['category']}` ({m['n_test_images']} test images):",
             f"- Image AUROC **{auroc:.3f}** (95 % bootstrap interval {ci[0]:.3f}-{ci[1]:.3f}; {verdict}): a random "
             f"defective image outscores a random good one {100 * auroc:.0f}% of the time.",
             f"- At the threshold set from good calibration images only ({m['threshold']:.4g}): recall {m['recall']:.2f} "
             f"({m['tp']} of {m['tp'] + m['fn']} defective caught), precision {fmt(precision_of(m), '.2f')}"
             + ("" if flagged else " (no part flagged)")
             + f", {m['fp']} of {m['fp'] + m['tn']} good images falsely rejected; F1 {m['f1']:.3f}.",
             f"- Flagging every part, with no model at all, gives F1 {flag_all:.3f} (recall 1, precision = the test "
             f"set's defect rate). The ORACLE F1-max (threshold picked with the test labels) is "
             f"{m['f1_max_oracle']:.3f}, {m['f1_max_oracle'] - flag_all:+.3f} over that floor. The honest F1 at the "
             f"calibrated threshold is {m['f1']:.3f}"
             + (f", BELOW the flag-every-part floor: at this threshold the model is worse than no model for F1."
                if m["f1"] < flag_all else "."),
             f"- Localisation: pixel AUROC {m['pixel_auroc']:.3f}, AUPRO@0.3 {m['aupro']:.3f}, AUPRO@0.05 "
             f"{fmt(m.get('aupro_fpr05'))} (AUPRO weights every defect region equally; the 0.05 limit only "
             f"credits maps that flag few good pixels)."]
    if per_type:
        ranked = sorted(per_type.items(), key=lambda kv: kv[1]["image_auroc"])
        lines.append(f"- Lowest image AUROC by defect type: `{ranked[0][0]}` ({ranked[0][1]['image_auroc']:.3f}); "
                     f"highest: `{ranked[-1][0]}` ({ranked[-1][1]['image_auroc']:.3f}) -- per type intervals are in "
                     f"the table above.")
    return "\n".join(lines)


def summarise_comparison(table: pd.DataFrame, margins: dict[str, Any] | None = None) -> str:
    """Markdown: each method's margin over the best baseline (with its paired interval and, for a trained method,
    its verdict over seeds), the flag-all F1, the best method per metric, and speed at each method's input size."""
    lines = []
    for method, margin in (margins or {}).items():
        parts = [f"{_NAMES.get(key, key)} {fmt_ci(m['margin'], m['ci'], signed=True)}: {verdict(m)}"
                 for key, m in sorted(margin.items())]
        lines.append(f"- **{method}** over the best baseline: " + "; ".join(parts) + ".")
    if "f1_flag_all" in table and table["f1_flag_all"].notna().any():
        lines.append(f"- Flagging every part gives F1 {table['f1_flag_all'].dropna().iloc[0]:.3f}; oracle F1-max per "
                     "method: " + ", ".join(f"{k} {v:.3f}" for k, v in table["f1_max_oracle"].items()) + ".")
    for column, label in (("image_auroc", "detection (image AUROC)"), ("pixel_auroc", "localisation (pixel AUROC)"),
                          ("aupro", "region overlap (AUPRO@0.3)"), ("f1", "F1 at the calibrated threshold")):
        ranked = table[column].sort_values(ascending=False)
        others = ", ".join(f"{k} {v:.3f}" for k, v in ranked.iloc[1:].items())
        lines.append(f"- Highest {label}: **{ranked.index[0]}** ({ranked.iloc[0]:.3f}){'; ' + others if others else ''} "
                     f"(whether a gap is real: the margins above).")
    px = table["input_px"] if "input_px" in table else pd.Series(dtype=float)
    speed = ", ".join(f"{k} {v:.1f} ms at {px.get(k, float('nan')):.0f} px" for k, v in
                      table["predict_ms_per_image"].sort_values().items())
    sizes = ("the input sizes differ, so these times compare methods AND resolutions" if px.nunique() > 1
             else "every method at the same input size")
    lines.append(f"- Inference per image on this machine: {speed} ({sizes}); fit times: "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in table["fit_seconds"].items()) + ".")
    return "\n".join(lines)


def summarise_efficiency(table: pd.DataFrame, metric: str = "image_auroc") -> str:
    """Markdown: ``metric`` over seeds (mean and min-max) at the smallest and the full training set, and from which
    size on the mean enters the full set's seed range (:func:`anomaly.study.sweeps.data_efficiency`)."""
    lines = []
    for method, rows in table.groupby("method"):
        stats = rows.groupby("n_train")[metric].agg(["mean", "min", "max", "count"]).sort_index()
        first, full = stats.iloc[0], stats.iloc[-1]
        inside = stats[(stats["mean"] >= full["min"]) & (stats["mean"] <= full["max"])]
        reach = (f"the mean first lies inside the full set's seed range at {int(inside.index[0])} images"
                 if len(inside) and inside.index[0] < stats.index[-1] else
                 "no smaller training set reaches the full set's seed range")
        lines.append(f"- **{method}** ({int(full['count'])} fits a size): {_NAMES.get(metric, metric)} {first['mean']:.3f} "
                     f"[{first['min']:.3f}-{first['max']:.3f}] with {int(stats.index[0])} good images, "
                     f"{full['mean']:.3f} [{full['min']:.3f}-{full['max']:.3f}] with all {int(stats.index[-1])}; {reach}.")
    return "\n".join(lines)


def colour_range_text(results: RunResults) -> str:
    """Markdown: what the gallery's colours mean for this run, read from its good calibration maps."""
    q = read_calibration(results.run_dir).map_summary()
    if not q:
        return "This run recorded no calibration map quantiles: each map is drawn in its own range."
    return (f"The colour scale of `{results.method}` runs from {q['50']:.4g} (the median pixel of its good calibration "
            f"maps: blue) to {q['100']:.4g} (their largest pixel: red); 1 % of good calibration pixels lie above "
            f"{q['99']:.4g}. Red therefore means 'as high as the highest pixels on good parts', not 'never seen on a good "
            f"part': a method whose good maps are high along the part's outline colours every part's outline.")


def outline_text(results: RunResults, indices: Sequence[int]) -> str:
    """Markdown: for the shown images, how many flagged parts have a map that reaches the threshold, and why not."""
    p, thr = results.predictions, results.threshold
    shown = [int(i) for i in indices]
    if not shown:
        return "No image is shown."
    scores = [float(p["image_scores"][i]) for i in shown]
    peaks = [float(np.nanmax(p["anomaly_maps"][i])) for i in shown]
    flagged = sum(s >= thr for s in scores)
    outlined = sum(k >= thr for k in peaks)
    text = (f"Of the {len(shown)} parts shown, {flagged} score at or above the threshold {thr:.4g} and {outlined} have a "
            f"map that reaches it (scores {', '.join(f'{v:.3g}' for v in scores)}; map peaks "
            f"{', '.join(f'{v:.3g}' for v in peaks)}).")
    cfg = read_json(Path(results.run_dir) / "model.json")["config"]
    note = method_spec(results.method).score_note
    if note is not None:
        text += note(cfg)
    elif flagged > outlined:
        text += " The map is resized to the image after scoring; its peak can differ slightly from the score."
    else:
        text += f" For `{results.method}` the image score is the map's maximum, so a flagged part's map reaches the threshold."
    return text


def summarise_cases(results: RunResults, cases: dict[str, np.ndarray]) -> str:
    """Markdown: how many TP/FN/FP there are and which defect types are missed."""
    p, thr = results.predictions, results.threshold
    labels, flagged = p["labels"].astype(bool), p["image_scores"] >= thr
    missed = pd.Series(p["defect_types"][labels & ~flagged]).value_counts()
    lines = [f"At the calibrated threshold {thr:.4g}, **{results.method}** catches {int((labels & flagged).sum())} of "
             f"{int(labels.sum())} defective images and falsely rejects {int((~labels & flagged).sum())} of "
             f"{int((~labels).sum())} good ones."]
    lines.append("- Missed defects by type: " + ", ".join(f"`{k}` {v}" for k, v in missed.items()) + "."
                 if len(missed) else "- No defective image is missed.")
    if len(cases["false positives"]):
        worst = p["image_scores"][cases["false positives"][0]]
        lines.append(f"- The worst false positive scores {worst:.4g}, {worst / thr:.2f}x the threshold.")
    return "\n".join(lines)


def summarise_data(counts: pd.DataFrame, areas: pd.DataFrame, std_image: torch.Tensor) -> str:
    """Markdown conclusions of the data exploration, from the counts, defect areas and per-pixel std."""
    n_defect_types = len(counts.index) - 2  # minus good and total
    percent = 100.0 * areas["area_fraction"]
    by_type = percent.groupby(areas["defect_type"]).median().sort_values()
    std = std_image.flatten()
    good = counts.loc["good"]
    lines = [f"- {int(good.get('train', 0) + good.get('validation', 0))} good images for training and validation, "
             f"{int(counts.loc['total'].get('test', 0))} test images over {n_defect_types} defect types.",
             f"- Defects are small: the median defect covers {percent.median():.2f}% of the image "
             f"(smallest type `{by_type.index[0]}`: {by_type.iloc[0]:.2f}%, largest `{by_type.index[-1]}`: "
             f"{by_type.iloc[-1]:.2f}%): an image score must react to a change in that small a share of the pixels.",
             f"- Good images differ from each other: the per-pixel gray-level std over train/good averages "
             f"{float(std.mean()):.3f} and reaches {float(std.max()):.3f} (on a 0..1 scale). Where it is high, "
             f"the part's position or rotation varies, so a method that compares each pixel position with the "
             f"same position in other good images must accept large changes as normal there."]
    return "\n".join(lines)


def summarise_fit(run_dir: str | Path) -> str:
    """Markdown: what the run fitted, on how many images, how long it took, and its calibrated threshold."""
    run_dir = Path(run_dir)
    config, fit = read_json(run_dir / "config.json"), read_json(run_dir / "fit.json")
    thr = ThresholdRecord.read(run_dir)
    model = read_json(run_dir / "model.json")
    state = fitted_state_table(run_dir)
    calibration = read_calibration(run_dir)
    val = np.asarray(calibration["scores"])
    rule = (f"{thr.get('estimator', 'conformal')} threshold for a target false-reject rate of {thr['target_frr']:g}"
            + ("" if thr.get("reachable", True) else " (NOT reachable with this many scores: the largest is used)")
            if thr.get("target_frr") is not None else "threshold (no target false-reject rate recorded)")
    lines = [f"- **{config['method']}** fitted on {fit['n_train']} good `{config['category']}` images at "
             f"{model['config']['image_size']} px in {fit['fit_seconds']:.1f} s on {config['device']}; the saved "
             f"state holds {state['values'].sum():,} numbers ({state['MiB'].sum():.1f} MiB).",
             f"- Threshold {thr['threshold']:.4g}: the {rule} from {plural(len(val), 'good ' + calibration['kind'] + ' score')} "
             f"(range {val.min():.4g} .. {val.max():.4g}); no test image was used."]
    spec = method_spec(model["method"])
    if spec.fit_lines is not None:  # facts about the fitted state (feature grid, memory bank, Gaussians)
        lines += spec.fit_lines(model["config"], state, fit["n_train"])
    history = fit.get("history") or []
    if len(history) > 1:
        lines.append(f"- Training loss went from {history[0]:.4g} to {history[-1]:.4g} over {len(history)} epochs "
                     f"({history[-1] / history[0]:.2f}x); the last {min(5, len(history) - 1)} epoch(s) changed it by "
                     f"{100 * (history[-1] / history[-1 - min(5, len(history) - 1)] - 1):+.1f}% (a large change means "
                     f"more epochs would still help).")
    return "\n".join(lines)


def cases_over_seeds(run_dir: str | Path) -> str:
    """Markdown: caught defects and false rejects of every evaluated training seed of ``run_dir`` (one seed: empty)."""
    records = [MetricsRecord.read(d) for d in seed_runs(run_dir) if is_evaluated(d)]
    if len(records) < 2:
        return ""
    m = records[0]
    return (f"Over its {len(records)} training seeds, **{m['method']}** catches "
            f"{', '.join(str(r['tp']) for r in records)} of {m['tp'] + m['fn']} defective images and falsely rejects "
            f"{', '.join(str(r['fp']) for r in records)} of {m['fp'] + m['tn']} good ones: one seed's cases are one "
            f"draw among these.")
