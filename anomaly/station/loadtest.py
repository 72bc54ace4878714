"""Performance measurements: an HTTP load test of ``anomaly serve`` and PyTorch-vs-onnxruntime latency.

:func:`run_loadtest` sends a bounded number of ``POST /predict`` requests from a thread pool to a
service on this machine (loopback addresses only) and reports throughput, p50/p95 latency and
errors. :func:`measure_latency` times a run's detector in eager PyTorch and its exported ONNX graph
in onnxruntime, per image, at batch sizes 1 and 8.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np
import torch
from tqdm.auto import tqdm

from anomaly.tables import markdown_table
from anomaly.export import load_onnx_scorer
from anomaly.inference import load_run, set_torch_threads
from anomaly.utils import write_json

logger = logging.getLogger(__name__)

MAX_REQUESTS = 10_000
MAX_CONCURRENCY = 64


def check_loopback(url: str) -> str:
    """Return ``url``'s host if it is a loopback address (or ``localhost``); raise ``ValueError`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    host = parts.hostname
    if host == "localhost":
        return host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to load-test {host!r}: only loopback hosts (127.0.0.0/8, ::1, localhost) are allowed")
    return host


def default_image(size: int = 256, seed: int = 0) -> bytes:
    """A deterministic grey-texture PNG of ``size`` px to send when no image file is given."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (128 + 20 * rng.standard_normal((size, size))).clip(0, 255).astype(np.uint8)  # (S, S)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def run_loadtest(url: str, n_requests: int = 200, concurrency: int = 8, image: bytes | None = None,
                 timeout_s: float = 300.0, filename: str = "image.png") -> dict[str, Any]:
    """POST ``image`` to ``url``/predict ``n_requests`` times from ``concurrency`` threads.

    One warm-up request is sent first and not counted. Requests not started within
    ``timeout_s`` are skipped and counted as errors.

    Returns:
        dict with requests, concurrency, ok, errors, status_counts, wall_s, throughput_rps
        (successful requests per second), latency_ms_p50/p95/mean/max.
    """
    import httpx

    check_loopback(url)
    if not 1 <= n_requests <= MAX_REQUESTS or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"requests must be in 1..{MAX_REQUESTS} and concurrency in 1..{MAX_CONCURRENCY}")
    endpoint = url.rstrip("/") + "/predict"
    payload = image if image is not None else default_image()
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=max(timeout_s, 1.0), limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(_: int) -> tuple[int, float]:
            if time.monotonic() > deadline:
                return -1, float("nan")
            start = time.perf_counter()
            try:
                status = client.post(endpoint, files={"file": (filename, payload, "application/octet-stream")}).status_code
            except httpx.HTTPError as err:
                logger.debug("request failed: %s", err)
                status = 0
            return status, time.perf_counter() - start

        _warm_up(client, url.rstrip("/"), payload, filename, deadline)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(tqdm(pool.map(one, range(n_requests)), total=n_requests, desc="loadtest", leave=False))
        wall = time.perf_counter() - start
    return _summarise(results, wall, concurrency)


def _warm_up(client: Any, base: str, payload: bytes, filename: str, deadline: float) -> None:
    """Wait for ``GET /health`` (the server may still be loading its run), then send one uncounted request."""
    import httpx

    while True:
        try:
            if client.get(base + "/health").status_code == 200:
                break
        except httpx.TransportError as err:
            if time.monotonic() > deadline:
                raise ConnectionError(f"no service answering at {base}: {err}") from err
        time.sleep(0.5)
    response = client.post(base + "/predict", files={"file": (filename, payload, "application/octet-stream")})
    if response.status_code != 200:
        raise ValueError(f"warm-up request got {response.status_code}: {response.text[:300]}")


def _summarise(results: Sequence[tuple[int, float]], wall: float, concurrency: int) -> dict[str, Any]:
    statuses = [s for s, _ in results]
    ok_latencies = np.array([t for s, t in results if s == 200]) * 1000.0
    counts: dict[str, int] = {}
    for s in statuses:
        key = {0: "connection_error", -1: "skipped_timeout"}.get(s, str(s))
        counts[key] = counts.get(key, 0) + 1
    n_ok = int(len(ok_latencies))

    def pct(q: float) -> float | None:
        return float(np.percentile(ok_latencies, q)) if n_ok else None

    return {"requests": len(results), "concurrency": concurrency, "ok": n_ok, "errors": len(results) - n_ok,
            "status_counts": counts, "wall_s": wall, "throughput_rps": n_ok / wall if wall > 0 else 0.0,
            "latency_ms_p50": pct(50), "latency_ms_p95": pct(95),
            "latency_ms_mean": float(ok_latencies.mean()) if n_ok else None, "latency_ms_max": pct(100)}


def time_calls(fns: Mapping[str, Callable[[], Any]], repeats: int,
               rounds: int = 5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Wall-clock and process CPU seconds of ``repeats`` calls of each function.

    The calls run in ``rounds`` blocks per function, the functions taking turns block by block, so a
    slow spell of a shared machine hits them alike. Each block starts with one untimed call: it
    absorbs the previous block's thread pool still spinning (call-by-call alternation would time that
    interference, which a deployed service never sees). CPU time (all threads of this process) is the
    steadier number when other jobs share the cores.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    rounds = max(1, min(rounds, repeats))
    for index in range(rounds):
        block = repeats // rounds + (index < repeats % rounds)
        for name, fn in fns.items():
            fn()  # untimed
            for _ in range(block):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: (np.array(wall[name]), np.array(cpu[name])) for name in fns}


def measure_latency(run_dir: str | Path, image_size: int | None = None, repeats: int = 20,
                    batch_sizes: Sequence[int] = (1, 8), threads: int | None = None) -> dict[str, Any]:
    """Per-image latency of the run's detector, eager PyTorch vs onnxruntime; writes ``RUN_DIR/latency.json``.

    Each timed call scores a random (B, 3, S, S) batch end to end (tensor in, scores and maps out),
    the two runtimes taking turns in blocks (:func:`time_calls`);
    per-image latency is the call's time divided by B.

    Returns:
        dict with image_size, threads, and ``results``: one row per (runtime, batch) with
        per-image wall p50/p95/mean and CPU p50 in ms; ``speedup_p50`` (torch / onnx) per batch
        size; the machine's core count and 1-minute load average (other jobs skew wall times).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    threads = set_torch_threads(threads)
    run = load_run(run_dir, device="cpu")
    size = image_size or run.image_size
    scorers = {"torch": run.detector, "onnxruntime": load_onnx_scorer(run, threads=threads)}
    rows = []
    for batch in batch_sizes:
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        timings = time_calls({runtime: functools.partial(scorer.predict, images)
                              for runtime, scorer in scorers.items()}, repeats)
        for runtime, (wall, cpu) in timings.items():
            wall, cpu = wall * 1000.0 / batch, cpu * 1000.0 / batch
            rows.append({"runtime": runtime, "batch_size": batch, "ms_p50": float(np.percentile(wall, 50)),
                         "ms_p95": float(np.percentile(wall, 95)), "ms_mean": float(wall.mean()),
                         "cpu_ms_p50": float(np.percentile(cpu, 50))})
            logger.info("%s batch %d: p50 %.1f ms/image", runtime, batch, rows[-1]["ms_p50"])
    p50 = {(r["runtime"], r["batch_size"]): r["ms_p50"] for r in rows}
    result = {"method": run.detector.name, "image_size": size, "model_image_size": run.image_size,
              "threads": threads, "repeats": repeats, "cpu_count": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "results": rows,
              "speedup_p50": {str(b): p50[("torch", b)] / p50[("onnxruntime", b)] for b in batch_sizes}}
    write_json(Path(run_dir) / "latency.json", result)
    return result


def latency_markdown(result: dict[str, Any]) -> str:
    """The :func:`measure_latency` result as a markdown table."""
    lines = [f"{result['method']}, {result['image_size']} px input, {result['threads']} threads, "
             f"{result['repeats']} repeats, load average {result['load_average_1min']:.1f} on "
             f"{result['cpu_count']} cores; per-image latency in ms", ""]
    rows = []
    for row in result["results"]:
        speedup = result["speedup_p50"][str(row["batch_size"])] if row["runtime"] == "onnxruntime" else 1.0
        rows.append((row["runtime"], row["batch_size"], f"{row['ms_p50']:.1f}", f"{row['ms_p95']:.1f}",
                     f"{row['cpu_ms_p50']:.1f}", f"{speedup:.2f}x"))
    lines.append(markdown_table(("runtime", "batch", "p50 ms", "p95 ms", "CPU ms p50", "speed-up p50"), rows,
                                align="lrrrrr"))
    return "\n".join(lines)
