"""INT8 quantisation of a run's exported ONNX graph (onnxruntime), and its cost/benefit on the test split.

Only the backbone's convolutions are quantised (``op_types_to_quantize=["Conv"]``): the k-NN /
Mahalanobis scoring stays in float, since int8 distances would flatten exactly the small score
differences that rank defects. Two flavours of onnxruntime's quantiser:

- ``dynamic``: int8 weights, activations quantised per batch at run time (no calibration);
- ``static``: int8 weights and activations (QDQ, per channel), activation ranges calibrated on
  good *training* images only (never test images).

:func:`compare_int8` scores the test split with the float graph and the int8 one, and reports the
metrics with their bootstrap intervals, the parity of the int8 graph against the float one, and the
per-image latency of both: the int8 graph is worth keeping only if its metrics stay within the
float run's intervals AND it is faster.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly import dataset as DS
from anomaly import layout as L
from anomaly.export import INPUT_NAME, OnnxScorer, load_onnx_scorer
from anomaly.folders import run_data
from anomaly.inference import load_run
from anomaly.dataset import make_loader
from anomaly.evaluation import ranking_metrics
from anomaly.pipeline import predict_loader
from anomaly.uncertainty import uncertainty_metrics

logger = logging.getLogger(__name__)

MODES = ("dynamic", "static")
INT8_FILE = "model.int8-{mode}.onnx"


class _GoodImages:
    """onnxruntime CalibrationDataReader over (1, 3, S, S) good training images."""

    def __init__(self, samples: list[L.Sample], image_size: int, input_name: str) -> None:
        self.items = iter(samples)
        self.size, self.name = image_size, input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self.items, None)
        if sample is None:
            return None
        return {self.name: DS.read_image(sample.image_path, self.size)[None].numpy()}  # (1, 3, S, S)

    def rewind(self) -> None:  # pragma: no cover - onnxruntime calls it for some calibrators only
        raise NotImplementedError


def quantize_run(run: Any, mode: str = "dynamic", n_calibration: int = 32) -> Path:
    """Write ``RUN_DIR/model.int8-{mode}.onnx`` from the run's float graph (exported first if needed)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static


    if mode not in MODES:
        raise ValueError(f"unknown quantisation {mode!r}; choose one of {', '.join(MODES)}")
    src = load_onnx_scorer(run).path
    dst = run.run_dir / INT8_FILE.format(mode=mode)
    start = time.perf_counter()
    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["Conv"], weight_type=QuantType.QInt8)
    else:
        cfg = run.config
        good = run_data(cfg, 0.0).splits.train
        picks = np.linspace(0, len(good) - 1, num=min(n_calibration, len(good))).round().astype(int)
        reader = _GoodImages([good[i] for i in picks], run.image_size, INPUT_NAME)
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    logger.info("quantised %s (%s) to %s in %.1f s", src, mode, dst, time.perf_counter() - start)
    return dst


def compare_int8(run_dir: str | Path, mode: str = "dynamic", repeats: int = 20, threads: int | None = None) -> dict:
    """Float vs int8 graph of a run: test metrics with intervals, int8-vs-float parity, batch-1 latency.

    Returns:
        ``{"mode", "float": {...}, "int8": {...}, "parity": {...}, "within_intervals": bool, "faster": bool}``
        where each runtime entry holds image/pixel AUROC, AUPRO (with ``*_ci``) and ``ms_p50``.
    """
    run = load_run(run_dir)
    scorers = {"float": load_onnx_scorer(run, threads=threads),
               "int8": OnnxScorer(quantize_run(run, mode), run.image_size, threads=threads)}
    cfg = run.config
    test = run_data(cfg, cfg["val_fraction"]).splits.test
    result: dict[str, Any] = {"mode": mode, "n_test_images": len(test)}
    outputs = {}
    for name, scorer in scorers.items():
        out = predict_loader(scorer, make_loader(test, run.image_size, 8), desc=name)
        metrics = {**ranking_metrics(out), **uncertainty_metrics(out, test, run.threshold)}
        keep = ("image_auroc", "pixel_auroc", "aupro")
        result[name] = {**{k: metrics[k] for k in keep}, **{f"{k}_ci": metrics.get(f"{k}_ci") for k in keep},
                        "ms_p50": _latency(scorer, run.image_size, repeats)}
        outputs[name] = out
    ref = outputs["float"]
    scale = float(np.abs(ref["image_scores"]).max()) or 1.0
    result["parity"] = {
        "max_rel_diff_scores": float(np.abs(ref["image_scores"] - outputs["int8"]["image_scores"]).max()) / scale,
        "max_rel_diff_maps": float(np.abs(ref["anomaly_maps"] - outputs["int8"]["anomaly_maps"]).max()) / scale}
    result["within_intervals"] = all(_inside(result["int8"][k], result["float"][f"{k}_ci"])
                                     for k in ("image_auroc", "pixel_auroc", "aupro"))
    result["faster"] = result["int8"]["ms_p50"] < result["float"]["ms_p50"]
    return result


def _inside(value: float, interval: Any) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def _latency(scorer: Any, size: int, repeats: int) -> float:
    """Median ms of one (1, 3, S, S) prediction, after one warm-up."""
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    scorer.predict(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scorer.predict(image)
        times.append(1000.0 * (time.perf_counter() - start))
    return float(np.median(times))
