"""The one Markdown table writer: every table the study prints or writes goes through :func:`markdown_table`.

:func:`markdown_table` takes the header and the rows' cells as they are to be shown (``None`` is an
empty cell); :func:`to_markdown` renders a DataFrame through it (index included, a MultiIndex
flattened, floats to 3 significant digits).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]], align: str = "",
                   compact: bool = False) -> str:
    """A Markdown table: ``| a | b |`` lines under a rule line.

    Args:
        align: one letter a column, ``l`` or ``r`` (right-aligned: ``---:``); columns past its end are ``l``.
        compact: the rule without spaces (``|---|---:|``) rather than ``| --- | ---: |``.
    """
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = [_line(header), "|" + "|".join(rule) + "|" if compact else _line(rule)]
    lines += [_line(row) for row in rows]
    return "\n".join(lines)


def _line(cells: Sequence[Any]) -> str:
    return "| " + " | ".join("" if c is None else str(c) for c in cells) + " |"


def to_markdown(table: pd.DataFrame) -> str:
    """A DataFrame (index included, MultiIndex flattened) as a Markdown table, floats to 2-3 decimals."""
    flat = table.reset_index()
    names = [" ".join(str(p) for p in c if p != "") if isinstance(c, tuple) else str(c) for c in flat.columns]
    return markdown_table(names, ([_cell(v) for v in row] for row in flat.itertuples(index=False)))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
