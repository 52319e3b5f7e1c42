"""The event log's reads and writes (no business rules): the writer's head and lock, COPY of
event rows, dead letters, outbox rows and consumer offsets.

Why one lock for the whole log: positions are global and gap-free, and a reader that tails the
log by position must never see position n+1 committed before position n. The writer takes a
transaction-level advisory lock before it reads the head and releases it at commit, so insert
order equals commit order even with several shards writing.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from psycopg.copy import LibpqWriter

from clearing.domain import events as ev
from clearing.domain.inputs import format_time
from clearing.store import copytext
from clearing.store.hashing import GENESIS_HASH, chain, digest_input

LOG_LOCK_KEY = 7_301_955_001  # pg_advisory_xact_lock key of the event log's single writer
REPLAY_FETCH_ROWS = 2_000  # rows per fetch of a server-side cursor that streams the log (loads, replays)
# Event rows spelled before each hand-over to the COPY stream (~64 KiB of COPY text at ~500 bytes
# a row): large enough that a send costs little per row, small enough that PostgreSQL starts on
# a batch's rows while the writer is still folding the rest.
EVENT_COPY_CHUNK_ROWS = 128
# The socket send buffer of a COPY's connection. With Linux's default (208 KiB, ~400 rows) the
# writer's send waited whenever PostgreSQL fell that far behind for a moment (the commit of the
# batch before, on the other connection, takes its core at the start of every batch); 4 MiB is
# Linux's default cap (net.core.wmem_max), and the sends rarely wait (docs/performance.md).
# Memory: at most this much per writing connection, only while PostgreSQL is behind.
COPY_SEND_BUFFER_BYTES = 4 * 1024 * 1024

EVENT_COLUMNS = (
    "position",
    "shard",
    "stream",
    "stream_version",
    "type",
    "schema_version",
    "payload",
    "occurred_at",
    "recorded_at",
    "source_topic",
    "source_partition",
    "source_offset",
    "idempotency_key",
    "cause_position",
    "prev_hash",
    "hash",
)

# A row of EVENT_COLUMNS; its two times are datetimes, or text already spelled in ISO 8601 (``ShardHead.row``).
EventRow = tuple[Any, ...]


class LogHeadMismatch(RuntimeError):
    """The log's head is not where this writer left it: a second writer is active on the shard."""


@dataclass
class ShardHead:
    """Where one shard's log ends: last global position written by anyone, this shard's last
    hash and position, and the version of every stream. Rows staged for the open transaction
    move it only on ``commit``."""

    shard: int
    position: int = 0
    shard_position: int = 0
    last_hash: bytes = GENESIS_HASH
    stream_versions: dict[str, int] = field(default_factory=dict)
    _pending_versions: dict[str, int] = field(default_factory=dict)
    _pending_hash: bytes | None = None
    _pending_position: int | None = None
    _recorded: tuple[datetime, str] | None = None  # the last ledger time and its spelling

    def row(
        self,
        position: int,
        event: ev.Event,
        payload_json: str,
        recorded_at: datetime,
        source: tuple[str, int, int] | None = None,
        occurred_at_text: str | None = None,
    ) -> EventRow:
        """The row of ``event`` at ``position``, chained to the row before it.
        ``occurred_at_text``: ``format_time(event.occurred_at)`` when the caller has it."""
        stream = event.stream
        version = self._pending_versions.get(stream) or self.stream_versions.get(stream, 0)
        version += 1
        self._pending_versions[stream] = version
        topic, partition, offset = source if source is not None else (None, None, None)
        previous = self._pending_hash if self._pending_hash is not None else self.last_hash
        # A batch's rows share one ledger time: spell it once.
        if self._recorded is None or self._recorded[0] is not recorded_at:
            self._recorded = (recorded_at, format_time(recorded_at))
        occurred_at = event.occurred_at
        if occurred_at_text is None:
            occurred_at_text = format_time(occurred_at)
        digest = chain(
            previous,
            digest_input(
                position,
                self.shard,
                stream,
                version,
                event.type,
                event.schema_version,
                payload_json,
                occurred_at_text,
                self._recorded[1],
                topic,
                partition,
                offset,
                event.idempotency_key,
                event.cause_position,
            ),
        )
        self._pending_hash = digest
        self._pending_position = position
        return (
            position,
            self.shard,
            stream,
            version,
            event.type,
            event.schema_version,
            payload_json,
            # The times as COPY sends them: the log's spelling (ISO 8601 in UTC, which PostgreSQL
            # reads as the same instant), before year 1000 the datetime (strftime drops the
            # year's leading zeros there).
            occurred_at_text if occurred_at.year >= 1000 else occurred_at,
            self._recorded[1] if recorded_at.year >= 1000 else recorded_at,
            topic,
            partition,
            offset,
            event.idempotency_key,
            event.cause_position,
            previous,
            digest,
        )

    def commit(self) -> None:
        self.stream_versions.update(self._pending_versions)
        if self._pending_hash is not None and self._pending_position is not None:
            self.last_hash = self._pending_hash
            self.shard_position = self._pending_position
            self.position = max(self.position, self._pending_position)
        self.rollback()

    def rollback(self) -> None:
        self._pending_versions = {}
        self._pending_hash = None
        self._pending_position = None


def read_head(conn: sa.Connection, shard: int) -> ShardHead:
    head = ShardHead(shard=shard)
    last = conn.execute(
        sa.text("SELECT position, hash FROM events WHERE shard = :shard ORDER BY position DESC LIMIT 1"),
        {"shard": shard},
    ).first()
    if last is not None:
        head.shard_position, head.last_hash = int(last[0]), bytes(last[1])
    head.position = int(conn.execute(sa.text("SELECT coalesce(max(position), 0) FROM events")).scalar_one())
    for stream, version in conn.execute(
        sa.text("SELECT stream, max(stream_version) FROM events WHERE shard = :shard GROUP BY stream"),
        {"shard": shard},
    ):
        head.stream_versions[stream] = int(version)
    return head


def lock_and_check_head(conn: sa.Connection, head: ShardHead) -> int:
    """Take the log lock for this transaction, check that the shard's log ends where this writer
    left it, and return the last global position (the next event gets that + 1)."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOG_LOCK_KEY})
    last = conn.execute(
        sa.text("SELECT position, hash FROM events WHERE shard = :shard ORDER BY position DESC LIMIT 1"),
        {"shard": head.shard},
    ).first()
    found = (int(last[0]), bytes(last[1])) if last is not None else (0, GENESIS_HASH)
    if found != (head.shard_position, head.last_hash):
        raise LogHeadMismatch(
            f"shard {head.shard}: the log ends at position {found[0]}, this writer expected "
            f"{head.shard_position}; another writer is appending to this shard"
        )
    return int(conn.execute(sa.text("SELECT coalesce(max(position), 0) FROM events")).scalar_one())


def existing_payloads(conn: sa.Connection, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The payloads already in the log under any of ``keys``.

    The keys travel as one JSON array, unpacked by the server: psycopg adapts a list parameter
    element by element in Python, and orjson writes the array in a fraction of that time. A key
    orjson cannot write (a lone surrogate) takes the list way."""
    if not keys:
        return {}
    try:
        keys_json = orjson.dumps(list(keys)).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError
        rows = conn.execute(
            sa.text("SELECT idempotency_key, payload FROM events WHERE idempotency_key = ANY(:keys)"),
            {"keys": list(keys)},
        )
    else:
        rows = conn.execute(
            sa.text(
                "SELECT idempotency_key, payload FROM events "
                "WHERE idempotency_key = ANY(ARRAY(SELECT json_array_elements_text(CAST(:keys AS json))))"
            ),
            {"keys": keys_json},
        )
    return {key: payload for key, payload in rows}


def _driver(conn: sa.Connection) -> Any:
    return conn.connection.driver_connection


class EventStream:
    """A batch's event rows on their way into an open COPY, sent in chunks as they are added.

    Why stream: PostgreSQL's share of a batch (parsing the rows, the heap, six indexes) takes
    about as long as the writer's fold of it. Sent only once the batch is folded, the writer would
    wait for all of it; sent while the writer folds the rest, PostgreSQL works on the other core
    in the meantime. The rows still land in the batch's one transaction: a batch that fails half
    way ends the COPY with an error and the transaction rolls back, rows sent included.

    The rows are spelled in COPY's text format here rather than by psycopg's per-value dumpers
    (several times slower): integers in decimal, text with COPY's escapes, times in ISO 8601 (with
    a Z or an offset), bytea in hex, NULL as \\N. PostgreSQL parses them into the values the
    dumpers would have sent (a test reads rows back and compares)."""

    __slots__ = ("_copy", "_lines")

    def __init__(self, copy: Any) -> None:
        self._copy = copy
        self._lines: list[str] = []

    def add(self, row: EventRow) -> None:
        lines = self._lines
        lines.append(_copy_line(row))
        if len(lines) >= EVENT_COPY_CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            self._copy.write("".join(self._lines))
            self._lines = []


@contextmanager
def streaming_append(conn: sa.Connection) -> Iterator[EventStream]:
    """An ``EventStream`` into a COPY of the events table, ended when the block ends (the rows
    not sent yet are sent then). The connection runs nothing else until then."""
    driver = _driver(conn)
    widen_send_buffer(driver.pgconn.socket)
    cursor = driver.cursor()
    # Every chunk is flushed to the socket when written: psycopg's default keeps up to 1 MiB
    # (~2,000 rows) in the client's buffer, out of PostgreSQL's reach until it is sent.
    writer = LibpqWriter(cursor, flush_threshold=0)
    with cursor.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN", writer=writer) as copy:
        stream = EventStream(copy)
        yield stream
        stream.flush()


def widen_send_buffer(fd: int, size: int = COPY_SEND_BUFFER_BYTES) -> None:
    """Ask for a send buffer of ``size`` bytes on the socket ``fd`` (the kernel caps it at its
    limit). Not a socket, or a platform that refuses: the default stays, which is only slower."""
    with suppress(OSError):
        sock = socket.socket(fileno=fd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        finally:
            sock.detach()  # the descriptor stays libpq's


def _copy_time(value: str | datetime) -> str:
    """A time as COPY text: as given when spelled already, else in ISO 8601 with its offset."""
    return value if value.__class__ is str else value.isoformat()  # type: ignore[union-attr]


def _copy_line(row: EventRow) -> str:
    """One event row (``EVENT_COLUMNS``) as a line of COPY's text format."""
    position, shard, stream, version, type_, schema_version, payload_json, occurred_at, recorded_at = row[:9]
    topic, partition, offset, key, cause, previous, digest = row[9:]
    null = copytext.NULL
    text = copytext.text
    return (
        f"{position}\t{shard}\t{text(stream)}\t{version}\t{text(type_)}\t{schema_version}\t"
        f"{text(payload_json)}\t{_copy_time(occurred_at)}\t{_copy_time(recorded_at)}\t"
        f"{null if topic is None else text(topic)}\t{null if partition is None else partition}\t"
        f"{null if offset is None else offset}\t{text(key)}\t{null if cause is None else cause}\t"
        f"\\\\x{previous.hex()}\t\\\\x{digest.hex()}\n"
    )


def insert_dead_letters(
    conn: sa.Connection,
    shard: int,
    letters: Sequence[tuple[str, int, int, bytes | None, bytes, str, str | None, dict[str, Any] | None]],
    received_at: datetime,
) -> None:
    if not letters:
        return
    conn.execute(
        sa.text(
            'INSERT INTO dead_letters (shard, topic, partition, "offset", key, raw, error, idempotency_key, '
            "existing_payload, received_at) VALUES (:shard, :topic, :partition, :offset, :key, :raw, :error, "
            ":idempotency_key, CAST(:existing AS jsonb), :received_at)"
        ),
        [
            {
                "shard": shard,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "key": key,
                "raw": raw,
                "error": error,
                "idempotency_key": idempotency_key,
                "existing": json.dumps(existing) if existing is not None else None,
                "received_at": received_at,
            }
            for topic, partition, offset, key, raw, error, idempotency_key, existing in letters
        ],
    )


def insert_outbox(
    conn: sa.Connection,
    topic_prefix: str,
    messages: Sequence[tuple[int | None, str, str | None, dict[str, Any]]],
    created_at: datetime,
) -> None:
    if not messages:
        return
    cursor = _driver(conn).cursor()
    with cursor.copy("COPY outbox (position, topic, key, value, created_at) FROM STDIN") as copy:
        copy.set_types(["int8", "text", "text", "text", "timestamptz"])  # value: JSON text, parsed as jsonb
        for position, kind, key, value in messages:
            copy.write_row((position, topic_prefix + kind, key, json.dumps(value), created_at))


def store_offsets(
    conn: sa.Connection,
    shard: int,
    offsets: dict[tuple[str, int], int],
    broker_instance: str | None,
    updated_at: datetime,
) -> None:
    if not offsets:
        return
    conn.execute(
        sa.text(
            "INSERT INTO consumer_offsets (shard, topic, partition, next_offset, broker_instance, updated_at) "
            "VALUES (:shard, :topic, :partition, :next_offset, :broker_instance, :updated_at) "
            "ON CONFLICT (shard, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, "
            "broker_instance = excluded.broker_instance, updated_at = excluded.updated_at"
        ),
        [
            {
                "shard": shard,
                "topic": topic,
                "partition": partition,
                "next_offset": next_offset,
                "broker_instance": broker_instance,
                "updated_at": updated_at,
            }
            for (topic, partition), next_offset in sorted(offsets.items())
        ],
    )


def read_offsets(conn: sa.Connection, shard: int) -> dict[tuple[str, int], tuple[int, str | None]]:
    rows = conn.execute(
        sa.text("SELECT topic, partition, next_offset, broker_instance FROM consumer_offsets WHERE shard = :shard"),
        {"shard": shard},
    )
    return {(topic, int(partition)): (int(offset), instance) for topic, partition, offset, instance in rows}


def iter_payloads(
    conn: sa.Connection, shard: int, *, after: int = 0, upto: int | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, payload) of a shard's events in log order, streamed with a server-side cursor."""
    query = "SELECT type, payload FROM events WHERE shard = :shard AND position > :after"
    params: dict[str, Any] = {"shard": shard, "after": after}
    if upto is not None:
        query += " AND position <= :upto"
        params["upto"] = upto
    query += " ORDER BY position"
    result = conn.execution_options(stream_results=True, yield_per=REPLAY_FETCH_ROWS).execute(sa.text(query), params)
    yield from result
