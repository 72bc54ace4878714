"""Comparisons that cannot fool themselves: margins over the best baseline, with paired-bootstrap intervals.

Every comparison table and generated conclusion goes through this module:

- :func:`margins_over_baseline`: for each learned method, metric(method) - metric(best baseline) on
  the same test images, with a 95 % paired-bootstrap interval (:func:`anomaly.bootstrap.paired_margins`);
  the best baseline is the :data:`anomaly.models.BASELINES` run with the highest image AUROC.
- :func:`comparison_table`: rounded metrics with their intervals, the margin columns, and the
  "flag every part" line under the F1 columns.
- :func:`answer_paragraph`: the question's answer written from those numbers. A difference is
  called real only when its interval excludes 0.
- :func:`size_table` / :func:`summarise_sizes`: detection by ground-truth defect area per method.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd

from anomaly import bootstrap as B
from anomaly import metrics as M
from anomaly.models import BASELINES

logger = logging.getLogger(__name__)

MARGIN_METRICS = ("image_auroc", "pixel_auroc", "aupro", "aupro_fpr05")
_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3",
           "aupro_fpr05": "AUPRO@0.05"}


def best_baseline(results: Sequence[Any]) -> Any | None:
    """The baseline run (a ``RunResults``) with the highest image AUROC, or None when no baseline was run."""
    baselines = [r for r in results if r.method in BASELINES]
    return max(baselines, key=lambda r: r.metrics["image_auroc"]) if baselines else None


def margins_over_baseline(results: Sequence[Any], n_resamples: int = B.N_RESAMPLES,
                          seed: int = B.SEED) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {metric: {"margin", "ci", "real"}}}`` for every non-baseline run against the best baseline."""
    base = best_baseline(results)
    if base is None:
        return {}
    out = {}
    for r in results:
        if r.method not in BASELINES:
            out[r.method] = B.paired_margins(r.predictions, base.predictions, n_resamples, seed)
    return out


def fmt_ci(value: float | None, ci: Sequence[float] | None = None, signed: bool = False) -> str:
    """``0.974 [0.944, 0.996]`` (``+0.121 [+0.055, +0.190]`` when ``signed``); blank for None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    return f.format(value) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if ci else "")


def comparison_table(results: Sequence[Any], margins: dict[str, dict[str, dict[str, Any]]]) -> pd.DataFrame:
    """One row per method (baseline first) plus a "flag every part" row: rounded strings with 95 % intervals."""
    base = best_baseline(results)
    rows = {}
    for r in sorted(results, key=lambda r: (r.method not in BASELINES, r.method)):
        m = r.metrics
        row = {_LABELS[k]: fmt_ci(m.get(k), m.get(f"{k}_ci")) for k in MARGIN_METRICS}
        if base is not None:
            mine = margins.get(r.method, {}).get("image_auroc")
            row[f"image AUROC margin over {base.method}"] = (
                fmt_ci(mine["margin"], mine["ci"], signed=True) if mine else "(baseline)")
            pix = margins.get(r.method, {}).get("aupro")
            row[f"AUPRO@0.3 margin over {base.method}"] = fmt_ci(pix["margin"], pix["ci"], signed=True) if pix else ""
        row["F1-max (oracle)"] = f"{m['f1_max_oracle']:.3f}"
        row["F1 at calibrated threshold (P / R)"] = f"{m['f1']:.2f} ({m['precision']:.2f} / {m['recall']:.2f})"
        rows[r.method] = row
    labels = results[0].predictions["labels"]
    flag_all, rate = M.f1_flag_all(labels), float(np.mean(labels))
    rows["flag every part"] = {"F1-max (oracle)": f"{flag_all:.3f}",
                               "F1 at calibrated threshold (P / R)": f"{flag_all:.2f} ({rate:.2f} / 1.00)"}
    return pd.DataFrame.from_dict(rows, orient="index").fillna("").rename_axis("method")


def answer_paragraph(results: Sequence[Any], margins: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The study's answer in a few sentences, generated from the runs' numbers (markdown)."""
    first = results[0].metrics
    labels = results[0].predictions["labels"]
    n_bad, n = int(labels.sum()), int(labels.size)
    base = best_baseline(results)
    learned = [r for r in results if r.method not in BASELINES]
    if not learned:
        return "No learned method was evaluated."
    best = max(learned, key=lambda r: r.metrics["image_auroc"])
    b = best.metrics
    text = [f"**Can defects be found from good parts only?** On `{first['category']}` ({n} test images, {n_bad} "
            f"defective), the best learned method, **{best.method}**, ranks a defective part above a good one with "
            f"image AUROC {fmt_ci(b['image_auroc'], b.get('image_auroc_ci'))} (95 % bootstrap interval)."]
    if base is not None:
        bm = base.metrics
        text.append(f"A no-learning baseline ({base.method}: {_baseline_blurb(base.method)}) reaches "
                    f"{fmt_ci(bm['image_auroc'], bm.get('image_auroc_ci'))}.")
        for r in sorted(learned, key=lambda r: -r.metrics["image_auroc"]):
            text.append(_margin_sentence(r.method, margins.get(r.method, {}), base.method))
    flag_all = M.f1_flag_all(labels)
    text.append(f"Flagging every part already gives F1 {flag_all:.3f}; {best.method}'s oracle F1-max is "
                f"{b['f1_max_oracle']:.3f} and its F1 at the threshold set from good training images only "
                f"{b['f1']:.3f} (recall {b['recall']:.2f}, precision {b['precision']:.2f}).")
    return " ".join(text)


def _baseline_blurb(method: str) -> str:
    return {"intensity": "each pixel's distance from the image's own median grey, smoothed"}.get(method, method)


def _margin_sentence(method: str, margin: dict[str, dict[str, Any]], base: str) -> str:
    parts = []
    for key in ("image_auroc", "aupro"):
        if key not in margin:
            continue
        mk = margin[key]
        verdict = ("a real gain" if mk["real"] and mk["margin"] > 0 else "a real loss" if mk["real"]
                   else "not distinguishable from the baseline (the interval includes 0)")
        parts.append(f"{_LABELS[key]} {fmt_ci(mk['margin'], mk['ci'], signed=True)}, {verdict}")
    return f"{method} vs {base}: " + "; ".join(parts) + "." if parts else ""


def per_type_table(results: Sequence[Any]) -> pd.DataFrame:
    """Image AUROC [95 % interval] per defect type (rows) and method (columns), from each ``metrics.json``."""
    rows: dict[str, dict[str, str]] = {}
    for r in results:
        for name, e in r.metrics.get("per_defect_type", {}).items():
            rows.setdefault(name, {"n": e["n"]})[r.method] = fmt_ci(e["image_auroc"], e.get("image_auroc_ci"))
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("defect type")


def size_table(results: Sequence[Any], bins: Sequence[float] = M.SIZE_BINS) -> pd.DataFrame:
    """Per method and defect-area bin: n, recall at the threshold, image AUROC against all good images."""
    rows = []
    for r in results:
        p = r.predictions
        for row in M.detection_by_size(p["labels"], p["image_scores"], p["gt_masks"], r.threshold, tuple(bins)):
            rows.append({"method": r.method, "defect area": _area_label(row["area_from"], row["area_to"]),
                         "n": row["n"], "recall at threshold": row["recall_at_threshold"],
                         "image AUROC vs good": row["image_auroc"]})
    table = pd.DataFrame(rows)  # n can differ by method: masks are resized to each model's input size
    table = table[table["n"] > 0].pivot_table(index="defect area", columns="method", sort=False, dropna=False,
                                              values=["n", "recall at threshold", "image AUROC vs good"])
    return table[["n", "recall at threshold", "image AUROC vs good"]].round(2)


def _area_label(lo: float, hi: float) -> str:
    return f">= {100 * lo:.2g} %" if hi >= 1.0 else f"{100 * lo:.2g}-{100 * hi:.2g} %"


def summarise_sizes(table: pd.DataFrame) -> str:
    """One sentence per method: the defect sizes it misses (image AUROC vs good < 0.7 in a bin of >= 5 images)."""
    lines = []
    auroc = table["image AUROC vs good"]
    for method in auroc.columns:
        n = table["n"][method]
        weak = [f"{area} (AUROC {v:.2f}, n={n[area]:.0f})" for area, v in auroc[method].items()
                if v < 0.7 and n[area] >= 5]
        lines.append(f"- **{method}** " + ("misses defects of area " + ", ".join(weak) if weak
                                          else "separates every size bin of >= 5 images from good parts with "
                                               "AUROC >= 0.7") + ".")
    return "\n".join(lines)


def evidence_markdown(run_dirs: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The answer, the comparison table with margins, and detection by size, as markdown; plus the margins.

    Args:
        run_dirs: evaluated run folders scored on the same test images (one per method).
    """
    from anomaly.study import load_results

    results = [load_results(d) for d in run_dirs]
    margins = margins_over_baseline(results)
    sizes = size_table(results)
    text = "\n\n".join([answer_paragraph(results, margins),
                        to_markdown(comparison_table(results, margins)),
                        "Detection by defect size (defect area as % of the image):",
                        to_markdown(sizes), summarise_sizes(sizes)])
    return text, margins


def to_markdown(table: pd.DataFrame) -> str:
    """A DataFrame (index included, MultiIndex flattened) as a Markdown table, floats to 2-3 decimals."""
    flat = table.reset_index()
    names = [" ".join(str(p) for p in c if p != "") if isinstance(c, tuple) else str(c) for c in flat.columns]
    cell = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else (
        f"{v:.3g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines)
