"""The runner reads and decodes the next batch while the last one commits on the ledger's commit
thread; a commit that fails there drops what was read meanwhile, and the run goes on from the
offsets stored in PostgreSQL: every record in the log exactly once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from clearing.engine.faults import Backoff
from clearing.engine.ledger import Ledger, RawRecord
from clearing.engine.runner import run
from clearing.store.db import make_engine

TOPIC = "x.transfers"
BATCH_RECORDS = 5
BATCHES = 6
# The commit of the batch holding this deposit fails once, at COMMIT (a deferred constraint
# trigger), so the failure reaches the ledger on its commit thread, after the next batch was read.
POISON = "D-12"


def deposit(offset: int) -> RawRecord:
    value = {"type": "deposit", "transfer_id": f"D-{offset}", "account_id": f"A{offset % 3}", "asset": "USDT",
             "amount": "1", "occurred_at": f"2026-11-23T12:00:{offset:02d}Z"}  # fmt: skip
    return RawRecord("transfers", TOPIC, 0, offset, b"A", json.dumps(value).encode())


class Partition:
    """Kafka's stand-in (the ledger is what is tested): one partition of records, read from the
    offset the run assigns, a few records a poll; asks the run to stop once all were handed over.
    Notes, for every poll, whether the ledger had a batch committing at the time."""

    def __init__(self, ledger: Ledger, records: list[RawRecord], stop: threading.Event) -> None:
        self.ledger = ledger
        self.records = records
        self.stop = stop
        self.next = 0
        self.assigned: list[int] = []
        self.handed = 0
        self.polled_while_committing: list[bool] = []

    def assign(self, stored: dict[tuple[str, int], tuple[int, str | None]], broker_instance: object) -> None:
        self.next = stored.get((TOPIC, 0), (0, None))[0]
        self.assigned.append(self.next)

    def poll(self, timeout_ms: int, records_max: int) -> list[RawRecord]:
        self.polled_while_committing.append(self.ledger.committing)
        records = self.records[self.next : self.next + BATCH_RECORDS]
        self.next += len(records)
        self.handed += len(records)
        if self.next >= len(self.records):
            self.stop.set()
        return records

    def close(self) -> None:
        pass


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    owner = make_engine(database_url)
    with owner.begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE poison_commits"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION fail_poison_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.idempotency_key LIKE '%/{POISON}' AND nextval('poison_commits') = 1 THEN "
                "RAISE EXCEPTION 'injected commit failure'; END IF; RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE CONSTRAINT TRIGGER fail_poison_once AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED "
                "FOR EACH ROW EXECUTE FUNCTION fail_poison_once()"
            )
        )
        conn.execute(sa.text("GRANT USAGE ON SEQUENCE poison_commits TO clearing_app"))
    owner.dispose()
    engine = make_engine(database_url, role="clearing_app")
    yield engine
    engine.dispose()


def test_a_commit_failing_on_the_commit_thread_drops_the_batch_read_meanwhile(engine: sa.Engine) -> None:
    records = [deposit(offset) for offset in range(BATCH_RECORDS * BATCHES)]
    ledger = Ledger(engine, topic_prefix="x.")
    ledger.load()
    stop = threading.Event()
    source = Partition(ledger, records, stop)

    stats = run(ledger, source, None, stop=stop, install_signal_handlers=False, backoff=Backoff(first_s=0.01))

    # The next batch was read while the one before committed.
    assert source.polled_while_committing.count(True) >= BATCHES - 1
    # The poison batch (offsets 10..14) failed once; the run re-read from its stored offsets,
    # dropping the batch it had read meanwhile (offsets 15..19): both were read twice.
    assert stats.failures == 1
    assert source.assigned == [0, 10]
    assert source.handed == len(records) + 2 * BATCH_RECORDS
    assert stats.records == len(records)
    with engine.connect() as conn:
        offsets = conn.execute(sa.text("SELECT source_offset FROM events ORDER BY position")).scalars().all()
        positions = conn.execute(sa.text("SELECT position FROM events ORDER BY position")).scalars().all()
        stored = conn.execute(sa.text("SELECT next_offset FROM consumer_offsets")).scalars().all()
    # Every record once, in offset order, after the event the log opens with (no source).
    assert offsets == [None, *range(len(records))]
    assert positions == list(range(1, len(records) + 2))
    # The last batch, handed over as the run was asked to stop, committed before run returned.
    assert stored == [len(records)]
    assert ledger.head.shard_position == len(records) + 1


def test_on_commit_runs_on_the_commit_thread_once_committed_and_not_for_a_failed_commit(engine: sa.Engine) -> None:
    # The runner wakes the outbox relay this way: decisions go out when their batch commits, not
    # once the next batch has been read and decoded.
    ledger = Ledger(engine, topic_prefix="x.")
    ledger.load()
    seen: list[int] = []
    called = threading.Event()

    def on_commit() -> None:
        with engine.connect() as conn:  # another connection: what it sees is committed
            seen.append(conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one())
        called.set()

    ledger.begin(ledger.prepare([deposit(offset) for offset in range(3)]), on_commit=on_commit)
    assert called.wait(30)
    assert seen == [1 + 3]  # the event the log opens with, and the three deposits
    assert ledger.committing  # finish() not called yet
    assert ledger.finish() is not None

    called.clear()
    ledger.begin(ledger.prepare([deposit(12)]), on_commit=on_commit)  # POISON: fails at COMMIT
    with pytest.raises(sa.exc.DBAPIError, match="injected commit failure"):
        ledger.finish()
    assert not called.is_set()
    assert seen == [1 + 3]
