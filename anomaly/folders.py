"""Plain folders of images as a data set, and the one place that turns a run's config into its splits.

An engineer's own photos rarely sit in the MVTec AD layout. ``anomaly fit --good DIR`` takes::

    --good DIR        good images, searched recursively (dated sub-folders, mixed formats and sizes)
    --defective DIR   optional: defective images; the first sub-folder level names the defect type
                      (images directly in DIR are of type "defective")
    --masks DIR       optional: one mask per defective image, matched by its path below DIR and its
                      file stem: DEFECTIVE/scratch/017.jpg <- MASKS/scratch/017.png or 017_mask.png
                      (or, in a flat MASKS folder, by the stem alone when that is unique)
    --test-good DIR   optional: good images kept for the test (e.g. an MVTec AD test/good folder)

Splits: every good image fits the model (and, cross-fitted, calibrates the threshold), except the
test's good images. With defective images and no ``--test-good``, ``test_fraction`` of the good
images are held out for the test by a seeded draw that keeps groups of duplicates on one side; the
drawn files are recorded in the run's ``config.json`` (``held_out_good``), so that ``evaluate``
re-indexes exactly the same test images even when the folder has grown since. With good images
only there is no test: the run is calibrated, and says that it has not been evaluated.

:func:`index_layout` lists what is there without refusing anything (the data check reports it);
:func:`run_data` builds the splits a fit or an evaluation uses and refuses what would make them
wrong (a defective image without its mask, a mask without its image), naming the files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from anomaly import decoding
from anomaly import layout as L

logger = logging.getLogger(__name__)

DEFAULT_TEST_FRACTION = 0.2  # share of --good held out for the test when only --defective is given (anomalib's)
FLAT_DEFECT_TYPE = "defective"  # the defect type of images directly in --defective
MASK_SUFFIX = "_mask"
SHOWN = 5  # files named in one error message


@dataclass
class LayoutIndex:
    """Every image of a data set, by role, with the masks matched to the defective ones (nothing refused).

    ``good`` fit the model (and calibrate); ``test_good`` and ``defective`` are test images.
    """

    category: str
    good: list[Path]
    test_good: list[Path] = field(default_factory=list)
    defective: list[tuple[Path, str]] = field(default_factory=list)  # (image, defect_type)
    masks: dict[Path, Path] = field(default_factory=dict)  # defective image -> its mask
    has_masks: bool = False  # a mask folder was given (MVTec AD: always)
    images_without_mask: list[Path] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # files that are not images (by extension)
    roots: dict[str, str | None] = field(default_factory=dict)  # role -> folder, for messages and records


@dataclass
class RunData:
    """The splits of a run and how they were made (``record`` goes into ``config.json``)."""

    splits: L.Splits
    has_masks: bool
    record: dict[str, Any]


def is_folder_config(cfg: Mapping[str, Any]) -> bool:
    """Whether a run configuration (RunConfig fields or ``config.json``) names plain folders (``good``)."""
    return cfg.get("good") is not None


def index_layout(cfg: Mapping[str, Any]) -> LayoutIndex:
    """The images of a run configuration: plain folders (``good``, ...) or MVTec AD (``data``, ``category``).

    Raises:
        DataError: a folder that does not exist, or no good image at all.
    """
    if is_folder_config(cfg):
        return index_folders(cfg["good"], cfg.get("defective"), cfg.get("masks"), cfg.get("test_good"),
                             category=cfg.get("category"))
    cat_dir = Path(cfg["data"]) / cfg["category"]
    if not cat_dir.is_dir():
        L.index_category(cfg["data"], cfg["category"])  # raises, listing the categories there are
    good, skipped = list_image_files(cat_dir / "train" / "good", required=True)
    extra, skipped_extra = list_image_files(cat_dir / "validation" / "good")
    test_dir = cat_dir / "test"
    types = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if test_dir.is_dir() else []
    test_good, skipped_test = list_image_files(test_dir / "good")
    index = LayoutIndex(cfg["category"], good + extra, test_good, has_masks=True,
                        skipped=skipped + skipped_extra + skipped_test,
                        roots={"good": str(cat_dir / "train" / "good"), "defective": str(test_dir),
                               "masks": str(cat_dir / "ground_truth"), "test_good": str(test_dir / "good")})
    for defect_type in (t for t in types if t != "good"):
        images, skipped = list_image_files(test_dir / defect_type)
        index.defective += [(p, defect_type) for p in images]
        index.skipped += skipped
    _match_masks(index, test_dir, cat_dir / "ground_truth")
    return _require_good(index)


def index_folders(good: str | Path, defective: str | Path | None = None, masks: str | Path | None = None,
                  test_good: str | Path | None = None, category: str | None = None) -> LayoutIndex:
    """Index plain folders (see the module docstring); nothing is refused but a missing folder or no good image."""
    good_files, skipped = list_image_files(good, required=True)
    index = LayoutIndex(category or _parts_name(Path(good)), good_files, skipped=skipped,
                        has_masks=masks is not None,
                        roots={"good": str(good), "defective": _str(defective), "masks": _str(masks),
                               "test_good": _str(test_good)})
    if test_good is not None:
        index.test_good, skipped = list_image_files(test_good, required=True)
        index.skipped += skipped
    if defective is not None:
        images, skipped = list_image_files(defective, required=True)
        index.defective = [(p, _defect_type(p, Path(defective))) for p in images]
        index.skipped += skipped
        if any(t == "good" for _, t in index.defective):
            raise decoding.DataError(f"{Path(defective) / 'good'}: a defect type cannot be called 'good' (good test photos "
                              f"go in --test-good DIR)")
    if masks is not None:
        if defective is None:
            raise decoding.DataError("--masks needs --defective: masks belong to defective images")
        _match_masks(index, Path(defective), Path(masks), required=True)
    return _require_good(index)


def list_image_files(folder: str | Path, required: bool = False) -> tuple[list[Path], list[Path]]:
    """(images, skipped): regular files below ``folder`` (recursive, symlinks followed once, hidden names
    left out), sorted by their path below it; ``skipped`` are files without an image extension."""
    root = Path(folder)
    if not root.is_dir():
        if required:
            raise decoding.DataError(f"folder {root} does not exist or is not a folder")
        return [], []
    images, skipped, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file():
                continue  # .DS_Store, editor files; FIFOs, sockets, broken links
            (images if path.suffix.lower() in L.IMAGE_EXTENSIONS else skipped).append(path)
    below = {p: p.relative_to(root).as_posix() for p in images + skipped}
    return sorted(images, key=below.__getitem__), sorted(skipped, key=below.__getitem__)


def run_data(cfg: Mapping[str, Any], val_fraction: float, held_out: Sequence[str] | None = None,
             groups: Sequence[Sequence[int]] = (), data: str | Path | None = None) -> RunData:
    """The splits a fit or an evaluation uses, from a run configuration (RunConfig fields or ``config.json``).

    Args:
        val_fraction: share of the training good images carved out for validation (0 when cross-fitting).
        held_out: the good images (paths below ``good``) held out for the test; ``None``: the run's
            recorded ``held_out_good``, else a seeded draw (:func:`draw_held_out`).
        groups: groups of indices into the good images that are duplicates of each other; a draw keeps
            each group on one side.
        data: MVTec AD runs only: another dataset root than the recorded one.

    Raises:
        DataError: a problem with the files, named (a defective image without its mask, a mask without
            its image, a recorded held-out image that is gone).
    """
    seed = int(cfg.get("seed") or 0)
    if not is_folder_config(cfg):
        if data is None and cfg.get("data") is None:
            raise decoding.DataError("the run configuration names no data (neither data + category nor good)")
        root = data or cfg["data"]
        splits = L.load_splits(root, cfg["category"], val_fraction=val_fraction, seed=seed)
        return RunData(splits, True, {"data": str(Path(root).resolve()), "layout": "mvtec"})
    if data is not None:
        raise ValueError("this run was fitted on plain folders (--good ...): --data applies to MVTec AD runs only")
    index = index_layout(cfg)
    _refuse_mask_mismatch(index)
    good_root = Path(cfg["good"])
    if held_out is None:
        held_out = cfg.get("held_out_good")
    if held_out is None:
        fraction = float(cfg.get("test_fraction") or DEFAULT_TEST_FRACTION)
        drawn = draw_held_out(len(index.good), groups, fraction, seed) if index.defective and not index.test_good \
            else []
        held_out = [index.good[i].relative_to(good_root).as_posix() for i in drawn]
    samples = _samples(index, good_root, list(held_out))
    for s in samples:
        decoding.image_hw(s.image_path)  # every header is readable (cheap): a bad file is named before any fit
    splits = L.carve_validation(samples, val_fraction, seed)
    n_test_good = sum(1 for s in splits.test if s.label == 0)
    record = {"layout": "folders", "good": str(good_root.resolve()), "held_out_good": list(held_out),
              **{k: str(Path(cfg[k]).resolve()) for k in ("defective", "masks", "test_good") if cfg.get(k)},
              "n_test_good": n_test_good, "n_test_defective": len(splits.test) - n_test_good,
              "evaluation": evaluation_note(n_test_good, len(splits.test) - n_test_good)}
    logger.info("%s: %d good images for the fit, %d test images (%d good, %d defective)", good_root,
                len(splits.train) + len(splits.validation), len(splits.test), n_test_good,
                len(splits.test) - n_test_good)
    return RunData(splits, index.has_masks, record)


def evaluation_note(n_good: int, n_defective: int) -> str | None:
    """Why a run has no test evaluation (``None`` when it has one)."""
    if n_defective == 0:
        return ("none: no defective images (--defective), so detection cannot be measured; the threshold is "
                "calibrated on the good images and predict/serve work")
    if n_good == 0:
        return "none: no good test images, so false rejects cannot be measured"
    return None


def draw_held_out(n: int, groups: Sequence[Sequence[int]], fraction: float, seed: int) -> list[int]:
    """Indices of the good images held out for the test: ``round(fraction * n)`` (at least 1, at most n - 1),
    drawn in a seeded order of units, a unit being one image or one group of duplicates (kept together)."""
    if n < 2:
        raise decoding.DataError(f"{n} good image(s): at least 2 are needed to hold good images out for the test "
                          f"(or give --test-good DIR)")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {fraction}")
    grouped = {i for g in groups for i in g}
    units = [sorted(g) for g in groups] + [[i] for i in range(n) if i not in grouped]
    target = min(max(int(round(fraction * n)), 1), n - 1)
    chosen: list[int] = []
    for u in np.random.default_rng(seed).permutation(len(units)):
        if len(chosen) >= target:
            break
        if len(chosen) + len(units[u]) <= n - 1:
            chosen += units[u]
    return sorted(chosen)


def _samples(index: LayoutIndex, good_root: Path, held_out: list[str]) -> list[L.Sample]:
    by_name = {p.relative_to(good_root).as_posix(): p for p in index.good}
    gone = [name for name in held_out if name not in by_name]
    if gone:
        raise decoding.DataError(f"{len(gone)} good image(s) this run held out for its test are no longer in {good_root}: "
                          f"{', '.join(gone[:SHOWN])}; fit again to draw a new split")
    test_names = set(held_out)
    cat = index.category
    samples = [L.Sample(cat, "train", "good", p, None, 0) for name, p in by_name.items() if name not in test_names]
    samples += [L.Sample(cat, "test", "good", by_name[name], None, 0) for name in held_out]
    samples += [L.Sample(cat, "test", "good", p, None, 0) for p in index.test_good]
    samples += [L.Sample(cat, "test", t, p, index.masks.get(p), 1) for p, t in index.defective]
    return samples


def _match_masks(index: LayoutIndex, image_root: Path, mask_root: Path, required: bool = False) -> None:
    """Fill ``masks``, ``images_without_mask``, ``masks_without_image`` of ``index`` (its ``defective``)."""
    mask_files, skipped = list_image_files(mask_root, required=required)
    index.skipped += skipped
    by_key = {_mask_key(p, mask_root): p for p in mask_files}
    by_stem: dict[str, list[Path]] = {}
    for p in mask_files:
        by_stem.setdefault(_mask_key(p, mask_root)[1], []).append(p)
    image_stems = [p.stem for p, _ in index.defective]
    used = set()
    for image, _ in index.defective:
        key = (image.relative_to(image_root).parent.as_posix(), image.stem)
        mask = by_key.get(key)
        if mask is None and len(by_stem.get(image.stem, [])) == 1 and image_stems.count(image.stem) == 1:
            mask = by_stem[image.stem][0]  # a flat mask folder
        if mask is None or mask in used:
            index.images_without_mask.append(image)
        else:
            index.masks[image] = mask
            used.add(mask)
    index.masks_without_image = [p for p in mask_files if p not in used]


def _mask_key(path: Path, root: Path) -> tuple[str, str]:
    stem = path.stem[: -len(MASK_SUFFIX)] if path.stem.endswith(MASK_SUFFIX) else path.stem
    return path.relative_to(root).parent.as_posix(), stem


def _refuse_mask_mismatch(index: LayoutIndex) -> None:
    if not index.has_masks:
        return
    problems = []
    if index.images_without_mask:
        problems.append(f"{len(index.images_without_mask)} defective image(s) without a mask: "
                        f"{_names(index.images_without_mask)}")
    if index.masks_without_image:
        problems.append(f"{len(index.masks_without_image)} mask(s) without an image: {_names(index.masks_without_image)}")
    if problems:
        raise decoding.DataError("; ".join(problems) + ". A mask is matched by its path below the mask folder and its "
                          "stem (017.png or 017_mask.png for 017.jpg); add the missing files, or leave --masks out "
                          "for image-level metrics only")


def _require_good(index: LayoutIndex) -> LayoutIndex:
    if not index.good:
        raise decoding.DataError(f"no good images in {index.roots.get('good')} ({', '.join(L.IMAGE_EXTENSIONS)})")
    return index


def _defect_type(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else FLAT_DEFECT_TYPE


def _names(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _parts_name(good: Path) -> str:
    """The good folder's name, or its parent's when it is called "good" (as RunConfig names the category)."""
    folder = good.resolve()
    return (folder.parent if folder.name == "good" else folder).name or "parts"


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


__all__ = ["DEFAULT_TEST_FRACTION", "LayoutIndex", "RunData", "draw_held_out", "evaluation_note", "index_folders",
           "index_layout", "is_folder_config", "list_image_files", "run_data"]
