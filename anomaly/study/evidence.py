"""Comparisons that cannot fool themselves: margins over the best baseline, with paired-bootstrap intervals.

Every comparison table and generated conclusion goes through this module:

- :func:`margins_over_baseline`: for each learned method, metric(method) - metric(best baseline) on
  the same test images, with a 95 % paired-bootstrap interval (:func:`anomaly.bootstrap.paired_margins`);
  the best baseline is the :data:`anomaly.models.BASELINES` run with the highest image AUROC.
- :func:`comparison_table`: rounded metrics with their intervals, the margin columns, and the
  "flag every part" line under the F1 columns.
- :func:`answer_paragraph`: the question's answer written from those numbers. A difference is
  called real only when its interval excludes 0 -- for a trained method, for every training seed
  (:mod:`anomaly.study.pairwise`); each method's input size is stated, and so is a calibrated F1 below the
  flag-every-part floor.
- :func:`size_table` / :func:`summarise_sizes`: detection by defect area (original masks, shared bins,
  intervals: :mod:`anomaly.study.sizes`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from anomaly import bootstrap as B
from anomaly import metrics as M
from anomaly.study import pairwise, sizes
from anomaly.models import BASELINES
from anomaly.tables import to_markdown
from anomaly.study.run_results import load_results
from anomaly.utils import read_json
from anomaly.study.wording import fmt, fmt_ci  # noqa: F401  (fmt_ci: re-exported, the tables' one format)

logger = logging.getLogger(__name__)

MARGIN_METRICS = ("image_auroc", "pixel_auroc", "aupro", "aupro_fpr05")
_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3",
           "aupro_fpr05": "AUPRO@0.05"}


def best_baseline(results: Sequence[Any]) -> Any | None:
    """The baseline run (a ``RunResults``) with the highest image AUROC, or None when no baseline was run."""
    baselines = [r for r in results if r.method in BASELINES]
    return max(baselines, key=lambda r: r.metrics["image_auroc"]) if baselines else None


def margins_over_baseline(results: Sequence[Any], n_resamples: int = B.N_RESAMPLES, seed: int = B.SEED,
                          seed_results: Mapping[str, Sequence[Any]] | None = None,
                          resampler: Any = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {metric: {"margin", "ci", "real", "seeds", "n_seeds"}}}`` for every non-baseline run against the
    best baseline; a method with several training seeds (``seed_results[method]``, first seed first) is real
    only when every seed's margin is (:func:`anomaly.study.pairwise.margins`)."""
    base = best_baseline(results)
    if base is None:
        return {}
    resampler = resampler or pairwise.Resampler(base.predictions["labels"], n_resamples, seed)
    return {r.method: pairwise.margins(resampler, list((seed_results or {}).get(r.method) or [r]), [base])
            for r in results if r.method not in BASELINES}


def input_size(result: Any) -> int | None:
    """The detector input side (px) a run was fitted at (``model.json``), None when it has no folder."""
    run_dir = getattr(result, "run_dir", None)
    path = Path(run_dir) / "model.json" if run_dir is not None else None
    return int(read_json(path)["config"]["image_size"]) if path is not None and path.is_file() else None


def comparison_table(results: Sequence[Any], margins: dict[str, dict[str, dict[str, Any]]],
                     spreads: Mapping[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per method (baseline first) plus a "flag every part" row: rounded strings with 95 % intervals.

    Args:
        spreads: ``{method: anomaly.study.seeds.spread(...)}`` of trained methods: their image AUROC over training
            seeds, shown beside the bootstrap interval.
    """
    base = best_baseline(results)
    labels = results[0].predictions["labels"]
    flag_all, rate = M.f1_flag_all(labels), float(np.mean(labels))
    rows = {}
    for r in sorted(results, key=lambda r: (r.method not in BASELINES, r.method)):
        m = r.metrics
        row = {"input px": str(input_size(r) or "")}
        row.update({_LABELS[k]: fmt_ci(m.get(k), m.get(f"{k}_ci")) for k in MARGIN_METRICS})
        spread = (spreads or {}).get(r.method)
        if spreads:
            row["image AUROC over training seeds"] = (
                f"{spread['mean']:.3f} mean, {spread['min']:.3f}-{spread['max']:.3f} ({spread['n']} seeds)"
                if spread else "")
        if base is not None:
            mine = margins.get(r.method, {}).get("image_auroc")
            row[f"image AUROC margin over {base.method}"] = (
                _margin_cell(mine) if mine else "(baseline)")
            pix = margins.get(r.method, {}).get("aupro")
            row[f"AUPRO@0.3 margin over {base.method}"] = _margin_cell(pix) if pix else ""
        row["F1-max (oracle)"] = f"{m['f1_max_oracle']:.3f}"
        row["F1 at calibrated threshold (P / R)"] = (
            f"{m['f1']:.2f} ({fmt(precision_of(m), '.2f')} / {m['recall']:.2f})"
            + (" below the flag-every-part floor" if m["f1"] < flag_all else ""))
        rows[r.method] = row
    rows["flag every part"] = {"F1-max (oracle)": f"{flag_all:.3f}",
                               "F1 at calibrated threshold (P / R)": f"{flag_all:.2f} ({rate:.2f} / 1.00)"}
    return pd.DataFrame.from_dict(rows, orient="index").fillna("").rename_axis("method")


def _margin_cell(m: dict[str, Any]) -> str:
    """``+0.326 [+0.198, +0.448]``, with ``, real for 1 of 3 seeds`` when the seeds disagree."""
    cell = fmt_ci(m["margin"], m["ci"], signed=True)
    n = m.get("n_seeds", 1)
    if n > 1:
        real = sum(s["real"] for s in m["seeds"])
        cell += f" (real for {real} of {n} seeds)"
    return cell


def precision_of(metrics: dict[str, Any]) -> float | None:
    """Precision at the calibrated threshold, None (undefined) when no part was flagged."""
    tp, fp = metrics.get("tp"), metrics.get("fp")
    if tp is not None and fp is not None and tp + fp == 0:
        return None
    return metrics.get("precision")


def answer_paragraph(results: Sequence[Any], margins: dict[str, dict[str, dict[str, Any]]],
                     pairs: Mapping[tuple[str, str], dict[str, dict[str, Any]]] | None = None) -> str:
    """The study's answer in a few sentences, generated from the runs' numbers (markdown).

    Args:
        pairs: margins between learned methods (:func:`anomaly.study.pairwise.pairwise`), when computed.
    """
    first = results[0].metrics
    labels = results[0].predictions["labels"]
    n_bad, n = int(labels.sum()), int(labels.size)
    base = best_baseline(results)
    learned = [r for r in results if r.method not in BASELINES]
    if not learned:
        return "No learned method was evaluated."
    best = max(learned, key=lambda r: r.metrics["image_auroc"])
    b = best.metrics
    sizes_px = ", ".join(f"{r.method} {input_size(r)} px" for r in results if input_size(r))
    text = [f"**Can defects be found from good parts only?** On `{first['category']}` ({n} test images, {n_bad} "
            f"defective{'; inputs: ' + sizes_px if sizes_px else ''}), the best learned method, **{best.method}**, "
            f"ranks a defective part above a good one with image AUROC "
            f"{fmt_ci(b['image_auroc'], b.get('image_auroc_ci'))} (95 % bootstrap interval)."]
    if base is not None:
        bm = base.metrics
        text.append(f"A no-learning baseline ({base.method}: {_baseline_blurb(base.method)}) reaches "
                    f"{fmt_ci(bm['image_auroc'], bm.get('image_auroc_ci'))}.")
        for r in sorted(learned, key=lambda r: -r.metrics["image_auroc"]):
            text.append(_margin_sentence(r.method, margins.get(r.method, {}), base.method))
    for (a, other), margin in (pairs or {}).items():
        if "image_auroc" in margin:
            m = margin["image_auroc"]
            text.append(f"{a} − {other}: image AUROC {fmt_ci(m['margin'], m['ci'], signed=True)}, "
                        f"{pairwise.verdict(m)}.")
    flag_all = M.f1_flag_all(labels)
    below = [r.method for r in learned if r.metrics["f1"] < flag_all]
    text.append(f"Flagging every part already gives F1 {flag_all:.3f}; {best.method}'s oracle F1-max is "
                f"{b['f1_max_oracle']:.3f} and its F1 at the threshold set from good training images only "
                f"{b['f1']:.3f} (recall {b['recall']:.2f}, precision {fmt(precision_of(b), '.2f')})."
                + (f" The calibrated F1 of {', '.join(below)} falls below that floor." if below else ""))
    return " ".join(text)


def _baseline_blurb(method: str) -> str:
    return {"intensity": "each pixel's distance from the image's own median grey, smoothed"}.get(method, method)


def _margin_sentence(method: str, margin: dict[str, dict[str, Any]], base: str) -> str:
    parts = []
    for key in ("image_auroc", "aupro"):
        if key not in margin:
            continue
        mk = margin[key]
        verdict = pairwise.verdict(mk).replace("not distinguishable", "not distinguishable from the baseline")
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
    """Detection by defect area per method: :func:`anomaly.study.sizes.size_table` (original masks, shared bins)."""
    return sizes.size_table(results, bins)


def summarise_sizes(table: pd.DataFrame) -> str:
    """One sentence per method on the defect sizes it cannot separate from good parts (:func:`anomaly.study.sizes.summarise`)."""
    return sizes.summarise(table)


def evidence_markdown(run_dirs: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The answer, the comparison table with margins, and detection by size, as markdown; plus the margins.

    Args:
        run_dirs: evaluated run folders scored on the same test images (one per method).
    """
    results = [load_results(d) for d in run_dirs]
    margins = margins_over_baseline(results)
    size_table_ = size_table(results)
    size_display = sizes.display_table(size_table_)
    text = "\n\n".join([answer_paragraph(results, margins),
                        to_markdown(comparison_table(results, margins)),
                        "Detection by defect size (defect area as % of the image, from the original masks):",
                        to_markdown(size_display), summarise_sizes(size_table_)])
    return text, margins
