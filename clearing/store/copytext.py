"""Rows in the text format of PostgreSQL's COPY, spelled here rather than by psycopg's per-value
dumpers, which cost several microseconds a row (the writer COPYs every event and the projection
rows of every account a batch touched).

Each value is spelled as psycopg's text dumper spells it (integers and decimals by ``str``, times
in ISO 8601 with their offset, bytes as bytea hex, None as NULL) and text gets COPY's escapes, so
PostgreSQL stores the same values (tests read rows back and compare them with the dumpers').
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def text(value: str) -> str:
    """A text value with COPY's escapes (a backslash, and the row and column separators)."""
    if "\\" in value or "\n" in value or "\r" in value or "\t" in value:
        return value.translate(_ESCAPES)
    return value


def cell(value: Any) -> str:
    """Any value of the rows the ledger writes, as one COPY text cell."""
    cls = value.__class__
    if cls is str:
        return text(value)
    if value is None:
        return NULL
    if cls is Decimal:
        return "NaN" if value.is_nan() else str(value)
    if cls is int:
        return str(value)
    if cls is datetime:
        return str(value.isoformat())
    if cls is bytes:
        return "\\\\x" + str(value.hex())
    if cls is bool:
        return "t" if value else "f"
    raise TypeError(f"no COPY spelling for a {cls.__name__}: {value!r}")


def line(values: Iterable[Any]) -> str:
    """One row as a line of COPY text."""
    return "\t".join(map(cell, values)) + "\n"
