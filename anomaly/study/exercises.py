"""Exercises that check themselves: the student fills a cell, :func:`check` says right or wrong, and why.

In a notebook an exercise is three cells: the task (markdown), a ``solution`` cell (tagged
``solution``; it ends by assigning ``answer``) and a check cell, ``exercises.check("03.1", answer,
...)``, which displays a :class:`Verdict`. The committed reports run the solutions; the student
version (:func:`student_notebook`, ``anomaly report --student``) keeps the solution cells' leading
comment lines and replaces the code with ``answer = None``, which every check reads as "no answer yet".

Every expected value is computed from the run's own records or from the package (never typed in),
and a wrong answer is matched against the usual mistakes (n instead of n + 1, ties not halved, the
normal approximation instead of Wilson, rows and columns swapped, ...) to say why it is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from anomaly.thresholds import calibration_rank, min_calibration_size
from anomaly.study.wording import ordinal

SOLUTION_TAG = "solution"
STUDENT_LINE = "answer = None  # <- your code here: assign your answer"


@dataclass
class Verdict:
    """The outcome of a check: ``ok`` True (right), False (wrong) or None (no answer yet), and why."""

    exercise: str
    ok: bool | None
    why: str

    def _repr_markdown_(self) -> str:
        mark = {True: "✅ **Right.**", False: "❌ **Not yet.**", None: "✍️ **No answer yet.**"}[self.ok]
        return f"{mark} Exercise {self.exercise}: {self.why}"

    def __bool__(self) -> bool:
        return bool(self.ok)


def check(exercise: str, answer: Any, **context: Any) -> Verdict:
    """Check ``answer`` to ``exercise`` (e.g. ``"03.1"``) against the run's records passed as ``context``."""
    if exercise not in CHECKS:
        raise ValueError(f"unknown exercise {exercise!r}; known: {', '.join(CHECKS)}")
    if answer is None or answer is Ellipsis:
        return Verdict(exercise, None, "fill in the cell above (assign `answer`) and run both cells again.")
    try:
        ok, why = CHECKS[exercise](answer, **context)
    except (TypeError, ValueError, IndexError) as err:
        return Verdict(exercise, False, f"the answer has the wrong form ({err}).")
    return Verdict(exercise, ok, why)


def _close(a: Any, b: float, tol: float = 1e-6) -> bool:
    try:
        return bool(abs(float(a) - float(b)) <= tol)
    except (TypeError, ValueError):
        return False


# -- 01: the data ---------------------------------------------------------------------------------
def _test_counts(counts: Any) -> tuple[int, int, int]:
    """(test images, defective test images, all images) from :func:`anomaly.study.exploration.split_counts`."""
    n_test, n_good = int(counts.loc["total", "test"]), int(counts.loc["good", "test"])
    return n_test, n_test - n_good, int(counts.loc["total", "total"])


def _defect_rate(answer: Any, counts: Any) -> tuple[bool, str]:
    n_test, n_bad, n_all = _test_counts(counts)
    rate = n_bad / n_test
    if _close(answer, rate, 1e-4):
        return True, f"{n_bad} of {n_test} test images are defective: rate {rate:.4f}."
    if _close(answer, 100 * rate, 1e-2):
        return False, "that is a percentage; give the rate as a fraction between 0 and 1."
    if _close(answer, n_bad / n_all, 1e-4):
        return False, "you divided by the images of every split; the rate is over the test split only."
    if _close(answer, n_bad / (n_test - n_bad), 1e-4):
        return False, "you divided by the good test images; divide by all test images."
    return False, "count the defective test images (every type but `good`) and divide by all test images."


def _flag_all_f1(answer: Any, counts: Any) -> tuple[bool, str]:
    n_test, n_bad, _ = _test_counts(counts)
    p = n_bad / n_test
    f1 = 2 * p / (1 + p)
    if _close(answer, f1, 1e-4):
        return True, f"precision p = {p:.4f}, recall 1, F1 = 2p/(1 + p) = {f1:.4f}: any F1 must beat it."
    if _close(answer, p, 1e-4):
        return False, "that is the precision (the defect rate); F1 combines it with recall 1: 2PR/(P + R)."
    if _close(answer, 1.0, 1e-9):
        return False, "that is the recall of flagging every part; F1 also needs the precision."
    return False, "flagging every part gives recall 1 and precision = the defect rate; F1 = 2PR/(P + R)."


# -- 02: the conformal rank -----------------------------------------------------------------------
def _rank(answer: Any, n: int, alpha: float) -> tuple[bool, str]:
    k_answer, reachable = answer
    k = calibration_rank(n, alpha)
    if int(k_answer) == k and bool(reachable) == (k <= n):
        return True, (f"k = ⌈{n + 1} × {1 - alpha:g}⌉ = {k}" + (f" ≤ n: reachable." if k <= n else
                      f" > n = {n}: no {ordinal(k)} smallest of {n} scores exists, so the target cannot be met."))
    if int(k_answer) == math.ceil(n * (1 - alpha) - 1e-12):
        return False, "you used n; the conformal rank uses n + 1 (the new part counts as one more score)."
    if int(k_answer) == math.floor((n + 1) * (1 - alpha) + 1e-12) and int(k_answer) != k:
        return False, "round up (⌈·⌉), not down: rounding down would reject more than alpha of good parts."
    if int(k_answer) == k:
        return False, f"k = {k} is right, but reachable means k ≤ n (here n = {n})."
    return False, "compute k = ⌈(n + 1)(1 − alpha)⌉; it is reachable when k ≤ n."


def _fewest_scores(answer: Any, alpha: float) -> tuple[bool, str]:
    n_min, n = min_calibration_size(alpha), int(answer)
    if n == n_min:
        return True, (f"with n = {n}, k = {calibration_rank(n, alpha)} ≤ {n}; with n = {n - 1}, k = "
                      f"{calibration_rank(n - 1, alpha)} > {n - 1}.")
    k = calibration_rank(n, alpha) if n >= 1 else None
    if k is not None and k <= n:
        return False, f"{n} scores reach it (k = {k}), but so do fewer: look for the smallest n with k ≤ n."
    return False, f"with n = {n} the rank k = {k} exceeds n: more scores are needed (solve (n + 1)(1 − alpha) ≤ n)."


# -- 03: AUROC and the Wilson interval ------------------------------------------------------------
def _auroc(answer: Any, labels: np.ndarray, scores: np.ndarray, metrics: dict) -> tuple[bool, str]:
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    expected = float(metrics["image_auroc"])
    if _close(answer, expected, 1e-6):
        return True, f"{float(answer):.6f} equals `metrics.json`'s image AUROC {expected:.6f}."
    bad, good = scores[labels], scores[~labels]
    strict = float((bad[:, None] > good[None, :]).mean())
    if _close(answer, strict, 1e-9):
        return False, "ties count one half: add 0.5 x (defective == good) to the wins."
    if _close(answer, 1 - expected, 1e-6):
        return False, "you counted good images above defective ones; the AUROC counts defective above good."
    return False, (f"compare every defective score with every good score ({bad.size} x {good.size} pairs): "
                   f"the share of pairs the defective one wins, ties one half.")


def _wilson_upper(answer: Any, metrics: dict) -> tuple[bool, str]:
    fr, n = int(metrics["false_rejects"]), int(metrics["n_good"])
    expected = float(metrics["frr_ci"][1])
    if _close(answer, expected, 1e-6):
        return True, f"{fr} of {n}: Wilson upper bound {expected:.4f}, as in `metrics.json` (`frr_ci`)."
    p, z = fr / n, 1.959963984540054
    if _close(answer, p + z * math.sqrt(p * (1 - p) / n), 1e-6):
        return False, ("that is the normal approximation p + z√(p(1−p)/n); it collapses to p at 0 of n. "
                       "Use Wilson's centre (p + z²/2n)/(1 + z²/n) plus its half-width.")
    if _close(answer, p, 1e-9):
        return False, "that is the realised rate itself; the exercise asks for the upper end of its interval."
    return False, "Wilson: (p + z²/2n)/(1 + z²/n) + z/(1 + z²/n)·√(p(1−p)/n + z²/4n²), z = 1.96."


# -- 04: heatmaps ---------------------------------------------------------------------------------
def _peak(answer: Any, anomaly_map: np.ndarray, gt_mask: np.ndarray) -> tuple[bool, str]:
    row, col, inside = answer
    amap = np.asarray(anomaly_map, dtype=np.float32)
    r, c = np.unravel_index(int(np.argmax(amap)), amap.shape)
    on_defect = bool(np.asarray(gt_mask)[r, c])
    if (int(row), int(col)) == (r, c) and bool(inside) == on_defect:
        return True, (f"the map peaks at row {r}, column {c}, " + ("on the defect." if on_defect else
                      "outside the ground-truth defect: its hottest point is not the defect."))
    if (int(row), int(col)) == (c, r) and r != c:
        return False, "rows first: numpy's (row, column) is (y, x); `np.unravel_index` returns them in that order."
    if (int(row), int(col)) == (r, c):
        return False, f"the position is right; check the mask there: gt_mask[{r}, {c}] = {int(on_defect)}."
    return False, "use `np.unravel_index(np.argmax(anomaly_map), anomaly_map.shape)` and look the mask up there."


def _outlined(answer: Any, anomaly_maps: Sequence[np.ndarray], scores: Sequence[float],
              threshold: float) -> tuple[bool, str]:
    peaks = [float(np.nanmax(m)) for m in anomaly_maps]
    expected = sum(p >= threshold for p in peaks)
    flagged = sum(float(s) >= threshold for s in scores)
    if int(answer) == expected:
        return True, (f"{expected} of {len(peaks)} maps reach the threshold {threshold:.4g} (peaks "
                      + ", ".join(f"{p:.3g}" for p in peaks) + ").")
    if int(answer) == flagged:
        return False, (f"{flagged} parts score at or above the threshold, but the outline is drawn on the MAP, "
                       f"whose peaks ({', '.join(f'{p:.3g}' for p in peaks)}) can stay below it: the map is "
                       f"smoothed, the image score is not.")
    return False, "count the maps whose maximum is at least the threshold."


# -- 05: comparisons ------------------------------------------------------------------------------
def _margin(answer: Any, a: dict, b: dict, metric: str = "image_auroc") -> tuple[bool, str]:
    expected = float(a[metric]) - float(b[metric])
    if _close(answer, expected, 1e-6):
        return True, f"{a['method']} − {b['method']} = {expected:+.4f} on the same test images."
    if _close(answer, -expected, 1e-6):
        return False, f"the sign is reversed: the exercise asks for {a['method']} − {b['method']}."
    return False, f"subtract the two `metrics.json` values of `{metric}`."


def _bootstrap(answer: Any, metrics: dict) -> tuple[bool, str]:
    lo, hi = (float(v) for v in answer)
    ref_lo, ref_hi = metrics["image_auroc_ci"]
    tol = max(0.02, 0.15 * (ref_hi - ref_lo))  # two sets of resamples differ by Monte-Carlo noise
    if abs(lo - ref_lo) <= tol and abs(hi - ref_hi) <= tol:
        return True, (f"[{lo:.3f}, {hi:.3f}] against `metrics.json`'s [{ref_lo:.3f}, {ref_hi:.3f}]: equal within "
                      f"the Monte-Carlo noise of two sets of resamples (±{tol:.3f}).")
    if hi - lo < 0.5 * (ref_hi - ref_lo):
        return False, "too narrow: draw each resample WITH replacement, as many images as the test set has."
    if not lo <= metrics["image_auroc"] <= hi:
        return False, "the interval should contain the AUROC of all test images; take the 2.5th and 97.5th percentiles."
    return False, "resample good and defective test images separately, with replacement, and take percentiles 2.5/97.5."


# -- 06: your own parts --------------------------------------------------------------------------
def _rethreshold(answer: Any, scores: Sequence[float], alpha: float) -> tuple[bool, str]:
    values = np.sort(np.asarray(scores, dtype=np.float64))
    n = values.size
    k = calibration_rank(n, alpha)
    if k > n:
        expected = float(values[-1])
        if _close(answer, expected, 1e-9 * max(1.0, abs(expected))):
            return True, f"k = {k} > n = {n}: the target cannot be met, so the largest score is the best there is."
        return False, f"k = ⌈{n + 1} × {1 - alpha:g}⌉ = {k} > n = {n}: with so few scores take the largest one."
    expected = float(values[k - 1])
    if _close(answer, expected, 1e-9 * max(1.0, abs(expected))):
        return True, (f"the {ordinal(k)} smallest of {n} scores, {expected:.4g}: `anomaly threshold --target-frr "
                      f"{alpha:g}` writes the same threshold (just above it) without refitting.")
    k_n = max(1, math.ceil(n * (1 - alpha) - 1e-12))
    if _close(answer, values[k_n - 1], 1e-9 * max(1.0, abs(float(values[k_n - 1])))):
        return False, "you used n; the conformal rank uses n + 1 (the new part counts as one more score)."
    if 1 <= n + 1 - k <= n and _close(answer, values[n - k], 1e-9 * max(1.0, abs(float(values[n - k])))):
        return False, "that is the k-th LARGEST; sort the scores in increasing order."
    return False, "sort the good calibration scores, k = ⌈(n + 1)(1 − alpha)⌉, and take the k-th smallest."


def _reinspections(answer: Any, n: int, alpha: float, good_parts: int) -> tuple[bool, str]:
    k = calibration_rank(n, alpha)
    rate = max(n + 1 - k, 0) / (n + 1)  # the expected share of good parts above the k-th of n scores
    expected = good_parts * rate
    if _close(answer, expected, 1e-6 * max(1.0, expected)):
        return True, (f"(n + 1 − k)/(n + 1) = {n + 1 - k}/{n + 1} = {rate:.4f} of {good_parts} good parts: "
                      f"{expected:.1f}, at most alpha × {good_parts} = {alpha * good_parts:g}.")
    if _close(answer, alpha * good_parts, 1e-6 * max(1.0, alpha * good_parts)):
        return False, ("alpha is the target, an upper bound; the rank k is an integer, so the threshold's expected "
                       "rate is (n + 1 − k)/(n + 1), which can be lower.")
    if n and _close(answer, good_parts * (n - k) / n, 1e-6 * max(1.0, expected)):
        return False, "you used n; with the new part there are n + 1 exchangeable scores."
    return False, "the new good part is above the k-th smallest of n good scores with probability (n + 1 − k)/(n + 1)."


CHECKS: dict[str, Callable[..., tuple[bool, str]]] = {
    "01.1": _defect_rate, "01.2": _flag_all_f1, "02.1": _rank, "02.2": _fewest_scores, "03.1": _auroc,
    "03.2": _wilson_upper, "04.1": _peak, "04.2": _outlined, "05.1": _margin, "05.2": _bootstrap,
    "06.1": _reinspections, "06.2": _rethreshold}


# -- the student version -----------------------------------------------------------------------------
def student_notebook(nb: Any) -> Any:
    """A copy of notebook ``nb`` (nbformat) with every ``solution`` cell blanked and every output cleared."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            lines = cell.source.splitlines()
            task = []
            for line in lines:
                if not line.lstrip().startswith("#"):
                    break
                task.append(line)
            cell.source = "\n".join(task + [STUDENT_LINE])
    return nb


def write_student_version(sources: Sequence[Path], out_dir: str | Path) -> list[Path]:
    """Write the student version of each notebook in ``sources`` to ``out_dir`` (same file names)."""
    import nbformat

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        target = out_dir / Path(source).name
        nbformat.write(student_notebook(nbformat.read(source, as_version=4)), target)
        written.append(target)
    return written
