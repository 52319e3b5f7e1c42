"""Crash safety of ``clearing run``: SIGKILL the ledger process several times while it ingests a
simulated market, restart it each time, and prove that the log holds every produced message
exactly once, the hash chain verifies, positions are gap-free, the projection tables equal a fresh
fold of the log row for row, and the books balance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from kafka import KafkaProducer

from clearing.audit.chain import verify_chain
from clearing.domain.fold import conservation
from clearing.domain.state import FUNDING_POOL_ACCOUNT
from clearing.engine.ledger import Ledger, RawRecord
from clearing.simulate import Scenario, generate
from clearing.store.db import make_engine
from consumers.kafka_input import ensure_topics
from tests.integration.conftest import (
    Produced,
    balances_table,
    count,
    offsets_reached,
    positions_table,
    state_balances,
    state_positions,
    stored_offsets,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# With funding every 20 steps: the two fills of a trade arrive on different partitions, so funding
# is folded between them at times (test_funding_between_the_fills_of_a_trade pins that case).
SCENARIO = Scenario(seed=11, accounts=40, trades=2_000, steps=100, funding_every_steps=20)
IN_COMMIT = -1.0
# When the kills land: once these fractions of the produced messages are in the log, or
# (IN_COMMIT) while a batch is committing on the ledger's commit thread.
KILL_AT = (0.10, IN_COMMIT, 0.40, 0.70)
CHUNK = 40  # messages the producer sends at a time, so the ledger ingests in many small batches
CHUNK_PAUSE_S = 0.1  # pacing of the producer (an input rate over ~12 s, longer than a restart)
WAIT_S = 90.0
POLL_S = 0.01
INPUT_EVENTS = "SELECT count(*) FROM events WHERE source_topic IS NOT NULL"
# A session of the ledger blocked in the projection statements its commit thread runs with the
# commit (a batch folded and written, its next one being read meanwhile).
COMMITTING = (
    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock' "
    "AND query LIKE '%INSERT INTO balances%staging_balances%'"
)
CLEARING = Path(sys.executable).with_name("clearing")


def _start(env: dict[str, str], home: Path, run: int) -> subprocess.Popen[bytes]:
    with (home / f"run-{run}.out").open("wb") as out, (home / f"run-{run}.err").open("wb") as err:
        return subprocess.Popen([str(CLEARING), "run"], env=env, stdout=out, stderr=err)


def _wait(
    predicate: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None, home: Path, run: int
) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if process is not None and process.poll() is not None:
            log = (home / f"run-{run}.err").read_text(errors="replace")[-3000:]
            raise AssertionError(f"clearing run exited with {process.returncode} before {what}:\n{log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(POLL_S)


def test_sigkill_while_ingesting_loses_and_duplicates_nothing(
    database_url: str, broker: str, topic_prefix: str, tmp_path: Path, owner_engine: sa.Engine
) -> None:
    messages = list(generate(SCENARIO))
    total = len(messages)
    assert 3_000 <= total <= 6_000
    ensure_topics(broker, topic_prefix)
    env = {
        **os.environ,
        "CLEARING_DATABASE_URL": database_url,
        "CLEARING_KAFKA_BOOTSTRAP": broker,
        "CLEARING_TOPIC_PREFIX": topic_prefix,
        "CLEARING_HOME": str(tmp_path / "home"),
    }

    # The market is produced in paced chunks while the ledger runs, so the kills land in the
    # middle of ingestion rather than after one big batch.
    coordinates: list[tuple[str, int, int]] = []
    produce_errors: list[BaseException] = []

    def produce() -> None:
        producer = KafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5)
        try:
            for start in range(0, total, CHUNK):
                futures = [
                    producer.send(topic_prefix + m.kind, key=m.key.encode(), value=m.encode())
                    for m in messages[start : start + CHUNK]
                ]
                producer.flush()
                coordinates.extend((f.get().topic, f.get().partition, f.get().offset) for f in futures)
                time.sleep(CHUNK_PAUSE_S)
        except BaseException as error:
            produce_errors.append(error)
        finally:
            producer.close()

    producer_thread = threading.Thread(target=produce)
    kills: list[int] = []
    process = _start(env, tmp_path, 0)
    try:
        producer_thread.start()
        for run, when in enumerate(KILL_AT):
            if when == IN_COMMIT:
                # The batch's deferred projection statements, run by the ledger's commit thread
                # with the commit, wait for a lock the test holds (the next batch being read and
                # decoded meanwhile): the kill lands with a batch written and not committed.
                with owner_engine.connect() as blocker:
                    blocking = blocker.begin()
                    blocker.execute(sa.text("LOCK TABLE balances IN SHARE ROW EXCLUSIVE MODE"))
                    _wait(lambda: count(owner_engine, COMMITTING) > 0, "a batch committing", process, tmp_path, run)
                    process.send_signal(signal.SIGKILL)
                    process.wait(30)
                    blocking.rollback()
            else:
                threshold = int(total * when)
                _wait(
                    lambda t=threshold: count(owner_engine, INPUT_EVENTS) >= t,
                    f"{threshold} events",
                    process,
                    tmp_path,
                    run,
                )
                process.send_signal(signal.SIGKILL)
                process.wait(30)
            kills.append(count(owner_engine, INPUT_EVENTS))
            process = _start(env, tmp_path, run + 1)
        producer_thread.join(WAIT_S)
        assert not producer_thread.is_alive() and not produce_errors, produce_errors
        produced = Produced(coordinates)
        assert len(produced.coordinates) == total
        _wait(
            lambda: offsets_reached(stored_offsets(owner_engine), produced.ends),
            "the produced offsets",
            process,
            tmp_path,
            len(KILL_AT),
        )
        # The last kill may land after the last batch committed: the offsets are reached before the
        # process started. A SIGTERM before Python has installed its handler would kill it (-15).
        last_log = tmp_path / f"run-{len(KILL_AT)}.err"
        started = lambda: b"event=consuming" in last_log.read_bytes()  # noqa: E731
        _wait(started, "the last run to start", process, tmp_path, len(KILL_AT))
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, last_log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        producer_thread.join(WAIT_S)

    # Every kill landed while the ledger was still ingesting.
    assert len(kills) == len(KILL_AT)
    assert all(killed < total for killed in kills), kills
    assert kills == sorted(kills)

    with owner_engine.connect() as conn:
        # Every produced message is in the log exactly once.
        sources = conn.execute(
            sa.text("SELECT source_topic, source_partition, source_offset FROM events WHERE source_topic IS NOT NULL")
        ).all()
        keys = conn.execute(sa.text("SELECT count(*), count(DISTINCT idempotency_key) FROM events")).one()
        dead = conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one()
        report = verify_chain(conn)
        last_position = conn.execute(sa.text("SELECT coalesce(max(position), 0) FROM events")).scalar_one()
    assert len(sources) == total
    assert {(t, int(p), int(o)) for t, p, o in sources} == set(produced.coordinates)
    assert keys[0] == keys[1]
    assert dead == 0
    # The hash chain verifies and positions are gap-free from 1.
    assert report.ok, report
    assert report.events == keys[0] == last_position

    # The projections equal a fresh fold of the log, row for row; the books balance.
    engine = owner_engine
    fresh = Ledger(engine, topic_prefix=topic_prefix)
    assert fresh.load() == keys[0]
    assert balances_table(engine) == state_balances(fresh.state)
    assert positions_table(engine) == state_positions(fresh.state)
    assert len(state_positions(fresh.state)) > 0
    assert conservation(fresh.state) == {}


def _record(kind: str, partition: int, offset: int, value: dict[str, str]) -> RawRecord:
    return RawRecord(kind, "x." + kind, partition, offset, None, json.dumps(value).encode())


def test_funding_between_the_fills_of_a_trade_keeps_the_books_balanced(database_url: str) -> None:
    """The interleaving the crash test avoids, pinned down: A1's buy is in the log, A2's sell (on
    another partition) is not yet, and a funding message arrives in between."""
    at = "2026-11-23T12:00:0{}.000Z"
    fill = {"type": "fill", "trade_id": "T-1", "instrument": "BTCUSDT", "quantity": "1", "price": "65000"}
    engine = make_engine(database_url, role="clearing_app")
    try:
        ledger = Ledger(engine, topic_prefix="x.")
        ledger.load()
        ledger.process(
            [
                _record(
                    "transfers",
                    0,
                    0,
                    {
                        "type": "deposit",
                        "transfer_id": "D-1",
                        "account_id": "A1",
                        "asset": "USDT",
                        "amount": "100000",
                        "occurred_at": at.format(0),
                    },
                ),
                _record(
                    "transfers",
                    1,
                    0,
                    {
                        "type": "deposit",
                        "transfer_id": "D-2",
                        "account_id": "A2",
                        "asset": "USDT",
                        "amount": "100000",
                        "occurred_at": at.format(0),
                    },
                ),
                _record(
                    "marks", 0, 0, {"type": "mark", "symbol": "BTCUSDT", "price": "65000", "occurred_at": at.format(1)}
                ),
                _record(
                    "fills",
                    0,
                    0,
                    {**fill, "fill_id": "F-1b", "account_id": "A1", "side": "buy", "occurred_at": at.format(2)},
                ),
                _record(
                    "marks",
                    0,
                    1,
                    {"type": "funding", "symbol": "BTCUSDT", "rate": "0.0001", "occurred_at": at.format(3)},
                ),
                _record(
                    "fills",
                    1,
                    0,
                    # Later in event time than the funding: the ledger books inputs in event-time
                    # order, so at 12:00:02 both fills would precede it and nothing interleaves.
                    {**fill, "fill_id": "F-1s", "account_id": "A2", "side": "sell", "occurred_at": at.format(4)},
                ),
            ]
        )
        # Only A1 held the position when funding ran: it paid 1 x 65,000 x 0.0001 into the pool.
        assert ledger.state.accounts[FUNDING_POOL_ACCOUNT].balance("USDT") == Decimal("6.5")
        assert conservation(ledger.state) == {}
    finally:
        engine.dispose()
