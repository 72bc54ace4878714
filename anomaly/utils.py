"""Small shared helpers: device resolution, seeding, strict typed dataclass configs, JSON I/O, printable names."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydantic
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
    """Build dataclass ``cls`` from ``params``, checking every value against its field's type with pydantic.

    The one place where configuration from the CLI, notebooks, HTTP and ``model.json`` is typed:
    unknown keys raise ``ValueError`` listing the valid ones; a value of the wrong type
    (``image_size="abc"``, ``strides=8``, ``coreset_ratio=true``, a NaN) raises ``ValueError`` naming
    the key, the value and what is expected; a value outside a bound its field declares
    (:mod:`anomaly.models.params`) raises ``"<key> must be >= 1, got 0"``. Types are strict (``"3"`` is
    not 3, ``true`` not 1) except that ints are welcome as floats and lists as tuples. The
    dataclass's ``__post_init__`` then runs its own checks (their messages are kept as they are).
    """
    params = dict(params or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; valid: {', '.join(sorted(names))}"
        )
    try:
        typed = _params_model(cls).model_validate(params)
        return cls(**{key: getattr(typed, key) for key in params})
    except pydantic.ValidationError as err:
        raise ValueError(_config_error(cls, err, params)) from None


@functools.cache
def _params_model(cls: type) -> type[pydantic.BaseModel]:
    """A strict pydantic model of ``cls``'s fields (their types and declared bounds; a tuple also takes a list)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            hint = typing.Annotated[hint, pydantic.Strict(False)]
        fields[f.name] = (hint, None)  # defaults are the dataclass's: only the given keys are validated
    config = pydantic.ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    return pydantic.create_model(f"{cls.__name__}Params", __config__=config, **fields)


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
           "less_than": ("<", "lt")}


def _config_error(cls: type, err: pydantic.ValidationError, params: dict[str, Any]) -> str:
    """One line for the first error: the check's own message, a bound, or the key, the value and what is expected."""
    e = err.errors()[0]
    if e["type"] == "value_error":  # a __post_init__ check: its message as written
        return str(e["ctx"]["error"])
    key = str(e["loc"][0]) if e["loc"] else cls.__name__
    shown = json.dumps(params.get(key, e.get("input")), default=str)
    if e["type"] in _BOUNDS:
        op, name = _BOUNDS[e["type"]]
        return f"{key} must be {op} {e['ctx'][name]:g}, got {shown}"
    if e["type"] in ("tuple_type", "list_type", "too_short"):
        return f"{cls.__name__} parameter {key}={shown}: expected a non-empty list, e.g. [8, 16]"
    expected = e["msg"].removeprefix("Input should be ")
    return f"{cls.__name__} parameter {key}={shown}: expected {expected[:1].lower()}{expected[1:]}"


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
