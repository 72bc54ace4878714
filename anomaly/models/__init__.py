"""Detectors sharing one interface: ``ConvAutoencoder``, ``PaDiM``, ``PatchCore`` and the no-learning
baseline ``IntensityBaseline`` (method ``intensity``)."""

from __future__ import annotations

from typing import Any

from anomaly.models.base import Detector, Prediction

METHODS = ("autoencoder", "padim", "patchcore", "intensity")
BASELINES = ("intensity",)  # methods that learn nothing: the floor every comparison is measured against
# Methods trained by stochastic gradient descent: their weights move with the training seed and with the machine's
# floating-point kernels, so a statement about them must hold over several seeds (anomaly.seeds).
TRAINED = ("autoencoder",)


def get_detector_class(method: str) -> type[Detector]:
    """Return the detector class for ``method`` (imported lazily); unknown names raise ``ValueError``."""
    if method == "autoencoder":
        from anomaly.models.autoencoder import ConvAutoencoder

        return ConvAutoencoder
    if method == "padim":
        from anomaly.models.padim import PaDiM

        return PaDiM
    if method == "patchcore":
        from anomaly.models.patchcore import PatchCore

        return PatchCore
    if method == "intensity":
        from anomaly.models.intensity import IntensityBaseline

        return IntensityBaseline
    raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")


def create_detector(method: str, params: dict[str, Any] | None = None, device: str = "cpu") -> Detector:
    """Build an unfitted detector; unknown ``params`` keys raise ``ValueError``."""
    return get_detector_class(method)(dict(params or {}), device=device)


__all__ = ["BASELINES", "METHODS", "TRAINED", "Detector", "Prediction", "create_detector", "get_detector_class"]
