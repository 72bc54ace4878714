"""Folder inspection: stream any number of images through a run into a CSV, resumably.

``anomaly predict --run-dir DIR FOLDER_OR_FILES... --csv results.csv [--heatmaps OUT]`` calls
:func:`inspect_paths`. Folders are walked recursively (image extensions only, sorted), files are
taken as named. Images are decoded and scored ``batch_size`` at a time; each image's row (path,
score, is_anomalous, regions = the number of defect regions, error) is written and flushed before
the next batch, and nothing of an image is kept after its row is written, so memory does not grow with the number of
images (beyond the list of paths). A file that cannot be decoded (or scores NaN) gets a row with its
error and an empty score. The CSV itself -- its columns, the run fingerprint on every row, and a
resume that never touches a file it did not write -- is :mod:`anomaly.station.results_csv`: re-running with
the same CSV and run skips every path already in it, so an interrupted run resumes without redoing
finished rows.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from anomaly.decoding import DataError, decode_with_hw, require_regular_file
from anomaly.layout import IMAGE_EXTENSIONS
from anomaly.inference import Decision, ImagePrediction, Run, Scorer, display_range, predict_images, runtime_scorer
from anomaly.memory import peak_rss_mib
from anomaly.station.results_csv import COLUMNS, ResultsCsv, pending, run_fingerprint  # noqa: F401
from anomaly.utils import printable

logger = logging.getLogger(__name__)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Every image under the folders in ``inputs`` (recursive, sorted) and every file named, in order.

    Raises:
        FileNotFoundError: an input that does not exist.
        DataError: a named input that is neither a folder nor a regular file (a FIFO, a device).
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
        elif item.exists():
            require_regular_file(item, f"input {printable(str(item))}")  # a FIFO would block the decoder forever
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such file or folder: {printable(str(item))}")
    return list(dict.fromkeys(paths))  # a file named twice is inspected once


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def inspect_paths(run: Run, inputs: Sequence[str | Path], csv_path: str | Path, heatmap_dir: str | Path | None = None,
                  batch_size: int = 8, runtime: str = "auto", threads: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Score every image in ``inputs`` with ``run`` (:func:`anomaly.inference.load_run`), one CSV row each.

    The next batch is decoded in a background thread while the current one is scored, so at most
    two batches of images are in memory.

    Args:
        csv_path: written as it goes (appended to when it is this run's CSV: its paths are skipped).
        heatmap_dir: when given, one heatmap PNG per image, named by :func:`anomaly.inference.heatmap_name`.
        batch_size: images decoded and scored together.
        runtime: ``"auto"`` (onnxruntime when it passes the parity check), ``"torch"`` or ``"onnx"``.
        threads: intra-op threads of the runtime (default: every core).

    Returns:
        dict with images (found), skipped (already in the CSV), written, errors, anomalous,
        seconds, images_per_s (rows written per second), peak_rss_mib (this process), csv and
        run (the fingerprint in the CSV's ``run`` column).

    Raises:
        anomaly.station.results_csv.ResultsCsvError: ``csv_path`` exists and is not this run's inspection CSV
            (it is left unchanged).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results = ResultsCsv(csv_path, run_fingerprint(run))  # refuses, unchanged, a file that is not this run's CSV
    paths = list_images(inputs)
    todo = pending(paths, results.done)
    scorer = runtime_scorer(run, runtime, threads)
    colours = display_range(run) if heatmap_dir is not None else {}
    counts = {"written": 0, "errors": 0, "anomalous": 0}
    start = time.perf_counter()
    with results, ThreadPoolExecutor(1) as decoder, \
            tqdm(total=len(todo), desc="inspect", unit="img", disable=not progress) as bar:
        batches = batched(todo, batch_size)
        pending_batch = decoder.submit(decode_batch, next(batches, []), run.image_size)
        while True:
            rows, images = pending_batch.result()
            if not rows:
                break
            pending_batch = decoder.submit(decode_batch, next(batches, []), run.image_size)  # overlaps the scoring
            for prediction in score_batch(run.decision, scorer, rows, images, heatmap_dir, colours):
                row = prediction.csv_row()
                results.write(row)
                counts["written"] += 1
                counts["errors"] += bool(row["error"])
                counts["anomalous"] += row["is_anomalous"] is True
            results.flush()
            bar.update(len(rows))
    seconds = time.perf_counter() - start
    return {"images": len(paths), "skipped": len(paths) - len(todo), **counts, "seconds": seconds,
            "images_per_s": counts["written"] / seconds if seconds > 0 else 0.0, "peak_rss_mib": peak_rss_mib(),
            "csv": printable(str(results.path)), "run": results.fingerprint}


def decode_batch(paths: list[Path], image_size: int) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """One row per path, and the (3, S, S) images of those that decoded (an error fills the row's ``error``)."""
    rows, images = [], []
    for path in paths:
        row = {"path": path, "score": "", "is_anomalous": "", "regions": "", "error": ""}
        try:
            image, row["_hw"] = decode_with_hw(path, image_size)  # (3, S, S) letterboxed; _hw: upright (H, W)
            images.append(image)
        except (DataError, OSError) as err:
            row["error"] = printable(str(err))
            logger.warning("%s", row["error"])
        rows.append(row)
    return rows, images


def score_batch(decision: Run | Decision, scorer: Scorer, rows: list[dict[str, Any]], images: list[torch.Tensor],
                heatmap_dir: str | Path | None = None, colours: dict[str, float | None] | None = None
                ) -> list[ImagePrediction]:
    """The rows of :func:`decode_batch` as predictions: the decoded images scored as one batch
    (:func:`anomaly.inference.predict_images`), a row that did not decode kept with its error."""
    decoded = [row for row in rows if not row["error"]]
    scored = iter(predict_images(decision, scorer, torch.stack(images), [row["path"] for row in decoded],
                                 sizes=[row["_hw"] for row in decoded], heatmap_dir=heatmap_dir, colours=colours)
                  if images else ())
    predictions = []
    for row in rows:
        prediction = ImagePrediction(printable(str(row["path"])), error=row["error"]) if row["error"] else next(scored)
        if prediction.error and not row["error"]:
            logger.warning("%s", prediction.error)
        predictions.append(prediction)
    return predictions
