"""ONNX export of a trained detector -- backbone and scoring in ONE graph -- and its onnxruntime scorer.

The graph maps images ``(B, 3, S, S)`` in [0, 1] at the run's ``image_size`` S (dynamic batch
axis B) to ``image_scores`` (B,) and ``anomaly_maps`` (B, S, S). It is the detector's own
inference module, ``detector.model`` (:class:`~anomaly.models.patchcore.PatchCoreModel`,
:class:`~anomaly.models.padim.PaDiMModel`), whose ``forward`` ``Detector.predict`` also runs, so
the scoring exists once; this module only exports it, runs it with onnxruntime and checks parity.
Exported with the TorchScript-based exporter (``dynamo=False``, opset 17; the dynamo
exporter fixed the batch axis to the example's size) and checked against PyTorch: the largest
score and map differences go to ``RUN_DIR/onnx_parity.json``.
:func:`anomaly.inference.select_scorer` picks the runtime of ``evaluate``, ``predict`` and ``serve``: with ``"auto"``
(their default) the exported graph in onnxruntime when its parity record is within
:data:`PARITY_RTOL`, else the PyTorch detector, with the reason logged. The graph is exported once
and cached in the run folder (``model.onnx`` + ``onnx_parity.json``, tied to ``model.pt`` and to
the graph by their SHA-256, never by the path the run was named by; files the completeness marker does not list never make a run folder incomplete). PatchCore's graph computes the
whole (B * patches, bank) distance matrix in one block: ~100 MB at batch 8, 256 px, a 1 % bank.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly.decoding import DataError
from anomaly.geometry import letterbox_batch, maps_to_input
from anomaly.models import EXPORTABLE, Detector, Prediction
from anomaly.runs import file_sha256, is_current, read_dict
from anomaly.utils import write_json

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
PARITY_FILE = "onnx_parity.json"
OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("image_scores", "anomaly_maps")
PARITY_RTOL = 1e-3  # largest score-relative difference of scores and maps accepted by "auto"


def export_graph(detector: Detector) -> nn.Module:
    """The module ONNX export traces: ``detector.model`` itself, the one forward ``predict`` runs.

    Raises:
        ValueError: the method is not exportable, or the detector is not fitted.
    """
    if detector.name not in EXPORTABLE:
        raise ValueError(f"ONNX export supports {', '.join(EXPORTABLE)}; a {detector.name!r} run cannot be exported")
    if not detector.model.fitted:
        raise ValueError(f"{detector.name} is not fitted: fit or load it before exporting")
    return detector.model.eval()


def export_onnx(detector: Detector, out: str | Path, opset: int = OPSET) -> Path:
    """Export ``detector`` as one ONNX graph with a dynamic batch axis; checked with ``onnx.checker``."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    size = int(detector.config.image_size)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(detector.device)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    start = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # shape checks (fixed S, fixed bank) become constants by design; the batch axis stays dynamic
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*(legacy TorchScript|will be removed)")
        torch.onnx.export(export_graph(detector), (example,), str(partial), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
    onnx.checker.check_model(str(partial))
    os.replace(partial, out)  # an interrupted export never leaves half a graph at ``out``
    logger.info("exported %s to %s (%.1f MB, %.1f s)", detector.name, out, out.stat().st_size / 2**20,
                time.perf_counter() - start)
    return out


class OnnxScorer:
    """An exported graph run by onnxruntime, with :meth:`Detector.predict`'s contract.

    Args:
        path: the ``.onnx`` file.
        image_size: the graph's input side S.
        threads: intra-op threads (default: every core). ``Session.run`` is thread-safe, so one
            scorer serves concurrent requests.
    """

    def __init__(self, path: str | Path, image_size: int, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.image_size = int(image_size)
        self.path = Path(path)

    def predict(self, images: torch.Tensor) -> Prediction:
        """(B, 3, H, W) in [0, 1] -> scores (B,), maps (B, H, W); letterboxed to S and back like the detector."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        with torch.inference_mode():
            x = letterbox_batch(images.float().cpu(), self.image_size).contiguous()  # (B, 3, S, S), aspect kept
        scores, maps = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            maps = maps_to_input(torch.from_numpy(maps), tuple(images.shape[-2:]), self.image_size).numpy()  # (B, H, W)
        return Prediction(scores.astype(np.float32), maps.astype(np.float32))


def check_parity(detector: Detector, scorer: OnnxScorer, images: torch.Tensor) -> dict[str, Any]:
    """Largest absolute (and score-relative) differences between PyTorch and onnxruntime on ``images``."""
    ref, got = detector.predict(images), scorer.predict(images)
    score_diff = float(np.abs(ref.image_scores - got.image_scores).max())
    map_diff = float(np.abs(ref.anomaly_maps - got.anomaly_maps).max())
    scale = float(np.abs(ref.image_scores).max()) or 1.0
    return {"n_images": int(len(images)), "max_abs_diff_scores": score_diff, "max_abs_diff_maps": map_diff,
            "max_rel_diff_scores": score_diff / scale, "max_rel_diff_maps": map_diff / scale,
            "max_abs_score": scale}


def parity_images(run: Any, n: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, 3, S, S): test images of the run's data when it is on disk, else seeded random images."""
    from anomaly import dataset as DS  # deferred: pandas, not needed to score
    from anomaly.folders import run_data  # deferred: pandas

    size = run.image_size
    try:
        samples = run_data(run.config, 0.0).splits.test
    except (KeyError, TypeError, DataError) as err:
        logger.info("parity check on random images (%s)", err)
        samples = []
    if not samples:
        return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    picks = np.linspace(0, len(samples) - 1, num=min(n, len(samples))).round().astype(int)
    return torch.stack([DS.read_image(samples[i].image_path, size) for i in picks])


def export_run(run: Any, out: str | Path | None = None, opset: int = OPSET, n_parity: int = 4) -> dict[str, Any]:
    """Export a run's detector to ONNX, check it against PyTorch, write ``RUN_DIR/onnx_parity.json``.

    Args:
        run: a loaded run (:func:`anomaly.inference.load_run`).
        out: the ONNX file (default ``RUN_DIR/model.onnx``).

    Returns:
        the parity record: onnx path, opset, max abs/rel differences of scores and maps, and the
        ``model_sha256`` of the model exported (what ties ``model.onnx`` to ``model.pt``).
    """
    path = export_onnx(run.detector, Path(out) if out else run.run_dir / ONNX_FILE, opset=opset)
    scorer = OnnxScorer(path, run.image_size)
    record = {"onnx": str(path), "onnx_sha256": file_sha256(path), "method": run.detector.name, "opset": opset,
              "image_size": run.image_size, "model_sha256": run.model_sha256,
              **check_parity(run.detector, scorer, parity_images(run, n_parity))}
    write_json(run.run_dir / PARITY_FILE, record)
    logger.info("onnx parity: max |diff| scores %.2e, maps %.2e", record["max_abs_diff_scores"],
                record["max_abs_diff_maps"])
    return record


def load_onnx_scorer(run: Any, threads: int | None = None) -> OnnxScorer:
    """An :class:`OnnxScorer` for a loaded run; exports ``RUN_DIR/model.onnx`` first if it is missing or stale.

    Stale: ``onnx_parity.json`` (written after the graph) is about another graph (by content: its
    ``onnx_sha256``) or another ``model.pt`` (its ``model_sha256``). The path the run is named by does
    not matter, so the same run reached through a symlink or a relative path is not re-exported.
    """
    path, parity = run.run_dir / ONNX_FILE, run.run_dir / PARITY_FILE
    record = read_dict(parity) if parity.is_file() else {}
    if not (path.is_file() and is_current(record, run.model_sha256) and record.get("onnx_sha256") == file_sha256(path)):
        logger.info("no %s exported from this run's model.pt: exporting it now", path)
        export_run(run)
    return OnnxScorer(path, run.image_size, threads=threads)


def parity_failure(record: dict[str, Any], rtol: float = PARITY_RTOL) -> str | None:
    """Why a parity record fails the ``auto`` check (relative score / map difference above ``rtol``), or None."""
    for key in ("max_rel_diff_scores", "max_rel_diff_maps"):
        value = record.get(key)
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value > rtol:
            return f"ONNX parity check failed: {key} = {value!r} (limit {rtol:g})"
    return None
