"""Detectors sharing one interface: ``ConvAutoencoder``, ``PaDiM``, ``PatchCore`` and the no-learning
baseline ``IntensityBaseline`` (method ``intensity``).

Each detector module registers its :class:`~anomaly.models.registry.MethodSpec` when imported; this
package imports the built-in ones, so ``from anomaly.models import METHODS`` lists them (and any
method a plug-in registered afterwards: the name lists are live views of the registry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# each registers its spec on import; this order is the order of METHODS (tables, pairs)
from anomaly.models import autoencoder, padim, patchcore, intensity  # noqa: F401,I001
from anomaly.models.base import MODEL_JSON, Detector, Prediction, read_model_meta
from anomaly.models.registry import (BASELINES, CROSSFITS, EXPORTABLE, METHODS, TRAINED, MethodSpec,
                                     get_detector_class, method_spec, register, specs)


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


__all__ = ["BASELINES", "CROSSFITS", "EXPORTABLE", "METHODS", "TRAINED", "Detector", "MethodSpec", "Prediction",
           "create_detector", "get_detector_class", "load_detector", "method_spec", "register", "specs"]
