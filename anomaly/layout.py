"""Index and split data laid out like MVTec AD (Bergmann et al., CVPR 2019): which files are which.

Layout, for any category name::

    ROOT/CATEGORY/train/good/*.png                   good images only (the training set)
    ROOT/CATEGORY/validation/good/*.png              optional: extra good images for validation
    ROOT/CATEGORY/test/good/*.png                    good test images (masks: all zero)
    ROOT/CATEGORY/test/<defect_type>/NNN.png         defective test images
    ROOT/CATEGORY/ground_truth/<defect_type>/NNN_mask.png

Images may be png, jpg, jpeg, bmp, tif or tiff (any case). Files with other extensions and hidden
files are skipped; other folders and loose files in the category folder are ignored. Every problem
in the data raises :class:`anomaly.decoding.DataError` with the offending path in its message.
Reading the files is :mod:`anomaly.dataset`'s job (through the one decoder, :mod:`anomaly.decoding`);
this module only opens headers to refuse unreadable files before a fit.

The validation split is a seeded carve of ``train/good`` (plus ``validation/good`` if present): it
is what thresholds and normalisation are fitted on, so it never contains test images.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly.decoding import DataError, check_pixels, open_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_KNOWN_FOLDERS = {"train", "validation", "test", "ground_truth"}
_MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class Sample:
    """One image of a category, with its mask (``None`` for good images) and label (0 good, 1 defect)."""

    category: str
    split: str
    defect_type: str
    image_path: Path
    mask_path: Path | None
    label: int


@dataclass
class Splits:
    """Train (good only), validation (good only, never test) and test samples of one category."""

    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]


def list_categories(root: str | Path) -> list[str]:
    """Names of the folders under ``root`` that look like categories (they contain ``train/``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    return sorted(p.name for p in root.iterdir() if (p / "train").is_dir() and not p.name.startswith("."))


def index_category(root: str | Path, category: str) -> list[Sample]:
    """List the train/good, validation/good and test samples of ``category``, checking masks and files.

    Raises:
        DataError: missing root or category, missing or empty ``train/good``, a defect image without
            its mask, a mask without its image, or a file with an image extension that cannot be read.
    """
    cat_dir = Path(root) / category
    if not cat_dir.is_dir():
        available = list_categories(root)
        raise DataError(f"category folder {cat_dir} does not exist; available categories under {root}: "
                        f"{', '.join(available) or 'none'}")
    _log_unknown(cat_dir, _KNOWN_FOLDERS)
    train_dir = cat_dir / "train" / "good"
    train = [Sample(category, "train", "good", p, None, 0) for p in _list_images(train_dir, required=True)]
    if not train:
        raise DataError(f"{train_dir} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    _log_unknown(cat_dir / "train", {"good"})
    extra = []
    if (cat_dir / "validation").is_dir():
        _log_unknown(cat_dir / "validation", {"good"})
        extra = [Sample(category, "validation", "good", p, None, 0)
                 for p in _list_images(cat_dir / "validation" / "good")]
    samples = train + extra + _index_test(cat_dir, category)
    _check_readable(cat_dir, samples)
    return samples


def load_splits(root: str | Path, category: str, val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Index ``category`` and carve a seeded validation split out of ``train/good``.

    ``round(val_fraction * n_train)`` training images (at least one when ``val_fraction > 0`` and
    there are two or more) move to validation, joined by any ``validation/good`` images.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    samples = index_category(root, category)
    splits = carve_validation(samples, val_fraction, seed)
    logger.info("%s/%s: %d train, %d validation, %d test images", root, category, len(splits.train),
                len(splits.validation), len(splits.test))
    return splits


def carve_validation(samples: list[Sample], val_fraction: float, seed: int) -> Splits:
    """Splits of indexed ``samples``: a seeded ``val_fraction`` of the ``train`` ones (at least one when
    ``val_fraction > 0`` and there are two or more) moves to validation, joined by any ``validation`` ones."""
    train = [s for s in samples if s.split == "train"]
    n_val = int(round(val_fraction * len(train)))
    if val_fraction > 0 and len(train) >= 2:
        n_val = min(max(n_val, 1), len(train) - 1)
    carved = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    validation = [dataclasses.replace(s, split="validation") for i, s in enumerate(train) if i in carved]
    validation += [s for s in samples if s.split == "validation"]
    return Splits(train=[s for i, s in enumerate(train) if i not in carved], validation=validation,
                  test=[s for s in samples if s.split == "test"])


def _index_test(cat_dir: Path, category: str) -> list[Sample]:
    test_dir, gt_dir = cat_dir / "test", cat_dir / "ground_truth"
    if not test_dir.is_dir():
        logger.warning("%s has no test folder: only training and validation images are indexed", cat_dir)
        return []
    samples = []
    defect_types = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for defect_type in defect_types:
        images = _list_images(test_dir / defect_type)
        if not images:
            logger.warning("%s contains no images", test_dir / defect_type)
        if defect_type == "good":
            samples += [Sample(category, "test", "good", p, None, 0) for p in images]
            continue
        masks = {p.stem[: -len(_MASK_SUFFIX)]: p for p in _list_images(gt_dir / defect_type)
                 if p.stem.endswith(_MASK_SUFFIX)}
        for p in images:
            if p.stem not in masks:
                expected = gt_dir / defect_type / f"{p.stem}{_MASK_SUFFIX}.png"
                raise DataError(f"defect image {p} has no mask: expected {expected}")
            samples.append(Sample(category, "test", defect_type, p, masks[p.stem], 1))
        _check_orphan_masks(gt_dir / defect_type, {p.stem for p in images})
    if gt_dir.is_dir():
        for extra in sorted(p for p in gt_dir.iterdir() if p.is_dir() and p.name not in defect_types):
            if extra.name != "good":
                _check_orphan_masks(extra, set())
    return samples


def _check_orphan_masks(mask_dir: Path, image_stems: set[str]) -> None:
    for p in _list_images(mask_dir):
        stem = p.stem[: -len(_MASK_SUFFIX)] if p.stem.endswith(_MASK_SUFFIX) else None
        if stem is None:
            raise DataError(f"mask file {p} is not named <image name>{_MASK_SUFFIX}{p.suffix}")
        if stem not in image_stems:
            test_dir = mask_dir.parent.parent / "test" / mask_dir.name
            raise DataError(f"mask {p} has no image: expected {test_dir / stem}.<png|jpg|...>")


def _list_images(folder: Path, required: bool = False) -> list[Path]:
    """Image files in ``folder`` sorted by name; non-image files are skipped with a warning."""
    if not folder.is_dir():
        if required:
            raise DataError(f"required folder {folder} does not exist")
        return []
    images = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue  # .DS_Store, editor swap files, ...
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        else:
            logger.warning("skipping %s: not an image file (%s)", p, ", ".join(IMAGE_EXTENSIONS))
    return images


def _log_unknown(folder: Path, known: set[str]) -> None:
    for p in sorted(folder.iterdir()):
        if p.is_dir() and p.name not in known and not p.name.startswith("."):
            logger.info("ignoring folder %s (not part of the MVTec AD layout)", p)


def _check_readable(cat_dir: Path, samples: list[Sample]) -> None:
    """Open every image and mask header (cheap) and warn once if grayscale and colour images are mixed."""
    colour = set()
    for s in samples:
        with open_image(s.image_path) as img:
            check_pixels(s.image_path, img)
            colour.add(img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"))
        if s.mask_path is not None:
            with open_image(s.mask_path) as mask:
                check_pixels(s.mask_path, mask)
    if len(colour) > 1:
        logger.warning("%s mixes grayscale and colour images; all are read as 3-channel", cat_dir)
