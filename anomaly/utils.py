"""Small shared helpers: device resolution, seeding, strict typed dataclass configs, JSON I/O, printable names."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda`` (or ``cuda:N``) to a torch device; ``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for, but CUDA is not available on this machine")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}: choose auto, cpu or cuda")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_config(cls: type[T], params: dict[str, Any] | None = None) -> T:
    """Build dataclass ``cls`` from ``params``, checking every value against its field's type.

    The one place where configuration from the CLI, notebooks, HTTP and ``model.json`` is typed:
    unknown keys raise ``ValueError`` listing the valid ones; a value of the wrong type
    (``image_size="abc"``, ``strides=8``, ``coreset_ratio=true``, a NaN) raises ``ValueError`` naming
    the key, the value and what is expected. Lists become tuples for tuple fields, ints become
    floats for float fields. Ranges are then checked by the dataclass's ``__post_init__``.
    """
    params = dict(params or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; valid: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    typed = {}
    for key, value in params.items():
        try:
            typed[key] = _typed(value, hints[key])
        except (TypeError, ValueError):
            raise ValueError(f"{cls.__name__} parameter {key}={json.dumps(value, default=str)}: "
                             f"expected {_describe(hints[key])}") from None
    return cls(**typed)


def _typed(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (bool, int, float, str, tuple[X, ...], X | None); TypeError when it is not."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _typed(value, arg)
            except TypeError:
                continue
        raise TypeError(hint)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise TypeError(hint)
        return tuple(_typed(v, args[0]) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    if hint in (bool, int, float, str):
        raise TypeError(hint)
    return value  # a type this check does not know: left to the dataclass


def _describe(hint: Any) -> str:
    """``int | None`` -> ``an integer or null``; the words used in :func:`make_config`'s messages."""
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a non-empty list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[1]}s, e.g. [8, 16]"
    return words.get(hint, getattr(hint, "__name__", str(hint)))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (numpy scalars and arrays converted), atomically: a reader or an
    interrupted write never leaves half a file (written beside it, then renamed over it)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(obj, indent=2, default=_to_builtin) + "\n")
    os.replace(partial, path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text())


def _to_builtin(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127)}


def printable(text: str) -> str:
    """``text`` as one line of valid UTF-8: the bytes of a file name that is not UTF-8 (Python's
    surrogate escapes) and control characters (a newline in a name) written as ``\\xNN``.

    How a path or an error naming one is reported in CSV, JSON and messages.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPES)
