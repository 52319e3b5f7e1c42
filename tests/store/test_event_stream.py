"""The event COPY streams: PostgreSQL has the first rows of a batch while the writer is still
adding the rest, and a batch that fails half way leaves none of its rows, sent ones included."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from clearing.domain import events as ev
from clearing.store import db
from clearing.store import log as eventlog
from clearing.store.hashing import canonical_json

pytestmark = pytest.mark.integration

WAIT_S = 10.0
POLL_S = 0.01


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def _rows(count: int) -> list[eventlog.EventRow]:
    head = eventlog.ShardHead(shard=0)
    recorded = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    rows = []
    for position in range(1, count + 1):
        event = ev.Event("MarkRecorded", "symbol:BTCUSDT", {"price": str(position)}, recorded, f"s0/mark/{position}")
        rows.append(head.row(position, event, canonical_json(event.payload), recorded, ("clearing.marks", 0, position)))
    return rows


def _copied_so_far(engine: sa.Engine) -> int:
    """Rows an in-progress COPY into events has processed, as another session sees it."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT tuples_processed FROM pg_stat_progress_copy WHERE relid = 'events'::regclass")
        ).scalar()
    return int(found or 0)


def test_rows_reach_postgresql_before_the_stream_ends(engine: sa.Engine) -> None:
    chunk = eventlog.EVENT_COPY_CHUNK_ROWS
    rows = _rows(3 * chunk)
    with engine.begin() as conn, eventlog.streaming_append(conn) as stream:
        for row in rows[: 2 * chunk]:
            stream.add(row)
        # Two chunks were handed over; the block is still open (the rest not even built).
        deadline = time.monotonic() + WAIT_S
        while _copied_so_far(engine) < chunk:
            assert time.monotonic() < deadline, "PostgreSQL saw no row of the open COPY"
            time.sleep(POLL_S)
        for row in rows[2 * chunk :]:
            stream.add(row)
    with engine.connect() as conn:
        positions = conn.execute(sa.text("SELECT position FROM events ORDER BY position")).scalars().all()
    assert positions == [row[0] for row in rows]


def test_a_batch_failing_after_rows_were_sent_leaves_none_of_them(engine: sa.Engine) -> None:
    chunk = eventlog.EVENT_COPY_CHUNK_ROWS
    with (
        pytest.raises(RuntimeError, match="fold failed"),
        engine.begin() as conn,
        eventlog.streaming_append(conn) as stream,
    ):
        for row in _rows(2 * chunk + 1):
            stream.add(row)
        raise RuntimeError("fold failed")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0


def test_the_copy_connection_has_a_send_buffer_that_holds_chunks_postgresql_has_not_read(engine: sa.Engine) -> None:
    """Linux gives a Unix or TCP socket 208 KiB by default (~400 rows): the writer's sends waited
    whenever PostgreSQL fell that far behind. The COPY's connection asks for more."""
    try:
        with open("/proc/sys/net/core/wmem_max") as limit:
            allowed = int(limit.read())
    except OSError:
        pytest.skip("no Linux socket limits to compare with")
    if allowed < eventlog.COPY_SEND_BUFFER_BYTES:
        pytest.skip(f"this kernel caps send buffers at {allowed} bytes")
    with engine.begin() as conn, eventlog.streaming_append(conn):
        fd = conn.connection.driver_connection.pgconn.socket  # type: ignore[union-attr]
        sock = socket.socket(fileno=fd)
        try:
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        finally:
            sock.detach()
    # Linux reports twice what was asked for (its bookkeeping overhead).
    assert size >= eventlog.COPY_SEND_BUFFER_BYTES
