"""Paired margins between methods on the same test images, held to every training seed of a trained method.

One set of stratified bootstrap resamples of the test images (:mod:`anomaly.bootstrap`) is applied to
every run (:class:`Resampler` computes each run's resampled metrics once), so any two runs give a
paired margin ``metric(a) - metric(b)`` with a 95 % interval. For a method in
:data:`anomaly.models.TRAINED` the margin is computed for every training seed (:mod:`anomaly.study.seeds`),
and it is called real only when every seed's interval excludes 0 on the same side: a bootstrap over
test images does not cover training randomness.

- :func:`margins` -- one pair (a, b) with its seeds;
- :func:`learned_pairs` -- the study's question in pairs: every learned method against every other
  (PatchCore - autoencoder, PaDiM - autoencoder, PatchCore - PaDiM);
- :func:`pairwise_table` / :func:`verdict` -- the table notebook 05 shows and the words for one margin.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from anomaly import bootstrap as B
from anomaly.models import BASELINES, METHODS
from anomaly.study.wording import fmt_ci

_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3",
           "aupro_fpr05": "AUPRO@0.05"}


class Resampler:
    """The resamples shared by every run scored on one test set, and each run's resampled metrics (cached)."""

    def __init__(self, labels: np.ndarray, n_resamples: int = B.N_RESAMPLES, seed: int = B.SEED) -> None:
        self.labels = np.asarray(labels)
        self.weights = B.stratified_weights(self.labels, n_resamples, seed)  # (R, N)
        self._cache: dict[str, dict[str, tuple[float, np.ndarray]]] = {}

    def samples(self, result: Any) -> dict[str, tuple[float, np.ndarray]]:
        """``{metric: (value, (R,) resampled values)}`` of one ``RunResults`` (computed once per run folder)."""
        key = str(getattr(result, "run_dir", None) or id(result))
        if key not in self._cache:
            if not np.array_equal(np.asarray(result.predictions["labels"]), self.labels):
                raise ValueError(f"{key} was scored on other test images: a paired margin needs the same ones")
            self._cache[key] = B.resampled_metrics(result.predictions, self.weights)
        return self._cache[key]

    def margin(self, a: Any, b: Any) -> dict[str, dict[str, Any]]:
        """``{metric: {"margin", "ci", "real"}}`` of run ``a`` minus run ``b``."""
        return B.margins_from_samples(self.samples(a), self.samples(b))


def margins(resampler: Resampler, runs_a: Sequence[Any], runs_b: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Margin ``a - b`` per metric for the first runs, with every seed's margin and a verdict over seeds.

    Args:
        runs_a, runs_b: a method's runs, first seed first (one run for a method fitted once). When both
            have several, seed i of a is paired with seed i of b; otherwise each seed with the other's run.

    Returns:
        ``{metric: {"margin", "ci", "real", "seeds": [{"margin", "ci", "real"}, ...], "n_seeds"}}``;
        ``real`` holds only when every seed's interval excludes 0 on the same side.
    """
    if len(runs_a) > 1 and len(runs_b) > 1:
        pairs = list(zip(runs_a, runs_b))
    else:
        pairs = [(a, b) for a in runs_a for b in runs_b]
    per_seed = [resampler.margin(a, b) for a, b in pairs]
    out = {}
    for key, first in per_seed[0].items():
        seeds = [m[key] for m in per_seed if key in m]
        signs = {np.sign(s["margin"]) for s in seeds}
        out[key] = {**first, "seeds": seeds, "n_seeds": len(seeds),
                    "real": all(s["real"] for s in seeds) and len(signs) == 1}
    return out


def learned_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) for every two learned methods, a after b in :data:`anomaly.models.METHODS` order."""
    learned = sorted((m for m in methods if m not in BASELINES), key=lambda m: METHODS.index(m) if m in METHODS else 99)
    return [(a, b) for i, b in enumerate(learned) for a in learned[i + 1:]]


def pairwise(results: Sequence[Any], seed_results: Mapping[str, Sequence[Any]] | None = None,
             resampler: Resampler | None = None) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """Seed-aware margins for every learned pair (:func:`learned_pairs`) of ``results`` (one per method)."""
    by_method = {r.method: r for r in results}
    resampler = resampler or Resampler(results[0].predictions["labels"])
    runs = {m: list((seed_results or {}).get(m) or [r]) for m, r in by_method.items()}
    return {(a, b): margins(resampler, runs[a], runs[b]) for a, b in learned_pairs(list(by_method))}


def verdict(m: dict[str, Any]) -> str:
    """Words for one margin: a real gain / loss (for every seed), or not distinguishable, or seed-dependent."""
    n, real_seeds = m.get("n_seeds", 1), sum(s["real"] for s in m.get("seeds", [m]))
    if m["real"]:
        side = "a real gain" if m["margin"] > 0 else "a real loss"
        return side + (f" for each of {n} training seeds" if n > 1 else "")
    if n > 1 and real_seeds:
        listed = ", ".join(f"{s['margin']:+.3f}" for s in m["seeds"])
        return f"real for {real_seeds} of {n} training seeds only, so no verdict: it depends on the seed ({listed})"
    return "not distinguishable (the interval includes 0" + (f" for every one of {n} seeds)" if n > 1 else ")")


def pairwise_table(pairs: Mapping[tuple[str, str], dict[str, dict[str, Any]]],
                   keys: Sequence[str] = ("image_auroc", "aupro")) -> pd.DataFrame:
    """One row per pair ``a - b``: each metric's margin [95 % interval] and its verdict over seeds."""
    rows = {}
    for (a, b), margin in pairs.items():
        row = {}
        for key in keys:
            if key in margin:
                m = margin[key]
                row[f"{_LABELS[key]} margin"] = fmt_ci(m["margin"], m["ci"], signed=True)
                row[f"{_LABELS[key]} verdict"] = verdict(m)
        rows[f"{a} − {b}"] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("pair (same test images)")


def pairwise_text(pairs: Mapping[tuple[str, str], dict[str, dict[str, Any]]], sizes: Mapping[str, int]) -> str:
    """Markdown: one line per pair with its image AUROC and AUPRO margins, the verdicts and the input sizes."""
    lines = []
    for (a, b), margin in pairs.items():
        parts = [f"{_LABELS[k]} {fmt_ci(margin[k]['margin'], margin[k]['ci'], signed=True)}: {verdict(margin[k])}"
                 for k in ("image_auroc", "aupro") if k in margin]
        lines.append(f"- **{a} ({sizes.get(a, '?')} px) − {b} ({sizes.get(b, '?')} px)**: " + "; ".join(parts) + ".")
    return "\n".join(lines)
