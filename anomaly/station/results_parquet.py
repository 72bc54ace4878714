"""The inspection results as Parquet (``anomaly predict --engine ray --parquet OUT``), resumably.

``OUT`` is a folder of parts ``part-000000.parquet``, ``part-000001.parquet``, ... with the
columns of the inspection CSV (:data:`anomaly.station.inspection.COLUMNS`), typed: ``score`` float64,
``is_anomalous`` bool, ``regions`` int64 (null where the CSV cell is empty), ``path`` and ``error``
strings. A Parquet file cannot be appended to (its footer is written last), so rows are buffered
and each part is written to a hidden ``.part-NNNNNN.parquet.tmp`` and renamed into place: a part
is either whole or absent, and a ``kill -9`` loses only the buffered rows, which the resumed run
scores again. :class:`ParquetResults` has the interface of the CSV writer (``done``, ``write``,
``flush``, ``with``) so an engine writes either, or both. :func:`read_results` reads a CSV or a
Parquet folder into one typed DataFrame.
"""

from __future__ import annotations

import collections
import os
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from anomaly.station.results_csv import COLUMNS, path_text
from anomaly.utils import printable

_TYPES = {"path": "string", "score": "float64", "is_anomalous": "bool", "regions": "int64", "error": "string",
          "run": "string"}
_PART = re.compile(r"^part-(\d{6})\.parquet$")
_TMP = re.compile(r"^\.part-\d{6}\.parquet\.tmp$")


class ResultsParquetError(ValueError):
    """A ``--parquet`` path that is not an inspection Parquet folder (left as it is)."""


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([(c, pa.type_for_alias(_TYPES[c])) for c in COLUMNS])


def _parts(folder: Path) -> list[Path]:
    """Our parts in ``folder``, in order; refuses a folder holding anything else."""
    parts, foreign = [], []
    for entry in sorted(folder.iterdir()):
        if _PART.match(entry.name) and entry.is_file():
            parts.append(entry)
        elif not _TMP.match(entry.name):
            foreign.append(entry.name)
    if foreign:
        raise ResultsParquetError(f"{folder} is not an inspection Parquet folder (it holds {', '.join(foreign[:3])}); "
                                  f"it was left as it is: choose another --parquet folder")
    return parts


def read_done(path: str | Path, fingerprint: str | None = None) -> collections.Counter[str]:
    """Rows already in the Parquet folder ``path`` per ``path`` value; changes nothing.

    Raises:
        ResultsParquetError: ``path`` is a file, a folder with other files, a part of another schema,
            or (with ``fingerprint``) rows of another run.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not os.path.lexists(path):
        return collections.Counter()
    if not path.is_dir():
        raise ResultsParquetError(f"--parquet {path} exists and is not a folder; it was left as it is")
    done: collections.Counter[str] = collections.Counter()
    for part in _parts(path):
        try:
            table = pq.read_table(part)
        except Exception as err:  # noqa: BLE001 -- pyarrow raises several types on a damaged file
            raise ResultsParquetError(f"{part} is not a readable Parquet file ({err})") from None
        if not table.schema.equals(_schema()):
            raise ResultsParquetError(f"{part} has columns {table.schema.names}, expected {list(COLUMNS)}; "
                                      f"choose another --parquet folder")
        if fingerprint is not None:
            runs = set(table.column("run").to_pylist()) - {fingerprint}
            if runs:
                raise ResultsParquetError(f"{part} holds rows of another run ({sorted(runs)[0]!r}; this run is "
                                          f"{fingerprint!r}); choose another --parquet folder")
        done.update(table.column("path").to_pylist())
    return done


class ParquetResults:
    """A Parquet results folder opened to add rows (see the module docstring).

    Args:
        rows_per_part: a part is written once this many rows are buffered ...
        seconds_per_part: ... or at the first :meth:`flush` this long after the last part.
    """

    def __init__(self, path: str | Path, fingerprint: str = "", rows_per_part: int = 5000,
                 seconds_per_part: float = 30.0) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.done = read_done(self.path, fingerprint or None)
        self.rows_per_part, self.seconds_per_part = rows_per_part, seconds_per_part
        self._rows: list[dict[str, Any]] = []
        self._next, self._last = 0, time.monotonic()

    def __enter__(self) -> "ParquetResults":
        self.path.mkdir(parents=True, exist_ok=True)
        parts = _parts(self.path)
        for entry in self.path.iterdir():
            if _TMP.match(entry.name):  # a part cut off by a kill: its rows are not in ``done``
                entry.unlink()
        self._next = 1 + max((int(_PART.match(p.name).group(1)) for p in parts), default=-1)
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Buffer one row of the CSV writer's form (``""`` where a value is missing)."""
        cells = {**row, "path": path_text(row["path"]), "error": printable(str(row.get("error") or "")),
                 "run": self.fingerprint}
        self._rows.append({c: None if cells.get(c, "") == "" and c != "error" else cells.get(c) for c in COLUMNS})

    def flush(self) -> None:
        """Write the buffered rows as a part when there are enough of them or the last part is old enough."""
        if len(self._rows) >= self.rows_per_part or time.monotonic() - self._last >= self.seconds_per_part:
            self._write_part()

    def __exit__(self, *exc: Any) -> None:
        self._write_part()  # every buffered row is whole, also after an exception in the engine

    def _write_part(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._last = time.monotonic()
        if not self._rows:
            return
        name = f"part-{self._next:06d}.parquet"
        tmp = self.path / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(self._rows, schema=_schema()), tmp)
        os.replace(tmp, self.path / name)  # a part is whole or absent
        self._rows, self._next = [], self._next + 1


def read_results(path: str | Path) -> pd.DataFrame:
    """An inspection CSV or Parquet folder as a DataFrame: ``score`` float (NaN when missing),
    ``is_anomalous`` boolean and ``regions`` Int64 (nullable), ``path``, ``error`` strings."""
    path = Path(path)
    if path.is_dir():
        parts = _parts(path)
        frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else \
            _schema().empty_table().to_pandas()
    else:
        text = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame = text.assign(score=pd.to_numeric(text["score"].replace("", None), errors="coerce"),
                            is_anomalous=text["is_anomalous"].map({"True": True, "False": False, "": None}),
                            regions=pd.to_numeric(text["regions"].replace("", None), errors="coerce"))
    return frame.astype({"path": "string", "score": "float64", "is_anomalous": "boolean", "regions": "Int64",
                         "error": "string"})[list(COLUMNS)]
