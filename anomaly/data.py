"""Index, split and read data laid out like MVTec AD (Bergmann et al., CVPR 2019).

Layout, for any category name::

    ROOT/CATEGORY/train/good/*.png                   good images only (the training set)
    ROOT/CATEGORY/validation/good/*.png              optional: extra good images for validation
    ROOT/CATEGORY/test/good/*.png                    good test images (masks: all zero)
    ROOT/CATEGORY/test/<defect_type>/NNN.png         defective test images
    ROOT/CATEGORY/ground_truth/<defect_type>/NNN_mask.png

Images may be png, jpg, jpeg, bmp, tif or tiff (any case); grayscale, RGBA and 16-bit images are
converted to 3-channel float in [0, 1]. Files with other extensions and hidden files are skipped;
other folders and loose files in the category folder are ignored. Every problem in the data raises
``DataError`` with the offending path in its message.

Every image -- a training file, a file given to ``predict`` or an HTTP upload -- goes through one
defensive decoder, :func:`decode_image`: anything PIL raises becomes :class:`ImageDecodeError`;
images over ``MAX_PIXELS`` pixels or longer than ``MAX_ASPECT`` : 1 are refused from their header,
before any pixel is decoded; an axis more than ``REDUCE_MARGIN`` times the model's input side is
box-reduced in PIL (JPEG: decoded at a reduced DCT scale) before any float array exists, so the
float memory of a decode is bounded by the input size, not by the image's; and at most
``MAX_HEAVY_DECODES`` images over ``HEAVY_PIXELS`` are decoded at once per process.

The validation split is a seeded carve of ``train/good`` (plus ``validation/good`` if present): it
is what thresholds and normalisation are fitted on, so it never contains test images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from anomaly.geometry import Letterbox

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
_KNOWN_FOLDERS = {"train", "validation", "test", "ground_truth"}
_MASK_SUFFIX = "_mask"
MAX_PIXELS = 64 * 2**20  # width x height; larger images are refused (decompression-bomb guard)
MAX_ASPECT = 100  # longer side / shorter side; longer strips are refused
REDUCE_MARGIN = 8  # an axis over 8x the model's input side is box-reduced in PIL first (never MVTec's <= 1024 px)
HEAVY_PIXELS = 4 * 2**20  # decodes of larger images share MAX_HEAVY_DECODES slots per process
MAX_HEAVY_DECODES = 2
_HEAVY_SLOTS = threading.BoundedSemaphore(MAX_HEAVY_DECODES)


class DataError(ValueError):
    """A problem with the data on disk; the message names the offending path."""


class ImageDecodeError(DataError):
    """An image that cannot be used; ``status_code`` is its HTTP answer (413 too large, 415 not an image, 422)."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


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


def read_image(path: str | Path, image_size: int | None = None) -> torch.Tensor:
    """Read an image file as float32 (3, H, W) in [0, 1], or (3, S, S) when ``image_size`` is given.

    Grayscale becomes 3 identical channels, alpha is dropped, 16-bit images are scaled by 65535.
    Resizing is bilinear with antialiasing (see :func:`decode_image` for the caps).
    """
    return decode_image(Path(path), image_size)


def decode_image(source: bytes | Path, image_size: int | None = None, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The one defensive decoder: an image file or encoded bytes -> float32 in [0, 1].

    Args:
        source: a file path, or the encoded image (any format PIL reads).
        image_size: when given, the output side S (bilinear antialiased resize, after a cheap PIL
            box reduction of any axis longer than ``REDUCE_MARGIN * S``).
        max_pixels: largest width x height accepted.

    Returns:
        (3, S, S), or (3, H, W) without ``image_size``; grayscale -> 3 equal channels.

    Raises:
        ImageDecodeError: empty (422), not an image (415), over ``max_pixels`` or ``MAX_ASPECT`` (413),
            corrupt or truncated (422); the message names the file when ``source`` is a path.
    """
    if isinstance(source, bytes) and not source:
        raise ImageDecodeError("the upload is empty", 422)
    with _open(source) as img:
        _check_pixels(source, img, max_pixels)
        hw = (img.height, img.width)  # the letterbox follows the file's aspect, not a reduced one's
        slot = _HEAVY_SLOTS if img.width * img.height > HEAVY_PIXELS else contextlib.nullcontext()
        try:
            with slot:
                array = image_array(_reduced(img, image_size))  # (H', W') or (H', W', 3)
        except Exception as err:  # PIL raises many types on crafted data: OSError, SyntaxError, struct.error, ...
            raise ImageDecodeError(f"cannot decode {_label(source)}: corrupt or truncated image data ({err})", 422) from None
    return to_image_tensor(array, image_size, hw)


def image_hw(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    with _open(Path(path)) as img:
        return img.height, img.width


def _check_pixels(source: Path | bytes, img: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """From the header: 413 ImageDecodeError over ``max_pixels`` pixels or longer than ``MAX_ASPECT``:1."""
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"{_label(source)} of {width}x{height} px exceeds the limit of {max_pixels} pixels",
                               413)
    if max(width, height) > MAX_ASPECT * max(min(width, height), 1):
        raise ImageDecodeError(f"{_label(source)} of {width}x{height} px is longer than {MAX_ASPECT}:1", 413)


def _reduced(img: Image.Image, image_size: int | None) -> Image.Image:
    """``img`` box-reduced by an integer factor on each axis longer than ``REDUCE_MARGIN * image_size``.

    L, RGB, I, F and 16-bit images are reduced as they are; other modes (palette, alpha, CMYK) are
    converted to L or RGB first, since palette indices and premultiplied alpha do not average.
    """
    factors = _reduce_factors(img.size, image_size)
    if max(factors) == 1:
        return img
    img.draft(img.mode, (img.width // factors[0], img.height // factors[1]))  # JPEG: cheap DCT scaling
    img.load()
    factors = _reduce_factors(img.size, image_size)
    if img.mode.startswith("I;16"):  # Image.reduce has no 16-bit kernel; a box resize is the same average
        return img.resize(tuple(-(-side // f) for side, f in zip(img.size, factors)), Image.Resampling.BOX)
    img = _plain_mode(img)
    return img.reduce(factors) if max(factors) > 1 else img


def _reduce_factors(size: tuple[int, int], image_size: int | None) -> tuple[int, int]:
    if image_size is None:
        return (1, 1)
    return tuple(max(1, side // (REDUCE_MARGIN * image_size)) for side in size)


def to_image_tensor(array: np.ndarray, image_size: int | None = None,
                    hw: tuple[int, int] | None = None) -> torch.Tensor:
    """(H, W) or (H, W, 3) float32 pixels in [0, 1] -> (3, H, W), or (3, S, S) letterboxed.

    Args:
        hw: the original image's (H, W) when ``array`` was reduced from it (its aspect sets the
            letterbox, :class:`anomaly.geometry.Letterbox`); default ``array``'s own.
    """
    image = torch.from_numpy(array)
    image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)  # (1 or 3, H, W)
    if image_size is not None and tuple(image.shape[1:]) != (image_size, image_size):
        # a single channel is resized once, then repeated: the same values for a third of the work
        height, width = hw or image.shape[1:]
        image = Letterbox(int(height), int(width), image_size).image(image)  # (1 or 3, S, S)
    return image.expand(3, -1, -1).contiguous()


def image_array(img: Image.Image) -> np.ndarray:
    """Decoded PIL image -> float32 in [0, 1]: (H, W) for single-channel images, (H, W, 3) otherwise.

    16-bit modes are scaled by 65535, ``F`` is clipped, alpha is dropped, palette/CMYK become RGB.
    Raises what PIL raises on truncated or corrupt pixel data (OSError, ValueError, SyntaxError).
    """
    img = _plain_mode(img)
    if img.mode == "I":  # 16-bit (PNG 16-bit opens as I;16 or I)
        return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    return np.asarray(img, dtype=np.float32) / 255.0


def _plain_mode(img: Image.Image) -> Image.Image:
    """``img`` decoded, as L, RGB, I (16- and 32-bit integers) or F: the modes ``Image.reduce`` handles."""
    img.load()
    if img.mode.startswith("I;16"):
        return img.convert("I")
    if img.mode in ("1", "LA", "La"):
        return img.convert("L")
    if img.mode not in ("L", "RGB", "I", "F"):  # RGBA, P, CMYK, ...: alpha is dropped
        return img.convert("RGB")
    return img


def read_mask(path: str | Path | None, size: tuple[int, int] | None) -> torch.Tensor:
    """Read a mask as float32 (H, W) in {0, 1} at ``size`` = (H, W) (nearest; ``None``: the file's own);
    a ``None`` path gives zeros."""
    if path is None:
        return torch.zeros(size, dtype=torch.float32)
    with _load(Path(path)) as img:
        array = np.asarray(img if img.mode in ("L", "1", "I", "I;16", "F") else img.convert("L"))
    if array.ndim == 3:
        array = array.max(axis=2)
    binary = array > (0 if array.max() <= 1 else array.max() / 2)  # 0/255 masks, 0/1 masks, 16-bit masks
    mask = Image.fromarray(binary.astype(np.uint8))
    if size is not None and mask.size != (size[1], size[0]):
        mask = mask.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32))


class AnomalyDataset(Dataset):
    """Samples as dicts: image (3, S, S) float in [0, 1], mask (S, S) in {0, 1}, label, index, hw.

    Non-square images and their masks are letterboxed (:mod:`anomaly.geometry`), not squashed.
    """

    def __init__(self, samples: list[Sample], image_size: int) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """image (3, S, S) and mask (S, S) letterboxed alike; hw (2,) the file's (H, W)."""
        sample = self.samples[index]
        size = self.image_size
        hw = image_hw(sample.image_path)
        if sample.mask_path is None:
            mask = torch.zeros(size, size)
        else:
            native = read_mask(sample.mask_path, hw).numpy()  # (H, W)
            mask = torch.from_numpy(Letterbox(*hw, size).mask(native).astype(np.float32))  # (S, S)
        return {"image": read_image(sample.image_path, size), "mask": mask, "label": sample.label,
                "index": index, "hw": torch.tensor(hw)}


def mask_areas(samples: list[Sample]) -> pd.DataFrame:
    """Defect size per defective sample: columns defect_type, image_path, area_fraction, n_regions."""
    from scipy.ndimage import label as connected_components

    rows = []
    for s in samples:
        if s.mask_path is None:
            continue
        with _open(s.mask_path) as img:
            size = (img.height, img.width)
        mask = read_mask(s.mask_path, size).numpy() > 0
        rows.append((s.defect_type, str(s.image_path), float(mask.mean()), int(connected_components(mask)[1])))
    return pd.DataFrame(rows, columns=["defect_type", "image_path", "area_fraction", "n_regions"])


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
        with _open(s.image_path) as img:
            _check_pixels(s.image_path, img)
            colour.add(img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"))
        if s.mask_path is not None:
            with _open(s.mask_path) as mask:
                _check_pixels(s.mask_path, mask)
    if len(colour) > 1:
        logger.warning("%s mixes grayscale and colour images; all are read as 3-channel", cat_dir)


def _open(source: Path | bytes) -> Image.Image:
    """Open an image lazily (header only); ImageDecodeError names the path when it is missing or not an image."""
    label = _label(source)
    try:
        return Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except FileNotFoundError:
        raise ImageDecodeError(f"{label} does not exist", 422) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"cannot read {label}: not an image in a format this reads "
                               f"(PNG, JPEG, TIFF, BMP, ...)", 415) from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"cannot read {label}: {err}", 413) from None
    except Exception as err:  # a crafted header: OSError, SyntaxError, struct.error, ...
        raise ImageDecodeError(f"cannot read {label}: {err}", 422) from None


def _label(source: Path | bytes) -> str:
    return f"image file {source}" if isinstance(source, Path) else "image"


def _load(path: Path) -> Image.Image:
    """Open and decode an image; ImageDecodeError names the path when its pixel data is truncated or corrupt."""
    img = _open(path)
    try:
        img.load()
    except Exception as err:  # OSError, SyntaxError, ValueError, struct.error, ... on crafted data
        img.close()
        raise ImageDecodeError(f"cannot decode image file {path}: {err}", 422) from None
    return img
