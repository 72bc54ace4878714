"""Benchmark: fit + evaluate every (category, method) pair and tabulate the metrics.

Each pair runs through :func:`anomaly.pipeline.fit_and_evaluate` (as the sweeps and the ablation do)
into ``OUT/<category>/<method>/`` (a normal run folder), by default in a fresh process so that
its peak resident memory (``ru_maxrss``) is its own and not the maximum over earlier runs; an
executor (:mod:`anomaly.study.executors`) decides where: here one after another, or as Ray tasks.
Timings depend on what else the machine is doing, so the 1-minute load average before and
after each run is recorded next to them. Results go to ``OUT/benchmark.json`` and
``OUT/benchmark.md``, with each category's answer paragraph, margins over the best baseline
(paired-bootstrap intervals, also in ``OUT/margins.json``) and detection by defect size (:mod:`anomaly.study.evidence`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from anomaly import tables
from anomaly.config import RunConfig
from anomaly.study.evidence import evidence_markdown
from anomaly.study.executors import Job, JobResult, LocalExecutor
from anomaly.models import METHODS
from anomaly.records import MetricsRecord
from anomaly.runs import is_evaluated
from anomaly.utils import write_json

logger = logging.getLogger(__name__)

COLUMNS = ("category", "method", "image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "f1_max_oracle", "f1_flag_all",
           "fit_seconds",
           "predict_ms_per_image", "peak_rss_mib", "load_before", "load_after")
_SCORES = ("image_auroc", "pixel_auroc", "aupro", "aupro_fpr05", "f1_max_oracle", "f1_flag_all")


def split_params(params: dict[str, Any] | None, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{"patchcore.coreset_ratio": 0.1}`` -> ``{"patchcore": {"coreset_ratio": 0.1}, ...}``.

    Raises:
        ValueError: a key without ``METHOD.`` or naming a method that is not benchmarked.
    """
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in (params or {}).items():
        method, sep, name = key.partition(".")
        if not sep or method not in out:
            raise ValueError(f"benchmark parameter {key!r} must look like METHOD.KEY with METHOD one of "
                             f"{', '.join(methods)}")
        out[method][name] = value
    return out


def run_benchmark(data: str | Path, categories: Sequence[str], methods: Sequence[str], out: str | Path,
                  device: str = "auto", seed: int = 0, params: dict[str, Any] | None = None,
                  isolate: bool = True, resume: bool = False, executor: Any = None) -> str:
    """Fit and evaluate each (category, method); return the results as a Markdown table.

    Args:
        data: dataset root in MVTec AD layout.
        categories: category folder names under ``data``.
        methods: detector names (see :data:`anomaly.models.METHODS`).
        out: output folder; run folders go to ``out/<category>/<method>``.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds the validation split and the detectors.
        params: per-method overrides as ``{"METHOD.KEY": value}``.
        isolate: run each pair in a fresh (spawned) process for a per-run peak RSS.
        resume: reuse a pair whose run folder is complete and holds a ``metrics.json`` of its own model
            (:func:`anomaly.runs.is_evaluated`) instead of refitting it.
        executor: where the fit + evaluate jobs run (:mod:`anomaly.study.executors`; default
            ``LocalExecutor(isolate)``: here, one after another; ``RayExecutor``: Ray tasks).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    per_method = split_params(params, methods)
    configs = [RunConfig(str(data), category, method, per_method[method], device=device, seed=seed)
               for category in categories for method in methods]  # every setting checked before any fit
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [Job(config, out / config.category / config.method) for config in configs]
    reused = [job for job in jobs if resume and is_evaluated(job.run_dir)]
    for job in reused:
        logger.info("benchmark: reusing %s (--resume)", job.run_dir)
    done = {job.run_dir: JobResult(job, os.getloadavg()[0], os.getloadavg()[0]) for job in reused}
    results = (executor or LocalExecutor(isolate)).run([job for job in jobs if job.run_dir not in done])
    rows = []
    for job in jobs:
        rows.append(_row(done.get(job.run_dir) or next(results)))
        write_json(out / "benchmark.json", {"device": device, "seed": seed, "params": per_method,
                                             "cpu_count": os.cpu_count(), "rows": rows})
    table = benchmark_markdown(rows)
    sections, margins = [table], {}
    for category in categories:  # margins over the best baseline, with paired-bootstrap intervals
        text, margins[category] = evidence_markdown([out / category / m for m in methods])
        sections.append(f"## {category}\n\n{text}")
    write_json(out / "margins.json", margins)
    (out / "benchmark.md").write_text("\n\n".join(sections) + "\n")
    return "\n\n".join(sections)


def _row(result: JobResult) -> dict[str, Any]:
    """The table row of a finished job, from its run folder's ``metrics.json``."""
    metrics = MetricsRecord.read(result.job.run_dir)
    row = {key: metrics.get(key) for key in COLUMNS}
    row.update(category=result.job.config.category, method=result.job.config.method,
               load_before=result.load_before, load_after=result.load_after)
    return row


def benchmark_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of :data:`COLUMNS` as a Markdown table (floats to 3 or 1 decimals)."""
    def cell(key: str, value: Any) -> Any:
        if isinstance(value, float):
            return f"{value:.3f}" if key in _SCORES else f"{value:.1f}"
        return value

    return tables.markdown_table(COLUMNS, ([cell(key, row.get(key)) for key in COLUMNS] for row in rows),
                                 compact=True)
