"""Folder inspection: stream any number of images through a run into a CSV, resumably.

``anomaly predict --run-dir DIR FOLDER_OR_FILES... --csv results.csv [--heatmaps OUT]`` calls
:func:`inspect_paths`. Folders are walked recursively (image extensions only, sorted), files are
taken as named. Images are decoded and scored ``batch_size`` at a time; each image's row
(path, score, is_anomalous, regions, error) is written and flushed before the next batch, and
nothing of an image is kept after its row is written, so memory does not grow with the number of
images (beyond the list of paths). A file that cannot be decoded gets a row with its error and an
empty score. Re-running with the same CSV skips every path already in it (a cut-off last line is
dropped first), so an interrupted run resumes without redoing finished rows.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from anomaly.data import IMAGE_EXTENSIONS, DataError, decode_image

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
                  batch_size: int = 16, runtime: str = "torch", progress: bool = True) -> dict[str, Any]:
    """Score every image in ``inputs`` with ``run`` (a loaded :class:`anomaly.pipeline.Run`), one CSV row each.

    Args:
        csv_path: written as it goes (appended to when it exists: its paths are skipped).
        heatmap_dir: when given, one heatmap PNG per image, named by :func:`heatmap_name`.
        batch_size: images decoded and scored together.
        runtime: ``"torch"`` (the detector) or ``"onnx"`` (the run's exported graph in onnxruntime).

    Returns:
        dict with images (found), skipped (already in the CSV), written, errors, anomalous,
        seconds and images_per_s (rows written per second).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    csv_path = Path(csv_path)
    paths = list_images(inputs)
    done = done_paths(csv_path)
    todo = [p for p in paths if str(p) not in done]
    scorer = _scorer(run, runtime)
    colours = _display_range(run) if heatmap_dir is not None else {}
    counts = {"written": 0, "errors": 0, "anomalous": 0}
    start = time.perf_counter()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_path.exists() or csv_path.stat().st_size == 0
    with csv_path.open("a", newline="", encoding="utf-8") as handle, \
            tqdm(total=len(todo), desc="inspect", unit="img", disable=not progress) as bar:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(COLUMNS)
        for batch in batched(todo, batch_size):
            for row in _inspect_batch(run, scorer, batch, heatmap_dir, colours):
                writer.writerow([row[c] for c in COLUMNS])
                counts["written"] += 1
                counts["errors"] += bool(row["error"])
                counts["anomalous"] += row["is_anomalous"] is True
            handle.flush()
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    return {"images": len(paths), "skipped": len(paths) - len(todo), **counts, "seconds": seconds,
            "images_per_s": counts["written"] / seconds if seconds > 0 else 0.0, "csv": str(csv_path)}


def _inspect_batch(run: Any, scorer: Any, paths: list[Path], heatmap_dir: str | Path | None,
                   colours: dict[str, float]) -> list[dict[str, Any]]:
    """Decode (errors become rows), score the decodable images as one batch, optionally write heatmaps."""
    rows: list[dict[str, Any]] = []
    images, scored = [], []
    for path in paths:
        row = {"path": str(path), "score": "", "is_anomalous": "", "regions": "", "error": ""}
        try:
            images.append(decode_image(path, run.image_size))  # (3, S, S)
            scored.append(row)
        except (DataError, OSError) as err:
            row["error"] = str(err)
            logger.warning("%s", err)
        rows.append(row)
    if images:
        batch = torch.stack(images)  # (B, 3, S, S)
        out = scorer.predict(batch)  # scores (B,), maps (B, S, S)
        for i, row in enumerate(scored):
            score = float(out.image_scores[i])
            row.update(score=score, is_anomalous=bool(score >= run.threshold))
            row["regions"] = ""  # the defect-region count goes here once runs define regions (issue 9)
            if heatmap_dir is not None:
                from anomaly.viz import save_heatmap_png

                save_heatmap_png(batch[i], out.anomaly_maps[i], Path(heatmap_dir) / heatmap_name(row["path"]), **colours)
    return rows


def _scorer(run: Any, runtime: str) -> Any:
    if runtime == "torch":
        return run.detector
    if runtime == "onnx":
        from anomaly.export import load_onnx_scorer

        return load_onnx_scorer(run)
    raise ValueError(f"unknown runtime {runtime!r}; choose torch or onnx")


def _display_range(run: Any) -> dict[str, float]:
    from anomaly.pipeline import display_range

    try:
        return display_range(run)
    except (FileNotFoundError, KeyError):
        return {}
