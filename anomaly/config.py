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

from anomaly.models import METHODS, get_detector_class, method_spec
from anomaly.thresholds import DEFAULT_ESTIMATOR, DEFAULT_PIXEL_FPR, DEFAULT_TARGET_FRR, check_decision
from anomaly.utils import make_config


@dataclass(frozen=True)
class RunConfig:
    """How one run is fitted and calibrated; ``config.json`` records these fields (plus what the fit found).

    The data is either an MVTec AD tree (``data`` + ``category``) or plain folders (``good``, and
    optionally ``defective``, ``masks``, ``test_good``; :mod:`anomaly.folders`).

    Attributes:
        data: dataset root in MVTec AD layout (``None`` with plain folders).
        category: category folder under ``data``; with plain folders, a name for the parts (``None``: the
            name of the ``good`` folder).
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
        good: folder of good images (recursive), instead of ``data``.
        defective: folder of defective images; its sub-folders name the defect types.
        masks: folder of masks for the defective images, matched by path and file stem.
        test_good: folder of good test images; ``None``: with ``defective``, ``test_fraction`` of ``good``
            is held out for the test (a seeded draw, recorded in the run).
        test_fraction: share of ``good`` held out for the test when it is drawn, in (0, 1).
    """

    data: str | None
    category: str | None
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
    good: str | None = None
    defective: str | None = None
    masks: str | None = None
    test_good: str | None = None
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        for key in ("data", "good", "defective", "masks", "test_good"):  # a Path is welcome
            if getattr(self, key) is not None:
                object.__setattr__(self, key, str(getattr(self, key)))
        self._check_data()
        object.__setattr__(self, "params", {} if self.params is None else self.params)  # None: every default
        if self.method not in METHODS:
            raise ValueError(f"RunConfig method={_show(self.method)}: expected one of {', '.join(METHODS)}")
        if not isinstance(self.params, dict):
            raise ValueError(f"RunConfig params={_show(self.params)}: expected a JSON object of detector parameters")
        make_config(get_detector_class(self.method).config_class, self.params)  # typed before any work
        checks = {"val_fraction": (self.val_fraction is None or 0 <= self.val_fraction < 1, "a number in [0, 1)"),
                  "batch_size": (self.batch_size >= 1, "an integer >= 1"),
                  "folds": (self.folds is None or self.folds == 0 or self.folds >= 2, "0 or an integer >= 2"),
                  "max_train": (self.max_train is None or self.max_train >= 1, "an integer >= 1"),
                  "test_fraction": (0 < self.test_fraction < 1, "a number in (0, 1)")}
        for key, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"RunConfig {key}={_show(getattr(self, key))}: expected {expected}")
        check_decision(self.target_frr, self.estimator, self.pixel_fpr)

    def _check_data(self) -> None:
        """Either ``data`` + ``category`` (MVTec AD) or ``good`` (plain folders), each with its own options."""
        from pathlib import Path

        if self.good is None:
            extra = [k for k in ("defective", "masks", "test_good") if getattr(self, k) is not None]
            if extra or self.data is None or self.category is None:
                raise ValueError("RunConfig needs data + category (MVTec AD layout) or good (a folder of good images)"
                                 + (f"; {', '.join(extra)} go(es) with good" if extra else ""))
            return
        if self.data is not None:
            raise ValueError("RunConfig takes data + category (MVTec AD layout) or good (plain folders), not both")
        if self.masks is not None and self.defective is None:
            raise ValueError("RunConfig masks needs defective: masks belong to defective images")
        if self.category is None:
            folder = Path(self.good).resolve()  # its name, or its parent's when it is called "good"
            object.__setattr__(self, "category", (folder.parent if folder.name == "good" else folder).name or "parts")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A typed RunConfig from untrusted values (CLI, JSON); ``None`` values mean "the default"."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING and f.name not in ("data", "category")]
        missing = [k for k in required if values.get(k) is None]
        if missing:
            raise ValueError(f"RunConfig needs {', '.join(missing)}")
        has_default = {f.name for f in fields if f.default not in (None, dataclasses.MISSING)
                       or f.default_factory is not dataclasses.MISSING}
        values = {"data": None, "category": None, **values}
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
    CLI flag); ``epochs`` goes only to a method whose config has it (ignored for the others)."""
    params: dict[str, Any] = {"image_size": image_size} if image_size is not None else {}
    if epochs is not None and "epochs" in {f.name for f in dataclasses.fields(method_spec(method).config_class)}:
        params["epochs"] = epochs
    return params


def _show(value: Any) -> str:
    return json.dumps(value, default=str)
