"""Training seeds: the autoencoder reproduces bit for bit across processes with one seed; several seeds give a
spread that the comparison shows in the autoencoder's row; a verdict is real only when every seed agrees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly.study import evidence, pairwise, seeds
from anomaly.config import RunConfig
from anomaly.pipeline import evaluate_run, fit_run
from anomaly.study.run_results import load_results

ROOT = Path(__file__).resolve().parents[1]

_FIT = """
import torch
from anomaly.models.autoencoder import ConvAutoencoder
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
images = torch.rand(12, 3, 32, 32, generator=g)
det = ConvAutoencoder({"image_size": 32, "epochs": 3, "batch_size": 4, "seed": 7, "base_channels": 8, "latent_dim": 16})
det.fit([{"image": images[i:i + 4]} for i in range(0, 12, 4)])
print(" ".join(float(s).hex() for s in det.predict(images).image_scores))
print(" ".join(float(v).hex() for v in det.history))
"""


def _fit_in_a_new_process() -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _FIT], env=env, check=True, capture_output=True, text=True,
                          timeout=300).stdout


@pytest.mark.slow
def test_autoencoder_fit_is_bit_identical_in_two_processes_with_one_seed():
    first, second = _fit_in_a_new_process(), _fit_in_a_new_process()
    assert first.strip() and first == second  # every score and every epoch's loss, to the last bit


@pytest.fixture(scope="module")
def seeded_runs(synthetic_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    ae = RunConfig(synthetic_root, "screw_like", "autoencoder", {"image_size": 64, "epochs": 2}, device="cpu")
    dirs = seeds.fit_seeds(ae, fit_run(ae, root / "autoencoder"), 3)
    base = fit_run(RunConfig(synthetic_root, "screw_like", "intensity", {"image_size": 64}, device="cpu"),
                   root / "intensity")
    pc = fit_run(RunConfig(synthetic_root, "screw_like", "patchcore", {"image_size": 64}, device="cpu"),
                 root / "patchcore")
    evaluate_run(base, device="cpu")
    evaluate_run(pc, device="cpu")
    evaluate_run(dirs[0], device="cpu")
    seeds.evaluate_seeds(dirs[0], device="cpu")
    return root, dirs


@pytest.mark.slow
def test_seed_runs_are_listed_fitted_with_their_seed_and_tabulated(seeded_runs):
    root, dirs = seeded_runs
    assert dirs == [root / "autoencoder", root / "autoencoder_seed1", root / "autoencoder_seed2"]
    assert seeds.seed_runs(root / "autoencoder") == dirs
    assert seeds.seed_runs(root / "patchcore") == [root / "patchcore"]  # not trained: fitted once
    table = seeds.seed_table(root / "autoencoder")
    assert list(table.index) == ["seed 0", "seed 1", "seed 2", "mean", "sd", "min", "max"]
    spread = seeds.spread(root / "autoencoder")
    assert spread["n"] == 3 and spread["min"] <= spread["mean"] <= spread["max"]
    assert "Over 3 training seeds" in seeds.spread_text(root / "autoencoder", "autoencoder")
    assert "fitted once" in seeds.spread_text(root / "patchcore", "patchcore")


@pytest.mark.slow
def test_the_seed_spread_is_in_the_autoencoders_row_and_verdicts_need_every_seed(seeded_runs):
    root, dirs = seeded_runs
    results = [load_results(root / m) for m in ("intensity", "autoencoder", "patchcore")]
    trained = {"autoencoder": [load_results(d) for d in dirs]}
    resampler = pairwise.Resampler(results[0].predictions["labels"], n_resamples=200)
    margins = evidence.margins_over_baseline(results, seed_results=trained, resampler=resampler)
    assert margins["autoencoder"]["image_auroc"]["n_seeds"] == 3 and margins["patchcore"]["image_auroc"]["n_seeds"] == 1
    spreads = {"autoencoder": seeds.spread(root / "autoencoder")}
    table = evidence.comparison_table(results, margins, spreads)
    cell = table.loc["autoencoder", "image AUROC over training seeds"]
    assert cell.endswith("(3 seeds)") and f"{spreads['autoencoder']['mean']:.3f} mean" in cell
    assert table.loc["patchcore", "image AUROC over training seeds"] == ""
    assert table.loc["autoencoder", "input px"] == "64"
    pairs = pairwise.pairwise(results, trained, resampler)
    assert list(pairs) == [("patchcore", "autoencoder")]
    assert pairs[("patchcore", "autoencoder")]["image_auroc"]["n_seeds"] == 3
    assert "patchcore (64 px) − autoencoder (64 px)" in pairwise.pairwise_text(pairs, {"patchcore": 64, "autoencoder": 64})


def test_a_margin_is_real_only_when_every_seed_agrees():
    def m(margin, real):
        return {"margin": margin, "ci": [margin - 0.1, margin + 0.1], "real": real}

    agree = {**m(0.3, True), "seeds": [m(0.3, True), m(0.25, True), m(0.2, True)], "n_seeds": 3, "real": True}
    split = {**m(0.3, True), "seeds": [m(0.3, True), m(0.05, False), m(0.2, True)], "n_seeds": 3, "real": False}
    assert pairwise.verdict(agree) == "a real gain for each of 3 training seeds"
    assert pairwise.verdict(split).startswith("real for 2 of 3 training seeds only, so no verdict")
    assert pairwise.verdict(m(0.01, False)).startswith("not distinguishable")
    assert pairwise.learned_pairs(["intensity", "autoencoder", "padim", "patchcore"]) == [
        ("padim", "autoencoder"), ("patchcore", "autoencoder"), ("patchcore", "padim")]


@pytest.mark.slow
def test_a_refitted_primary_run_drops_stale_seed_runs(seeded_runs, synthetic_root, tmp_path):
    root, dirs = seeded_runs
    import shutil

    for d in dirs:
        shutil.copytree(d, tmp_path / d.name)
    copy = tmp_path / "autoencoder"
    manifest = seeds.manifest_path(copy)
    manifest.write_text(seeds.manifest_path(root / "autoencoder").read_text())
    assert seeds.seed_runs(copy) == [tmp_path / d.name for d in dirs]  # listed by name: siblings wherever they are
    config = (copy / "config.json").read_text().replace('"batch_size": 8', '"batch_size": 4')
    (copy / "config.json").write_text(config)
    assert seeds.seed_runs(copy) == [copy]  # the listed seeds were fitted otherwise: left out
    np.testing.assert_array_equal(seeds.seed_runs(tmp_path / "none"), [tmp_path / "none"])
