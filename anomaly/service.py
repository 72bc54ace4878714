"""HTTP scoring service for one trained run (``anomaly serve``).

:func:`create_app` loads a run folder once (:func:`anomaly.pipeline.load_run`) and returns a
FastAPI app with ``GET /health``, ``GET /model``, ``POST /predict`` (multipart field ``file``),
``POST /predict/batch`` (multipart field ``files``), the inspection page at ``GET /`` and offline
OpenAPI docs at ``GET /docs`` (:mod:`anomaly.web`); with an ``api_key``, every endpoint but
``/health`` (and the page, which asks for the key) answers 401 without the ``X-API-Key`` header.
Uploads are decoded from their spooled files (never from a filesystem path a client names) by the
one defensive decoder (:func:`anomaly.decoding.decode_with_hw`: a format allow-list, pixel and
aspect caps, a per-process budget of pixels decoded at once, cheap PIL reduction of huge images,
EXIF orientation, no NaN pixels), resized to the model's input size as the evaluation
pipeline does, and scored with the exported ONNX graph run by onnxruntime when it passes the
parity check (``runtime="auto"``, the default of ``anomaly serve``), else with PyTorch. Scoring endpoints are plain ``def`` functions, so FastAPI runs
them in its thread pool; the app keeps no mutable per-request state, so concurrent requests get
independent results. Bad input gets a 4xx JSON answer with a clear ``detail``:
oversize body 413, too many pixels or too long an image 413, undecodable image 415, empty or corrupt
image 422, missing field 422; a request whose ``Host`` header is not an allowed host name gets 400
(DNS-rebinding guard).
"""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from anomaly.decoding import ImageDecodeError, decode_image, decode_with_hw  # the one defensive decoder
from anomaly.geometry import Letterbox
from anomaly.http_guards import LOOPBACK_HOSTS, BodyLimitMiddleware, SecurityHeadersMiddleware
from anomaly.models import Prediction
from anomaly.records import ThresholdRecord

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
MAX_BATCH_FILES = 32
RUNTIMES = ("auto", "torch", "onnx")


class Scorer(Protocol):
    """Anything that maps (B, 3, S, S) images in [0, 1] to a :class:`Prediction`."""

    def predict(self, images: torch.Tensor) -> Prediction: ...


class PredictResponse(BaseModel):
    """One scored image."""

    score: float
    is_anomalous: bool
    threshold: float
    heatmap_png_base64: str
    filename: str | None = None
    regions: list[dict[str, Any]] = []  # bbox [x0, y0, x1, y1] in the upload's pixels, area_px, max_score
    mask_png_base64: str | None = None  # the binary defect mask of the upload's area at the model's resolution (?mask=true)


class BatchResponse(BaseModel):
    results: list[PredictResponse]


@dataclass(frozen=True)
class _Service:
    """Everything the endpoints read; built once, never mutated."""

    scorer: Scorer
    info: dict[str, Any]
    image_size: int
    threshold: float
    vmin: float | None  # heatmap colour range from validation good maps (None: per image)
    vmax: float | None
    pixel_threshold: float | None = None  # defect regions (None: the run has none)


def create_app(run_dir: str | Path, runtime: str = "torch", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               threads: int = 1, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS, api_key: str | None = None) -> FastAPI:
    """Build the scoring app for the run in ``run_dir``.

    Args:
        run_dir: a run folder written by :func:`anomaly.pipeline.fit_run`.
        runtime: ``"auto"`` (onnxruntime when the exported graph passes the parity check, else the
            detector, :func:`anomaly.export.select_scorer`; the default of ``anomaly serve``),
            ``"torch"`` (the detector itself) or ``"onnx"`` (``model.onnx`` in the run folder,
            exported on the fly when missing).
        max_upload_bytes: largest request body accepted; larger ones get 413.
        threads: onnxruntime intra-op threads per request. The default 1 lets concurrent requests
            (each on its own thread-pool thread) use the cores without oversubscribing them.
        allowed_hosts: host names accepted in the ``Host`` header (``"*"`` for any); others get 400,
            so a web page cannot reach the service through DNS rebinding. See :func:`anomaly.http_guards.allowed_hosts`.
        api_key: when given, required in the ``X-API-Key`` header by every endpoint but ``/health``.

    Returns:
        The FastAPI application (serve it with uvicorn).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    from anomaly.web import ApiKeyMiddleware, add_page_and_docs, check_api_key

    service = _load_service(Path(run_dir), runtime, threads)
    _warm_up(service)
    app = FastAPI(title="anomaly", version="0.1.0", docs_url=None, redoc_url=None,
                  description=f"Anomaly scoring with a {service.info['method']} run on {service.info['category']!r}.")
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_upload_bytes)
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=check_api_key(api_key))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: every answer, a 400 or 413 included

    @app.get("/health")
    async def health() -> dict[str, str]:  # on the event loop: answered even while every worker thread decodes
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return service.info

    @app.post("/predict", response_model=PredictResponse)
    def predict(file: UploadFile = File(..., description="one image (PNG, JPEG, TIFF, BMP, ...)"),
                mask: bool = Form(False, description="also return the binary defect mask PNG")) -> PredictResponse:
        return _score_uploads(service, [file], mask)[0]

    @app.post("/predict/batch", response_model=BatchResponse)
    def predict_batch(files: list[UploadFile] = File(..., description=f"1 to {MAX_BATCH_FILES} images")) -> BatchResponse:
        if len(files) > MAX_BATCH_FILES:
            raise HTTPException(413, f"at most {MAX_BATCH_FILES} files per batch, got {len(files)}")
        return BatchResponse(results=_score_uploads(service, files))

    add_page_and_docs(app)
    return app


def _load_service(run_dir: Path, runtime: str, threads: int) -> _Service:
    from anomaly.pipeline import display_range, load_run

    run = load_run(run_dir, device="cpu")
    from anomaly.export import select_scorer

    scorer, runtime = select_scorer(run, runtime, threads=threads)  # "auto" resolved to what runs
    rng = display_range(run)  # both None without calibration map quantiles: per-image range
    info = {"method": run.config.get("method", run.detector.name), "category": run.config.get("category"),
            "image_size": run.image_size, "threshold": run.threshold, "runtime": runtime, "metrics": run.metrics,
            "decision": _decision(run_dir), "heatmap_range": rng}
    info = _json_safe(info)
    logger.info("serving %s (%s, %d px) with %s", run_dir, info["method"], run.image_size, runtime)
    return _Service(scorer, info, run.image_size, run.threshold, rng["vmin"], rng["vmax"], run.pixel_threshold)


def _decision(run_dir: Path) -> dict[str, Any]:
    """How the threshold was set: the scalar fields of ``threshold.json`` (target FRR, estimator, n scores, ...)."""

    return ThresholdRecord.read(run_dir).scalars()


def _warm_up(service: _Service) -> None:
    """One decode, prediction and heatmap at load (lazy imports, first-run allocations), so the first upload is fast."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    image = decode_image(buffer.getvalue(), service.image_size)  # (3, S, S)
    out = service.scorer.predict(image[None])
    _heatmap_base64(image, out.anomaly_maps[0], service)


def _score_uploads(service: _Service, files: list[UploadFile], mask: bool = False) -> list[PredictResponse]:
    """Decode every upload from its spooled file (4xx naming the file on failure), score them as one batch."""
    images, sizes = [], []
    for i, upload in enumerate(files):
        try:
            image, hw = decode_with_hw(upload.file, service.image_size)  # (3, S, S), upright (H, W)
        except ImageDecodeError as err:
            raise HTTPException(err.status_code, f"{upload.filename or f'file #{i}'}: {err}") from err
        images.append(image)
        sizes.append(hw)
    out = service.scorer.predict(torch.stack(images))  # scores (B,), maps (B, S, S)
    return [PredictResponse(score=_finite(score), is_anomalous=bool(score >= service.threshold),
                            threshold=service.threshold, filename=upload.filename,
                            heatmap_png_base64=_heatmap_base64(*_image_area(image, amap, hw), service),
                            **_regions(amap, hw, service, mask))
            for upload, image, score, amap, hw in zip(files, images, out.image_scores.tolist(), out.anomaly_maps, sizes)]


def _image_area(image: torch.Tensor, amap: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """The image (3, h, w) and map (h, w) of an upload's area on the letterboxed (S, S) canvas (no pad)."""
    box = Letterbox(hw[0], hw[1], amap.shape[-1])
    return box.crop(image), box.crop(amap)


def _regions(amap: np.ndarray, hw: tuple[int, int], service: _Service, mask: bool) -> dict[str, Any]:
    """``regions`` in the upload's pixels and, when asked, the binary mask of the upload's area on the
    canvas (S, S for a square upload; aspect kept, long side S, otherwise) as a base64 PNG."""
    from anomaly.regions import defect_mask, find_regions, scale_regions

    if service.pixel_threshold is None:
        return {}
    box = Letterbox(hw[0], hw[1], amap.shape[-1])
    amap = box.crop(amap)  # (h, w): the pad is never a region
    regions = scale_regions(find_regions(amap, service.pixel_threshold), amap.shape, hw)
    if not mask:
        return {"regions": regions}
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(defect_mask(amap, service.pixel_threshold).astype(np.uint8) * 255).save(buffer, format="PNG")
    return {"regions": regions, "mask_png_base64": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _heatmap_base64(image: torch.Tensor, anomaly_map: np.ndarray, service: _Service) -> str:
    """The map (S, S) blended over the image (3, S, S) as a base64 PNG, in the run's fixed colour range.

    zlib level 1: a third of level 6's CPU time for ~20 % more bytes, which matters at 2 cores.
    """
    from PIL import Image

    from anomaly.viz import heatmap_rgb

    buffer = io.BytesIO()
    Image.fromarray(heatmap_rgb(image, anomaly_map, vmin=service.vmin, vmax=service.vmax)).save(
        buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value: float) -> float:
    """Scores as JSON numbers: +-inf -> +-float32 max; NaN means the model failed (500, not a crash)."""
    if math.isnan(value):
        raise HTTPException(500, "the model produced a NaN score for this image")
    return float(value) if math.isfinite(value) else float(np.sign(value) * np.finfo(np.float32).max)


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively (Starlette's JSON encoder refuses them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
