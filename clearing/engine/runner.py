"""The ledger process loop (``clearing run``): poll a record source, process bounded batches,
wake the outbox relay, stop cleanly on SIGTERM/SIGINT.

The record source is an adapter (consumers/) handed in by the caller, so the engine does not
depend on Kafka's consumer API.

Faults (clearing/engine/faults.py): a batch that fails for a transient reason (the database away)
is read again from the offsets stored in PostgreSQL once the state has been reloaded, the reload
itself retried with a bounded back-off; a batch refused for what it holds is split until the
record that causes it is alone, and that record is dead-lettered. The process ends only on a
broken invariant, an outage longer than ``faults.OUTAGE_WAIT_MAX_S``, or a broker that lost
messages the ledger consumed: ``LedgerHalted`` says what happened and what to do.

Log lines are ``event=NAME key=value ...`` (values with spaces JSON-quoted), at INFO: where
each partition is read from at start, the head of the log, and progress every
``PROGRESS_EVERY_S``; at WARNING, every fault and what the ledger does about it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from clearing.engine import faults
from clearing.engine.faults import Backoff, Fault, OutageTooLong, classify, reason
from clearing.engine.ledger import BatchResult, Ledger, LedgerBrokenError, PreparedBatch
from clearing.engine.outbox import OutboxRelay
from clearing.engine.records import RawRecord, SourceLostRecords
from clearing.store.log import LogHeadMismatch

logger = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100
# Records per batch (one transaction) at most. Every batch rewrites the projection rows of every
# account it touched (and margin rows of up to MARGIN_REFRESH_ACCOUNTS_MAX holders after a mark),
# so a ledger catching up writes far fewer rows per event in larger batches: 200k events over
# 2,000 accounts, margin engine off, ~137 us/event at 5,000 against ~107 at 10,000; bench/ingest.py
# (the whole ledger, compiled) 17,901-19,015 events/s at 10,000 against 20,662-21,413 at 20,000.
# The price is the batch's latency (and the log lock held that long) while catching up, 0.6 s
# against 1.1 s there; a ledger that keeps up takes what has arrived, far less than this.
BATCH_RECORDS_MAX = 20_000
# Poll timeout while a batch is committing: its result (stats, the outbox relay's wake-up) waits
# for the poll, so a ledger that is not catching up does not hold it back for a full timeout.
COMMITTING_POLL_TIMEOUT_MS = 20
PROGRESS_EVERY_S = 10.0  # a progress line at INFO this often while the ledger runs

T = TypeVar("T")


class LedgerHalted(RuntimeError):
    """The ledger cannot go on safely; ``str(error)`` says why and what to do. Nothing committed
    is lost: the log and the offsets stored with it say where the next run resumes."""


class RecordSource(Protocol):
    def assign(
        self, stored: dict[tuple[str, int], tuple[int, str | None]], broker_instance: str | None
    ) -> Sequence[Any] | None: ...

    def poll(self, timeout_ms: int, records_max: int) -> list[RawRecord]: ...

    def close(self) -> None: ...


@dataclass
class RunStats:
    batches: int = 0
    records: int = 0
    appended: int = 0
    decisions: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    isolated: int = 0  # records dead-lettered alone after the database refused their batch
    last_position: int = 0
    failures: int = 0
    decision_types: dict[str, int] = field(default_factory=dict)

    def add(self, result: BatchResult) -> None:
        self.batches += 1
        self.records += result.records
        self.appended += result.appended
        self.decisions += result.decisions
        self.duplicates += result.duplicates
        self.dead_letters += result.dead_letters
        self.last_position = max(self.last_position, result.last_position)
        for name, count in result.decision_types.items():
            self.decision_types[name] = self.decision_types.get(name, 0) + count


def kv(event: str, **fields: Any) -> str:
    """A structured log line: ``event=NAME key=value ...``, a value with spaces or quotes in JSON."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def run(
    ledger: Ledger,
    source: RecordSource,
    relay: OutboxRelay | None,
    *,
    broker_instance: str | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[BatchResult, RunStats], None] | None = None,
    install_signal_handlers: bool = True,
    batch_records_max: int = BATCH_RECORDS_MAX,
    poll_timeout_ms: int = POLL_TIMEOUT_MS,
    backoff: Backoff | None = None,
    progress: Callable[[RunStats], None] | None = None,
) -> RunStats:
    """Run until ``stop`` is set (or a signal arrives). Returns what was done; raises
    ``LedgerHalted`` when the ledger cannot go on safely. ``progress`` is called every
    ``PROGRESS_EVERY_S`` (after the progress line is logged)."""
    stop = stop or threading.Event()
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    loop = _Run(ledger, source, relay, broker_instance, stop, on_batch, backoff or Backoff(), progress)
    return loop.run(batch_records_max, poll_timeout_ms)


class _Run:
    """One run of the loop, with what its fault handling needs."""

    def __init__(
        self,
        ledger: Ledger,
        source: RecordSource,
        relay: OutboxRelay | None,
        broker_instance: str | None,
        stop: threading.Event,
        on_batch: Callable[[BatchResult, RunStats], None] | None,
        backoff: Backoff,
        progress: Callable[[RunStats], None] | None,
    ) -> None:
        self.ledger = ledger
        self.source = source
        self.relay = relay
        self.broker_instance = broker_instance
        self.stop = stop
        self.on_batch = on_batch
        self.backoff = backoff
        self.progress = progress
        self.stats = RunStats()
        self.in_flight: PreparedBatch | None = None  # the batch being committed
        self.on_commit = None if relay is None else relay.wake  # woken on the commit thread
        self.reported_at = time.monotonic()
        self.reported_records = 0

    def run(self, batch_records_max: int, poll_timeout_ms: int) -> RunStats:
        ledger, source = self.ledger, self.source
        self.assign()
        if self.relay is not None:
            self.relay.start()
        try:
            while not self.stop.is_set():
                # Batch N commits on the ledger's commit thread while this one polls and decodes
                # batch N+1 (work on the records alone); N+1 is folded only once N has committed,
                # so its positions follow N's and its log-head check sees N's rows. If N fails,
                # N+1 is dropped with it and read again from the stored offsets.
                committing = ledger.committing
                timeout_ms = min(poll_timeout_ms, COMMITTING_POLL_TIMEOUT_MS) if committing else poll_timeout_ms
                try:
                    records = source.poll(timeout_ms, batch_records_max)
                except SourceLostRecords as error:
                    self.broker_reset(error)
                    continue
                batch = ledger.prepare(records) if records else None
                if committing and not self.finished():
                    continue
                if batch is not None:
                    self.begin(batch)
                self.report()
        finally:
            self.close()
        return self.stats

    def begin(self, batch: PreparedBatch) -> None:
        try:
            # The relay is woken on the commit thread, as soon as the batch has committed.
            self.ledger.begin(batch, broker_instance=self.broker_instance, on_commit=self.on_commit)
        except Exception as error:
            self.failed(batch, error)
        else:
            self.in_flight = batch

    def finished(self) -> bool:
        """Take the result of the batch in flight; False when it failed (the ledger has been
        reloaded and the source re-assigned: records polled meanwhile are to be dropped)."""
        batch, self.in_flight = self.in_flight, None
        try:
            result = self.ledger.finish()
        except Exception as error:
            self.failed(batch, error)
            return False
        if result is not None:
            self.backoff.reset()
            self.committed(result)
        return True

    def committed(self, result: BatchResult) -> None:
        self.stats.add(result)
        if self.on_batch is not None:
            self.on_batch(result, self.stats)

    # -------------------------------------------------------------------------------------------
    # faults

    def failed(self, batch: PreparedBatch | None, error: Exception) -> None:
        """A batch failed and committed nothing: wait out a transient fault, isolate a poison
        record, stop on a broken invariant; then read on from the stored offsets."""
        self.stats.failures += 1
        fault = classify(error)
        if isinstance(error, LogHeadMismatch):
            # Another writer appends to this shard: retrying would only take turns with it.
            raise LedgerBrokenError(f"{error}; stopping: one writer per shard") from error
        if fault is Fault.FATAL:
            raise error
        if fault is Fault.POISON and batch is not None:
            logger.warning(
                kv("batch_refused", shard=self.ledger.shard, records=batch.records, reason=reason(error),
                   action="splitting the batch to dead-letter the record(s) the database refuses")
            )  # fmt: skip
            if not self.reload():
                return
            self.settle(batch)
        else:
            self.wait_out(error, "the batch was not written")
            if self.stop.is_set() or not self.reload():
                return
        self.assign()

    def wait_out(self, error: BaseException, what: str) -> None:
        """Wait before the next attempt after a transient ``error``, saying so; ``LedgerHalted``
        once the outage has lasted ``backoff.give_up_s``."""
        try:
            wait = self.backoff.next_wait()
        except OutageTooLong as too_long:
            raise LedgerHalted(
                f"the database has been failing for {self.backoff.waited_s:.0f} s ({too_long}; last error: "
                f"{reason(error)}). The ledger stops: nothing committed is lost, and the next `clearing run` "
                "resumes from the offsets stored with the log. Check that PostgreSQL is up and reachable at "
                "CLEARING_DATABASE_URL, then start `clearing run` again."
            ) from error
        logger.warning(
            kv("database_unavailable", shard=self.ledger.shard, error=reason(error), effect=what,
               action="waiting, then retrying", retry_in_s=wait, waited_s=self.backoff.waited_s,
               give_up_after_s=self.backoff.give_up_s)
        )  # fmt: skip
        self.stop.wait(wait)

    def retrying(self, action: Callable[[], T], what: str) -> T | None:
        """``action()``, retried while it fails for a transient reason; None if stopped meanwhile."""
        while True:
            try:
                return action()
            except Exception as error:
                if classify(error) is not Fault.TRANSIENT:
                    raise
                self.wait_out(error, what)
                if self.stop.is_set():
                    return None

    def reload(self) -> bool:
        """Reload the state from the log (dropping what a failed batch folded), waiting out an
        outage; False when the run was stopped meanwhile."""
        loaded = self.retrying(self.ledger.load, "the state cannot be reloaded from the log")
        if loaded is None:
            return False
        self.backoff.reset()
        return True

    def assign(self) -> None:
        """(Re-)assign the source at the offsets stored in PostgreSQL, and log where it reads."""
        stored = self.retrying(self.ledger.stored_offsets, "the stored offsets cannot be read")
        if stored is None:
            return
        try:
            starts = self.source.assign(stored, self.broker_instance)
        except SourceLostRecords as error:
            raise LedgerHalted(str(error)) from error
        for start in starts or ():
            logger.info(
                kv("consuming", shard=self.ledger.shard, topic=start.topic, partition=start.partition,
                   stored_offset=start.stored, from_offset=start.start, note=start.note)
            )  # fmt: skip

    def broker_reset(self, error: SourceLostRecords) -> None:
        """The broker holds fewer messages than were consumed. An embedded broker keeps them in
        memory only, so a restarted one is new and empty: read it from its start (anything read
        again is a duplicate by its idempotency key). Any other broker: stop and say what to do."""
        if not self.finished():  # the batch in flight was read before: let it commit
            return
        cluster = error.cluster
        if self.broker_instance is None or cluster is None or cluster == self.broker_instance:
            raise LedgerHalted(str(error)) from error
        logger.warning(
            kv("broker_reset", shard=self.ledger.shard, previous_instance=self.broker_instance, instance=cluster,
               detail=str(error).split(". ", 1)[0],
               action="the embedded broker restarted empty: reading its partitions from their start")
        )  # fmt: skip
        self.broker_instance = cluster
        self.assign()

    def settle(self, batch: PreparedBatch) -> None:
        """Commit ``batch`` part by part, in its order: a part the database refuses is split in
        two until the record that causes it is alone, and that record is dead-lettered with the
        database's reason. The state is reloaded after every failed part."""
        parts = [batch]
        isolated = 0
        while parts and not self.stop.is_set():
            part = parts.pop()
            try:
                self.ledger.begin(part, broker_instance=self.broker_instance, on_commit=self.on_commit)
                result = self.ledger.finish()
            except Exception as error:
                self.stats.failures += 1
                fault = classify(error)
                if fault is Fault.FATAL:
                    raise
                if fault is Fault.POISON and part.records == 1 and part.decoded[0][1] is None:
                    raise LedgerBrokenError(
                        f"the database refused a dead letter alone ({reason(error)}): nothing smaller to isolate"
                    ) from error
                if fault is Fault.TRANSIENT:
                    self.wait_out(error, "a part of a refused batch was not written")
                    parts.append(part)
                elif part.records == 1:
                    isolated += 1
                    if isolated > faults.ISOLATED_PER_BATCH_MAX:
                        raise LedgerBrokenError(
                            f"the database refused more than {faults.ISOLATED_PER_BATCH_MAX} records of one batch "
                            f"one by one (last: {reason(error)}): this looks like a fault of the ledger or the "
                            "database, not of the messages; stopping"
                        ) from error
                    parts.append(self.rejected(part, error))
                else:
                    parts.extend(reversed(part.split()))
                if not self.reload():
                    return
                continue
            if result is not None:
                self.committed(result)

    def rejected(self, part: PreparedBatch, error: BaseException) -> PreparedBatch:
        record = part.decoded[0][0]
        self.stats.isolated += 1
        logger.warning(
            kv("record_isolated", shard=self.ledger.shard, topic=record.topic, partition=record.partition,
               offset=record.offset, reason=reason(error), action="dead-lettered alone; the rest of its batch commits")
        )  # fmt: skip
        return part.rejected(f"the database refused this message: {reason(error)}")

    # -------------------------------------------------------------------------------------------
    # progress and the end

    def report(self) -> None:
        now = time.monotonic()
        if now - self.reported_at < PROGRESS_EVERY_S:
            return
        stats = self.stats
        rate = (stats.records - self.reported_records) / (now - self.reported_at)
        logger.info(
            kv("progress", shard=self.ledger.shard, position=stats.last_position or self.ledger.head.position,
               batches=stats.batches, records=stats.records, records_per_s=rate, appended=stats.appended,
               decisions=stats.decisions, duplicates=stats.duplicates, dead_letters=stats.dead_letters,
               isolated=stats.isolated, failures=stats.failures)
        )  # fmt: skip
        self.reported_at, self.reported_records = now, stats.records
        if self.progress is not None:
            self.progress(stats)

    def close(self) -> None:
        try:
            # A stop (or an error) lets the batch in flight commit, and counts it.
            last = self.ledger.finish()
            if last is not None:
                self.committed(last)
        except Exception:
            self.stats.failures += 1
            logger.exception("the last batch failed to commit")
        finally:
            try:
                self.ledger.checkpoint()  # the log's head anchored on the checkpoints topic at every stop
            except Exception:
                logger.exception("the checkpoint at the stop could not be queued")
            if self.relay is not None:
                self.relay.stop()
            self.source.close()
