"""The data check: what a data set holds, and what would make a fit or its numbers wrong, before any fit.

``anomaly check-data`` runs it, and ``anomaly fit`` runs the same check first (its record goes into
the run folder as ``datacheck.json``). It reads every image once, in a thread pool:

- counts per split and defect type, image sizes, aspect ratios, orientations, modes, EXIF rotations;
- unreadable files (the project's one decoder, :func:`anomaly.decoding.decode_image`, decides), files
  skipped for their extension, blank images;
- **exact duplicates** (same bytes: SHA-256) and **near-duplicates** (the same picture re-encoded,
  resized or re-exposed) within the good images and **across training and test** -- a test image that
  is a copy of a training image inflates every number measured on it;
- masks without images and defective images without masks;
- whether the calibration set can reach the target false-reject rate: the conformal threshold is the
  ``k = ceil((n + 1)(1 - alpha))``-th smallest of ``n`` good calibration scores, so ``k <= n`` needs
  ``n >= 1/alpha - 1`` scores (:func:`anomaly.thresholds.calibration_rank`).

Near-duplicates. Every image is decoded to a 32 x 32 grey thumbnail. A pair is a near-duplicate when
its perceptual hash (``imagehash.phash``, DCT, 64 bits) differs in at most ``PHASH_MAX_BITS`` bits
AND the Pearson correlation of the thumbnails is at least ``1 - NEAR_MAX_DISTANCE``.
The hash alone cannot tell parts apart: photos of one part type in one fixture under one light are
what a perceptual hash calls "the same picture" (on MVTec AD screw, distinct screws have hash
distance 0); the correlation of the z-normalised thumbnails does. Both thresholds, and what they
catch and miss, are measured by ``anomaly.study.dupbench`` (docs/own-data.md).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomaly import decoding
from anomaly import folders as F
from anomaly import thresholds as T
from anomaly.datacheck_record import (CalibrationCheck, DataCheck, DuplicateGroup, ImageRecord, Problem,
                                     find_problems)
from anomaly.models import method_spec

logger = logging.getLogger(__name__)

THUMB = 32  # side of the grey thumbnail every image is decoded to
NEAR_MAX_DISTANCE = 2.2e-4  # 1 - Pearson r of two thumbnails (docs/own-data.md: how it was set)
PHASH_MAX_BITS = 12  # of the 64 bits of imagehash.phash
BLANK_STD = 2 / 255  # thumbnails flatter than this are blank (and left out of the near-duplicate test)


def check_data(cfg: Any, workers: int | None = None) -> DataCheck:
    """Check the data of a run configuration (:class:`anomaly.config.RunConfig`, or its fields as a dict).

    Raises:
        DataError: a folder that does not exist, or no good image at all (nothing to check).
    """
    from dataclasses import asdict, is_dataclass

    cfg = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    start = time.perf_counter()
    index = F.index_layout(cfg)
    entries = ([(p, "train", "good") for p in index.good] + [(p, "test", "good") for p in index.test_good]
               + [(p, "test", t) for p, t in index.defective])
    records, thumbs = scan([p for p, _, _ in entries], [r for _, r, _ in entries], [t for _, _, t in entries], workers)
    groups = duplicate_groups(records, thumbs)
    good_groups = [[i for i in g if i < len(index.good)] for g in groups]
    held_out = None
    if F.is_folder_config(cfg) and index.defective and not index.test_good and len(index.good) >= 2:
        drawn = F.draw_held_out(len(index.good), [g for g in good_groups if len(g) > 1],
                                float(cfg.get("test_fraction") or F.DEFAULT_TEST_FRACTION), int(cfg.get("seed") or 0))
        held_out = [index.good[i].relative_to(Path(cfg["good"])).as_posix() for i in drawn]
    check = _assemble(cfg, index, records, thumbs, groups, held_out)
    check.seconds = time.perf_counter() - start
    logger.info("data check of %d images in %.1f s: %d error(s), %d warning(s)", check.n_images, check.seconds,
                sum(p.severity == "error" for p in check.problems), sum(p.severity == "warning" for p in check.problems))
    return check


def scan(paths: Sequence[Path], roles: Sequence[str], defect_types: Sequence[str],
         workers: int | None = None) -> tuple[list[ImageRecord], np.ndarray]:
    """Read every file once (in ``workers`` threads): records and (N, 32, 32) grey thumbnails (NaN: unreadable)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(_scan_one, paths, chunksize=16))
    records = [ImageRecord(path=str(p), role=r, defect_type=t, **info)
               for p, r, t, (info, _) in zip(paths, roles, defect_types, results)]
    thumbs = np.stack([t for _, t in results]) if results else np.zeros((0, THUMB, THUMB), np.float32)
    return records, thumbs


def _scan_one(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    """Header facts, SHA-256, grey thumbnail and perceptual hash of one file (never raises for a bad file)."""
    import imagehash
    from PIL import Image

    blank = np.full((THUMB, THUMB), np.nan, np.float32)
    try:
        payload = Path(path).read_bytes()
    except OSError as err:
        return {"error": f"cannot read: {err.strerror or err}"}, blank
    info: dict[str, Any] = {"sha256": hashlib.sha256(payload).hexdigest()}
    try:
        thumb = decoding.decode_image(payload, THUMB).mean(0).numpy()  # (32, 32) grey in [0, 1]: the fit's own decoder
        with Image.open(io.BytesIO(payload)) as img:
            # PNG keeps EXIF after the pixels: getexif() would decode the image again, unless it came first
            exif = img.getexif() if img.format != "PNG" or "exif" in img.info else {}
            orientation = exif.get(0x0112, 1)
            info.update(width=img.width, height=img.height, mode=img.mode, exif_rotated=orientation in (5, 6, 7, 8))
    except decoding.DataError as err:
        return {**info, "error": str(err)}, blank
    except Exception as err:  # anything PIL raises on a crafted header
        return {**info, "error": f"cannot read image: {err!r}"}, blank
    info["phash"] = str(imagehash.phash(Image.fromarray(np.round(thumb * 255).astype(np.uint8))))
    return info, thumb.astype(np.float32)


def duplicate_groups(records: Sequence[ImageRecord], thumbs: np.ndarray) -> list[list[int]]:
    """Groups (index lists, each sorted, at least 2) of exact or near-duplicate images (union-find)."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_sha: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.sha256 is not None:
            parent[root(i)] = root(by_sha.setdefault(r.sha256, i))
    for i, j, _ in near_pairs(records, thumbs):
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def near_pairs(records: Sequence[ImageRecord], thumbs: np.ndarray, chunk: int = 1024) -> list[tuple[int, int, float]]:
    """(i, j, 1 - r) for i < j whose thumbnails correlate within ``NEAR_MAX_DISTANCE`` and whose
    perceptual hashes differ in at most ``PHASH_MAX_BITS`` bits; blank and unreadable images are left out."""
    flat = thumbs.reshape(len(thumbs), -1)  # (N, 1024)
    usable = np.flatnonzero(np.isfinite(flat).all(1) & (np.nan_to_num(flat).std(1) >= BLANK_STD))
    z = unit_rows(flat[usable])
    bits = np.array([_bits(records[i].phash) for i in usable], dtype=bool).reshape(len(usable), 64)
    pairs = []
    for start in range(0, len(usable), chunk):
        distance = 1.0 - z[start:start + chunk] @ z.T  # (c, M)
        for a, b in zip(*np.nonzero(distance <= NEAR_MAX_DISTANCE)):
            i, j = start + int(a), int(b)
            if i < j and np.count_nonzero(bits[i] != bits[j]) <= PHASH_MAX_BITS:
                pairs.append((int(usable[i]), int(usable[j]), max(float(distance[a, b]), 0.0)))
    return pairs


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit length: their dot products are Pearson correlations."""
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _bits(phash: str | None) -> list[bool]:
    return [bool(int(phash, 16) >> (63 - k) & 1) for k in range(64)] if phash else [False] * 64


def calibration_check(cfg: dict[str, Any], n_good: int, n_validation_good: int = 0) -> CalibrationCheck:
    """How many good calibration scores the fit of ``cfg`` will have, and whether they reach its target.

    Args:
        n_good: good images the fit may use (after any held-out test images).
        n_validation_good: MVTec AD ``validation/good`` images (a validation split gets them too).
    """
    method, folds = cfg["method"], cfg.get("folds")
    crossfit = method_spec(method).crossfits and folds != 0
    if crossfit:
        n_scores = min(n_good, cfg.get("max_train") or n_good)
    else:
        fraction = 0.1 if cfg.get("val_fraction") is None else float(cfg["val_fraction"])
        n_train = n_good - n_validation_good
        carved = int(round(fraction * n_train))
        n_scores = (min(max(carved, 1), n_train - 1) if fraction > 0 and n_train >= 2 else carved) + n_validation_good
    target, estimator = float(cfg.get("target_frr") or T.DEFAULT_TARGET_FRR), cfg.get("estimator") or T.DEFAULT_ESTIMATOR
    k = T.calibration_rank(n_scores, target, estimator) if n_scores else None
    rank = k if k is not None and k <= n_scores else None  # None: the target is out of reach
    return CalibrationCheck(method=method, kind="crossfit" if crossfit else "validation", n_scores=n_scores,
                            target_frr=target, estimator=estimator, rank=rank, reachable=rank is not None,
                            n_needed=T.min_calibration_size(target, estimator),
                            smallest_reachable_frr=1.0 / (n_scores + 1) if estimator == "conformal" else None)


def _assemble(cfg: dict[str, Any], index: F.LayoutIndex, records: list[ImageRecord], thumbs: np.ndarray,
              groups: list[list[int]], held_out: list[str] | None) -> DataCheck:
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        counts.setdefault(r.role, {}).setdefault(r.defect_type, 0)
        counts[r.role][r.defect_type] += 1
    ok = [r for r in records if r.error is None]
    flat = [r.path for r, t in zip(records, thumbs) if r.error is None and float(np.nanstd(t)) < BLANK_STD]
    n_validation = sum(1 for p in index.good if p.parent.parent.name == "validation") if cfg.get("data") else 0
    n_fit = len(index.good) - len(held_out or [])
    check = DataCheck(
        category=index.category, layout="folders" if F.is_folder_config(cfg) else "mvtec", roots=index.roots,
        counts=counts, has_masks=index.has_masks, n_masks=len(index.masks),
        sizes=dict(Counter(f"{r.width}x{r.height}" for r in ok).most_common()),
        orientations=dict(Counter(_orientation(r) for r in ok)),
        aspect_ratios=dict(Counter(f"{max(r.width, r.height) / max(min(r.width, r.height), 1):.2f}" for r in ok)
                           .most_common()),
        modes=dict(Counter(r.mode for r in ok)), exif_rotated=sum(r.exif_rotated for r in ok),
        unreadable=[{"path": r.path, "error": r.error} for r in records if r.error is not None],
        skipped=[str(p) for p in index.skipped], blank=flat,
        duplicates=[_group(g, records, thumbs) for g in groups],
        images_without_mask=[str(p) for p in index.images_without_mask] if index.has_masks else [],
        masks_without_image=[str(p) for p in index.masks_without_image], held_out_good=held_out,
        calibration=calibration_check(cfg, n_fit, n_validation), problems=[], n_images=len(records), seconds=0.0)
    check.problems = find_problems(check)
    return check


def _group(members: list[int], records: Sequence[ImageRecord], thumbs: np.ndarray) -> DuplicateGroup:
    train = [records[i].path for i in members if records[i].role == "train"]
    test = [records[i].path for i in members if records[i].role == "test"]
    exact = len({records[i].sha256 for i in members}) == 1
    scope = "across training and test" if train and test else "within training" if train else "within test"
    distance = 0.0
    if not exact:
        z = unit_rows(thumbs[members].reshape(len(members), -1))
        distance = float(np.nan_to_num(1.0 - (z @ z.T)).clip(0).max())
    return DuplicateGroup(kind="exact" if exact else "near", scope=scope, train=train, test=test,
                          max_distance=distance)


def _orientation(r: ImageRecord) -> str:
    h, w = (r.width, r.height) if r.exif_rotated else (r.height, r.width)
    return "square" if h == w else "landscape" if w > h else "portrait"


__all__ = ["CalibrationCheck", "DataCheck", "DuplicateGroup", "ImageRecord", "Problem", "calibration_check",
           "check_data", "duplicate_groups", "near_pairs", "scan"]  # the record types re-exported
