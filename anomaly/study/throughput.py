"""Throughput of folder inspection on each engine: ``python -m anomaly.study.throughput --out DIR`` (``make ray-throughput``).

The figures of docs/distributed.md in one command. On 256 px synthetic images (``screw_like``:
60 train/good, the first 100 test images copied into 20 folders = 2,000 images) and a PatchCore
run fitted on them (both made once under ``DIR``), it runs the same ``anomaly predict --csv``
command (ONNX runtime, batch 8) with the local engine, with ``--engine ray`` on a local Ray
(2 scoring actors on 2 cores), and on a real two-node Ray cluster on loopback (one CPU per node,
:func:`anomaly.station.ray_cluster.loopback_cluster`), one after another. For each: wall time of the
whole command, images/s over it and after the first rows, peak memory of the driver and of the
largest scorer, the largest score difference from the local engine, and the load average.
Results go to ``DIR/throughput.json`` and ``DIR/throughput.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.config import RunConfig
from anomaly.inference import load_run, select_scorer, set_torch_threads
from anomaly.station.inspection import batched, decode_batch, list_images, score_batch
from anomaly.pipeline import fit_run
from anomaly.station.ray_cluster import loopback_cluster
from anomaly.station.results_parquet import read_results
from anomaly.tables import markdown_table
from anomaly.runs import MARKER
from anomaly.synthetic import generate_dataset

logger = logging.getLogger(__name__)

CATEGORY = "screw_like"


def prepare(out: Path, n_images: int = 2000) -> tuple[Path, Path]:
    """The run folder and the image folder under ``out`` (made when missing)."""
    data, run, images = out / "data", out / "run", out / "images"
    if not (data / CATEGORY).is_dir():
        generate_dataset(data, seed=0, image_size=256, n_train=60, n_test_good=40, n_per_defect=15,
                         categories=[CATEGORY])
    if not (run / MARKER).is_file():
        fit_run(RunConfig(str(data), CATEGORY, "patchcore", params={"image_size": 256}, device="cpu"), run)
    if sum(1 for _ in images.rglob("*.png")) != n_images:
        shutil.rmtree(images, ignore_errors=True)
        sources = sorted((data / CATEGORY / "test").glob("*/*.png"))[:100]
        for k in range(n_images // len(sources) + 1):
            for i, src in enumerate(sources[:max(0, min(len(sources), n_images - k * len(sources)))]):
                target = images / f"copy{k:02d}" / f"{src.parent.name}_{src.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target)
    return run, images


def measure(name: str, command: list[str], csv_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one ``anomaly predict`` command (output removed first); its summary, wall time and load."""
    csv_path.unlink(missing_ok=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    logger.info("%s: %.1f s, %s", name, wall, summary)
    return {**summary, "engine": name, "command": " ".join(command), "wall_s": wall, "load_before": load_before,
            "load_after": os.getloadavg()[0]}


def compare(local_csv: Path, other_csv: Path) -> dict[str, Any]:
    """Same rows as the local engine's? The largest absolute and relative score difference."""
    a, b = read_results(local_csv), read_results(other_csv)
    same = list(a["path"]) == list(b["path"]) and a["is_anomalous"].equals(b["is_anomalous"]) and \
        a["regions"].equals(b["regions"]) and a["error"].equals(b["error"])
    diff = np.abs(a["score"].to_numpy() - b["score"].to_numpy())
    return {"same_rows": bool(same), "max_abs_score_diff": float(np.nanmax(diff)),
            "max_rel_score_diff": float(np.nanmax(diff / np.abs(a["score"].to_numpy())))}


def stage_costs(run_dir: Path, images: Path, batch_size: int = 8, n: int = 200) -> dict[str, float]:
    """What one image costs in each stage, in this process, one thread: the paper model of docs/distributed.md.

    listing (µs per file: walking the 2,000), decoding and scoring (ms per image, onnxruntime with one
    thread, batches of ``batch_size``, over the first ``n`` images) and writing (µs per CSV row).
    """
    set_torch_threads(1)
    start = time.perf_counter()
    paths = list_images([images])
    listing = (time.perf_counter() - start) / len(paths)
    run = load_run(run_dir)
    scorer, _ = select_scorer(run, "onnx", threads=1)
    decode = score = 0.0
    rows_out = []
    for chunk in batched(paths[:n], batch_size):
        start = time.perf_counter()
        rows, decoded = decode_batch(chunk, run.image_size)
        middle = time.perf_counter()
        rows_out += [p.csv_row() for p in score_batch(run.decision, scorer, rows, decoded)]
        decode, score = decode + middle - start, score + time.perf_counter() - middle
    start = time.perf_counter()
    writer = csv.writer(io.StringIO())
    for row in rows_out * 10:
        writer.writerow([row["path"], row["score"], row["is_anomalous"], row["regions"], row["error"]])
    write = (time.perf_counter() - start) / (10 * len(rows_out))
    size = sum(p.stat().st_size for p in paths[:n]) / n
    return {"listing_us_per_file": 1e6 * listing, "decode_ms_per_image": 1e3 * decode / n,
            "score_ms_per_image": 1e3 * score / n, "write_us_per_row": 1e6 * write, "file_kib": size / 1024}


def run_all(out: Path, n_images: int = 2000, cluster: bool = True) -> list[dict[str, Any]]:
    run, images = prepare(out, n_images)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    base = [sys.executable, "-m", "anomaly", "predict", "--run-dir", str(run), "--runtime", "onnx", "--batch-size", "8"]
    rows = [measure("local", [*base, "--csv", str(out / "local.csv"), str(images)], out / "local.csv", env)]
    ray_csv = out / "ray_local.csv"
    rows.append({**measure("ray local", [*base, "--engine", "ray", "--actors", "2", "--csv", str(ray_csv),
                                         str(images)], ray_csv, env), **compare(out / "local.csv", ray_csv)})
    if cluster:
        with loopback_cluster(nodes=2, cpus_per_node=1, env={"PYTHONPATH": env["PYTHONPATH"]}) as (address, extra):
            cluster_csv = out / "ray_cluster.csv"
            rows.append({**measure("ray 2-node loopback", [*base, "--engine", "ray", "--address", address, "--csv",
                                                            str(cluster_csv), str(images)], cluster_csv,
                                   {**env, **extra}), **compare(out / "local.csv", cluster_csv)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ("engine", "images", "whole command (s)", "images/s, whole command",
              "images/s, in the loop / after the first rows", "start-up (s)", "driver peak RSS (MiB)",
              "scorer peak RSS, own pages (MiB)", "max score diff vs local (rel)", "load before / after")
    lines = []
    for r in rows:
        steady = r.get("steady_images_per_s", r["images_per_s"])
        startup = r.get("startup_s", r["wall_s"] - r["seconds"])
        scorer = "" if r.get("actor_peak_private_mib") is None else \
            f"{r['actor_peak_rss_mib']:.0f} ({r['actor_peak_private_mib']:.0f})"
        diff = f"{r['max_rel_score_diff']:.1e}" if "max_rel_score_diff" in r else "-"
        lines.append((r["engine"], r["written"], f"{r['wall_s']:.1f}", f"{r['written'] / r['wall_s']:.1f}",
                      f"{steady:.1f}", f"{startup:.1f}", f"{r['peak_rss_mib']:.0f}", scorer, diff,
                      f"{r['load_before']:.1f} / {r['load_after']:.1f}"))
    return markdown_table(header, lines, align="lrrrrrrrrl", compact=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anomaly.study.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="weights/throughput", help="data, run, outputs and the results go here")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--no-cluster", action="store_true", help="skip the two-node loopback cluster")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run_all(out, args.images, cluster=not args.no_cluster)
    load = os.getloadavg()[0]
    stages = {**stage_costs(out / "run", out / "images"), "load_before": load, "load_after": os.getloadavg()[0]}
    (out / "throughput.json").write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows, "stages": stages},
                                                    indent=2))
    text = markdown(rows) + "\n\nPer image, one thread, in one process: " + ", ".join(
        f"{k} {v:.1f}" for k, v in stages.items()) + "\n"
    (out / "throughput.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
