"""The typed records of a run folder: ``threshold.json``, ``calibration.json`` and ``metrics.json``.

Each file is written and read through ONE pydantic model (:class:`ThresholdRecord`,
:class:`CalibrationRecord`, :class:`MetricsRecord`): ``Record.read(run_dir)`` checks the file (valid
JSON, an object, the types and bounds of every field it declares) and raises
:class:`~anomaly.runs.RunFolderError` naming the file and the field; ``record.write(run_dir)`` writes it
atomically with the same keys, in the same order, as before the records were typed (existing run
folders load unchanged). Keys a record does not declare -- older runs' fields, the many per-type
blocks of ``metrics.json`` -- are kept as they are (read, and written back).

A record reads like the dict it replaces (``record["threshold"]``, ``record.get("pixel_fpr")``) as
well as by attribute (``record.threshold``), so notebooks that index the JSON keep working.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from anomaly.utils import read_json, write_json

logger = logging.getLogger(__name__)

R = TypeVar("R", bound="Record")
Rate = float  # checked by the validators below: in (0, 1)


class RunFolderError(ValueError):
    """A run folder that is incomplete, stale or malformed; the message names the file."""


def read_dict(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object from ``path`` holding the ``required`` keys; RunFolderError names the file otherwise."""
    try:
        obj = read_json(path)
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        raise RunFolderError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise RunFolderError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    missing = [key for key in required if key not in obj]
    if missing:
        raise RunFolderError(f"{path} lacks {', '.join(missing)}")
    return obj


class Record(BaseModel):
    """A JSON object of a run folder with typed fields; undeclared keys are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=True, strict=True)
    FILE: ClassVar[str]
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # keys a file must hold (checked first: "FILE lacks KEY")
    _order: list[str] = PrivateAttr(default_factory=list)  # the keys in the order they were given (file order)

    @classmethod
    def read(cls: type[R], run_dir: str | Path) -> R:
        """The record of ``run_dir``; RunFolderError names the file (missing, not JSON, a bad field)."""
        path = Path(run_dir) / cls.FILE
        if not path.is_file():
            raise RunFolderError(f"{path} not found")
        return cls.from_dict(read_dict(path, cls.REQUIRED), path)

    @classmethod
    def from_dict(cls: type[R], values: dict[str, Any], source: str | Path | None = None) -> R:
        """Validate ``values`` (a record built in memory, or read from ``source``); keeps their key order."""
        try:
            record = cls.model_validate(values)
        except ValidationError as err:
            raise RunFolderError(f"{source or cls.FILE}: {_first_error(err)}") from None
        record._order = list(values)
        return record

    def write(self, run_dir: str | Path) -> Path:
        """Write the record to ``run_dir/FILE`` atomically; returns the path."""
        path = Path(run_dir) / self.FILE
        write_json(path, self.as_dict())
        return path

    def as_dict(self) -> dict[str, Any]:
        """The JSON object: the keys that were set, in the order they were given (then any set since)."""
        values = self.model_dump(exclude_unset=True)
        return {**{k: values[k] for k in self._order if k in values}, **values}

    # -- read like the dict it replaces ------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        values = self.as_dict()
        if key not in values:
            raise KeyError(key)
        return values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``record[key]`` when the file has ``key``, else ``default`` (as ``dict.get``)."""
        return self.as_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()


def _first_error(err: ValidationError) -> str:
    """``field: what is wrong`` for the first error (a validator's own message as it is)."""
    e = err.errors()[0]
    if e["type"] == "value_error":
        return str(e["ctx"]["error"])
    where = ".".join(str(p) for p in e["loc"]) or "the record"
    return f"{where}: {e['msg'][:1].lower()}{e['msg'][1:]}, got {e.get('input')!r}"


def _finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return value


def _rate(value: float | None, name: str) -> float | None:
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1")
    return value


class ThresholdRecord(Record):
    """``threshold.json``: the decision (:func:`anomaly.calibration.decide`).

    Attributes:
        threshold: image threshold; a score >= it is called anomalous.
        estimator, target_frr, n_scores, reachable, calibration_frr: how it was set
            (:func:`anomaly.thresholds.frr_threshold`).
        calibration, folds: where the good scores came from (``crossfit``/``validation``).
        pixel_fpr, pixel_threshold: the defect-region threshold at a per-pixel false-positive rate.
    """

    FILE: ClassVar[str] = "threshold.json"
    REQUIRED: ClassVar[tuple[str, ...]] = ("threshold",)
    threshold: float
    estimator: str | None = None
    target_frr: Rate | None = None
    n_scores: int | None = Field(default=None, ge=1)
    reachable: bool | None = None
    calibration_frr: float | None = Field(default=None, ge=0.0, le=1.0)
    calibration: str | None = None
    folds: int | None = None
    pixel_fpr: Rate | None = None
    pixel_threshold: float | None = None

    @field_validator("threshold", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"threshold must be a finite number, got {value!r}")
        return float(value)

    @field_validator("pixel_threshold")
    @classmethod
    def _finite_pixel(cls, value: float | None) -> float | None:
        return _finite(value, "pixel_threshold")

    @field_validator("target_frr", "pixel_fpr")
    @classmethod
    def _rates(cls, value: float | None, info: Any) -> float | None:
        return _rate(value, info.field_name)

    def scalars(self) -> dict[str, Any]:
        """The scalar fields (how the threshold was set), e.g. for the service's ``/model``."""
        return {k: v for k, v in self.as_dict().items() if isinstance(v, (int, float, str, bool)) or v is None}

class MapQuantiles(BaseModel):
    """Upper quantiles of the pooled good calibration map values (:func:`anomaly.thresholds.map_tail_quantiles`)."""

    model_config = ConfigDict(extra="allow")
    fpr: list[float]
    value: list[float]
    summary: dict[str, float]


class CalibrationRecord(Record):
    """``calibration.json``: the good calibration scores and map quantiles the decision is derived from.

    Attributes:
        kind: ``crossfit`` (out-of-sample scores of every training image) or ``validation``.
        folds: cross-fitting folds (``None`` for a validation split).
        n_scores: the number of ``scores``.
        note: how the scores were made, in words.
        scores: (n,) finite good calibration scores.
        map_quantiles: exact upper quantiles of the calibration maps (``None`` in runs from before they existed).
    """

    FILE: ClassVar[str] = "calibration.json"
    REQUIRED: ClassVar[tuple[str, ...]] = ("kind", "scores")
    kind: Literal["crossfit", "validation"]
    folds: int | None = None
    n_scores: int | None = None
    note: str | None = None
    scores: list[float]
    map_quantiles: MapQuantiles | None = None

    @field_validator("scores")
    @classmethod
    def _finite_scores(cls, value: list[float]) -> list[float]:
        if not value or not all(math.isfinite(v) for v in value):
            raise ValueError("scores must be a non-empty list of finite numbers")
        return value

    def map_summary(self) -> dict[str, float] | None:
        """Minimum, median, 99th percentile and maximum of the calibration map values (keys "0", "50", "99", "100")."""
        if self.map_quantiles is not None:
            return dict(self.map_quantiles.summary)
        return self.get("summary")  # runs from before calibration.json: threshold.json's validation quantiles


class MetricsRecord(Record):
    """``metrics.json``: the test metrics of an evaluated run (:func:`anomaly.pipeline.evaluate_run`).

    The fields every reader relies on are typed; the per-type, by-size and uncertainty blocks are kept
    as written. ``model_sha256`` ties the record to the model it was computed from (a stale one is
    ignored: :meth:`read_current`).
    """

    FILE: ClassVar[str] = "metrics.json"
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    aupro: float | None = None
    n_test_images: int | None = Field(default=None, ge=0)
    threshold: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    tn: int | None = Field(default=None, ge=0)
    fp: int | None = Field(default=None, ge=0)
    fn: int | None = Field(default=None, ge=0)
    tp: int | None = Field(default=None, ge=0)
    method: str | None = None
    category: str | None = None
    fit_seconds: float | None = None
    predict_ms_per_image: float | None = None
    predict_runtime: str | None = None
    model_sha256: str | None = None

    @classmethod
    def read_current(cls, run_dir: str | Path, model_sha256: str) -> MetricsRecord | None:
        """The record when it was computed from the model with this fingerprint; ``None`` when absent or stale."""
        path = Path(run_dir) / cls.FILE
        if not path.is_file():
            return None
        record = cls.read(run_dir)
        if record.model_sha256 != model_sha256:
            logger.warning("ignoring %s: it was computed from another model than %s", path, Path(run_dir) / "model.pt")
            return None
        return record


__all__ = ["CalibrationRecord", "MapQuantiles", "MetricsRecord", "Record", "RunFolderError", "ThresholdRecord",
           "read_dict"]
