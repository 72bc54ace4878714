"""HTTP scoring service for one trained run (``anomaly serve``).

:func:`create_app` loads a run folder once (:func:`anomaly.inference.load_run`) and returns a
FastAPI app with ``GET /health``, ``GET /model``, ``POST /predict`` (multipart field ``file``),
``POST /predict/batch`` (multipart field ``files``), the inspection page at ``GET /`` and offline
OpenAPI docs at ``GET /docs`` (:mod:`anomaly.station.web`); with an ``api_key``, every endpoint but
``/health`` (and the page, which asks for the key) answers 401 without the ``X-API-Key`` header.
Uploads are decoded from their spooled files (never from a filesystem path a client names) by the
one defensive decoder (:func:`anomaly.decoding.decode_with_hw`: a format allow-list, pixel and
aspect caps, a per-process budget of pixels decoded at once, cheap PIL reduction of huge images,
EXIF orientation, no NaN pixels), resized to the model's input size as the evaluation
pipeline does, and scored with the exported ONNX graph run by onnxruntime when it passes the
parity check (``runtime="auto"``, the default of ``anomaly serve``), else with PyTorch, into the
verdicts every consumer gets (:func:`anomaly.inference.predict_images`). Scoring endpoints are plain ``def`` functions, so FastAPI runs
them in its thread pool; the app keeps no mutable per-request state, so concurrent requests get
independent results. Bad input gets a 4xx JSON answer with a clear ``detail``:
oversize body 413, too many pixels or too long an image 413, undecodable image 415, empty or corrupt
image 422, missing field 422; a request whose ``Host`` header is not an allowed host name gets 400
(DNS-rebinding guard). :func:`create_app_from_env` is the app factory ``anomaly serve --workers N``
hands to uvicorn: each worker process builds its own app from the ``ANOMALY_*`` variables.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from PIL import Image
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from anomaly.decoding import ImageDecodeError, decode_image, decode_with_hw  # the one defensive decoder
from anomaly.station.http_guards import LOOPBACK_HOSTS, BodyLimitMiddleware, SecurityHeadersMiddleware
from anomaly.inference import (RUNTIMES, Decision, ImagePrediction, Scorer, display_range, load_run,  # noqa: F401
                               predict_images, select_scorer)
from anomaly.memory import limit_allocator
from anomaly.regions import defect_mask
from anomaly.viz import heatmap_rgb
from anomaly.station.web import ENV_SETTINGS, ApiKeyMiddleware, add_page_and_docs, api_key_from, check_api_key

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
MAX_BATCH_FILES = 32


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
    decision: Decision  # threshold, pixel threshold (None: no defect regions)
    vmin: float | None  # heatmap colour range from validation good maps (None: per image)
    vmax: float | None


def create_app(run_dir: str | Path, runtime: str = "torch", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               threads: int = 1, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS, api_key: str | None = None) -> FastAPI:
    """Build the scoring app for the run in ``run_dir``.

    Args:
        run_dir: a run folder written by :func:`anomaly.pipeline.fit_run`.
        runtime: ``"auto"`` (onnxruntime when the exported graph passes the parity check, else the
            detector, :func:`anomaly.inference.select_scorer`; the default of ``anomaly serve``),
            ``"torch"`` (the detector itself) or ``"onnx"`` (``model.onnx`` in the run folder,
            exported on the fly when missing).
        max_upload_bytes: largest request body accepted; larger ones get 413.
        threads: onnxruntime intra-op threads per request. The default 1 lets concurrent requests
            (each on its own thread-pool thread) use the cores without oversubscribing them.
        allowed_hosts: host names accepted in the ``Host`` header (``"*"`` for any); others get 400,
            so a web page cannot reach the service through DNS rebinding. See :func:`anomaly.station.http_guards.allowed_hosts`.
        api_key: when given, required in the ``X-API-Key`` header by every endpoint but ``/health``.

    Returns:
        The FastAPI application (serve it with uvicorn).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
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


def create_app_from_env() -> FastAPI:
    """App factory for uvicorn's ``--workers``: :func:`create_app` with the settings in ``ANOMALY_*`` variables
    (:func:`anomaly.station.web.settings_to_env`)."""
    limit_allocator()  # also set through the inherited MALLOC_* variables; mallopt makes it certain
    kwargs = {name: json.loads(os.environ[var]) for name, var in ENV_SETTINGS.items() if var in os.environ}
    if "run_dir" not in kwargs:
        raise ValueError(f"{ENV_SETTINGS['run_dir']} is not set")
    return create_app(api_key=api_key_from(None), **kwargs)


def _load_service(run_dir: Path, runtime: str, threads: int) -> _Service:
    run = load_run(run_dir, device="cpu")
    scorer, runtime = select_scorer(run, runtime, threads=threads)  # "auto" resolved to what runs
    rng = display_range(run)  # both None without calibration map quantiles: per-image range
    info = {"method": run.config.get("method", run.detector.name), "category": run.config.get("category"),
            "image_size": run.image_size, "threshold": run.threshold, "runtime": runtime, "metrics": run.metrics,
            "decision": run.decision.fields, "heatmap_range": rng}
    info = _json_safe(info)
    logger.info("serving %s (%s, %d px) with %s", run_dir, info["method"], run.image_size, runtime)
    return _Service(scorer, info, run.image_size, run.decision, rng["vmin"], rng["vmax"])


def _warm_up(service: _Service) -> None:
    """One decode, prediction and heatmap at load (lazy imports, first-run allocations), so the first upload is fast."""
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
    predictions = predict_images(service.decision, service.scorer, torch.stack(images),
                                 [upload.filename or f"file #{i}" for i, upload in enumerate(files)], sizes=sizes)
    return [PredictResponse(score=_finite(p.score), is_anomalous=bool(p.is_anomalous),
                            threshold=service.decision.threshold, filename=upload.filename,
                            heatmap_png_base64=_heatmap_base64(p.image, p.anomaly_map, service),
                            **_regions(p, service, mask))
            for upload, p in zip(files, predictions)]


def _regions(prediction: ImagePrediction, service: _Service, mask: bool) -> dict[str, Any]:
    """``regions`` in the upload's pixels and, when asked, the binary mask of the upload's area on the
    canvas (S, S for a square upload; aspect kept, long side S, otherwise) as a base64 PNG."""
    if prediction.regions is None:
        return {}
    if not mask:
        return {"regions": prediction.regions}
    buffer = io.BytesIO()
    binary = defect_mask(prediction.anomaly_map, service.decision.pixel_threshold)  # (h, w): the upload's area
    Image.fromarray(binary.astype(np.uint8) * 255).save(buffer, format="PNG")
    return {"regions": prediction.regions, "mask_png_base64": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _heatmap_base64(image: torch.Tensor, anomaly_map: np.ndarray, service: _Service) -> str:
    """The map (S, S) blended over the image (3, S, S) as a base64 PNG, in the run's fixed colour range.

    zlib level 1: a third of level 6's CPU time for ~20 % more bytes, which matters at 2 cores.
    """
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
