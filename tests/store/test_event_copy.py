"""The event log's COPY, spelled by the writer itself, stores exactly the values psycopg's own
per-value dumpers stored: every column of every row read back equal, escapes included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from clearing.domain import events as ev
from clearing.store import db
from clearing.store import log as eventlog
from clearing.store.hashing import canonical_json

pytestmark = pytest.mark.integration

TYPES = ["int8", "int2", "text", "int8", "text", "int2", "text", "timestamptz", "timestamptz", "text", "int4",
         "int8", "text", "int8", "bytea", "bytea"]  # fmt: skip
ODD_TEXT = ["plain", "tab\there", "new\nline", "cr\rhere", "back\\slash", "\\N", "\\.", "é ü 😀", "quote\"'", " "]


def _rows() -> list[eventlog.EventRow]:
    rows = []
    recorded = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
    for index, text in enumerate(ODD_TEXT, 1):
        payload = {"account_id": text, "note": text + "\\\"\t\n", "amount": "10000.5", "n": index}
        occurred = datetime(2026, 11, 23, 11, 59, index, index * 7, tzinfo=UTC)
        if index % 3 == 0:
            occurred = occurred.astimezone(timezone(timedelta(hours=5, minutes=30)))
        source = (f"clearing.{text}", index, 10**12 + index) if index % 2 else (None, None, None)
        rows.append(
            (index, 0, f"account:{text}", index, f"Type{text}", 1, canonical_json(payload), occurred, recorded,
             *source, f"s0/key/{index}/{text}", None if index % 2 else index - 1, bytes([index]) * 32,
             bytes(range(index, index + 32)))
        )  # fmt: skip
    rows.append(
        (len(rows) + 1, 0, "account:x", 1, "T", 1, "{}", datetime(1, 1, 1, tzinfo=UTC),
         datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), None, None, None, "s0/early", None, bytes(32),
         bytes(32))
    )  # fmt: skip
    return rows


def _head_rows() -> tuple[list[eventlog.EventRow], list[eventlog.EventRow]]:
    """Rows as the writer makes them (times spelled as text where it can), and the same rows with
    the times as datetimes."""
    head = eventlog.ShardHead(shard=0)
    recorded = datetime(2026, 11, 23, 12, 0, 0, 5, tzinfo=UTC)
    rows, reference = [], []
    for index, occurred in enumerate(
        [datetime(2026, 11, 23, 11, 0, 0, 0, tzinfo=UTC), datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
         datetime(1, 1, 1, tzinfo=UTC), datetime(1000, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
         datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)],
        start=100,
    ):  # fmt: skip
        event = ev.Event("MarkRecorded", "symbol:BTCUSDT", {"price": "1"}, occurred, f"s0/mark/{index}")
        row = head.row(index, event, canonical_json(event.payload), recorded, ("clearing.marks", 0, index))
        rows.append(row)
        reference.append((*row[:7], occurred, recorded, *row[9:]))
    return rows, reference


def test_copied_rows_read_back_as_the_dumpers_wrote_them(database_url: str) -> None:
    engine = db.make_engine(database_url)
    head_rows, head_reference = _head_rows()
    rows = [*_rows(), *head_rows]
    reference_rows = [*_rows(), *head_reference]
    assert any(isinstance(row[7], str) for row in rows)
    columns = ", ".join(eventlog.EVENT_COLUMNS)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE reference_events (LIKE events INCLUDING DEFAULTS)"))
            with eventlog.streaming_append(conn) as stream:
                for row in rows:
                    stream.add(row)
            cursor = conn.connection.driver_connection.cursor()
            with cursor.copy(f"COPY reference_events ({columns}) FROM STDIN") as copy:
                copy.set_types(TYPES)
                for row in reference_rows:
                    copy.write_row(row)
        with engine.connect() as conn:
            written = conn.execute(sa.text(f"SELECT {columns} FROM events ORDER BY position")).all()
            expected = conn.execute(sa.text(f"SELECT {columns} FROM reference_events ORDER BY position")).all()
            texts = conn.execute(sa.text("SELECT payload::text FROM events ORDER BY position")).scalars().all()
            reference_texts = conn.execute(
                sa.text("SELECT payload::text FROM reference_events ORDER BY position")
            ).scalars().all()
    finally:
        engine.dispose()
    assert len(written) == len(rows)
    assert [tuple(row) for row in written] == [tuple(row) for row in expected]
    assert texts == reference_texts
    assert [row.stream for row in written] == [row[2] for row in rows]
    assert [bytes(row.hash) for row in written] == [row[15] for row in rows]
    assert [row.occurred_at for row in written] == [row[7] for row in reference_rows]
