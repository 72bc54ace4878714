"""Argument types of the command line, shared by the command modules (:mod:`anomaly.cli`, :mod:`anomaly.cli_service`).

Each is an argparse ``type``: a value out of range is refused with "expected ..., got ..." (exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from anomaly.models.base import MAX_IMAGE_SIZE


def checked(cast: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``cast(text)``, refused with "expected ..." unless ``ok(value)``."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = checked(int, lambda v: v >= 1, "an integer >= 1")
port = checked(int, lambda v: 1 <= v <= 65535, "a port number from 1 to 65535")
positive_float = checked(float, lambda v: 0 < v < float("inf"), "a number > 0")
rate = checked(float, lambda v: 0 < v < 1, "a rate strictly between 0 and 1 (e.g. 0.05)")
folds = checked(int, lambda v: v == 0 or v >= 2, "an integer >= 2 (or 0: a validation split)")
image_side = checked(int, lambda v: 1 <= v <= MAX_IMAGE_SIZE, f"an image side from 1 to {MAX_IMAGE_SIZE} px")
