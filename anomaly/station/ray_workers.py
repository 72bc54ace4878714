"""The two kinds of Ray workers of ``predict --engine ray``: decoders and scorers (see :mod:`anomaly.station.distributed`).

Both are long-lived actors in Ray Data actor pools. A dataset row is one *block*: up to ``k``
batches of ``batch_size`` paths. A :class:`Decoder` decodes each batch with the project's
defensive decoder (:func:`anomaly.station.inspection.decode_batch`) and returns the block's images as
float32 bytes; a :class:`RunScorer` scores each batch with :func:`anomaly.station.inspection.score_batch`,
so the batches -- and therefore the scores -- are exactly the local engine's.

**How the run reaches the workers: through the object store** (:func:`run_payload`). The driver
checks the run and chooses the runtime; the scorers receive the ONNX graph (a few MB) and the
decision (:class:`anomaly.inference.Decision`: threshold, pixel threshold) -- or, for PyTorch, the run's
files, loaded on the worker with every check of :func:`anomaly.inference.load_run` -- and delete
their private copy once loaded. Nothing is written into a run folder on a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly.export import ONNX_FILE, OnnxScorer
from anomaly.inference import Decision, Run, load_run, set_torch_threads
from anomaly.station.inspection import batched, decode_batch, score_batch
from anomaly.memory import peak_rss_mib
from anomaly.runs import MARKER, check_run_dir

SKIPPED_FILES = ("predictions.npz", "metrics.json")  # not needed to score: never shipped to the workers


def run_payload(run: Run, runtime: str) -> dict[str, bytes]:
    """The bytes a scorer needs: the ONNX graph (``"onnx"``), or the files the run's marker lists (``"torch"``)."""
    names = [ONNX_FILE] if runtime == "onnx" else [*check_run_dir(run.run_dir)["files"], MARKER]
    return {name: (run.run_dir / name).read_bytes() for name in dict.fromkeys(names) if name not in SKIPPED_FILES}


class Decoder:
    """Decodes blocks of paths (absolute, as bytes) into float32 images and per-path metadata.

    An actor, not a plain task, on purpose: Ray recycles a task's worker process when it idles
    (beyond one worker per CPU), and each new process pays seconds of imports (torch) before its
    first image -- on 1-CPU nodes that was a new process for every batch.
    """

    def __init__(self, image_size: int, batch_size: int) -> None:
        self.image_size, self.batch_size = image_size, batch_size

    def __call__(self, block: dict[str, Any]) -> dict[str, Any]:
        meta, images = [], []
        for chunk in batched(block["sources"], self.batch_size):
            rows, decoded = decode_batch([Path(os.fsdecode(s)) for s in chunk], self.image_size)
            meta += [[os.fsencode(r["path"]).hex(), r["error"], r.get("_hw")] for r in rows]
            images += [image.numpy() for image in decoded]  # (3, S, S) each
        shape = (len(images), 3, self.image_size, self.image_size)
        stacked = np.stack(images) if images else np.zeros(shape, np.float32)  # (K, 3, S, S)
        return {"block": block["block"], "images": stacked.astype(np.float32, copy=False).tobytes(),
                "meta": json.dumps(meta)}


class RunScorer:
    """Builds its scorer once from the payload in the object store, then scores blocks batch by batch.

    Args:
        payload: ``[ObjectRef]`` of :func:`run_payload` (in a list, so that the actor fetches it).
        colours, heatmap_dir: heatmaps as the local engine writes them (``heatmap_dir`` on a shared path).
    """

    def __init__(self, payload: list, decision: Decision, image_size: int, runtime: str, threads: int, device: str,
                 batch_size: int, colours: dict[str, float], heatmap_dir: str | None) -> None:
        import ray  # deferred: ray is imported on the workers only

        set_torch_threads(threads)
        folder = Path(tempfile.mkdtemp(prefix="anomaly-run-"))
        try:
            for name, data in ray.get(payload[0]).items():
                (folder / name).write_bytes(data)
            if runtime == "onnx":
                self.scorer = OnnxScorer(folder / ONNX_FILE, image_size, threads)
            else:
                run = load_run(folder, device=device)  # checks the marker and the SHA-256 of model.pt
                decision, self.scorer = run.decision, run.detector
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # loaded: the copy is not needed any more
        self.decision, self.image_size = decision, image_size
        self.batch_size, self.colours, self.heatmap_dir = batch_size, colours, heatmap_dir
        self.peak_private_mib = 0.0

    def __call__(self, block: dict[str, Any]) -> dict[str, Any]:
        size = self.image_size
        images = iter(torch.from_numpy(np.frombuffer(block["images"], np.float32).reshape(-1, 3, size, size).copy()))
        values = []
        for chunk in batched(json.loads(block["meta"]), self.batch_size):
            rows = [{"path": Path(os.fsdecode(bytes.fromhex(path))), "score": "", "is_anomalous": "", "regions": "",
                     "error": error, "_hw": hw} for path, error, hw in chunk]
            batch = [next(images) for row in rows if not row["error"]]  # (3, S, S) each
            for prediction in score_batch(self.decision, self.scorer, rows, batch, self.heatmap_dir, self.colours):
                row = prediction.csv_row()
                values.append([row["score"], row["is_anomalous"], row["regions"], row["error"]])
        self.peak_private_mib = max(self.peak_private_mib, private_mib())
        return {"block": block["block"], "values": json.dumps(values), "pid": os.getpid(),
                "peak_rss_mib": peak_rss_mib(),
                "peak_private_mib": self.peak_private_mib}


def private_mib() -> float:
    """This process's resident memory that is its own (``RssAnon + RssFile`` of /proc/self/status), in MiB:
    without the object store's shared pages it maps (``RssShmem``), which ``ru_maxrss`` counts too."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = float(value.split()[0]) / 1024.0
    return sum(fields.values())
