"""Teaching helpers for notebook 02: where a run goes, what each method does with its numbers, and
PatchCore's nearest-neighbour view (a test patch beside the good patch it matched).

Everything here reads a fitted run folder and returns markdown, tables or figure arguments; the
notebooks only display them, and show only the sections that apply to the chosen method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly import dataset as DS
from anomaly.folders import run_data
from anomaly.inference import load_run
from anomaly.models.registry import method_spec
from anomaly.utils import read_json
from anomaly.study.wording import calibration_text as text

RUNS_ROOT = "weights/report"


def run_dir_for(method: str, run_dir: str | None = None, root: str = RUNS_ROOT) -> str:
    """The run folder of ``method``: ``run_dir`` when given, else ``root/<method>``.

    ``None`` is the one "method default" sentinel of the notebooks (as an absent flag is for the CLI), so
    changing only ``method`` never overwrites another method's run.
    """
    return run_dir if run_dir is not None else f"{root}/{method}"


def method_notes(run_dir: str | Path) -> str:
    """Markdown explaining what the run's method fitted and how it scores, with this run's numbers
    (the method's spec ``notes``; a method without notes shows its one-line summary)."""
    run_dir = Path(run_dir)
    model, fit = read_json(run_dir / "model.json"), read_json(run_dir / "fit.json")
    spec = method_spec(model["method"])
    if spec.notes is None:
        return f"**{spec.name}.** {spec.summary[:1].upper()}{spec.summary[1:]}."
    return spec.notes(run_dir, model["config"], fit["n_train"])


def nearest_patch_pair(run_dir: str | Path, n_search: int = 30, device: str = "cpu") -> dict[str, Any]:
    """PatchCore: the most anomalous patch of the top-scoring defective test image and its nearest good patch.

    The good patch is searched among the first ``n_search`` training images (the bank itself does not
    record where its features came from). Returns ``figure`` (keyword arguments of
    :func:`anomaly.viz.patch_pair_figure`), ``s_star``, ``score`` (Eq. 7), ``map_max`` and ``defect_type``.
    """
    run = load_run(run_dir, device=device)
    det, cfg = run.detector, run.config
    splits = run_data(cfg, cfg["val_fraction"]).splits
    defective = [s for s in splits.test if s.label == 1][:8]
    images = torch.stack([DS.read_image(s.image_path, det.config.image_size) for s in defective])
    with torch.inference_mode():
        feats, (h, w) = det._patch_features(images.to(det.device))  # (B, P, C)
        out = det.predict(images)
        b = int(np.argmax(out.image_scores))
        bank_d = torch.cdist(feats[b], det.memory_bank).min(1).values  # (P,)
        p = int(bank_d.argmax())
        query = feats[b, p]
        best = (np.inf, 0, 0)
        for i, sample in enumerate(splits.train[:n_search]):
            good = DS.read_image(sample.image_path, det.config.image_size)[None]
            d = torch.linalg.vector_norm(det._patch_features(good.to(det.device))[0][0] - query, dim=1)  # (P,)
            if float(d.min()) < best[0]:
                best = (float(d.min()), i, int(d.argmin()))
    stride = det.config.image_size // h
    good_image = DS.read_image(splits.train[best[1]].image_path, det.config.image_size)
    figure = {"test_image": images[b], "test_cell": divmod(p, w), "good_image": good_image,
              "good_cell": divmod(best[2], w), "cell_px": stride * det.config.patch_size, "stride": stride,
              "title_test": f"{defective[b].defect_type}: distance to the bank {float(bank_d[p]):.3g}",
              "title_good": f"nearest patch of {min(n_search, len(splits.train))} good images: {best[0]:.3g}"}
    return {"figure": figure, "s_star": float(bank_d[p]), "score": float(out.image_scores[b]),
            "map_max": float(out.anomaly_maps[b].max()), "defect_type": defective[b].defect_type}


def patch_pair_text(pair: dict[str, Any]) -> str:
    """Markdown: the three numbers a reader confuses -- s*, the Eq. 7 image score and the map's maximum."""
    return (f"For this `{pair['defect_type']}` image the most anomalous patch lies {pair['s_star']:.3g} from its "
            f"nearest bank feature ($s^*$); Eq. 7's weight {pair['score'] / pair['s_star']:.4f} turns that into the "
            f"image score {pair['score']:.3g}, while the smoothed map peaks at {pair['map_max']:.3g}. The score and "
            f"the map's maximum are different numbers, and the gap between them is the map's smoothing, not Eq. 7: "
            f"the threshold applies to the score.")


def calibration_text(results: Any, defect_rate: float) -> str:
    """Markdown for notebook 03 (:func:`anomaly.study.wording.calibration_text` of a ``RunResults``): the threshold, the
    conformal rank for this run's n and target, the realised rates and precision at ``defect_rate``."""
    return text(results.run_dir, results.metrics, defect_rate)
