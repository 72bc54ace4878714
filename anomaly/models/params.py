"""The types detector configs are declared with: pydantic dataclasses with strict types, no unknown keys and
the bounds each field carries, declared once here instead of a range check copied into every config.

A config is ``@detector_config class XConfig: image_size: int = 320; smooth_sigma: Sigma = 4.0; ...``:
constructing one validates it (``XConfig(smooth_sigma=-1)`` raises ``ValueError`` naming the field),
and :func:`anomaly.utils.make_config` turns untrusted values (CLI, JSON, notebooks) into one with a
one-line message. ``dataclasses.asdict`` / ``fields`` work on it as on any dataclass.
"""

from __future__ import annotations

import functools
from typing import Annotated

from pydantic import ConfigDict, Field, Strict
from pydantic.dataclasses import dataclass as _pydantic_dataclass

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)  # "3" is not 3, true is not 1, NaN is refused
detector_config = functools.partial(_pydantic_dataclass, config=STRICT)

Positive = Annotated[int, Field(ge=1)]  # a count: epochs, channels, neighbours, chunk sizes
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]  # a learning rate, a regulariser
Fraction = Annotated[float, Field(gt=0, le=1)]  # a share in (0, 1]
Sigma = Annotated[float, Field(ge=0)]  # a Gaussian sigma in px at image_size; 0 disables the smoothing
Strides = Annotated[tuple[Positive, ...], Strict(False), Field(min_length=1)]  # a JSON list is welcome

__all__ = ["Fraction", "NonNegative", "Positive", "PositiveFloat", "STRICT", "Sigma", "Strides", "detector_config"]
