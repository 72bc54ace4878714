"""Folder inspection: stream any number of images through a run into a CSV, resumably.

``anomaly predict --run-dir DIR FOLDER_OR_FILES... --csv results.csv [--heatmaps OUT]`` calls
:func:`inspect_paths`. Folders are walked recursively (image extensions only, sorted), files are
taken as named. Images are decoded and scored ``batch_size`` at a time; each image's row (path,
score, is_anomalous, regions = the number of defect regions, error) is written and flushed before
the next batch, and nothing of an image is kept after its row is written, so memory does not grow with the number of
images (beyond the list of paths). A file that cannot be decoded gets a row with its error and an
empty score. Re-running with the same CSV skips every path already in it (a cut-off last line is
dropped first), so an interrupted run resumes without redoing finished rows.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from anomaly.data import IMAGE_EXTENSIONS, DataError, decode_image, image_hw
from anomaly.geometry import Letterbox

logger = logging.getLogger(__name__)

COLUMNS = ("path", "score", "is_anomalous", "regions", "error")


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Every image under the folders in ``inputs`` (recursive, sorted) and every file named, in order.

    Raises:
        FileNotFoundError: an input that does not exist.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    return list(dict.fromkeys(paths))  # a file named twice is inspected once


def heatmap_name(path: str | Path) -> str:
    """``<stem>_<sha1 of the absolute path, 8 hex>_heatmap.png``: same-named files in different folders differ."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{Path(path).stem}_{digest}_heatmap.png"


def done_paths(csv_path: Path) -> set[str]:
    """Paths already in ``csv_path`` (empty when it does not exist); drops a cut-off last line first."""
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return set()
    data = csv_path.read_bytes()
    if not data.endswith(b"\n"):  # killed mid-row: keep only whole rows
        csv_path.write_bytes(data[:data.rfind(b"\n") + 1])
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return set()
        if tuple(header) != COLUMNS:
            raise ValueError(f"{csv_path} is not an inspection CSV (columns {header}, expected {list(COLUMNS)}); "
                             f"choose another --csv file")
        return {row[0] for row in reader if row}


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def inspect_paths(run: Any, inputs: Sequence[str | Path], csv_path: str | Path, heatmap_dir: str | Path | None = None,
                  batch_size: int = 8, runtime: str = "auto", threads: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Score every image in ``inputs`` with ``run`` (a loaded :class:`anomaly.pipeline.Run`), one CSV row each.

    The next batch is decoded in a background thread while the current one is scored, so at most
    two batches of images are in memory.

    Args:
        csv_path: written as it goes (appended to when it exists: its paths are skipped).
        heatmap_dir: when given, one heatmap PNG per image, named by :func:`heatmap_name`.
        batch_size: images decoded and scored together.
        runtime: ``"auto"`` (onnxruntime when it passes the parity check), ``"torch"`` or ``"onnx"``.
        threads: intra-op threads of the runtime (default: every core).

    Returns:
        dict with images (found), skipped (already in the CSV), written, errors, anomalous,
        seconds, images_per_s (rows written per second) and peak_rss_mib (this process).
    """
    from anomaly.pipeline import display_range, peak_rss_mib

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    csv_path = Path(csv_path)
    paths = list_images(inputs)
    todo = [p for p in paths if str(p) not in done_paths(csv_path)]
    scorer = runtime_scorer(run, runtime, threads)
    colours = display_range(run) if heatmap_dir is not None else {}
    counts = {"written": 0, "errors": 0, "anomalous": 0}
    start = time.perf_counter()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_path.exists() or csv_path.stat().st_size == 0
    with csv_path.open("a", newline="", encoding="utf-8") as handle, ThreadPoolExecutor(1) as decoder, \
            tqdm(total=len(todo), desc="inspect", unit="img", disable=not progress) as bar:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(COLUMNS)
        batches = batched(todo, batch_size)
        pending = decoder.submit(_decode_batch, next(batches, []), run.image_size)
        while True:
            rows, images = pending.result()
            if not rows:
                break
            pending = decoder.submit(_decode_batch, next(batches, []), run.image_size)  # overlaps the scoring
            for row in _score_batch(run, scorer, rows, images, heatmap_dir, colours):
                writer.writerow([row[c] for c in COLUMNS])
                counts["written"] += 1
                counts["errors"] += bool(row["error"])
                counts["anomalous"] += row["is_anomalous"] is True
            handle.flush()
            bar.update(len(rows))
    seconds = time.perf_counter() - start
    return {"images": len(paths), "skipped": len(paths) - len(todo), **counts, "seconds": seconds,
            "images_per_s": counts["written"] / seconds if seconds > 0 else 0.0, "peak_rss_mib": peak_rss_mib(),
            "csv": str(csv_path)}


def _decode_batch(paths: list[Path], image_size: int) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """One row per path, and the (3, S, S) images of those that decoded (an error fills the row's ``error``)."""
    rows, images = [], []
    for path in paths:
        row = {"path": str(path), "score": "", "is_anomalous": "", "regions": "", "error": ""}
        try:
            row["_hw"] = image_hw(path)  # not a CSV column: where the image sits on the canvas
            images.append(decode_image(path, image_size))  # (3, S, S), letterboxed
        except (DataError, OSError) as err:
            row["error"] = str(err)
            logger.warning("%s", err)
        rows.append(row)
    return rows, images


def _score_batch(run: Any, scorer: Any, rows: list[dict[str, Any]], images: list[torch.Tensor],
                 heatmap_dir: str | Path | None, colours: dict[str, float]) -> list[dict[str, Any]]:
    """Score the decoded images as one batch into their rows; optionally write heatmaps."""
    from anomaly.pipeline import regions_of

    if not images:
        return rows
    batch = torch.stack(images)  # (B, 3, S, S)
    out = scorer.predict(batch)  # scores (B,), maps (B, S, S)
    for i, row in enumerate(r for r in rows if not r["error"]):
        score = float(out.image_scores[i])
        row.update(score=score, is_anomalous=bool(score >= run.threshold))
        box = Letterbox(*row["_hw"], run.image_size)
        amap = box.crop(out.anomaly_maps[i])  # (h, w): the image's area, never the pad
        row["regions"] = "" if run.pixel_threshold is None else len(regions_of(run, amap))
        if heatmap_dir is not None:
            from anomaly.viz import save_heatmap_png

            save_heatmap_png(box.crop(batch[i]), amap, Path(heatmap_dir) / heatmap_name(row["path"]), **colours)
    return rows


def runtime_scorer(run: Any, runtime: str = "auto", threads: int | None = None) -> Any:
    """The scorer of ``run`` for ``runtime`` (:func:`anomaly.export.select_scorer`); sets torch's threads for torch."""
    from anomaly.export import select_scorer, set_torch_threads

    scorer, used = select_scorer(run, runtime, threads=threads)
    if used == "torch" and threads is not None:
        set_torch_threads(threads)
    return scorer


# The row logic other engines reuse (anomaly.distributed scores the same batches on Ray).
decode_batch = _decode_batch
score_batch = _score_batch
