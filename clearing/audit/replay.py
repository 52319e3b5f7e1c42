"""The log read for a replay: every row in position order, streamed from a server-side cursor by a
reader thread that keeps fetches ahead of the fold (``iter_log``, ``prefetched``). The fold of
those rows, shared by ``audit verify`` and ``projections rebuild``, is
``clearing.audit.logreplay.LogReplay``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Final, TypeVar

import psycopg
import sqlalchemy as sa

from clearing.domain.events import INPUT_EVENT_TYPES, MODEL_BY_EVENT_TYPE
from clearing.store.log import REPLAY_FETCH_ROWS

REPLAY_PREFETCH_BATCHES = 4  # fetched batches the reader thread holds ahead of the fold, at most

T = TypeVar("T")

# The payload as its JSON text: the reader parses it where it folds the row (``load_json``), see
# ``iter_log``. The two times as their text too (PostgreSQL's ISO spelling, which
# ``datetime.fromisoformat`` reads): a replay compares ``recorded_at`` with the row before it and
# reads ``occurred_at`` only off a decision or a liquidation fill, and the driver's parse of a
# timestamptz into a datetime costs more than the rest of a row's read.
#
# What only decisions need is NULL on the rows of inputs: the replay compares a decision's
# ``occurred_at``, key, cause and stream with the re-run's and reads an input's from its payload
# (but a liquidation fill's ``occurred_at``, which the margin events carry): reading the three
# strings and the time of every fill is work saved, and the CASEs cost the server nothing it
# measurably spends (docs/performance.md).
_LIQUIDATION_FILLS: Final = INPUT_EVENT_TYPES["liquidation_fill"][0]
_INPUTS: Final = ", ".join(f"'{event_type}'" for event_type in sorted(MODEL_BY_EVENT_TYPE))
_INPUTS_BUT_LIQUIDATION_FILLS: Final = ", ".join(
    f"'{event_type}'" for event_type in sorted(MODEL_BY_EVENT_TYPE) if event_type != _LIQUIDATION_FILLS
)
LOG_COLUMNS: Final = (
    "position, shard, type, payload::text AS payload, "
    f"CASE WHEN type IN ({_INPUTS_BUT_LIQUIDATION_FILLS}) THEN NULL ELSE occurred_at::text END AS occurred_at, "
    "recorded_at::text AS recorded_at, "
    f"CASE WHEN type IN ({_INPUTS}) THEN NULL ELSE idempotency_key END AS idempotency_key, "
    f"CASE WHEN type IN ({_INPUTS}) THEN NULL ELSE cause_position END AS cause_position, "
    f"CASE WHEN type IN ({_INPUTS}) THEN NULL ELSE stream END AS stream"
)


def iter_log(
    conn: sa.Connection, *, shard: int | None = None, after: int = 0, upto: int | None = None
) -> Iterator[Any]:
    """Rows of the log in position order (``LOG_COLUMNS``), as tuples, streamed with a server-side
    cursor and fetched ahead of the consumer by a reader thread (``stream_rows``). The connection
    belongs to the reader until the iterator is exhausted or closed: do not use it in between.

    The payload comes as its JSON text, for the consumer to parse (``load_json``) when it takes
    the row. Parsed by the driver in the reader thread, each batch's payloads were built into
    fresh memory, held until the fold reached them and read back cold, and each went through
    psycopg's loader in Python, several times the cost of the parse itself, all of it under the
    GIL the fold needs."""
    query = f"SELECT {LOG_COLUMNS} FROM events WHERE position > %(after)s"
    params: dict[str, Any] = {"after": after}
    if shard is not None:
        query += " AND shard = %(shard)s"
        params["shard"] = shard
    if upto is not None:
        query += " AND position <= %(upto)s"
        params["upto"] = upto
    return stream_rows(conn, query + " ORDER BY position", params, REPLAY_FETCH_ROWS)


def stream_rows(
    conn: sa.Connection, query: str, params: dict[str, Any], fetch_rows: int
) -> Generator[tuple[Any, ...], None, None]:
    """The rows of ``query`` (psycopg's ``%(name)s`` parameters) as tuples, from a server-side
    cursor of the connection's driver, in binary form, ``fetch_rows`` a fetch, fetched ahead by a
    reader thread (``prefetched``). In the connection's transaction, which SQLAlchemy's next
    statement on it carries on. The driver's errors are raised as SQLAlchemy's, as a statement of
    ``conn.execute`` raises them, and a connection the driver lost is invalidated.

    Not through SQLAlchemy's result: its fetch and its ``Row`` (a row's items are read by index
    in a replay, about ten a row) cost more than the driver's tuples, and the text form of the
    integers more than the binary one."""
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"the log is read through psycopg, not {type(driver).__name__}")
    try:
        with driver.cursor(name="clearing_stream_rows", binary=True) as cursor:
            cursor.execute(query, params)
            yield from prefetched(lambda: cursor.fetchmany(fetch_rows))
    except psycopg.Error as error:
        if driver.broken:
            conn.invalidate(error)
        raise sa.exc.DBAPIError.instance(query, params, error, psycopg.Error) from error


def prefetched(fetch: Callable[[], Sequence[T]], ahead: int = REPLAY_PREFETCH_BATCHES) -> Generator[T, None, None]:
    """The items of ``fetch()``'s batches, in order, until a batch is empty; ``fetch`` runs in a
    reader thread that keeps up to ``ahead`` batches ready.

    Why a thread: a replay's fold is single-threaded Python, and with the fetches in its thread
    PostgreSQL sat idle while the fold ran and the fold sat idle while PostgreSQL produced each
    fetch (a fifth of the time a replay has for an event). psycopg releases the GIL while it
    waits on the socket, so the next fetch now runs in PostgreSQL while the fold works.

    An error in ``fetch`` is raised here after the batches before it. When the consumer stops
    early (``close()``, or the generator is dropped), the reader is stopped and joined before this
    returns, so the caller's connection is free again; it finishes the fetch it is in, if any."""
    if ahead < 1:
        raise ValueError("ahead must be at least one batch")
    batches: queue.Queue[Sequence[T] | BaseException] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def read() -> None:
        # Once ``stop`` is set the reader puts at most one more item (the fetch it was in, or its
        # error): the consumer empties the queue after setting it, so that put cannot block.
        try:
            while not stop.is_set():
                batch = fetch()
                batches.put(batch)
                if not batch:
                    return
        except BaseException as error:  # handed to the consumer and raised there
            batches.put(error)

    reader = threading.Thread(target=read, name="clearing-log-reader", daemon=True)
    reader.start()
    try:
        while True:
            batch = batches.get()
            if isinstance(batch, BaseException):
                raise batch
            if not batch:
                return
            yield from batch
    finally:
        stop.set()
        try:
            while True:
                batches.get_nowait()
        except queue.Empty:
            pass
        reader.join()
