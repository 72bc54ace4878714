"""The one inference path: a trained run, loaded with its decision, turns images into verdicts.

:func:`load_run` reads a run folder (every file checked, :mod:`anomaly.runs`) into a :class:`Run`: the
detector, its config, its :class:`Decision` (``threshold.json``) and its :class:`CalibrationSummary`
(``calibration.json``). :func:`select_scorer` picks the runtime that scores (:data:`RUNTIMES`: the exported
graph in onnxruntime, or the PyTorch detector). :func:`predict_images` is the one function that turns a
batch of images into :class:`ImagePrediction` records -- the score, the verdict at the run's threshold,
the defect regions in the input's pixels, optionally a heatmap PNG named by :func:`heatmap_name` in the
run's colour range (:func:`display_range`). Every consumer goes through it:

- ``anomaly predict`` as JSON lines (:func:`iter_predictions`, images at their own resolution);
- ``anomaly predict --csv`` and the Ray engine (:mod:`anomaly.station.inspection`, :mod:`anomaly.station.ray_workers`:
  batches of letterboxed images);
- the HTTP service (:mod:`anomaly.station.service`: uploads, answered as JSON).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch

from anomaly import export as E
from anomaly.decoding import decode_image
from anomaly.geometry import Letterbox
from anomaly.models import Detector, Prediction, load_detector
from anomaly.records import MetricsRecord, ThresholdRecord
from anomaly.runs import check_run_dir, read_config, read_dict
from anomaly.utils import printable, resolve_device

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
RUNTIME_HELP = ("auto (default): RUN_DIR/model.onnx in onnxruntime when it passes the parity check with PyTorch "
                "(exported once), else PyTorch with the reason logged; torch; onnx")


class Scorer(Protocol):
    """Anything that maps (B, 3, H, W) images in [0, 1] to a :class:`Prediction` (a detector, an ONNX scorer)."""

    def predict(self, images: torch.Tensor) -> Prediction: ...


# -- what a run decides with -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """How a run turns a score into a verdict: ``threshold.json``.

    Attributes:
        threshold: image threshold (score >= threshold: anomalous), set at ``target_frr`` by ``estimator``
            from ``n_scores`` good calibration scores.
        pixel_threshold: defect-region threshold (``None``: the run reports no regions).
        fields: every scalar field of the file, as written (what the service shows at ``/model``).
    """

    threshold: float
    pixel_threshold: float | None = None
    target_frr: float | None = None
    estimator: str | None = None
    n_scores: int | None = None
    fields: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class CalibrationSummary:
    """What a loaded run keeps of ``calibration.json``: how it calibrated, on how many good images, and the
    quantiles ("0", "50", "99", "100") of the good maps' values (``None``: the run recorded none)."""

    kind: str
    folds: int | None
    n_scores: int
    map_quantiles: dict[str, float] | None


def read_decision(run_dir: str | Path) -> Decision:
    """``threshold.json`` of ``run_dir`` as a :class:`Decision` (a NaN or non-numeric threshold is refused,
    named); the one reader of the file for inference."""
    record = ThresholdRecord.read(run_dir)  # the typed record (anomaly.records) checks every field
    return Decision(record.threshold, record.pixel_threshold, record.target_frr, record.estimator, record.n_scores,
                    record.scalars())


def read_calibration_summary(run_dir: str | Path) -> CalibrationSummary:
    """``calibration.json`` of ``run_dir`` as a :class:`CalibrationSummary` (checked by
    :func:`anomaly.calibration.read_calibration`); the one reader of the file for inference."""
    from anomaly import calibration as C  # deferred: it imports scipy.stats and pandas, not needed at CLI start-up

    record = C.read_calibration(run_dir)
    return CalibrationSummary(record["kind"], record.get("folds"), record["n_scores"], record.map_summary())


# -- a loaded run ----------------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained run loaded from its folder, with the decision and calibration it was fitted with."""

    run_dir: Path
    detector: Detector
    config: dict[str, Any]
    decision: Decision
    calibration: CalibrationSummary
    metrics: dict[str, Any] | None
    model_sha256: str = ""  # fingerprint of model.pt from complete.json

    @property
    def image_size(self) -> int:
        return int(self.detector.config.image_size)

    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @property
    def pixel_threshold(self) -> float | None:
        """Defect-region threshold (``None``: no regions)."""
        return self.decision.pixel_threshold


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Load a run folder written by :func:`anomaly.pipeline.fit_run`, checking every file it reads.

    Raises:
        FileNotFoundError: no such folder.
        anomaly.runs.RunFolderError: an incomplete or stale folder, or a malformed file (named).
    """
    run_dir = Path(run_dir)
    marker = check_run_dir(run_dir)
    detector = load_detector(run_dir, device=resolve_device(device))
    config = read_config(run_dir, detector.name)
    record = MetricsRecord.read_current(run_dir, marker["model_sha256"])
    metrics = None if record is None else record.as_dict()
    return Run(run_dir, detector, config, read_decision(run_dir), read_calibration_summary(run_dir), metrics,
               marker["model_sha256"])


def display_range(run: Run | str | Path) -> dict[str, float | None]:
    """Heatmap colour range of a run (or run folder) from good calibration maps: low = median map value,
    high = their maximum; both ``None`` (each map its own range) when the run recorded no map quantiles."""
    summary = run.calibration if isinstance(run, Run) else read_calibration_summary(run)
    q = summary.map_quantiles
    if q is None:
        return {"vmin": None, "vmax": None}
    return {"vmin": float(q["50"]), "vmax": float(max(q["100"], q["50"] + 1e-8))}


def regions_of(decision: Run | Decision, anomaly_map: np.ndarray) -> list[dict]:
    """Defect regions of one (H, W) map at the pixel threshold (bboxes in the map's pixels); [] without one."""
    from anomaly.regions import find_regions  # deferred: scipy.ndimage, not needed at CLI start-up

    return [] if decision.pixel_threshold is None else find_regions(anomaly_map, decision.pixel_threshold)


def heatmap_name(path: str | Path) -> str:
    """``<stem>_<sha1 of the absolute path, 8 hex>_heatmap.png``: same-named files in different folders differ."""
    digest = hashlib.sha1(os.fsencode(Path(path).resolve())).hexdigest()[:8]
    return f"{Path(path).stem}_{digest}_heatmap.png"


# -- the runtime -----------------------------------------------------------------------------------------
def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: every core of this machine); returns the number set."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    n = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def select_scorer(run: Run, runtime: str = "auto", threads: int | None = None) -> tuple[Scorer, str]:
    """The scorer of a loaded run and the runtime it uses (``"torch"`` or ``"onnx"``).

    ``"auto"`` takes onnxruntime (measured faster than eager PyTorch on CPU, see the README) when the
    run's method exports, the run is on the CPU, the export succeeds and its parity record is within
    :data:`anomaly.export.PARITY_RTOL`; otherwise the detector itself, logging why. ``"torch"`` / ``"onnx"``
    are taken as asked (an ``"onnx"`` export failure is an error, not a fallback).

    Args:
        threads: onnxruntime intra-op threads (default: every core); torch's are the caller's to set.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx":
        return E.load_onnx_scorer(run, threads=threads), "onnx"
    reason = "--runtime torch" if runtime == "torch" else _no_onnx_reason(run)
    failed = False  # an expected PyTorch run is logged at INFO, a failed export or parity check at WARNING
    if reason is None:
        try:
            scorer = E.load_onnx_scorer(run, threads=threads)
            reason = E.parity_failure(read_dict(run.run_dir / E.PARITY_FILE))
        except Exception as err:  # noqa: BLE001 -- any export failure (missing onnx, unsupported op, full disk) falls back
            reason, scorer = f"ONNX export failed: {type(err).__name__}: {err}", None
        if reason is None:
            logger.info("runtime: onnxruntime (%s, parity within %g)", scorer.path, E.PARITY_RTOL)
            return scorer, "onnx"
        failed = True
    (logger.warning if failed else logger.info)("runtime: PyTorch (%s)", reason)
    return run.detector, "torch"


def runtime_scorer(run: Run, runtime: str = "auto", threads: int | None = None) -> Scorer:
    """The scorer of ``run`` for ``runtime`` (:func:`select_scorer`); sets torch's threads when torch scores."""
    scorer, used = select_scorer(run, runtime, threads=threads)
    if used == "torch" and threads is not None:
        set_torch_threads(threads)
    return scorer


def _no_onnx_reason(run: Run) -> str | None:
    if run.detector.name not in E.EXPORTABLE:
        return f"{run.detector.name} has no ONNX export"
    if str(run.detector.device) != "cpu":
        return f"the run is on {run.detector.device}; onnxruntime runs here on the CPU only"
    return None


# -- images -> verdicts ----------------------------------------------------------------------------------
@dataclass
class ImagePrediction:
    """One image's verdict: what ``predict`` prints, the inspection CSV holds and the service answers.

    ``error`` says why an image has no verdict to trust: it could not be decoded (no score), or the
    model gave it a non-finite score. ``image`` (3, h, w) and ``anomaly_map`` (h, w) are the image's
    area (never the letterbox pad), kept for heatmaps and masks; they are not part of the record.
    """

    path: str  # printable (a non-UTF-8 file name as \\xNN), or an upload's name
    score: float | None = None
    is_anomalous: bool | None = None  # score >= threshold (None: no score, or NaN)
    regions: list[dict] | None = None  # bbox [x0, y0, x1, y1] in the input's pixels; None: the run has no regions
    heatmap: str | None = None  # the heatmap PNG written (printable), if one was asked for
    error: str = ""
    image: torch.Tensor | None = field(default=None, repr=False, compare=False)
    anomaly_map: np.ndarray | None = field(default=None, repr=False, compare=False)

    def json_record(self) -> dict[str, Any]:
        """The JSON line of ``anomaly predict``."""
        return {"path": self.path, "score": self.score, "is_anomalous": self.is_anomalous, "heatmap": self.heatmap,
                "regions": self.regions or []}

    def csv_row(self) -> dict[str, Any]:
        """The inspection CSV's cells (:data:`anomaly.station.results_csv.COLUMNS` but ``run``); empty without a verdict."""
        if self.error:
            return {"path": self.path, "score": "", "is_anomalous": "", "regions": "", "error": self.error}
        return {"path": self.path, "score": self.score, "is_anomalous": self.is_anomalous,
                "regions": "" if self.regions is None else len(self.regions), "error": ""}


def predict_images(decision: Run | Decision, scorer: Scorer, images: torch.Tensor, names: Sequence[str | Path],
                   sizes: Sequence[tuple[int, int]] | None = None, heatmap_dir: str | Path | None = None,
                   colours: dict[str, float | None] | None = None) -> list[ImagePrediction]:
    """Score ``images`` as one batch into one :class:`ImagePrediction` each.

    Args:
        decision: the run (or its :class:`Decision`): the threshold and the pixel threshold.
        images: (B, 3, S, S) letterboxed canvases of inputs of ``sizes`` (H, W) each; or, with ``sizes``
            ``None``, (B, 3, H, W) images scored at their own resolution (maps come back at (H, W)).
        names: each image's path (or upload name): the record's ``path`` and its heatmap's name.
        heatmap_dir: when given, a heatmap PNG of each image with a finite score (:func:`heatmap_name`),
            in the ``colours`` range (:func:`display_range`; default: each map its own).
    """
    out = scorer.predict(images)  # scores (B,), maps (B, S, S) or (B, H, W)
    records = []
    for i, name in enumerate(names):
        image, amap = images[i], out.anomaly_maps[i]
        hw = tuple(amap.shape[-2:]) if sizes is None else tuple(sizes[i])
        if sizes is not None:
            box = Letterbox(int(hw[0]), int(hw[1]), amap.shape[-1])
            image, amap = box.crop(image), box.crop(amap)  # the image's area, never the pad
        score = float(out.image_scores[i])
        verdict = None if math.isnan(score) else bool(score >= decision.threshold)
        record = ImagePrediction(printable(str(name)), score, verdict, image=image, anomaly_map=amap)
        if not math.isfinite(score):  # never a verdict from a NaN: NaN >= threshold is False, "good"
            record.error = f"{record.path}: the model produced a non-finite score ({score})"
        if decision.pixel_threshold is not None:
            record.regions = _in_input_pixels(regions_of(decision, amap), amap.shape, hw)
        if heatmap_dir is not None and not record.error:
            from anomaly.viz import save_heatmap_png  # deferred: matplotlib

            target = Path(heatmap_dir) / heatmap_name(name)  # same-named files in other folders do not collide
            save_heatmap_png(image, amap, target, **(colours or {}))
            record.heatmap = printable(str(target))
        records.append(record)
    return records


def iter_predictions(run: Run, paths: Sequence[str | Path], heatmap_dir: str | Path | None = None,
                     scorer: Scorer | None = None) -> Iterator[ImagePrediction]:
    """One record per image file, at the file's own resolution, as each is scored (``anomaly predict``'s JSON lines).

    Raises:
        ValueError: an image that cannot be decoded, or a non-finite score (named).
    """
    scorer = run.detector if scorer is None else scorer
    colours = display_range(run) if heatmap_dir is not None else None
    for path in paths:
        image = decode_image(Path(path))[None]  # (1, 3, H, W) at the file's resolution
        [record] = predict_images(run.decision, scorer, image, [path], heatmap_dir=heatmap_dir, colours=colours)
        if record.error:
            raise ValueError(record.error)
        yield record


def _in_input_pixels(regions: list[dict], map_hw: tuple[int, int], input_hw: tuple[int, int]) -> list[dict]:
    from anomaly.regions import scale_regions  # deferred: scipy.ndimage, not needed at CLI start-up

    return regions if tuple(map_hw) == tuple(input_hw) else scale_regions(regions, map_hw, input_hw)
