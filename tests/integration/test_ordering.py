"""Insert order equals commit order: several shards' writers append batches to one PostgreSQL log
at the same time while a reader tails it by position. The reader, which only ever asks for
``position > last seen``, must see every event exactly once, positions must be gap-free, and every
shard's hash chain must verify. (Were a later position committed before an earlier one, the
tailing reader would move past the earlier one and never see it.)"""

from __future__ import annotations

import json
import threading
import time

import pytest
import sqlalchemy as sa

from clearing.audit.chain import verify_chain
from clearing.engine.ledger import Ledger, RawRecord
from clearing.store.db import make_engine
from tests.integration.conftest import APP_ROLE

pytestmark = pytest.mark.integration

SHARDS = 4
BATCHES = 40
RECORDS_PER_BATCH = 25  # deposits, plus one mark per batch
TIMEOUT_S = 90.0


def _batch(shard: int, batch: int) -> list[RawRecord]:
    records = []
    for i in range(RECORDS_PER_BATCH):
        account = f"S{shard}-A{i % 7}"
        value = {
            "type": "deposit",
            "transfer_id": f"D-{shard}-{batch}-{i}",
            "account_id": account,
            "asset": "USDT",
            "amount": str(100 + i),
            "occurred_at": f"2026-11-23T12:{batch:02d}:{i:02d}.000Z",
        }
        offset = batch * RECORDS_PER_BATCH + i
        records.append(
            RawRecord("transfers", "ord.transfers", shard, offset, account.encode(), json.dumps(value).encode())
        )
    mark = {
        "type": "mark",
        "symbol": "BTCUSDT",
        "price": str(65000 + batch),
        "occurred_at": f"2026-11-23T12:{batch:02d}:59.000Z",
    }
    records.append(RawRecord("marks", "ord.marks", 0, batch, b"BTCUSDT", json.dumps(mark).encode()))
    return records


def test_concurrent_shard_writers_commit_in_position_order(database_url: str) -> None:
    engines = [make_engine(database_url, role=APP_ROLE) for _ in range(SHARDS)]
    reader_engine = make_engine(database_url, role="clearing_reader", isolation_level="AUTOCOMMIT")
    start = threading.Barrier(SHARDS + 1)
    writers_done = threading.Event()
    errors: list[BaseException] = []
    appended = [0] * SHARDS
    seen: list[int] = []
    skips: list[tuple[int, int]] = []  # (expected next position, position the reader got instead)

    def write(shard: int) -> None:
        try:
            ledger = Ledger(engines[shard], shard=shard, topic_prefix="ord.")
            ledger.load()
            start.wait()
            for batch in range(BATCHES):
                result = ledger.process(_batch(shard, batch))
                assert result.dead_letters == 0 and result.duplicates == 0
                appended[shard] += result.appended + result.decisions
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    def read() -> None:
        try:
            last = 0
            start.wait()
            deadline = time.monotonic() + TIMEOUT_S
            with reader_engine.connect() as conn:
                while time.monotonic() < deadline:
                    finished = writers_done.is_set()  # read before the query: a last pass follows
                    rows = conn.execute(
                        sa.text("SELECT position FROM events WHERE position > :last ORDER BY position"),
                        {"last": last},
                    ).all()
                    for (position,) in rows:
                        if position != last + 1:
                            skips.append((last + 1, position))
                        seen.append(position)
                        last = position
                    if finished and not rows:
                        return
            errors.append(AssertionError(f"the reader did not finish in {TIMEOUT_S} s"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(shard,)) for shard in range(SHARDS)]
    reader = threading.Thread(target=read)
    try:
        for thread in [*threads, reader]:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT_S)
        writers_done.set()
        reader.join(TIMEOUT_S)
        assert not errors, errors
        assert not any(thread.is_alive() for thread in [*threads, reader])

        # And each shard's log opens with the bundled parameters (one event a shard).
        expected = SHARDS * (BATCHES * (RECORDS_PER_BATCH + 1) + 1)
        assert sum(appended) == expected
        # The tailing reader saw every event exactly once, in position order, never skipping one.
        assert skips == []
        assert seen == list(range(1, expected + 1))
        with reader_engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*), max(position) FROM events")).one() == (expected, expected)
            per_shard = dict(conn.execute(sa.text("SELECT shard, count(*) FROM events GROUP BY shard")).all())
            # The writers really did interleave: some shard's events are not one contiguous run.
            runs = conn.execute(
                sa.text(
                    "SELECT count(*) FROM (SELECT shard, lag(shard) OVER (ORDER BY position) AS prev "
                    "FROM events) changes WHERE prev IS DISTINCT FROM shard"
                )
            ).scalar_one()
        with engines[0].connect() as conn:
            report = verify_chain(conn)
        assert per_shard == {shard: 1 + BATCHES * (RECORDS_PER_BATCH + 1) for shard in range(SHARDS)}
        assert runs > SHARDS, "the shards' batches did not interleave; the test proved nothing"
        # Per-shard hash chains (and gap-free positions across shards) verify.
        assert report.ok, report
        assert report.events == expected
    finally:
        for engine in [*engines, reader_engine]:
            engine.dispose()
