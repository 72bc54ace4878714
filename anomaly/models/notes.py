"""The prose each built-in detector's spec shows (:class:`~anomaly.models.registry.MethodSpec` ``notes``,
``fit_lines``, ``score_note``): markdown filled with a run's own numbers, never typed-in ones.

``notes(run_dir, config, n_train)`` explains what the run fitted (notebook 02, :mod:`anomaly.study.explain`);
``fit_lines(config, state, n_train)`` adds facts about the fitted state to :func:`anomaly.study.summaries.summarise_fit`;
``score_note(config)`` says why a flagged image's map may stay below the threshold (:mod:`anomaly.study.summaries`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def intensity_notes(run_dir: Path, cfg: dict[str, Any], n: int) -> str:
    return ("**No learning.** The map is each pixel's grey-level distance from the image's own median grey, "
            f"smoothed (sigma {cfg['smooth_sigma']:g} px); the score is its maximum. The {n} good images are "
            "only looked at, nothing is fitted: this is the floor every learned method must clear.")


def autoencoder_notes(run_dir: Path, cfg: dict[str, Any], n: int) -> str:
    return ("**Training loss and reconstructions.** The loss should fall and flatten. Then the original "
            "study's figure: input | reconstruction | error map (outline = ground truth). A good autoencoder "
            "redraws the part but not the defect; in practice it also blurs fine detail everywhere, which "
            "raises the error of good images too.")


def padim_notes(run_dir: Path, cfg: dict[str, Any], n: int) -> str:
    state = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)
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


def patchcore_notes(run_dir: Path, cfg: dict[str, Any], n: int) -> str:
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


def patchcore_score_note(cfg: dict[str, Any]) -> str:
    k, sigma = cfg["num_neighbors"], cfg["smooth_sigma"]
    return (f" PatchCore's image score is the worst patch's nearest-neighbour distance s* times Eq. 7's weight, "
            f"which lies in [1 − 1/k, 1) = [{1 - 1 / k:.3f}, 1) for its k = {k} neighbours: Eq. 7 can only lower "
            f"the score, and by little. The map is the same distances upsampled and smoothed (Gaussian, sigma "
            f"{sigma:g} px), which spreads a one-patch peak and lowers it: it is the smoothing that leaves a "
            f"flagged part without an outlined region.")


def _grid_line(config: dict[str, Any]) -> str:
    stride, size = min(config["strides"]), config["image_size"]
    grid = -(-size // stride)
    return (f"- Features: `{config['backbone']}` maps each image to a {grid} x {grid} grid of patch features "
            f"(stride {stride} px at {size} px, strides {config['strides']} concatenated).")


def patchcore_fit_lines(config: dict[str, Any], state: Any, n_train: int) -> list[str]:
    grid = -(-config["image_size"] // min(config["strides"]))
    rows, dims = state.loc["memory_bank", "shape"]
    total = n_train * grid * grid
    return [_grid_line(config),
            f"- Memory bank: {rows:,} of the {total:,} training patch features ({100 * rows / total:.2f}%, "
            f"coreset ratio {config['coreset_ratio']:g}), each {dims}-dimensional."]


def padim_fit_lines(config: dict[str, Any], state: Any, n_train: int) -> list[str]:
    positions, dims, _ = state.loc["inv_covariance", "shape"]
    return [_grid_line(config),
            f"- Gaussians: one per position, {positions:,} positions, each a {dims}-dimensional mean and "
            f"a {dims} x {dims} inverse covariance ({state.loc['inv_covariance', 'MiB']:.0f} MiB in all); "
            f"the {dims} channels are a seeded random subset of the concatenated features."]
