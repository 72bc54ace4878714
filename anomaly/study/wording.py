"""Sentences about an operating point, rendered from a run's own records (no number typed into prose).

Notebook 03 (and the course's exercises) explain the threshold with what the run recorded:
``threshold.json`` (target false-reject rate alpha, estimator, n, reachable), ``calibration.json``
(where the n good scores came from) and ``metrics.json`` (realised rates with Wilson intervals):

- :func:`conformal_text`: the conformal rank ``k = ceil((n + 1)(1 - alpha))`` (Vovk et al. 2005), whether
  n scores can reach it, the expected false-reject rate ``(n + 1 - k) / (n + 1)`` it guarantees, and the
  fewest scores that would reach alpha;
- :func:`precision_range`: precision at a stated defect rate as a range, from the Wilson bounds of
  recall and of the false-reject rate (a point value from 0 false rejects in 40 would claim 1.00);
- :func:`fmt`: every number as text, with ONE spelling (:data:`UNDEFINED`) for a value that does not exist
  (a precision with no flagged part, a rate with no parts to measure it on).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from anomaly.calibration import read_calibration
from anomaly.records import ThresholdRecord
from anomaly.thresholds import calibration_rank, min_calibration_size

UNDEFINED = "undefined"


def fmt(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``; :data:`UNDEFINED` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDEFINED
    return format(value, spec)


def plural(n: int, noun: str) -> str:
    """``1 score``, ``20 scores``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def fmt_ci(value: float | None, ci: Sequence[float] | None = None, signed: bool = False) -> str:
    """``0.974 [0.944, 0.996]`` (``+0.121 [+0.055, +0.190]`` when ``signed``); blank for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    return f.format(value) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if ci else "")


def ordinal(k: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st, 191st."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def precision_at(recall: float | None, frr: float | None, rate: float) -> float | None:
    """Precision of a line with defect rate ``rate`` at this recall and false-reject rate; None when nothing is flagged."""
    if recall is None or frr is None:
        return None
    flagged = recall * rate + frr * (1.0 - rate)
    return None if flagged <= 0 else recall * rate / flagged


def precision_range(recall_ci: Sequence[float], frr_ci: Sequence[float], rate: float) -> tuple[float | None, float | None]:
    """(lowest, highest) precision at defect rate ``rate`` allowed by the recall and FRR intervals.

    The lowest pairs the lowest recall with the highest false-reject rate, the highest the reverse;
    a bound is None (undefined) when it would flag nothing.
    """
    return precision_at(recall_ci[0], frr_ci[1], rate), precision_at(recall_ci[1], frr_ci[0], rate)


def conformal_text(n: int, alpha: float, scores: Sequence[float] | None = None) -> str:
    """Markdown: the conformal rank for ``n`` scores at target ``alpha``, its reachability and what it guarantees.

    Args:
        scores: the calibration scores (any order); when given, the chosen score is named.
    """
    k = calibration_rank(n, alpha)
    ranked = sorted(scores) if scores is not None else None
    rule = (f"The conformal rule for a target false-reject rate α = {alpha:g} with n = {n} good calibration "
            f"score{'' if n == 1 else 's'} "
            f"takes the k-th smallest score, k = ⌈(n + 1)(1 − α)⌉ = ⌈{n + 1} × {1 - alpha:g}⌉ = {k}")
    if k <= n:
        named = f" ({ranked[k - 1]:.4g})" if ranked else ""
        text = (f"{rule}, and rejects a part whose score is above the {ordinal(k)} smallest{named}. With exchangeable "
                f"good scores the expected false-reject rate is (n + 1 − k)/(n + 1) = {n + 1 - k}/{n + 1} = "
                f"{(n + 1 - k) / (n + 1):.3f}, at most α.")
        if k == n:
            text += (f" Here k = n: the threshold is the largest of the {n} scores, so one unusual good part in the "
                     f"calibration set moves it.")
        return text
    named = f" ({ranked[-1]:.4g})" if ranked else ""
    return (f"{rule}. That rank cannot be reached: k = {k} > n = {n}, so no score of {'this one' if n == 1 else f'these {n}'} guarantees α = {alpha:g}. "
            f"The threshold falls back to the largest score{named}, whose expected false-reject rate is "
            f"1/(n + 1) = {1 / (n + 1):.3f}, and `threshold.json` records `reachable: false`. Reaching α = {alpha:g} "
            f"takes at least {min_calibration_size(alpha)} calibration scores.")


def realised_text(metrics: dict[str, Any]) -> str:
    """Markdown: the realised false-reject rate and recall on the test set with their 95 % Wilson intervals."""
    fr, good, bad, esc = (metrics.get(k) for k in ("false_rejects", "n_good", "n_defective", "escapes"))
    frr_ci, rec_ci = metrics.get("frr_ci") or [None, None], metrics.get("recall_ci") or [None, None]
    return (f"On the test set this threshold rejects {fr} of {good} good parts (false-reject rate "
            f"{fmt(metrics.get('frr'))}, 95 % Wilson interval {fmt(frr_ci[0])}-{fmt(frr_ci[1])}) and catches "
            f"{bad - esc if bad is not None and esc is not None else UNDEFINED} of {bad} defective parts (recall "
            f"{fmt(metrics.get('recall'))}, {fmt(rec_ci[0])}-{fmt(rec_ci[1])}).")


def precision_text(metrics: dict[str, Any], rate: float) -> str:
    """Markdown: precision on the test set and, at defect rate ``rate``, the range the Wilson bounds allow."""
    tp, fp = int(metrics["tp"]), int(metrics["fp"])
    n, n_bad = int(metrics["n_test_images"]), int(metrics["tp"] + metrics["fn"])
    here = (f"{tp / (tp + fp):.2f} ({tp} of {tp + fp} flagged parts are defective)" if tp + fp
            else f"{UNDEFINED} (no part is flagged)")
    lo, hi = precision_range(metrics["recall_ci"], metrics["frr_ci"], rate)
    return (f"Precision depends on how common defects are; recall and the false-reject rate do not. At this test "
            f"set's defect rate ({n_bad} of {n}, {100 * n_bad / n:.0f} %) precision is {here}. On a line with a "
            f"defect rate of {100 * rate:g} %, the recall and false-reject intervals above allow a precision "
            f"anywhere from {fmt(lo, '.3f')} to {fmt(hi, '.3f')}"
            + (" -- these counts say almost nothing about it." if lo is not None and hi is not None and hi - lo > 0.5
               else "."))


def decimals_text(value: float, ci: Sequence[float] | None, name: str = "image AUROC") -> str:
    """Markdown: which decimal of ``value`` its 95 % interval leaves uncertain (read from the interval's width)."""
    if not ci or ci[1] <= ci[0]:
        return f"The {name} {fmt(value)} has no interval recorded."
    width = ci[1] - ci[0]
    place = max(1, math.ceil(-math.log10(width)))
    return (f"This run's {name} is {value:.3f} with a 95 % interval {ci[0]:.3f}-{ci[1]:.3f} ({width:.3f} wide): "
            f"digits from the {ordinal(place)} decimal on are inside the interval's width: read them as uncertain, "
            f"and the interval, not the last decimal, as the result.")


def calibration_text(run_dir: str | Path, metrics: dict[str, Any], defect_rate: float) -> str:
    """Markdown for notebook 03: the threshold, the conformal rank, the realised rates and precision at ``defect_rate``.

    Reads ``threshold.json`` and ``calibration.json`` of ``run_dir``; ``metrics`` is its ``metrics.json``.
    """
    thr = ThresholdRecord.read(run_dir)
    calibration = read_calibration(run_dir)
    scores, n = calibration["scores"], calibration["n_scores"]
    source = (f"out-of-sample scores of the good training images, each from the model fitted without its fold "
              f"({calibration.get('folds')}-fold cross-fit)" if calibration["kind"] == "crossfit"
              else "scores of good validation images carved out of train/good, not used for the fit")
    lines = [f"- The threshold {thr['threshold']:.4g} rests on {plural(n, 'calibration score')} ({source}; blue outline)."]
    if thr.get("target_frr") is not None:
        alpha, estimator = float(thr["target_frr"]), thr.get("estimator", "conformal")
        lines.append("- " + conformal_text(n, alpha, scores))
        if estimator != "conformal":
            lines.append(f"- This run's threshold uses the `{estimator}` estimator instead (`threshold.json`), "
                         f"reachable: {str(thr.get('reachable')).lower()}.")
    lines += ["- " + realised_text(metrics), "- " + precision_text(metrics, defect_rate)]
    return "\n".join(lines)
