"""Run folders written atomically, and checked before anything reads them.

A fit never writes into its run folder directly: :func:`atomic_run_dir` gives it a hidden
temporary sibling (``.NAME.tmp-XXXX``), and only when the fit has returned does it write the
completeness marker ``complete.json`` (the files of the run and the SHA-256 of ``model.pt``) and
swap the new folder into place (one ``renameat2(RENAME_EXCHANGE)`` on Linux). Until then the
previous run stays as it was; a fit killed at any moment leaves either the old folder or the new,
complete one (a ``SIGKILL`` may leave the hidden sibling behind; nothing reads it).

Everything read from a run folder is checked here and named in the error: the marker and the
files it lists, the model fingerprint, ``config.json`` keys; the typed records (``threshold.json``,
``calibration.json``, ``metrics.json``) are checked by their models in :mod:`anomaly.records`.
``metrics.json`` and ``model.onnx`` carry the fingerprint of the model they were computed from
(``model_sha256``, as in the marker), so a stale one is recognised (:func:`is_evaluated`, :func:`is_current`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from anomaly.records import MetricsRecord, RunFolderError, read_dict
from anomaly.utils import write_json

logger = logging.getLogger(__name__)

MARKER = "complete.json"
MODEL_STATE = "model.pt"
RUN_FILES = ("config.json", "model.json", "model.pt", "threshold.json", "fit.json")  # what a fit leaves
CONFIG_KEYS = ("data", "category", "method", "seed", "val_fraction", "batch_size")  # what evaluate reads
PREDICTIONS = "predictions.npz"
PREDICTION_KEYS = ("image_scores", "labels", "anomaly_maps", "gt_masks", "defect_types", "image_paths")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def atomic_run_dir(fit: Callable[..., Any]) -> Callable[..., Path]:
    """Decorate a function taking ``run_dir`` so it writes into a staging folder swapped in on success.

    The decorated function returns the final run folder.
    """
    signature = inspect.signature(fit)

    @functools.wraps(fit)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        bound = signature.bind(*args, **kwargs)
        final = Path(bound.arguments["run_dir"])
        with staged_run_dir(final) as stage:
            bound.arguments["run_dir"] = stage
            fit(*bound.args, **bound.kwargs)
        return final

    return wrapper


@contextlib.contextmanager
def staged_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``run_dir``; on a normal exit, mark it complete and swap it in.

    Raises:
        RunFolderError: ``run_dir`` exists and holds files but is not a run folder (it is never replaced).
    """
    run_dir = Path(run_dir).resolve()
    check_replaceable(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.tmp-", dir=run_dir.parent))
    try:
        yield stage
        write_marker(stage)
        _swap_into_place(stage, run_dir)
        logger.info("run folder %s complete", run_dir)
    except (OSError, RuntimeError) as err:
        reason = _write_failure(err, stage)
        if reason is None:
            raise
        raise RunFolderError(f"cannot write the run folder {run_dir}: {reason}; the previous run there (if any) is "
                             f"unchanged: free some space and fit again") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # after a swap: the previous run


def _write_failure(err: BaseException, stage: Path) -> str | None:
    """Why writing ``stage`` failed, in words, when ``err`` is a full disk (ENOSPC, a quota) or torch's
    archive writer failing (it says only "unexpected pos ..." on a full disk); else None."""
    torch_write = isinstance(err, RuntimeError) and ("inline_container" in str(err) or "StreamWriter" in str(err))
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    if not (torch_write or full):
        return None
    try:
        free = shutil.disk_usage(stage).free / 2**20
    except OSError:
        free = float("nan")
    full = full or free < 64  # torch's error on a full disk says no more than this
    what = "the disk is full" if full else f"torch.save could not write the model ({err})"
    return f"{what} ({free:.0f} MiB free on its disk)"


def check_replaceable(run_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a run folder (``--run-dir ~/Documents``), or the
    current directory or one above it."""
    if run_dir.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise RunFolderError(f"run folder {run_dir} is the current directory or contains it; choose another --run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not any((run_dir / name).is_file() for name in (MARKER, "config.json", "model.json")):
            raise RunFolderError(f"{run_dir} holds files but is not a run folder (no {MARKER}, config.json or "
                                 f"model.json); refusing to replace it: choose another --run-dir")


def _swap_into_place(stage: Path, run_dir: Path) -> None:
    """Put ``stage`` at ``run_dir``; the previous run (if any) ends up at ``stage``."""
    if not run_dir.exists():
        os.rename(stage, run_dir)
        return
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # Linux >= 3.15, glibc >= 2.28
    if rename is not None and rename(_AT_FDCWD, os.fsencode(stage), _AT_FDCWD, os.fsencode(run_dir),
                                     _RENAME_EXCHANGE) == 0:
        return
    aside = stage.with_name(stage.name + ".old")  # elsewhere: two renames, a moment without run_dir
    os.rename(run_dir, aside)
    os.rename(stage, run_dir)
    os.rename(aside, stage)


def write_marker(run_dir: Path) -> dict[str, Any]:
    """Write ``complete.json``: the run's files and the SHA-256 of ``model.pt``; returns the record."""
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(f"the fit did not write {', '.join(missing)} into {run_dir}")
    record = {"files": sorted(p.name for p in run_dir.iterdir() if p.is_file()),
              "model_sha256": file_sha256(run_dir / MODEL_STATE)}
    write_json(run_dir / MARKER, record)
    return record


def check_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Check that ``run_dir`` is a complete run whose ``model.pt`` is the one it was fitted with.

    Returns:
        The marker record (``files``, ``model_sha256``).

    Raises:
        FileNotFoundError: no such folder.
        RunFolderError: no marker, a listed file missing, or ``model.pt`` changed since the fit.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not (run_dir / MARKER).is_file():
        raise RunFolderError(f"{run_dir} is not a complete run folder: {MARKER} is missing (an interrupted fit, "
                             f"or a folder from before runs were marked); run `anomaly fit` again")
    marker = read_dict(run_dir / MARKER, ("files", "model_sha256"))
    missing = [name for name in marker["files"] if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(f"run folder {run_dir} is incomplete: {', '.join(missing)} missing "
                             f"(listed in {MARKER})")
    if file_sha256(run_dir / MODEL_STATE) != marker["model_sha256"]:
        raise RunFolderError(f"{run_dir / MODEL_STATE} is not the model {run_dir / MARKER} records: it changed "
                             f"after the fit; run `anomaly fit` again")
    return marker


def read_config(run_dir: Path, method: str) -> dict[str, Any]:
    """``config.json``, with the keys evaluation reads and the same method as ``model.json``."""
    config = read_dict(run_dir / "config.json", CONFIG_KEYS)
    if config["method"] != method:
        raise RunFolderError(f"{run_dir / 'config.json'} says method {config['method']!r} but model.json holds a "
                             f"{method!r} model: the folder mixes two runs")
    return config


def read_predictions(run_dir: str | Path) -> dict[str, np.ndarray]:
    """``predictions.npz`` of an evaluated run (:data:`PREDICTION_KEYS`, one row per test image), maps as float32.

    Raises:
        RunFolderError: the file is missing (the run was not evaluated), unreadable, lacks a key, or its
            arrays disagree on the number of test images.
    """
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise RunFolderError(f"{path} not found: the run was not evaluated; run `anomaly evaluate` "
                             f"(or notebook 03) first")
    try:
        with np.load(path) as npz:  # allow_pickle=False: object arrays are refused
            out = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RunFolderError(f"{path} is not a readable predictions file: {err}") from None
    missing = [k for k in PREDICTION_KEYS if k not in out]
    if missing:
        raise RunFolderError(f"{path} lacks {', '.join(missing)}")
    sizes = {k: len(out[k]) for k in PREDICTION_KEYS}
    if len(set(sizes.values())) != 1:
        raise RunFolderError(f"{path}: arrays disagree on the number of test images: {sizes}")
    out["anomaly_maps"] = out["anomaly_maps"].astype(np.float32)  # stored as float16
    return out


def is_current(record: dict[str, Any], model_sha256: str) -> bool:
    """Whether ``record`` (metrics, ONNX parity) was computed from the model with this fingerprint."""
    return record.get("model_sha256") == model_sha256


def is_evaluated(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a complete run with a ``metrics.json`` of its own model (``--resume``)."""
    try:
        return MetricsRecord.read_current(run_dir, check_run_dir(run_dir)["model_sha256"]) is not None
    except (FileNotFoundError, RunFolderError) as err:
        logger.info("%s is not an evaluated run: %s", run_dir, err)
        return False


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
