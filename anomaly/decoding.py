"""The one defensive image decoder: a file, an upload or its bytes -> float32 pixels, in bounded memory.

Every image -- a training file, a file given to ``predict``, an HTTP upload -- goes through
:func:`decode_image` (or :func:`decode_with_hw`, which also returns the image's (H, W)):

* only the formats in :data:`FORMATS` are opened (PNG, JPEG, TIFF, BMP, PNM): none of their PIL
  plugins decodes or allocates pixels in ``Image.open``. Others are never tried and get 415: the
  container formats ICO, CUR and ICNS decode their embedded frame inside ``Image.open``, before any
  size check could run, and WebP's decoder reserves two canvas-sized buffers there (1.1 GB of
  address space for a 5 KB file); no camera writes them;
* a path must name a regular file: a FIFO, device, socket or folder is refused before it is
  opened (reading a FIFO would wait for a writer forever);
* images over ``MAX_PIXELS`` pixels or longer than ``MAX_ASPECT`` : 1 are refused from their header
  (413); for the accepted formats the header's size is the size decoded (of the first frame of a
  multi-frame file, the only one read);
* every decode holds its :func:`decode_cost` (pixels of 4 bytes) of a per-process
  :class:`PixelBudget`, ``DECODE_BUDGET``, so concurrent decodes are bounded by pixels in flight,
  not by how many requests arrive;
* an axis more than ``REDUCE_MARGIN`` times the model's input side is box-reduced in PIL (JPEG:
  decoded at a reduced DCT scale) before any float array exists, and further when the float copy
  would exceed ``MAX_FLOAT_PIXELS``;
* the EXIF orientation (JPEG, TIFF, PNG ``eXIf`` before the pixel data) is applied, after the
  reduction, so the image, its (H, W) and any region boxes are in the orientation a viewer shows;
* NaN or infinite pixel values (float TIFF) are refused (422): they would score as NaN.

Anything PIL raises on crafted data becomes :class:`ImageDecodeError` (a :class:`DataError`) whose
``status_code`` is the HTTP answer and whose message names the file when the source is a path.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from anomaly.geometry import Letterbox
from anomaly.utils import printable

FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "PPM")  # PIL plugin names; PPM reads PBM/PGM/PPM/PNM
FORMAT_NAMES = "PNG, JPEG, TIFF, BMP, PNM"
MAX_PIXELS = 64 * 2**20  # width x height; larger images are refused (decompression-bomb guard)
MAX_ASPECT = 100  # longer side / shorter side; longer strips are refused
REDUCE_MARGIN = 8  # an axis over 8x the model's input side is box-reduced in PIL first (never MVTec's <= 1024 px)
MAX_FLOAT_PIXELS = 16 * 2**20  # ... and further when the float copy would be larger (192 MB of float32 RGB)
_STRIP_PIXELS = 2**20  # modes converted before a reduction are converted this many pixels at a time
DECODE_BUDGET_PIXELS = MAX_PIXELS  # 4-byte pixels decoding at once per process: 256 MiB (PixelBudget, decode_cost)
# EXIF orientation -> the transpose that shows the image upright (as PIL.ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}

Source = Union[bytes, Path, BinaryIO]


class DataError(ValueError):
    """A problem with the data on disk; the message names the offending path."""


class ImageDecodeError(DataError):
    """An image that cannot be used; ``status_code`` is its HTTP answer (413 too large, 415 not an image, 422)."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


class PixelBudget:
    """At most ``capacity`` pixels decoded at once; a decode waits, first come first served, for room.

    A decode costing ``n`` (:func:`decode_cost`, pixels of 4 bytes) holds ``min(n, capacity)`` of the
    budget while PIL decodes, reduces and converts it, so the memory of concurrent decodes is
    bounded by ``4 * capacity`` bytes whether they come from one request or forty; one decode
    costing more than the whole budget runs alone (see docs/robustness.md).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 pixel, got {capacity}")
        self.capacity = int(capacity)
        self.in_use = 0
        self._queue: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = max(0, min(int(pixels), self.capacity))
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(lambda: self._queue[0] is ticket and self.in_use + pixels <= self.capacity)
            self._queue.popleft()
            self.in_use += pixels
            self._changed.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


DECODE_BUDGET = PixelBudget(DECODE_BUDGET_PIXELS)


class _NonFinite(ValueError):
    pass


def decode_image(source: Source, image_size: int | None = None, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The one defensive decoder: an image file, upload or encoded bytes -> float32 in [0, 1].

    Args:
        source: a file path, an open binary file (an upload), or the encoded image, in one of :data:`FORMATS`.
        image_size: when given, the output side S (bilinear antialiased letterbox, after a cheap PIL
            box reduction of any axis longer than ``REDUCE_MARGIN * S``).
        max_pixels: largest width x height accepted.

    Returns:
        (3, S, S), or (3, H, W) without ``image_size``, upright (EXIF orientation applied); grayscale
        -> 3 equal channels.

    Raises:
        ImageDecodeError: empty (422), not a regular file (422), not an image in an accepted format
            (415), over ``max_pixels`` or ``MAX_ASPECT`` (413), corrupt, truncated or with NaN or
            infinite pixel values (422); the message names the file when ``source`` is a path.
    """
    return decode_with_hw(source, image_size, max_pixels)[0]


def decode_with_hw(source: Source, image_size: int | None = None,
                   max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`decode_image` and the image's upright (H, W) (what region boxes are measured in)."""
    with open_image(source) as img:
        check_pixels(source, img, max_pixels)
        orientation = exif_orientation(img)
        hw = upright_hw(img.size, orientation)
        factors = _reduce_factors(img.size, image_size)
        with DECODE_BUDGET.hold(decode_cost(img.mode, img.size, factors)):
            try:
                array = image_array(_upright(_reduced(img, image_size), orientation))  # (H', W') or (H', W', 3)
                return to_image_tensor(array, image_size, hw), hw
            except _NonFinite:
                raise ImageDecodeError(f"cannot use {label(source)}: it has NaN or infinite pixel values "
                                       f"(a float image?)", 422) from None
            except Exception as err:  # PIL raises many types on crafted data: OSError, SyntaxError, struct.error, ...
                raise ImageDecodeError(f"cannot decode {label(source)}: corrupt or truncated image data ({err})",
                                       422) from None


def decode_cost(mode: str, size: tuple[int, int], factors: tuple[int, int] = (1, 1)) -> int:
    """What a decode holds of :data:`DECODE_BUDGET`, in pixels of 4 bytes (a PIL RGB pixel).

    The decoded image (one per pixel), a full-size converted copy when the mode needs one and the
    image is not reduced (palette, alpha, CMYK, 1-bit, 16-bit; a reduction converts in strips), and
    four per pixel of the float array (12 bytes, plus the 3-byte buffer numpy reads it from).
    """
    width, height = size
    pixels = width * height
    converted = 0 if mode in ("L", "RGB", "I", "F") or max(factors) > 1 else pixels
    float_pixels = -(-width // factors[0]) * -(-height // factors[1])
    return pixels + converted + 4 * float_pixels


def image_hw(source: Source) -> tuple[int, int]:
    """Upright (H, W) of an image, from its header (EXIF orientation applied)."""
    with open_image(source) as img:
        return upright_hw(img.size, exif_orientation(img))


def mask_array(path: Path) -> np.ndarray:
    """A mask file's values, upright: (H, W) or (H, W, C) as stored (L, 1, I, I;16, F kept; others -> L).

    Same checks and pixel budget as :func:`decode_image`, no reduction.
    """
    with open_image(path) as img:
        check_pixels(path, img)
        orientation = exif_orientation(img)
        with DECODE_BUDGET.hold(img.width * img.height):
            try:
                img.load()
                plain = img if img.mode in ("L", "1", "I", "I;16", "F") else img.convert("L")
                return np.asarray(_upright(plain, orientation))
            except Exception as err:  # OSError, SyntaxError, ValueError, struct.error, ... on crafted data
                raise ImageDecodeError(f"cannot decode {label(path)}: {err}", 422) from None


def check_pixels(source: Source, img: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """From the header: 413 ImageDecodeError over ``max_pixels`` pixels or longer than ``MAX_ASPECT``:1."""
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"{label(source)} of {width}x{height} px exceeds the limit of {max_pixels} pixels",
                               413)
    if max(width, height) > MAX_ASPECT * max(min(width, height), 1):
        raise ImageDecodeError(f"{label(source)} of {width}x{height} px is longer than {MAX_ASPECT}:1", 413)


def open_image(source: Source) -> Image.Image:
    """Open an image lazily (header only) in one of :data:`FORMATS`; ImageDecodeError names the path.

    A path must be a regular file; an open file is read from its start.
    """
    name = label(source)
    if isinstance(source, Path):
        require_regular_file(source, name)
    elif isinstance(source, bytes):
        source = io.BytesIO(source)
    if not isinstance(source, Path):
        if source.seek(0, os.SEEK_END) == 0:
            raise ImageDecodeError("the upload is empty", 422)
        source.seek(0)
    try:
        return Image.open(source, formats=FORMATS)
    except FileNotFoundError:
        raise ImageDecodeError(f"{name} does not exist", 422) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"cannot read {name}: not an image in a format this reads ({FORMAT_NAMES})",
                               415) from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"cannot read {name}: {err}", 413) from None
    except Exception as err:  # a crafted header: OSError, SyntaxError, struct.error, ...
        raise ImageDecodeError(f"cannot read {name}: {err}", 422) from None


def require_regular_file(path: Path, name: str | None = None) -> None:
    """ImageDecodeError (422) unless ``path`` is a regular file (after symlinks): never open a FIFO or a device."""
    name = name or f"file {printable(str(path))}"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageDecodeError(f"{name} does not exist", 422) from None
    except OSError as err:
        raise ImageDecodeError(f"cannot read {name}: {err.strerror}", 422) from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ImageDecodeError(f"{name} is {kind}: only regular files are read", 422)


def label(source: Source) -> str:
    """How messages name ``source``: ``image file PATH`` (non-UTF-8 bytes as ``\\xNN``), else ``image``."""
    return f"image file {printable(str(source))}" if isinstance(source, Path) else "image"


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8) known from the header; 1 when absent or unreadable.

    PIL's base ``getexif`` reads only what the header held (a PNG's own ``getexif`` would decode the
    whole image to look for an ``eXIf`` chunk after the pixels).
    """
    try:
        value = Image.Image.getexif(img).get(ExifTags.Base.Orientation, 1)
    except Exception:  # crafted EXIF: treated as absent
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def upright_hw(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(H, W) as shown: a PIL ``size`` (W, H) with the axes swapped by orientations 5-8."""
    width, height = size
    return (width, height) if orientation >= 5 else (height, width)


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    return img.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else img


def _reduced(img: Image.Image, image_size: int | None) -> Image.Image:
    """``img`` box-reduced by the integer factors of :func:`_reduce_factors` (none: ``img`` itself).

    L, RGB, I, F and 16-bit images are reduced as they are; other modes (palette, alpha, CMYK) are
    converted to L or RGB first, since palette indices do not average and PIL's reduce premultiplies
    alpha -- a strip of rows at a time, so no full-size converted copy exists.
    """
    factors = _reduce_factors(img.size, image_size)
    if max(factors) == 1:
        return img
    img.draft(img.mode, (img.width // factors[0], img.height // factors[1]))  # JPEG: cheap DCT scaling
    img.load()
    factors = _reduce_factors(img.size, image_size)
    if img.mode.startswith("I;16"):  # Image.reduce has no 16-bit kernel; a box resize is the same average
        return img.resize(tuple(-(-side // f) for side, f in zip(img.size, factors)), Image.Resampling.BOX)
    if max(factors) == 1:
        return _plain_mode(img)
    if img.mode in ("L", "RGB", "I", "F"):
        return img.reduce(factors)
    rows = factors[1] * max(1, _STRIP_PIXELS // (img.width * factors[1]))  # whole blocks: the same averages
    strips = [_plain_mode(img.crop((0, top, img.width, min(top + rows, img.height)))).reduce(factors)
              for top in range(0, img.height, rows)]
    out = Image.new(strips[0].mode, (strips[0].width, sum(strip.height for strip in strips)))
    for i, strip in enumerate(strips):
        out.paste(strip, (0, i * strips[0].height))
    return out


def _reduce_factors(size: tuple[int, int], image_size: int | None) -> tuple[int, int]:
    """Per axis ``side // (REDUCE_MARGIN * S)``, raised on both axes when the float array would still
    exceed ``MAX_FLOAT_PIXELS`` (an image over 4096 px a side at S > 256; never MVTec AD's)."""
    if image_size is None:
        return (1, 1)
    fx, fy = (max(1, side // (REDUCE_MARGIN * image_size)) for side in size)
    excess = (-(-size[0] // fx) * -(-size[1] // fy)) / MAX_FLOAT_PIXELS
    if excess > 1:
        extra = math.ceil(math.sqrt(excess))
        fx, fy = fx * extra, fy * extra
    return fx, fy


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
    Raises ValueError on NaN or infinite ``F`` values, and what PIL raises on truncated or corrupt
    pixel data (OSError, ValueError, SyntaxError).
    """
    img = _plain_mode(img)
    array = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        if not np.isfinite(array).all():  # a NaN would pass np.clip and score as NaN
            raise _NonFinite("NaN or infinite pixel values")
        return np.clip(array, 0.0, 1.0)  # a new array: PIL's F pixels are shared read-only
    array /= 65535.0 if img.mode == "I" else 255.0  # in place: one float copy of the image at a time
    return np.clip(array, 0.0, 1.0, out=array) if img.mode == "I" else array


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
