"""One typed run configuration: what ``fit_run`` needs besides the run folder.

:class:`RunConfig` is used by :func:`anomaly.pipeline.fit_run`, the benchmark, the data-efficiency
sweep, the notebooks and ``anomaly fit``. ``None`` is the one "method default" sentinel (an absent
CLI flag, a notebook parameter left at ``None``). :meth:`RunConfig.from_dict` types untrusted input
with :func:`anomaly.utils.make_config`: a wrong type or value raises ``ValueError`` naming the key,
the value and what is expected (the CLI turns it into exit code 2). Detector parameters (``params``)
are typed the same way against the method's ``*Config`` when the detector is created.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from anomaly.thresholds import DEFAULT_ESTIMATOR, DEFAULT_PIXEL_FPR, DEFAULT_TARGET_FRR, check_decision
from anomaly.utils import make_config


@dataclass(frozen=True)
class RunConfig:
    """How one run is fitted and calibrated; ``config.json`` records these fields (plus what the fit found).

    Attributes:
        data: dataset root in MVTec AD layout.
        category: category folder under ``data``.
        method: detector name (:data:`anomaly.models.METHODS`).
        params: detector parameters (keys of the method's ``*Config``); absent = the method's default.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        seed: seeds the split, the subset, the shuffling and the detector.
        val_fraction: share of ``train/good`` held out for a validation split; ``None``: 0.1, or 0 when
            cross-fitting.
        batch_size: images per batch.
        target_frr: false-reject rate the image threshold aims at, in (0, 1).
        estimator: threshold estimator (:data:`anomaly.thresholds.ESTIMATORS`).
        pixel_fpr: per-pixel false-positive rate of the defect-region threshold, in (0, 1).
        folds: cross-fitting folds (>= 2); ``None``: 5 for PaDiM/PatchCore, a validation split for the
            autoencoder; 0: a validation split for any method.
        max_train: keep at most this many training images (seeded); ``None``: all.
    """

    data: str
    category: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    val_fraction: float | None = None
    batch_size: int = 8
    target_frr: float = DEFAULT_TARGET_FRR
    estimator: str = DEFAULT_ESTIMATOR
    pixel_fpr: float = DEFAULT_PIXEL_FPR
    folds: int | None = None
    max_train: int | None = None

    def __post_init__(self) -> None:
        from anomaly.models import METHODS, get_detector_class

        object.__setattr__(self, "data", str(self.data))  # a Path is welcome
        object.__setattr__(self, "params", {} if self.params is None else self.params)  # None: every default
        if self.method not in METHODS:
            raise ValueError(f"RunConfig method={_show(self.method)}: expected one of {', '.join(METHODS)}")
        if not isinstance(self.params, dict):
            raise ValueError(f"RunConfig params={_show(self.params)}: expected a JSON object of detector parameters")
        make_config(get_detector_class(self.method).config_class, self.params)  # typed before any work
        checks = {"val_fraction": (self.val_fraction is None or 0 <= self.val_fraction < 1, "a number in [0, 1)"),
                  "batch_size": (self.batch_size >= 1, "an integer >= 1"),
                  "folds": (self.folds is None or self.folds == 0 or self.folds >= 2, "0 or an integer >= 2"),
                  "max_train": (self.max_train is None or self.max_train >= 1, "an integer >= 1")}
        for key, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"RunConfig {key}={_show(getattr(self, key))}: expected {expected}")
        check_decision(self.target_frr, self.estimator, self.pixel_fpr)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A typed RunConfig from untrusted values (CLI, JSON); ``None`` values mean "the default"."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if values.get(k) is None]
        if missing:
            raise ValueError(f"RunConfig needs {', '.join(missing)}")
        has_default = {f.name for f in fields if f.name not in required and f.default is not None}
        return make_config(cls, {k: v for k, v in values.items() if not (v is None and k in has_default)})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The configuration keys, in ``config.json`` order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


def detector_params(method: str, image_size: int | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Detector parameters from notebook parameters: None = the method's default (the one sentinel, as an absent
    CLI flag); ``epochs`` is autoencoder-only and ignored for the other methods."""
    params: dict[str, Any] = {"image_size": image_size} if image_size is not None else {}
    if epochs is not None and method == "autoencoder":
        params["epochs"] = epochs
    return params


def _show(value: Any) -> str:
    return json.dumps(value, default=str)
