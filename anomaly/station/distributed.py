"""Folder inspection on Ray (``anomaly predict --engine ray``): decode and score on a cluster's workers.

The rows are the local engine's (:mod:`anomaly.station.inspection`): the same listing, the same
decoder and scoring functions, the same batches of ``batch_size`` paths, the same CSV writer and
resume rule; only where the work runs changes. A Ray Data pipeline (the convention for batch
inference), with the workers of :mod:`anomaly.station.ray_workers`::

    driver: list the inputs, skip rows already written, one dataset row per block of batches
    decoders (actor pool, 0.25 CPU each): decode_batch -> float32 images, (H, W), errors
    scorers (actor pool, one per CPU by default): build the scorer ONCE, score_batch -> row values
    driver: iter_rows, in input order -> CSV / Parquet writers, flushed per block; progress bar

Writing stays on the driver: a row is ~100 bytes, so one process writes far faster than any
cluster scores, and one writer keeps the local engine's resume rule exact (a row is in the output
once, whatever was killed). Images are opened by absolute path: every node must see them at the
same path (a shared mount), and so must ``--heatmaps OUT``; the package must be installed on every
node. How the run reaches the workers: :mod:`anomaly.station.ray_workers`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm.auto import tqdm

from anomaly.inference import Run, display_range, select_scorer
from anomaly.station.inspection import batched, list_images
from anomaly.memory import peak_rss_mib
from anomaly.station.ray_cluster import RayUnavailableError, ResourcePlan, cluster_size, plan_resources, ray_session
from anomaly.station.ray_workers import Decoder, RunScorer, run_payload
from anomaly.station.results_csv import ResultsCsv, path_text, run_fingerprint
from anomaly.station.results_parquet import ParquetResults

logger = logging.getLogger(__name__)

BLOCK_BYTES = 32 * 2**20  # decoded images per dataset row (a block of batches): fewer, larger Ray calls


def inspect_paths_ray(run: Run, inputs: Sequence[str | Path], csv_path: str | Path | None = None,
                      parquet_path: str | Path | None = None, heatmap_dir: str | Path | None = None,
                      batch_size: int = 8, runtime: str = "auto", threads: int | None = None,
                      actors: int | None = None, address: str | None = None, device: str = "cpu",
                      progress: bool = True, decoders: int | None = None) -> dict[str, Any]:
    """Score every image in ``inputs`` with ``run`` on Ray: one row per image, as the local engine writes.

    Args:
        csv_path, parquet_path: where rows go (at least one); each is resumed: its rows are skipped.
        actors, threads, decoders: scoring actors, intra-op threads each, decode workers (default:
            :func:`anomaly.station.ray_cluster.plan_resources`).
        address: a running cluster's ``HOST:PORT``; ``None`` starts a local Ray for this call.
        device: ``cpu``; ``cuda`` or ``auto`` score on the cluster's GPUs where it has some (PyTorch).

    Returns:
        The local engine's summary (images, skipped, written, errors, anomalous, seconds,
        images_per_s, peak_rss_mib of the driver) plus engine, the plan (actors, actor_cpus,
        threads, decoders, runtime), startup_s (until the first block came back), steady_images_per_s
        (after it), the largest scorer's peak_rss_mib and peak_private_mib (its own pages, without the
        object store's), csv and parquet.
    """
    if csv_path is None and parquet_path is None:
        raise ValueError("--engine ray needs --csv FILE and/or --parquet FOLDER")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = list_images(inputs)  # before any writer: a missing input is refused with nothing opened
    fingerprint = run_fingerprint(run)  # each writer refuses, unchanged, a file of another run or not ours
    sinks = [s for s in (ResultsCsv(csv_path, fingerprint) if csv_path else None,
                         ParquetResults(parquet_path, fingerprint) if parquet_path else None) if s is not None]
    todo = pending_union(paths, sinks)
    summary: dict[str, Any] = {"engine": "ray", "images": len(paths), "skipped": len(paths) - len(todo),
                               "written": 0, "errors": 0, "anomalous": 0}
    start = time.perf_counter()
    with ExitStack() as stack:
        for sink in sinks:
            stack.enter_context(sink)
        if todo:
            ray = stack.enter_context(ray_session(address))
            cpus, gpus = cluster_size(ray)
            plan = plan_resources(cpus, gpus, actors, threads, use_gpu=device != "cpu", decoders=decoders)
            summary.update(actors=plan.actors, actor_cpus=plan.actor_cpus, threads=plan.threads,
                           decoders=plan.decoders, runtime="torch" if plan.actor_gpus else _runtime(run, runtime))
            logger.info("ray: %d images on %g CPU(s), %g GPU(s): %s", len(todo), cpus, gpus, plan)
            results, per_block = _pipeline(ray, run, todo, batch_size, plan, summary["runtime"], heatmap_dir)
            with _worker_errors(ray):
                summary.update(_write(results, todo, per_block, sinks, summary, progress, start))
    seconds = time.perf_counter() - start
    return {**summary, "seconds": seconds, "images_per_s": summary["written"] / seconds if seconds else 0.0,
            "peak_rss_mib": peak_rss_mib(), "csv": None if csv_path is None else str(csv_path), "run": fingerprint,
            "parquet": None if parquet_path is None else str(parquet_path)}


def _write(results: Iterator[dict], todo: list[Path], per_block: int, sinks: list, counts: dict, progress: bool,
           start: float) -> dict[str, Any]:
    """Write the rows of each result block to every writer that lacks them; timings and scorer memory."""
    first, peaks = None, {}
    with tqdm(total=len(todo), desc="inspect (ray)", unit="img", disable=not progress) as bar:
        for result in results:
            rows = _rows_of(result, todo[result["block"] * per_block:(result["block"] + 1) * per_block])
            for row in rows:
                for sink in unwritten(sinks, row):
                    sink.write(row)
                counts["written"] += 1
                counts["errors"] += bool(row["error"])
                counts["anomalous"] += row["is_anomalous"] is True
            for sink in sinks:
                sink.flush()
            if first is None:
                first = (time.perf_counter(), counts["written"])
            peaks[result["pid"]] = (result["peak_rss_mib"], result["peak_private_mib"])
            bar.update(len(rows))
    after = time.perf_counter() - first[0] if first else 0.0
    return {"startup_s": first[0] - start if first else None,
            "steady_images_per_s": (counts["written"] - first[1]) / after if after > 0 else None,
            "actor_peak_rss_mib": max((p[0] for p in peaks.values()), default=None),
            "actor_peak_private_mib": max((p[1] for p in peaks.values()), default=None)}


@contextlib.contextmanager
def _worker_errors(ray: Any) -> Iterator[None]:
    """A task or actor that failed on a worker -> :class:`RayUnavailableError` with its last line."""
    try:
        yield
    except ray.exceptions.RayError as err:
        last = [line for line in str(err).strip().splitlines() if line.strip()][-1:] or [type(err).__name__]
        hint = (" (every node needs this version of the anomaly package importable: install it there, or set "
                "PYTHONPATH for `ray start`)" if "ModuleNotFoundError" in last[0] else "")
        raise RayUnavailableError(f"a Ray worker failed: {last[0].strip()}{hint}") from None


def _runtime(run: Run, runtime: str) -> str:
    """The runtime the scorers use (``"onnx"`` or ``"torch"``), chosen on the driver as the local engine
    chooses it (:func:`anomaly.inference.select_scorer`: ``auto`` exports and checks ``model.onnx`` once)."""
    return select_scorer(run, runtime, threads=1)[1]


def block_batches(batch_size: int, image_size: int, n_batches: int, actors: int) -> int:
    """Batches per dataset row: about :data:`BLOCK_BYTES` of decoded images, yet at least 4 rows per actor."""
    by_bytes = max(1, BLOCK_BYTES // (batch_size * 3 * image_size * image_size * 4))
    return max(1, min(by_bytes, math.ceil(n_batches / (4 * actors))))


def _pipeline(ray: Any, run: Run, todo: list[Path], batch_size: int, plan: ResourcePlan, runtime: str,
              heatmap_dir: str | Path | None) -> tuple[Iterator[dict], int]:
    """The Ray Data pipeline over ``todo``: an iterator of result rows, one per block of ``per_block``
    paths, in input order; and ``per_block``."""
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order, as the local engine writes them
    context.enable_progress_bars = False  # the driver's bar counts images
    per_block = batch_size * block_batches(batch_size, run.image_size, math.ceil(len(todo) / batch_size), plan.actors)
    blocks = [{"block": i, "sources": [os.fsencode(os.path.abspath(p)) for p in chunk]}
              for i, chunk in enumerate(batched(todo, per_block))]
    scorer = dict(payload=[ray.put(run_payload(run, runtime))], runtime=runtime, threads=plan.threads,
                  decision=run.decision, image_size=run.image_size, batch_size=batch_size,
                  device="cuda" if plan.actor_gpus else "cpu",
                  colours=display_range(run) if heatmap_dir is not None else {},
                  heatmap_dir=None if heatmap_dir is None else str(Path(heatmap_dir).resolve()))
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
    ds = ds.map(Decoder, fn_constructor_kwargs={"image_size": run.image_size, "batch_size": batch_size},
                compute=ActorPoolStrategy(size=plan.decoders), num_cpus=plan.decode_cpus)
    ds = ds.map(RunScorer, fn_constructor_kwargs=scorer, compute=ActorPoolStrategy(size=plan.actors),
                num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None)
    return iter(ds.iter_rows()), per_block


def _rows_of(result: dict[str, Any], chunk: list[Path]) -> list[dict[str, Any]]:
    """The CSV rows of one result block: the driver's paths (as given) and the scorers' values."""
    rows = []
    for path, (score, verdict, regions, error) in zip(chunk, json.loads(result["values"]), strict=True):
        error = error.replace(os.path.abspath(path), str(path)) if error else error  # named as the user gave it
        rows.append({"path": str(path), "score": score, "is_anomalous": verdict, "regions": regions, "error": error})
    return rows


def pending_union(paths: list[Path], sinks: Sequence[Any]) -> list[Path]:
    """``paths`` missing from at least one of the writers (each path is listed once)."""
    texts = [path_text(p) for p in paths]
    return [p for p, text in zip(paths, texts) if any(sink.done[text] == 0 for sink in sinks)]


def unwritten(sinks: Sequence[Any], row: dict[str, Any]) -> list[Any]:
    """The writers that do not hold ``row`` yet (those that do hold it consume one count)."""
    out, text = [], path_text(row["path"])
    for sink in sinks:
        if sink.done[text] > 0:
            sink.done[text] -= 1
        else:
            out.append(sink)
    return out

