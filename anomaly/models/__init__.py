"""Detectors sharing one interface: ``ConvAutoencoder``, ``PaDiM``, ``PatchCore`` and the no-learning
baseline ``IntensityBaseline`` (method ``intensity``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly.models.autoencoder import ConvAutoencoder
from anomaly.models.base import MODEL_JSON, Detector, Prediction, read_model_meta
from anomaly.models.intensity import IntensityBaseline

METHODS = ("autoencoder", "padim", "patchcore", "intensity")
BASELINES = ("intensity",)  # methods that learn nothing: the floor every comparison is measured against
# Methods trained by stochastic gradient descent: their weights move with the training seed and with the machine's
# floating-point kernels, so a statement about them must hold over several seeds (anomaly.seeds).
TRAINED = ("autoencoder",)


def get_detector_class(method: str) -> type[Detector]:
    """Return the detector class for ``method`` (PaDiM and PatchCore imported lazily); unknown names raise
    ``ValueError``."""
    if method == "autoencoder":
        return ConvAutoencoder
    if method == "padim":
        from anomaly.models.padim import PaDiM  # deferred: timm (the backbone), imported when a method needs it

        return PaDiM
    if method == "patchcore":
        from anomaly.models.patchcore import PatchCore  # deferred: timm (the backbone)

        return PatchCore
    if method == "intensity":
        return IntensityBaseline
    raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")


def create_detector(method: str, params: dict[str, Any] | None = None, device: str = "cpu") -> Detector:
    """Build an unfitted detector; unknown ``params`` keys raise ``ValueError``."""
    return get_detector_class(method)(dict(params or {}), device=device)


def load_detector(directory: str | Path, device: str = "cpu") -> Detector:
    """A saved detector (``model.json`` + ``model.pt``) of the class its ``model.json`` names; errors name the file."""
    method = read_model_meta(directory)["method"]
    try:
        detector_class = get_detector_class(method)
    except ValueError as err:
        raise ValueError(f"{Path(directory) / MODEL_JSON}: {err}") from None
    return detector_class.load(directory, device=device)


__all__ = ["BASELINES", "METHODS", "TRAINED", "Detector", "Prediction", "create_detector", "get_detector_class",
           "load_detector"]
