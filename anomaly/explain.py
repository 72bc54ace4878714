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
from anomaly.utils import read_json
from anomaly.wording import calibration_text as text

RUNS_ROOT = "weights/report"


def run_dir_for(method: str, run_dir: str | None = None, root: str = RUNS_ROOT) -> str:
    """The run folder of ``method``: ``run_dir`` when given, else ``root/<method>``.

    ``None`` is the one "method default" sentinel of the notebooks (as an absent flag is for the CLI), so
    changing only ``method`` never overwrites another method's run.
    """
    return run_dir if run_dir is not None else f"{root}/{method}"


def method_notes(run_dir: str | Path) -> str:
    """Markdown explaining what the run's method fitted and how it scores, with this run's numbers."""
    run_dir = Path(run_dir)
    model, fit = read_json(run_dir / "model.json"), read_json(run_dir / "fit.json")
    method, cfg, n = model["method"], model["config"], fit["n_train"]
    if method == "intensity":
        return ("**No learning.** The map is each pixel's grey-level distance from the image's own median grey, "
                f"smoothed (sigma {cfg['smooth_sigma']:g} px); the score is its maximum. The {n} good images are "
                "only looked at, nothing is fitted: this is the floor every learned method must clear.")
    if method == "autoencoder":
        return ("**Training loss and reconstructions.** The loss should fall and flatten. Then the original "
                "study's figure: input | reconstruction | error map (outline = ground truth). A good autoencoder "
                "redraws the part but not the defect; in practice it also blurs fine detail everywhere, which "
                "raises the error of good images too.")
    if method == "padim":
        return _padim_notes(run_dir, cfg, n)
    return _patchcore_notes(cfg, n)


def _padim_notes(run_dir: Path, cfg: dict[str, Any], n: int) -> str:
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    inv = state["inv_covariance"]  # (P, d, d)
    d = inv.shape[-1]
    centre = inv[inv.shape[0] // 2].double()
    top = float(torch.linalg.eigvalsh(centre)[-1])
    return (f"**Why PaDiM needs $\\epsilon I$.** Each position's covariance $\\Sigma_{{ij}}$ is {d} x {d}, "
            f"estimated from {n} feature vectors (one per good image). With $N \\le d$ vectors it is singular "
            f"(rank $\\le N-1$); with {n} it is invertible but its smallest eigenvalues are noise, and "
            f"$\\Sigma^{{-1}}$ would blow them up, so PaDiM adds $\\epsilon I$ ($\\epsilon$ = {cfg['eps']:g}). "
            f"Measured on this run: the largest eigenvalue of $\\Sigma^{{-1}}$ at the centre position is {top:.3g}, "
            f"never above $1/\\epsilon$ = {1 / cfg['eps']:.0f}. This run has {n / d:.1f} feature vectors per "
            f"dimension; a real category's training set is of the same order (a few hundred good images at most), "
            f"so the regulariser does real work there too.")


def _patchcore_notes(cfg: dict[str, Any], n: int) -> str:
    return (f"**Locally aware patches.** Each patch feature averages its {cfg['patch_size']} x {cfg['patch_size']} "
            f"neighbourhood of backbone features (strides {cfg['strides']} concatenated), so a patch describes a "
            f"small region and tolerates a one-cell shift.\n\n"
            f"**Greedy coreset.** Of the {n} images' patches, the bank keeps {100 * cfg['coreset_ratio']:g} % "
            f"(at least {cfg['coreset_min_size']}), chosen greedily: start from a random patch, then repeatedly "
            f"add the patch farthest from everything chosen so far (k-centre, in a random "
            f"{cfg['projection_dim']}-d projection). The bank then covers every kind of good patch, rare ones included.\n\n"
            f"**The image score is not the map's maximum.** With $m^{{test,*}}$ the most anomalous test patch, "
            f"$m^*$ its nearest bank feature and $s^*$ their distance, Eq. 7 re-weights "
            f"$s = \\big(1-\\frac{{\\exp\\lVert m^{{test,*}}-m^*\\rVert}}{{\\sum_{{m\\in\\mathcal N_b(m^*)}}"
            f"\\exp\\lVert m^{{test,*}}-m\\rVert}}\\big)\\,s^*$ over the {cfg['num_neighbors']} bank neighbours "
            f"$\\mathcal N_b(m^*)$: a patch whose nearest good patch sits in a sparse region of the bank (itself "
            f"unusual) counts more. Because $m^*$ is the NEAREST bank feature, its softmax share is at most "
            f"$1/k$, so the weight lies in $[1-1/k, 1)$ = [{1 - 1 / cfg['num_neighbors']:.3f}, 1) for k = "
            f"{cfg['num_neighbors']}: Eq. 7 can only lower $s^*$, and by little. The map stays the plain "
            f"nearest-neighbour distance, upsampled and smoothed (sigma {cfg['smooth_sigma']:g} px), which lowers "
            f"a one-patch peak; the nearest-neighbour view below puts the three numbers side by side.")


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
    """Markdown for notebook 03 (:func:`anomaly.wording.calibration_text` of a ``RunResults``): the threshold, the
    conformal rank for this run's n and target, the realised rates and precision at ``defect_rate``."""
    return text(results.run_dir, results.metrics, defect_rate)
