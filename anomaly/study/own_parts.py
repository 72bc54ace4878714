"""Notebook 06, "your own parts": a built-in example laid out as an engineer's folders, and the run in words.

:func:`write_example_folders` draws synthetic parts (:func:`anomaly.synthetic.render_sample`) and
writes them the way photos arrive from a line rather than in the MVTec AD layout: good parts in
dated sub-folders, PNG and JPEG mixed, one day's camera at another resolution, one part
photographed twice, a few defective parts in one folder per defect type, optionally their masks.
The other functions turn a run folder's records into the sentences notebook 06 shows.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from anomaly.folders import list_image_files
from anomaly.pipeline import evaluate_run
from anomaly.calibration import read_calibration
from anomaly.records import ThresholdRecord
from anomaly.scenes import DEFECT_TYPES
from anomaly.synthetic import render_sample
from anomaly.thresholds import calibration_rank
from anomaly.utils import read_json

MARKER = "example.json"  # written into the example's folder; allows safe regeneration
DAYS = ("2026-03-02", "2026-03-03", "2026-03-04")  # the dated sub-folders of the good images


def write_example_folders(out: str | Path, category: str = "screw_aligned", n_good: int = 120,
                          n_per_defect: int = 4, image_size: int = 256, seed: int = 0,
                          masks: bool = False) -> dict[str, str | None]:
    """Write ``out/good/<day>/``, ``out/defective/<defect_type>/`` (and ``out/masks/<defect_type>/``).

    Every third good image is a JPEG (quality 95), the rest PNG; the last day's images are saved at
    1.25 x the size of the others; one good image of the first day is saved again, re-encoded as a
    smaller JPEG, in the last day's folder (a part photographed twice: the data check finds it).

    Returns:
        ``{"good": ..., "defective": ..., "masks": ... or None}``, the folders to pass to ``fit``.
    """
    out = _fresh(Path(out))
    per_day = int(np.ceil(n_good / len(DAYS)))
    for i in range(n_good):
        day = DAYS[i // per_day]
        image, _ = render_sample(category, image_size, seed, "train", "good", i)
        picture = Image.fromarray(image)
        if day == DAYS[-1]:
            picture = picture.resize((round(image_size * 1.25),) * 2, Image.Resampling.BICUBIC)
        name = out / "good" / day / f"IMG_{i:04d}"
        _save(picture, name.with_suffix(".jpg" if i % 3 == 2 else ".png"))
    twice = Image.open(next((out / "good" / DAYS[0]).glob("IMG_0000.*"))).convert("RGB")
    twice = twice.resize((image_size * 3 // 4,) * 2, Image.Resampling.BICUBIC)
    _save(twice, out / "good" / DAYS[-1] / f"IMG_{n_good:04d}.jpg", quality=80)
    for defect_type in DEFECT_TYPES[category]:
        for i in range(n_per_defect):
            image, mask = render_sample(category, image_size, seed, "test", defect_type, i)
            _save(Image.fromarray(image), out / "defective" / defect_type / f"part_{i:03d}.png")
            if masks:
                _save(Image.fromarray(mask), out / "masks" / defect_type / f"part_{i:03d}.png")
    meta = {"generator": "anomaly.study.own_parts", "category": category, "seed": seed, "n_good": n_good + 1,
            "n_per_defect": n_per_defect, "image_size": image_size, "masks": masks}
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return {"good": str(out / "good"), "defective": str(out / "defective"),
            "masks": str(out / "masks") if masks else None}


def _save(picture: Image.Image, path: Path, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, "JPEG", quality=quality)
        path.write_bytes(buffer.getvalue())
    else:
        picture.save(path, "PNG")


def _fresh(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out} exists and was not written by write_example_folders; refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def folders_for(good_dir: str | None, defective_dir: str | None, masks_dir: str | None, example_dir: str | Path,
                category: str = "screw_aligned", n_good: int = 120, seed: int = 0) -> dict[str, str | None]:
    """Your folders when ``good_dir`` is given, else the built-in example written to ``example_dir``."""
    if good_dir is not None:
        return {"good": good_dir, "defective": defective_dir, "masks": masks_dir}
    return write_example_folders(example_dir, category=category, n_good=n_good, seed=seed)


def folder_table(folders: dict[str, str | None]) -> pd.DataFrame:
    """One row per sub-folder: role, folder, image files and their formats."""
    rows = []
    for role, root in folders.items():
        if root is None:
            continue
        images, _ = list_image_files(root, required=True)
        for parent in sorted({p.parent for p in images}):
            here = [p for p in images if p.parent == parent]
            formats = ", ".join(f"{n} {ext}" for ext, n in sorted(Counter(p.suffix.lower() for p in here).items()))
            rows.append({"role": role, "folder": str(parent), "images": len(here), "formats": formats})
    return pd.DataFrame(rows)


def evaluate_or_explain(run_dir: str | Path, device: str = "auto") -> tuple[dict[str, Any] | None, str]:
    """Evaluate the run when it has a test split: (metrics, ""); else (None, the run's own reason)."""
    note = read_json(Path(run_dir) / "config.json").get("evaluation")
    if note:
        return None, f"This run has no test evaluation -- {note}."
    return evaluate_run(run_dir, device=device), ""


def run_summary(run_dir: str | Path) -> str:
    """What the run was fitted and calibrated on, from ``config.json``, ``calibration.json``, ``threshold.json``."""
    run_dir = Path(run_dir)
    cfg, cal, dec = read_json(run_dir / "config.json"), read_calibration(run_dir), ThresholdRecord.read(run_dir)
    held = len(cfg.get("held_out_good") or [])
    how = (f"{cal['folds']}-fold cross-fitted scores of all {cal['n_scores']} good training images"
           if cal["kind"] == "crossfit" else f"the scores of {cal['n_scores']} good validation images")
    lines = [f"- **Fitted**: `{cfg['method']}` on {cfg['n_train']} good images of `{cfg.get('good') or cfg['data']}`"
             + (f"; {held} good images were held out for the test by a seeded draw (seed {cfg['seed']}), "
                f"listed in `config.json`" if held else ""),
             f"- **Calibrated** on {how}: threshold {dec['threshold']:.4g} for a target false-reject rate of "
             f"{dec['target_frr']:g} ({dec['estimator']}"
             + ("" if dec.get("reachable", True) else f"; NOT reachable with {dec['n_scores']} scores") + ")",
             f"- **Test**: {cfg.get('n_test_good', '?')} good and {cfg.get('n_test_defective', '?')} defective images"
             + (f" -- {cfg['evaluation']}" if cfg.get("evaluation") else "")]
    return "\n".join(lines) + "\n"


def operating_point_summary(metrics: dict[str, Any], line_frr: float) -> str:
    """The realised rates at the threshold for ``line_frr``, with their Wilson intervals (from ``metrics.json``)."""
    n_good = metrics["tn"] + metrics["fp"]
    n_bad = metrics["tp"] + metrics["fn"]
    lo, hi = metrics["frr_ci"]
    rlo, rhi = metrics["recall_ci"]
    reach = "" if metrics.get("target_reachable", True) else (
        f" The {metrics['n_calibration_scores']} calibration scores cannot reach {line_frr:g}: the threshold is their "
        f"maximum, and more good images are needed.")
    n_cal = metrics.get("n_calibration_scores")
    rank = calibration_rank(n_cal, line_frr, metrics.get("estimator") or "conformal") if n_cal else None
    if rank == n_cal:
        reach += (f" With {n_cal} calibration scores the threshold is the {rank}-th smallest, i.e. the largest: one "
                  f"unusual good photo sets it, and more good photos would give the target room.")
    oracle = metrics.get("oracle_recall_at_frr")
    return (f"At a target false-reject rate of **{line_frr:g}** (threshold {metrics['threshold']:.4g}) the run "
            f"rejects {metrics['fp']} of {n_good} good test parts (FRR {metrics['frr']:.3f}, 95 % interval "
            f"{lo:.3f}-{hi:.3f}) and catches {metrics['tp']} of {n_bad} defective ones (recall {metrics['recall']:.3f}, "
            f"{rlo:.3f}-{rhi:.3f})."
            + (f" The best any threshold could do at that false-reject rate (an oracle that looks at the test labels) "
               f"is {oracle:.3f}." if oracle is not None else "") + reach
            + f" Image AUROC {metrics['image_auroc']:.3f} (95 % interval {metrics['image_auroc_ci'][0]:.3f}-"
              f"{metrics['image_auroc_ci'][1]:.3f}); "
            + ("pixel metrics need masks (--masks)." if not metrics.get("has_masks", True) else
               f"pixel AUROC {metrics['pixel_auroc']:.3f}, AUPRO {metrics['aupro']:.3f}."))


def station_commands(run_dir: str | Path, images: str | Path) -> str:
    """The commands that put the run on the line, as a markdown code block."""
    run_dir = Path(run_dir)
    target = ThresholdRecord.read(run_dir).target_frr
    return ("```bash\n"
            f"anomaly serve --run-dir {run_dir}                      # the inspection page at http://127.0.0.1:8000\n"
            f"anomaly predict --run-dir {run_dir} {images} --csv {run_dir}/inspection.csv   # a folder -> CSV\n"
            f"anomaly threshold --run-dir {run_dir} --target-frr {target:g}   # move the operating point, no refit\n"
            "```\n")
