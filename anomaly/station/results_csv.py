"""The inspection CSV of ``anomaly predict --csv``: its columns, how a run is recorded, safe resume.

One row per image: ``path, score, is_anomalous, regions, error, run``. ``path`` and ``error`` are
one line of UTF-8 each (:func:`anomaly.utils.printable`: a file name that is not UTF-8 shows its
bytes as ``\\xNN``); ``run`` is the run's :func:`run_fingerprint` on every row, so
``pandas.read_csv`` needs no options and a row carries the run that scored it.

Every engine that writes this CSV (the streaming loop of :mod:`anomaly.station.inspection`, a distributed
one) goes through :class:`ResultsCsv`, which:

* never changes a file it did not write: an existing file is resumed only if its first line is
  exactly :data:`HEADER`, every complete row has the six columns and valid UTF-8, and every row's
  ``run`` is this run's fingerprint; otherwise :class:`ResultsCsvError` (exit 2) and the file is
  left byte for byte as it was. A FIFO, folder or device is refused before it is opened;
* counts the rows already written per path (:attr:`ResultsCsv.done`; :func:`pending` skips them);
* drops a row cut off by a kill (only once the rest of the file has been recognised as ours),
  then appends, flushing after every batch.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

from anomaly.decoding import ImageDecodeError, require_regular_file
from anomaly.utils import printable

COLUMNS = ("path", "score", "is_anomalous", "regions", "error", "run")
HEADER = (",".join(COLUMNS) + "\r\n").encode("ascii")  # csv.writer's line ending (an editor's "\n" is accepted)


class ResultsCsvError(ValueError):
    """A ``--csv`` file that is not this run's inspection CSV; it was not changed."""


def run_fingerprint(run: Any) -> str:
    """16 hex digits of SHA-256 over what a row's score and verdict depend on: ``model.pt`` (its
    SHA-256 in ``complete.json``), the image threshold and the pixel threshold of ``run``."""
    what = json.dumps([run.model_sha256, float(run.threshold), run.pixel_threshold])
    return hashlib.sha256(what.encode("utf-8")).hexdigest()[:16]


def path_text(path: str | Path) -> str:
    """How ``path`` is written in the ``path`` column (and matched on resume)."""
    return printable(os.fspath(path))


def read_done(csv_path: str | Path, fingerprint: str | None = None) -> collections.Counter[str]:
    """Rows already in ``csv_path`` per ``path`` (empty when it does not exist or is empty); changes nothing.

    Args:
        fingerprint: the run resuming; ``None`` accepts rows of any run.

    Raises:
        ResultsCsvError: not a regular file, not an inspection CSV, malformed, or rows of another run.
    """
    csv_path = Path(csv_path)
    if not os.path.lexists(csv_path):
        return collections.Counter()
    try:
        require_regular_file(csv_path, f"--csv {csv_path}")
    except ImageDecodeError as err:
        raise ResultsCsvError(str(err)) from None
    with csv_path.open("rb") as handle:
        head = handle.read(len(HEADER))
        if not head:
            return collections.Counter()
        if head != HEADER and not head.startswith(HEADER[:-2] + b"\n"):
            raise _foreign(csv_path, f"its first line is not `{','.join(COLUMNS)}`")
        body = head[len(HEADER) - 1:] if head != HEADER else b""
        body += handle.read()
    body = body[: body.rfind(b"\n") + 1]  # a row cut off by a kill is not counted (and dropped on append)
    try:
        rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as err:
        raise _foreign(csv_path, f"it is not valid UTF-8 CSV ({err})") from None
    for number, row in enumerate(rows, start=2):
        if len(row) != len(COLUMNS):
            raise _foreign(csv_path, f"line {number} has {len(row)} fields, not {len(COLUMNS)}")
        if fingerprint is not None and row[-1] != fingerprint:
            raise ResultsCsvError(f"{csv_path} holds rows of another run (run {row[-1]!r} on line {number}; this run "
                                  f"is {fingerprint!r}): its scores and verdicts would not be comparable. It was left "
                                  f"as it is: choose another --csv file, or resume with the run that wrote it")
    return collections.Counter(row[0] for row in rows)


def pending(paths: Iterable[Path], done: collections.Counter[str]) -> list[Path]:
    """``paths`` without those already written: the first ``done[text]`` paths written as ``text`` are skipped."""
    seen: collections.Counter[str] = collections.Counter()
    todo = []
    for path in paths:
        text = path_text(path)
        seen[text] += 1
        if seen[text] > done[text]:
            todo.append(path)
    return todo


class ResultsCsv:
    """An inspection CSV opened to append rows of one run (see the module docstring).

    ``ResultsCsv(path, fingerprint)`` validates the file and sets :attr:`done`; ``with`` it to drop
    a cut-off last row, write the header to a new file and append rows with :meth:`write`.
    """

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.done = read_done(self.path, fingerprint)
        self._handle: Any = None
        self._writer: Any = None

    def __enter__(self) -> "ResultsCsv":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a+b")
        self._handle.seek(0, os.SEEK_END)
        size = self._handle.tell()
        if size:  # read_done recognised the file: only a cut-off last row is dropped
            self._handle.seek(max(0, size - 1))
            if self._handle.read(1) != b"\n":
                self._handle.seek(0)
                self._handle.truncate(self._handle.read().rfind(b"\n") + 1)
        self._text = io.TextIOWrapper(self._handle, encoding="utf-8", newline="", write_through=True)
        self._writer = csv.writer(self._text)
        if not size:
            self._writer.writerow(COLUMNS)
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Append one row: ``path`` (a path or text), ``score``, ``is_anomalous``, ``regions``, ``error``."""
        cells = {**row, "path": path_text(row["path"]), "error": printable(str(row.get("error") or "")),
                 "run": self.fingerprint}
        self._writer.writerow([cells.get(c, "") for c in COLUMNS])

    def flush(self) -> None:
        self._text.flush()
        self._handle.flush()

    def __exit__(self, *exc: Any) -> None:
        self._text.close()  # closes the binary handle too


def _foreign(csv_path: Path, why: str) -> ResultsCsvError:
    return ResultsCsvError(f"{csv_path} is not an inspection CSV written by `anomaly predict --csv` ({why}); it was "
                           f"left as it is: choose another --csv file")
