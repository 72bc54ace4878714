"""Manifests: a CSV or Parquet file listing the images to inspect in a ``path`` column.

``anomaly predict --manifest FILE`` (either engine) reads it with :func:`read_manifest`; its paths
are then taken as files named on the command line (:func:`anomaly.station.inspection.list_images`: a
missing one is an error before any work, a folder is walked).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMN = "path"


def read_manifest(path: str | Path) -> list[str]:
    """The ``path`` column of a ``.csv`` or ``.parquet`` manifest, in order; relative paths are taken
    relative to the manifest's folder.

    Raises:
        FileNotFoundError: no such manifest.
        ValueError: another extension, an unreadable file, no ``path`` column, or an empty cell.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such manifest: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise ValueError(f"manifest {path} must be a .csv or .parquet file")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"cannot read manifest {path}: {err}") from None
    if COLUMN not in frame.columns:
        raise ValueError(f"manifest {path} has no {COLUMN!r} column (columns: {', '.join(map(str, frame.columns))})")
    values = frame[COLUMN].tolist()
    empty = [i for i, v in enumerate(values) if not isinstance(v, str) or not v]
    if empty:
        raise ValueError(f"manifest {path}: row {empty[0] + 1} has no path")
    return [v if Path(v).is_absolute() else str(path.parent / v) for v in values]
