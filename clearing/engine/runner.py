"""The ledger process loop (``clearing run``): poll a record source, process bounded batches,
wake the outbox relay, stop cleanly on SIGTERM/SIGINT.

The record source is an adapter (consumers/) handed in by the caller, so the engine does not
depend on Kafka's consumer API.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from clearing.engine.ledger import BatchResult, Ledger, LedgerBrokenError
from clearing.engine.outbox import OutboxRelay
from clearing.engine.records import RawRecord
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
FAILURE_BACKOFF_S = 1.0
FAILURE_BACKOFF_MAX_S = 30.0


class RecordSource(Protocol):
    def assign(self, stored: dict[tuple[str, int], tuple[int, str | None]], broker_instance: str | None) -> None: ...

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
) -> RunStats:
    """Run until ``stop`` is set (or a signal arrives). Returns what was done."""
    stop = stop or threading.Event()
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    stats = RunStats()
    source.assign(ledger.stored_offsets(), broker_instance)
    if relay is not None:
        relay.start()
    backoff = FAILURE_BACKOFF_S

    def finished() -> bool:
        """Take the result of the batch in flight; False when it failed (the ledger has been
        reloaded and the source re-assigned: records polled meanwhile are to be dropped)."""
        nonlocal backoff
        try:
            result = ledger.finish()
        except Exception:
            failed()
            return False
        if result is not None:
            backoff = FAILURE_BACKOFF_S
            committed(result)
        return True

    def committed(result: BatchResult) -> None:
        stats.add(result)
        if on_batch is not None:
            on_batch(result, stats)

    def failed() -> None:
        # A failed batch committed nothing. Reload the state from the log and re-read from the
        # stored offsets, after a bounded back-off.
        nonlocal backoff
        stats.failures += 1
        logger.exception("batch failed; reloading from the log in %.1f s", backoff)
        stop.wait(backoff)
        backoff = min(backoff * 2, FAILURE_BACKOFF_MAX_S)
        ledger.load()
        source.assign(ledger.stored_offsets(), broker_instance)

    try:
        while not stop.is_set():
            # Batch N commits on the ledger's commit thread while this one polls and decodes
            # batch N+1 (work on the records alone); N+1 is folded only once N has committed,
            # so its positions follow N's and its log-head check sees N's rows. If N fails,
            # N+1 is dropped with it and read again from the stored offsets.
            committing = ledger.committing
            records = source.poll(
                min(poll_timeout_ms, COMMITTING_POLL_TIMEOUT_MS) if committing else poll_timeout_ms, batch_records_max
            )
            batch = ledger.prepare(records) if records else None
            if committing and not finished():
                continue
            if batch is None:
                continue
            try:
                # The relay is woken on the commit thread, as soon as the batch has committed.
                ledger.begin(batch, broker_instance=broker_instance, on_commit=None if relay is None else relay.wake)
            except LogHeadMismatch as error:
                # Another writer appends to this shard: retrying would only take turns with it.
                raise LedgerBrokenError(f"{error}; stopping: one writer per shard") from error
            except Exception:
                failed()
    finally:
        try:
            # A stop (or an error) lets the batch in flight commit, and counts it.
            last = ledger.finish()
            if last is not None:
                committed(last)
        except Exception:
            stats.failures += 1
            logger.exception("the last batch failed to commit")
        finally:
            try:
                ledger.checkpoint()  # the log's head anchored on the checkpoints topic at every stop
            except Exception:
                logger.exception("the checkpoint at the stop could not be queued")
            if relay is not None:
                relay.stop()
            source.close()
    return stats
