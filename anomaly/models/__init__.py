"""Detectors sharing one interface: ``ConvAutoencoder``, ``PaDiM``, ``PatchCore`` and the no-learning
baseline ``IntensityBaseline`` (method ``intensity``).

Each detector module registers its :class:`~anomaly.models.registry.MethodSpec` when imported; this
package imports the built-in ones, so ``from anomaly.models import METHODS`` lists them (and any
method a plug-in registered afterwards: the name lists are live views of the registry).
"""

from __future__ import annotations

from typing import Any

# each registers its spec on import; this order is the order of METHODS (tables, pairs)
from anomaly.models import autoencoder, padim, patchcore, intensity  # noqa: F401,I001
from anomaly.models.base import Detector, Prediction
from anomaly.models.registry import (BASELINES, CROSSFITS, EXPORTABLE, METHODS, TRAINED, MethodSpec,
                                     get_detector_class, method_spec, register, specs)


def create_detector(method: str, params: dict[str, Any] | None = None, device: str = "cpu") -> Detector:
    """Build an unfitted detector; unknown ``params`` keys raise ``ValueError``."""
    return get_detector_class(method)(dict(params or {}), device=device)


__all__ = ["BASELINES", "CROSSFITS", "EXPORTABLE", "METHODS", "TRAINED", "Detector", "MethodSpec", "Prediction",
           "create_detector", "get_detector_class", "method_spec", "register", "specs"]
