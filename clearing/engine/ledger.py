"""The ledger process's core: a batch of raw records in, one PostgreSQL transaction out.

For each batch: decode every record (bad ones become dead letters), look up the idempotency keys
already in the log, then under the log lock fold each new event into the in-memory state, decide,
and write in one transaction the input and decision events (hash-chained), the dead letters, the
outbox rows, the projection rows of every account the batch touched and the consumer offsets. A
crash at any instant leaves either the whole batch or none of it, and the offsets stored with it
say exactly where to resume.

The last of a batch's transaction (applying the staged projection rows, the commit) runs on a
commit thread while the runner polls and decodes the next batch (``begin``, ``finish``); the next
batch is folded only once this one has committed.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from clearing.domain import events as ev
from clearing.domain.fold import admit, replay_event, step
from clearing.domain.inputs import FillBust, InputMessage, format_time
from clearing.domain.messages import InputError, decode_wire
from clearing.domain.numbers import ledger_context
from clearing.domain.params import RiskParameters, bundled_parameters
from clearing.domain.state import LedgerState
from clearing.engine import checkpoints, outputs, snapshots
from clearing.engine.records import RawRecord, merge_key
from clearing.engine.refresh import SortedHolders, refresh_window
from clearing.store import log as eventlog
from clearing.store import projections
from clearing.store.hashing import canonical_json

logger = logging.getLogger(__name__)

# A record of a batch decoded: the record, and its message, idempotency key and wire form (all
# None when it could not be decoded).
Decoded = tuple[RawRecord, InputMessage | None, str | None, dict[str, Any] | None]


@dataclass(slots=True)
class BatchResult:
    records: int = 0
    appended: int = 0
    decisions: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    last_position: int = 0
    seconds: float = 0.0
    decision_types: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _DeadLetter:
    record: RawRecord
    error: str
    idempotency_key: str | None = None
    existing_payload: dict[str, Any] | None = None


class LedgerBrokenError(RuntimeError):
    """An invariant of the writer does not hold (e.g. a second writer on this shard): stop."""


class Ledger:
    """One shard's writer. Not thread-safe: one ledger process per shard."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        shard: int = 0,
        topic_prefix: str = "clearing.",
        opening_parameters: RiskParameters | None = None,
    ) -> None:
        self.engine = engine
        self.shard = shard
        self.topic_prefix = topic_prefix
        self.state = LedgerState()
        # The parameters this ledger opens an empty log of its shard with: its first event, a
        # risk_parameters event like the admin topic's, so that the log names what it started
        # under (a log naming none started under the log-start document: no event is needed
        # for those, which is how a ledger given ``log_start_parameters()`` writes a v1 log).
        self.opening_parameters = opening_parameters if opening_parameters is not None else bundled_parameters()
        self.head = eventlog.ShardHead(shard=shard)
        self.needs_reload = False
        self._refresh_cursor = 0
        self._holders = SortedHolders()  # the order the rotating refresh walks the holders in
        self._pending: _PendingCommit | None = None  # the batch begin() wrote, until finish()
        # Every SNAPSHOT_EVERY_EVENTS events of this shard, the state is saved after a batch
        # commits (clearing/engine/snapshots.py); load() and the as-of queries start from it.
        self.snapshots = snapshots.SnapshotPolicy()
        # Every CHECKPOINT_EVERY_EVENTS events of this shard, and at a clean stop (``checkpoint``),
        # a log_checkpoint goes out through the outbox (clearing/engine/checkpoints.py).
        self.checkpoints = checkpoints.CheckpointPolicy()

    # ---------------------------------------------------------------------------------------
    # start

    def load(self, progress: Any = None) -> int:
        """Fold this shard's log into a fresh state (from the latest snapshot when there is one).
        Returns the number of events replayed."""
        if self._pending is not None:
            raise LedgerBrokenError("a batch is still being committed: call finish() before load()")
        self.state = LedgerState()
        with self.engine.connect() as conn:
            self.head = eventlog.read_head(conn, self.shard)
            # Start from the latest snapshot (the state after every event up to its position)
            # and fold only the tail; a snapshot past the head belongs to another log: ignore it.
            after = 0
            latest = snapshots.latest_snapshot(conn, self.shard, at_or_before=self.head.shard_position)
            if latest is not None:
                self.state, after = latest.state, latest.position
            count = 0
            with ledger_context():
                for event_type, payload in eventlog.iter_payloads(conn, self.shard, after=after):
                    replay_event(self.state, event_type, payload)
                    count += 1
                    if progress is not None and count % 10_000 == 0:
                        progress(count)
        self.state.touched.clear()
        self.state.marks_touched.clear()
        self.checkpoints.reset(checkpoints.shard_event_count(self.head.stream_versions.values()))
        self.needs_reload = False
        self.snapshots.since_last = count  # events of the shard since its latest snapshot
        return count

    def _refresh_rotation(self) -> list[str]:
        """Accounts whose margin state is refreshed in this batch although no event of theirs
        changed their status: marks move every holder's equity, and writing all of them on every
        batch would cost more than the ingest. A rotating window of at most
        ``MARGIN_REFRESH_ACCOUNTS_MAX`` holders per batch (``refresh.refresh_window``, which the
        replay re-enacts) bounds how stale a row can get (a status change is always written at
        once: it is a decision, and decisions touch their account)."""
        window, self._refresh_cursor = refresh_window(self._holders.of(self.state), self._refresh_cursor)
        return window

    def stored_offsets(self) -> dict[tuple[str, int], tuple[int, str | None]]:
        with self.engine.connect() as conn:
            return eventlog.read_offsets(conn, self.shard)

    # ---------------------------------------------------------------------------------------
    # one batch

    def process(self, records: Sequence[RawRecord], *, broker_instance: str | None = None) -> BatchResult:
        """Decode, fold and commit one batch, and return once it is committed."""
        self.begin(self.prepare(records), broker_instance=broker_instance)
        result = self.finish()
        if result is None:
            raise LedgerBrokenError("begin() left no batch to finish")
        return result

    def prepare(self, records: Sequence[RawRecord]) -> PreparedBatch:
        """Decode a batch and put it in event-time order. Reads nothing of the state, the head or
        the database: the runner does it while the batch before is still being committed."""
        started = time.perf_counter()
        decoded: list[Decoded] = []
        dead: list[_DeadLetter] = []
        for record in records:
            try:
                message, payload = decode_wire(record.kind, record.value)
            except InputError as error:
                decoded.append((record, None, None, None))
                dead.append(_DeadLetter(record, str(error)))
                continue
            decoded.append((record, message, ev.idempotency_key(message, self.shard), payload))
        return PreparedBatch(len(records), in_event_time_order(decoded), dead, started)

    def begin(
        self,
        batch: PreparedBatch,
        *,
        broker_instance: str | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        """Fold ``batch`` and write it in a transaction, up to what only PostgreSQL has left to do
        (applying the staged projection rows, the commit): that runs on a thread of its own while
        the caller prepares the next batch. ``finish`` waits for it. Until then the state and the
        head are the batch's, not yet committed: nothing else may read or fold them.
        ``on_commit`` is called on the commit thread as soon as the transaction has committed
        (the outbox relay's wake-up: decisions go out without waiting for ``finish``)."""
        if self._pending is not None:
            raise LedgerBrokenError("the previous batch is still being committed: call finish() first")
        if self.needs_reload:
            raise LedgerBrokenError("the in-memory state is behind a failed batch: call load() first")
        write = _BatchWrite(BatchResult(records=batch.records), list(batch.dead), datetime.now(UTC))
        try:
            conn, transaction = self._write(batch, write, broker_instance)
        except BaseException:
            self._failed()
            raise
        write.result.dead_letters = len(write.dead)
        write.result.last_position = write.position
        pending = _PendingCommit(write.result, batch.started, on_commit)
        pending.thread = threading.Thread(
            target=_commit,
            args=(conn, transaction, write.deferred, pending),
            name=f"ledger-{self.shard}-commit",
        )
        try:
            pending.thread.start()
        except BaseException:
            conn.close()  # rolls the transaction back
            self._failed()
            raise
        self._pending = pending

    def finish(self) -> BatchResult | None:
        """Wait for the batch ``begin`` wrote to commit, and return what it did (None when there is
        no batch in flight). A failed commit raises its error here, and the state must be
        reloaded (``load``) before the next batch, as after any failed batch."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending.thread.join()
        if pending.error is not None:
            self._failed()
            raise pending.error
        # Committed: only now does the in-memory head move on.
        self.head.commit()
        self.checkpoints.commit()
        state = self.state
        state.touched.clear()
        state.marks_touched.clear()
        result = pending.result
        # After the commit, in a transaction of its own (a failure is logged, never raised).
        self.snapshots.after_batch(
            self.engine, self.shard, self.head.shard_position, state, result.appended + result.decisions
        )
        result.seconds = time.perf_counter() - pending.started
        return result

    def checkpoint(self) -> checkpoints.Checkpoint | None:
        """Queue a checkpoint at the head on the outbox unless it has one (at a clean stop)."""
        if self._pending is not None or self.needs_reload:
            return None  # the head is not known to be committed
        return checkpoints.write_at_head(self.engine, self.head, self.checkpoints, self.topic_prefix)

    @property
    def committing(self) -> bool:
        """A batch is written and its commit not yet seen by ``finish``."""
        return self._pending is not None

    def _failed(self) -> None:
        # The state may hold part of a batch that never committed: drop it, and have the
        # process reload from the log before it goes on.
        self.head.rollback()
        self.needs_reload = True

    def _write(
        self, batch: PreparedBatch, write: _BatchWrite, broker_instance: str | None
    ) -> tuple[sa.Connection, sa.RootTransaction]:
        """Everything of the batch's transaction but the deferred projection statements
        (``write.deferred``) and the commit: returns the open connection and transaction. On
        error the transaction is rolled back."""
        state = self.state
        conn = self.engine.connect()
        try:
            transaction = conn.begin()
            write.position = eventlog.lock_and_check_head(conn, self.head)
            keys = [item[2] for item in batch.decoded if item[2] is not None]
            keys += busted_fill_keys(batch.decoded, self.shard)
            write.existing = eventlog.existing_payloads(conn, keys)
            write.seen = {key: canonical_json(payload) for key, payload in write.existing.items()}
            # The rows go to PostgreSQL while the rest of the batch is folded (EventStream).
            with eventlog.streaming_append(conn) as copy_stream, ledger_context():
                stream = self.checkpoints.watch(copy_stream, self.shard)
                self._open_log(batch.decoded, write, stream)
                self._append(batch.decoded, write, stream)
            self._write_letters(conn, write)
            write.outbox.extend(self.checkpoints.staged_messages())
            eventlog.insert_outbox(conn, self.topic_prefix, write.outbox, write.recorded_at)
            eventlog.store_offsets(conn, self.shard, write.offsets, broker_instance, write.recorded_at)
            accounts = set(state.touched)
            if state.marks_touched:
                accounts.update(self._refresh_rotation())
            projections.write(
                conn,
                state,
                accounts,
                state.marks_touched,
                write.position,
                shard=self.shard,
                decisions=write.decided,
                deferred=write.deferred,
            )
        except BaseException:
            conn.close()  # rolls the transaction back
            raise
        return conn, transaction

    def _open_log(self, decoded: list[Decoded], write: _BatchWrite, stream: checkpoints.CheckpointingStream) -> None:
        """On this shard's empty log, the opening parameters as its first event, at the batch's
        earliest event time (before any of its inputs), unless they are those a log implies
        before its first event anyway. The event is the admin topic's, decoded and folded as
        one, under the idempotency key of its version."""
        times = [item[1].occurred_at for item in decoded if item[1] is not None]
        parameters = self.opening_parameters
        if self.head.shard_position != 0 or not times or parameters == self.state.parameters:
            return
        wire = {"type": "risk_parameters", "parameters": parameters.document(), "occurred_at": format_time(min(times))}
        message, payload = decode_wire("admin", json.dumps(wire).encode("utf-8"))
        key = ev.idempotency_key(message, self.shard)
        admit(self.state, message)
        write.position += 1
        if step(self.state, message, write.position, self.shard):
            raise LedgerBrokenError(f"shard {self.shard}: the log is empty but its state has accounts to decide on")
        payload_json = canonical_json(payload)
        event = ev.input_event(message, self.shard, payload=payload, key=key)
        stream.add(self.head.row(write.position, event, payload_json, write.recorded_at, None, payload["occurred_at"]))
        write.seen[key] = payload_json
        write.result.appended += 1
        logger.info("shard %s: log opened with risk parameters %s", self.shard, parameters.version)

    def _append(self, decoded: list[Decoded], write: _BatchWrite, stream: checkpoints.CheckpointingStream) -> None:
        """Fold each new input into the state and stream its row and its decisions' rows; note
        every record's offset, and dead-letter what cannot enter the log."""
        state, head, shard, seen, offsets = self.state, self.head, self.shard, write.seen, write.offsets
        result, recorded_at = write.result, write.recorded_at
        for record, message, key, payload in decoded:
            offsets[(record.topic, record.partition)] = record.offset + 1
            if message is None or key is None or payload is None:
                continue
            if isinstance(message, FillBust):
                message, payload = attach_busted_fill(message, payload, shard, write.existing, seen)
            payload_json = canonical_json(payload)
            if key in seen:
                self._seen_before(write, record, key, payload_json)
                continue
            try:
                admit(state, message)
            except InputError as error:
                write.dead.append(_DeadLetter(record, str(error), key))
                continue
            write.position += 1
            position = write.position
            decisions = step(state, message, position, shard)
            event = ev.input_event(message, shard, payload=payload, key=key)
            source = (record.topic, record.partition, record.offset)
            # payload["occurred_at"] is format_time(message.occurred_at), in the payload already.
            stream.add(head.row(position, event, payload_json, recorded_at, source, payload["occurred_at"]))
            seen[key] = payload_json
            result.appended += 1
            if event.type == ev.LIQUIDATION_FILL_RECORDED:
                write.decided.append((position, event.type, payload, event.occurred_at))
            if decisions:
                self._append_decisions(decisions, write, stream)

    def _seen_before(self, write: _BatchWrite, record: RawRecord, key: str, payload_json: str) -> None:
        """An input whose idempotency key is in the log already: a duplicate when the content is
        the same, else a conflicting duplicate, dead-lettered (the logged version stands)."""
        if write.seen[key] == payload_json:
            write.result.duplicates += 1
            return
        error = (
            f"conflicting duplicate: idempotency key {key.split('/', 1)[1]} is already in the log with different "
            "content; the logged version stands, send a correction under a new id"
        )
        write.dead.append(_DeadLetter(record, error, key, write.existing.get(key) or _loads(write.seen[key])))

    def _append_decisions(
        self, decisions: list[ev.Event], write: _BatchWrite, stream: checkpoints.CheckpointingStream
    ) -> None:
        result = write.result
        for decision in decisions:
            write.position += 1
            position = write.position
            write.decided.append((position, decision.type, decision.payload, decision.occurred_at))
            stream.add(self.head.row(position, decision, canonical_json(decision.payload), write.recorded_at))
            result.decisions += 1
            result.decision_types[decision.type] = result.decision_types.get(decision.type, 0) + 1
            out = outputs.decision_message(decision, position)
            if out is not None:
                write.outbox.append((position, *out))

    def _write_letters(self, conn: sa.Connection, write: _BatchWrite) -> None:
        """The batch's dead letters: in the table (all of the raw record) and on the outbox."""
        rows = []
        for letter in write.dead:
            record = letter.record
            # PostgreSQL refuses U+0000 in text and JSONB (in a reason quoted from the database,
            # or in a record's key): spelt as its escape there; the raw bytes are kept as they are.
            error = letter.error.replace("\x00", "\\u0000")
            key = record.key.replace(b"\x00", b"\\u0000") if record.key is not None else None
            where = (record.topic, record.partition, record.offset)
            write.outbox.append(
                (None, *outputs.dead_letter_message(*where, key, record.value, error, letter.existing_payload))
            )
            rows.append((*where, record.key, record.value, error, letter.idempotency_key, letter.existing_payload))
        eventlog.insert_dead_letters(conn, self.shard, rows, write.recorded_at)


@dataclass(slots=True)
class _BatchWrite:
    """What one batch's transaction writes, gathered while it is folded (``Ledger._write``)."""

    result: BatchResult
    dead: list[_DeadLetter]
    recorded_at: datetime
    position: int = 0  # the last position written
    existing: dict[str, dict[str, Any]] = field(default_factory=dict)  # payloads in the log, by key
    seen: dict[str, str] = field(default_factory=dict)  # canonical payloads in the log or this batch, by key
    decided: list[tuple[int, str, dict[str, Any], datetime]] = field(default_factory=list)
    outbox: list[tuple[int | None, str, str | None, dict[str, Any]]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)  # projection statements run with the commit


@dataclass(slots=True)
class PreparedBatch:
    """A batch decoded and in event-time order (``Ledger.prepare``), ready to be folded."""

    records: int
    decoded: list[Decoded]
    dead: list[_DeadLetter]
    started: float

    def split(self) -> tuple[PreparedBatch, PreparedBatch]:
        """The first and the second half of the batch, in its order (to isolate a record that
        fails it: each half commits, or is split again). Each record's dead letter from
        decoding goes with it."""
        half = len(self.decoded) // 2
        if half == 0:
            raise ValueError("a batch of one record cannot be split")
        first = {id(item[0]) for item in self.decoded[:half]}
        return (
            PreparedBatch(half, self.decoded[:half], [d for d in self.dead if id(d.record) in first], self.started),
            PreparedBatch(
                len(self.decoded) - half,
                self.decoded[half:],
                [d for d in self.dead if id(d.record) not in first],
                self.started,
            ),
        )

    def rejected(self, error: str) -> PreparedBatch:
        """This batch of one record as its dead letter alone, with ``error`` as the reason."""
        if len(self.decoded) != 1:
            raise ValueError(f"only a batch of one record is rejected whole, not one of {len(self.decoded)}")
        record = self.decoded[0][0]
        return PreparedBatch(1, [(record, None, None, None)], [_DeadLetter(record, error)], self.started)


@dataclass(slots=True)
class _PendingCommit:
    result: BatchResult
    started: float
    on_commit: Callable[[], None] | None
    thread: threading.Thread = field(init=False)
    error: BaseException | None = None


def _commit(
    conn: sa.Connection, transaction: sa.RootTransaction, deferred: dict[str, str], pending: _PendingCommit
) -> None:
    """The end of a batch's transaction, on a thread of its own: the deferred projection
    statements (in one round trip: they take no parameters) and the commit. Why a thread: these
    are PostgreSQL's work (~20 us an event when a batch rewrites thousands of projection rows),
    and the ledger's own thread decodes the next batch meanwhile. The connection is this
    thread's alone until it ends: the ledger's thread touches no database until ``finish``."""
    try:
        if deferred:
            driver: Any = conn.connection.driver_connection
            driver.cursor().execute(";\n".join(deferred.values()))
        transaction.commit()
    except BaseException as error:  # handed to finish(), which raises it in the ledger's thread
        pending.error = error
        return
    finally:
        try:
            conn.close()
        except Exception:
            logger.exception("closing the batch's connection failed")
    if pending.on_commit is not None:
        try:
            pending.on_commit()
        except Exception:  # the batch is committed whatever a callback does
            logger.exception("the batch committed, but its on_commit callback failed")


def in_event_time_order(
    decoded: list[Decoded],
) -> list[Decoded]:
    """The batch merged across partitions by event time, each partition kept in offset order.

    A poll returns records grouped by partition; folded in that order, a catch-up batch would
    book every fill of the fills topic before the deposits that fund them (and margin-call
    accounts that are not short of anything). A k-way merge on occurred_at restores the order
    the exchange produced them in, while never reordering a partition: Kafka's order within a
    partition is the one order the producer guarantees. A record that could not be decoded keeps
    its place behind its partition's previous record."""
    if _already_in_order(decoded):
        return decoded
    by_partition: dict[tuple[str, int], list[tuple[tuple[Any, ...], Decoded]]]
    by_partition = {}
    floor = datetime.min.replace(tzinfo=UTC)
    last: dict[tuple[str, int], datetime] = {}
    for item in decoded:
        record, message = item[0], item[1]
        where = (record.topic, record.partition)
        at = message.occurred_at if message is not None else last.get(where, floor)
        last[where] = at
        by_partition.setdefault(where, []).append((merge_key(at, record), item))
    if len(by_partition) <= 1:
        return decoded
    merged = heapq.merge(*by_partition.values(), key=lambda keyed: keyed[0])
    return [item for _, item in merged]


def _already_in_order(decoded: list[Decoded]) -> bool:
    """Whether every record's merge key is above the one before it: the batch is the merge's
    output as is (keys are unique, by (topic, partition, offset)). The Kafka adapter merges by
    event time before it hands records over, so this is the common case, checked here without
    the merge's grouping. A record that could not be decoded takes the slow way (its key is its
    partition's previous time)."""
    previous: tuple[Any, ...] | None = None
    for record, message, _, _ in decoded:
        if message is None:
            return False
        key = merge_key(message.occurred_at, record)
        if previous is not None and not previous < key:
            return False
        previous = key
    return True


def busted_fill_keys(decoded: list[Decoded], shard: int) -> list[str]:
    """The keys of the logged fills that the batch's busts reverse: read with the batch's own
    keys (``eventlog.existing_payloads``), so that a bust finds its fill in one query."""
    keys = []
    for _record, message, _key, _payload in decoded:
        found = None if message is None else ev.busted_fill_key(message, shard)
        if found is not None:
            keys.append(found)
    return keys


def attach_busted_fill(
    bust: FillBust, payload: dict[str, Any], shard: int, existing: dict[str, Any], seen: dict[str, str]
) -> tuple[FillBust, dict[str, Any]]:
    """The bust with the booked fill it names attached (``events.with_busted_fill``): from the
    log, or from earlier in this batch. As it was when none is booked: ``fold.admit`` rejects it."""
    key = ev.busted_fill_key(bust, shard)
    found = None if key is None else existing.get(key)
    if found is None and key is not None and key in seen:
        found = _loads(seen[key])
    if found is None:
        return bust, payload
    return ev.with_busted_fill(bust, payload, found)


def _loads(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data
