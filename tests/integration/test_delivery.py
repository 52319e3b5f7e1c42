"""Output delivery at least once for real, against the real broker and PostgreSQL: an outbox row
is marked published only once the broker acknowledged it, so a broker killed while decisions are
pending and restarted on the same port loses none of them; a rejected input of a megabyte does not
stop the relay; ``audit verify`` reports decisions that were never published."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clearing.audit.published import OUTBOX_UNPUBLISHED_BEHIND_LOG_S_MAX, outbox_finding
from clearing.domain import events as ev
from clearing.embedded import launch_broker, pid_alive, stop_broker
from clearing.engine import outputs
from clearing.engine.outbox import OutboxRelay
from consumers.kafka_input import ensure_topics
from tests.integration.conftest import (
    InProcessLedger,
    Produced,
    count,
    offsets_reached,
    produce,
    stored_offsets,
)

pytestmark = pytest.mark.integration

WAIT_S = 120.0  # every wait below polls a condition, at most this long
COLLECT_PASS_S = 10.0  # one pass of the collector over its topics, at most
SHORT_DELIVERY_TIMEOUT_MS = 3_000  # the relay's delivery timeout here: an outage is noticed quickly


def _t(second: int) -> str:
    return f"2026-11-23T12:{second // 60:02d}:{second % 60:02d}.000Z"


def _transfer(kind: str, transfer_id: str, account: str, amount: str, second: int) -> tuple[str, str, dict[str, Any]]:
    return (
        "transfers",
        account,
        {"type": kind, "transfer_id": transfer_id, "account_id": account, "asset": "USDT", "amount": amount,
         "occurred_at": _t(second)},
    )


def _wait(condition: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)  # a poll interval, not a synchronisation: the condition decides


class TopicCollector(threading.Thread):
    """A test consumer that runs across broker restarts: pass after pass, a fresh consumer reads
    its topics from the beginning to their current ends and keeps every value it has not seen (by
    topic, partition, offset and value: a restarted embedded broker starts its offsets afresh).
    While the broker is down a pass fails and the next one tries again."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(name="test-collector", daemon=True)
        self.bootstrap = bootstrap
        self.topics = topics
        self.seen: set[tuple[str, int, int, bytes]] = set()
        self.values: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.passes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._pass()
                self.passes += 1
            except Exception:  # the broker is down or restarting: try again
                pass
            self.stop.wait(0.2)

    def _pass(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=2_000,
            request_timeout_ms=5_000,
        )
        try:
            tps = [
                TopicPartition(topic, partition)
                for topic in self.topics
                for partition in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not tps:
                return
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            deadline = time.monotonic() + COLLECT_PASS_S
            while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for record in records:
                        identity = (tp.topic, tp.partition, record.offset, record.value)
                        with self.lock:
                            if identity not in self.seen:
                                self.seen.add(identity)
                                self.values.append(json.loads(record.value))
        finally:
            consumer.close()

    def ids(self, field: str) -> set[str]:
        with self.lock:
            return {value[field] for value in self.values if field in value}


def _db_now(engine: sa.Engine) -> datetime:
    with engine.connect() as conn:
        now: datetime = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        return now


def _ingest_without_publishing(running: InProcessLedger, produced: Produced) -> None:
    deadline = time.monotonic() + WAIT_S
    while not offsets_reached(stored_offsets(running.engine), produced.ends):
        if time.monotonic() > deadline:
            raise AssertionError("the ledger did not ingest what was produced")
        records = running.source.poll(100, 5_000)
        if records:
            running.ledger.process(records)


def _withdrawal_decisions(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {
            row[0]
            for row in conn.execute(
                sa.text("SELECT payload->>'transfer_id' FROM events WHERE type = ANY(:types)"),
                {"types": [ev.WITHDRAWAL_APPROVED, ev.WITHDRAWAL_REJECTED]},
            )
        }


def test_every_decision_reaches_its_topic_across_a_broker_killed_and_restarted_on_the_same_port(
    database_url: str, topic_prefix: str, owner_engine: sa.Engine, tmp_path: Path
) -> None:
    broker_dir = tmp_path / "broker"
    broker = launch_broker(broker_dir)
    collector = TopicCollector(broker.bootstrap, [topic_prefix + outputs.WITHDRAWALS])
    running: InProcessLedger | None = None
    relay: OutboxRelay | None = None
    try:
        running = InProcessLedger(database_url, broker.bootstrap, topic_prefix)
        collector.start()
        accounts = [f"A{i}" for i in range(40)]
        # Before: deposits and a first withdrawal each, decided and published while the broker runs.
        before = [_transfer("deposit", f"D-{a}", a, "1000", 1) for a in accounts]
        before += [_transfer("withdrawal", f"W1-{a}", a, "100", 2) for a in accounts]
        running.run_until(produce(broker.bootstrap, topic_prefix, before).ends)
        assert count(owner_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
        first = {f"W1-{a}" for a in accounts}
        _wait(lambda: first <= collector.ids("transfer_id"), "the first decisions on the topic")

        # Pending: a second withdrawal each (half of them too large), decided, not yet published.
        after = [_transfer("withdrawal", f"W2-{a}", a, "500" if i % 2 else "5000", 3) for i, a in enumerate(accounts)]
        _ingest_without_publishing(running, produce(broker.bootstrap, topic_prefix, after))
        pending = count(owner_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert pending == len(accounts)

        # The broker dies with them pending; the relay, connected before, sends them into the
        # outage (its first round: every send expires unacknowledged), then tries again and again.
        relay = OutboxRelay(
            running.engine, broker.bootstrap, delivery_timeout_ms=SHORT_DELIVERY_TIMEOUT_MS, connect_timeout_ms=2_000
        )
        assert relay.producer.partitions_for(topic_prefix + outputs.WITHDRAWALS)  # metadata in hand
        os.kill(broker.pid, signal.SIGKILL)
        _wait(lambda: not pid_alive(broker.pid), "the broker's exit")
        killed_at = _db_now(owner_engine)
        relay.start()
        _wait(lambda: relay is not None and relay.failures >= 2, "two failed rounds of the relay")
        assert relay.sent >= pending  # the first round sent every pending row into the outage
        assert count(owner_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == pending
        assert relay.published == 0

        # Back on the same port (empty: the embedded broker keeps topics in memory only).
        restart_at = _db_now(owner_engine)
        restarted = launch_broker(broker_dir, port=broker.port)
        assert restarted.port == broker.port
        _wait(
            lambda: count(owner_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0,
            "every pending row published after the restart",
        )
        decided = _withdrawal_decisions(owner_engine)
        assert decided == first | {f"W2-{a}" for a in accounts}
        _wait(lambda: decided <= collector.ids("transfer_id"), "every decision of the log on its topic")
        marked_while_down = count(
            owner_engine,
            "SELECT count(*) FROM outbox WHERE published_at >= :down AND published_at <= :up",
            down=killed_at,
            up=restart_at,
        )
        assert marked_while_down == 0
        assert relay.published == pending
        # Sent into the outage by the first round, then at most a probe per failed round, then once.
        assert relay.sent <= pending + relay.failures + pending
    finally:
        collector.stop.set()
        if relay is not None:
            relay.stop(drain=False)
        if running is not None:
            running.close()
        stop_broker(broker_dir)
        collector.join(timeout=COLLECT_PASS_S + 5)


def _produce_large(broker: str, prefix: str, messages: list[tuple[str, str, bytes]]) -> Produced:
    ensure_topics(broker, prefix)
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", max_request_size=4 * 1024 * 1024)
    try:
        futures = [producer.send(prefix + kind, key=key.encode(), value=value) for kind, key, value in messages]
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        producer.close()
    return Produced([(m.topic, m.partition, m.offset) for m in metadata])


def _read_raw(broker: str, topic: str, until: Any) -> list[tuple[bytes | None, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + 30
        while not until(records) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records += [(record.key, record.value) for record in batch]
        return records
    finally:
        consumer.close()


def test_a_one_megabyte_rejected_value_goes_out_shortened_and_the_relay_goes_on(
    in_process_ledger: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    big = b'{"type": "deposit", "padding": "' + b"y" * 1_000_000 + b'"}'
    messages = [
        ("transfers", "A1", json.dumps(_transfer("deposit", "D-1", "A1", "1000", 1)[2]).encode()),
        ("transfers", "A1", big),
        ("transfers", "A1", json.dumps(_transfer("withdrawal", "W-1", "A1", "100", 2)[2]).encode()),
    ]
    produced = _produce_large(broker, topic_prefix, messages)
    relay = in_process_ledger.relay
    assert relay.producer.config["max_request_size"] == outputs.PRODUCER_REQUEST_BYTES_MAX
    in_process_ledger.run_until(produced.ends)  # publish_pending raises if the relay is stuck

    assert count(owner_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    with owner_engine.connect() as conn:
        (stored_raw,) = conn.execute(sa.text("SELECT raw FROM dead_letters")).one()
    assert bytes(stored_raw) == big  # the table keeps all of it

    letters = _read_raw(broker, topic_prefix + outputs.DLQ, lambda records: len(records) >= 1)
    withdrawals = _read_raw(broker, topic_prefix + outputs.WITHDRAWALS, lambda records: len(records) >= 1)
    assert len(letters) == 1 and len(withdrawals) == 1
    for key, value in letters + withdrawals:
        assert len(value) + len(key or b"") <= outputs.OUTPUT_MESSAGE_BYTES_MAX
    letter = json.loads(letters[0][1])
    assert letter["raw_truncated"] is True
    assert letter["raw_bytes"] == len(big)
    assert letter["raw_sha256"] == hashlib.sha256(big).hexdigest()
    assert base64.b64decode(letter["raw"]) == big[: outputs.DEAD_LETTER_RAW_PREFIX_BYTES]
    assert json.loads(withdrawals[0][1])["transfer_id"] == "W-1"
    # Nothing went out more than once: every send was acknowledged the first time.
    assert relay.sent == relay.published == count(owner_engine, "SELECT count(*) FROM outbox")
    identities = Counter((value["topic"], value["offset"]) for value in map(json.loads, (v for _, v in letters)))
    assert max(identities.values()) == 1


def test_verify_reports_a_backlog_and_fails_on_decisions_left_unpublished_while_the_ledger_went_on(
    in_process_ledger: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    accounts = [f"A{i}" for i in range(3)]
    messages = [_transfer("deposit", f"D-{a}", a, "1000", 1) for a in accounts]
    messages += [_transfer("withdrawal", f"W-{a}", a, "100", 2) for a in accounts]
    _ingest_without_publishing(in_process_ledger, produce(broker, topic_prefix, messages))

    # A backlog under a running ledger: reported, not a failure.
    with owner_engine.connect() as conn:
        finding = outbox_finding(conn)
    assert finding.ok, finding
    assert finding.details["outbox_unpublished"] == 3
    assert finding.details["unpublished_by_topic"] == {topic_prefix + outputs.WITHDRAWALS: 3}
    assert finding.details["outbox_oldest_unpublished_at"] is not None
    assert finding.details["oldest_unpublished_behind_last_batch_s"] <= OUTBOX_UNPUBLISHED_BEHIND_LOG_S_MAX

    # The same rows, written long before the log's last batch: the ledger went on without them.
    with owner_engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE outbox SET created_at = created_at - make_interval(secs => :s) "
                "WHERE id = (SELECT min(id) FROM outbox)"
            ),
            {"s": OUTBOX_UNPUBLISHED_BEHIND_LOG_S_MAX + 60},
        )
    with owner_engine.connect() as conn:
        finding = outbox_finding(conn)
        first_position = conn.execute(sa.text("SELECT position FROM outbox ORDER BY id LIMIT 1")).scalar_one()
    assert not finding.ok
    assert finding.first_bad_position == first_position
    assert "older than the log's last batch" in (finding.problem or "")

    # A decision with no outbox row at all was never queued: a failure naming its position.
    with owner_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outbox WHERE id = (SELECT max(id) FROM outbox) RETURNING position"))
        missing = conn.execute(
            sa.text(
                "SELECT min(position) FROM events e WHERE type = ANY(:types) "
                "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.position = e.position)"
            ),
            {"types": [ev.WITHDRAWAL_APPROVED, ev.WITHDRAWAL_REJECTED]},
        ).scalar_one()
    with owner_engine.connect() as conn:
        finding = outbox_finding(conn)
    assert not finding.ok and finding.first_bad_position == missing
    assert "never queued for publication" in (finding.problem or "")
