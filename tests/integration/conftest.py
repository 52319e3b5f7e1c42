"""Helpers shared by the integration tests of ingestion: produce with a plain Kafka producer, run a
ledger in-process until the offsets it stored in PostgreSQL reach what was produced, read an output
topic back, and read the projection tables.

Every wait is bounded and polls a condition (stored offsets, a row count): nothing sleeps to
synchronise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clearing.engine.ledger import Ledger
from clearing.engine.outbox import OutboxRelay
from clearing.engine.runner import RunStats
from clearing.store.db import make_engine
from consumers.kafka_input import InputConsumer, ensure_topics

APP_ROLE = "clearing_app"
INGEST_TIMEOUT_S = 60.0
CONSUME_TIMEOUT_S = 20.0

Ends = dict[tuple[str, int], int]


def encode(value: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Produced:
    """Where each produced message landed, in the order it was sent."""

    coordinates: list[tuple[str, int, int]]  # (topic, partition, offset)

    @property
    def ends(self) -> Ends:
        ends: Ends = {}
        for topic, partition, offset in self.coordinates:
            ends[(topic, partition)] = max(ends.get((topic, partition), 0), offset + 1)
        return ends


def produce(
    broker: str, prefix: str, messages: Iterable[tuple[str, str | None, dict[str, Any] | bytes | str]]
) -> Produced:
    """Send ``(topic kind, key, value)`` messages with a plain KafkaProducer (acks=all) to
    ``prefix + kind``, creating the ledger's topics first. Returns where each one landed."""
    ensure_topics(broker, prefix)
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5)
    try:
        futures = [
            producer.send(prefix + kind, key=key.encode("utf-8") if key is not None else None, value=encode(value))
            for kind, key, value in messages
        ]
        producer.flush()
        metadata = [future.get(timeout=30) for future in futures]
    finally:
        producer.close()
    return Produced([(m.topic, m.partition, m.offset) for m in metadata])


def merge_ends(*all_ends: Ends) -> Ends:
    merged: Ends = {}
    for ends in all_ends:
        for key, value in ends.items():
            merged[key] = max(merged.get(key, 0), value)
    return merged


def stored_offsets(engine: sa.Engine, shard: int = 0) -> Ends:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT topic, partition, next_offset FROM consumer_offsets WHERE shard = :shard"), {"shard": shard}
        )
        return {(topic, int(partition)): int(offset) for topic, partition, offset in rows}


def offsets_reached(stored: Ends, ends: Ends) -> bool:
    return all(stored.get(key, 0) >= end for key, end in ends.items())


@dataclass
class InProcessLedger:
    """A shard-0 ledger with the Kafka input adapter and the outbox relay, driven by the test's
    own bounded loop (no thread): ``run_until(ends)`` polls and processes batches, publishing the
    outbox after each, until the offsets stored in PostgreSQL reach ``ends``. A batch that raises
    fails the test: the ledger must never crash on input."""

    database_url: str
    broker: str
    prefix: str
    engine: sa.Engine = field(init=False)
    ledger: Ledger = field(init=False)
    source: InputConsumer = field(init=False)
    relay: OutboxRelay = field(init=False)
    stats: RunStats = field(default_factory=RunStats)

    def __post_init__(self) -> None:
        ensure_topics(self.broker, self.prefix)
        self.engine = make_engine(self.database_url, role=APP_ROLE)
        self.ledger = Ledger(self.engine, topic_prefix=self.prefix)
        self.ledger.load()
        self.source = InputConsumer(self.broker, self.prefix)
        self.source.assign(self.ledger.stored_offsets(), None)
        self.relay = OutboxRelay(self.engine, self.broker)

    def run_until(self, ends: Ends, timeout_s: float = INGEST_TIMEOUT_S) -> RunStats:
        deadline = time.monotonic() + timeout_s
        while not offsets_reached(stored_offsets(self.engine), ends):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the ledger did not reach the produced offsets in {timeout_s} s: "
                    f"stored {stored_offsets(self.engine)}, produced {ends}"
                )
            records = self.source.poll(100, 5_000)
            if records:
                self.stats.add(self.ledger.process(records))
                while self.relay.publish_pending():
                    pass
        while self.relay.publish_pending():
            pass
        return self.stats

    def close(self) -> None:
        try:
            self.relay.stop(drain=True)
        finally:
            self.source.close()
            self.engine.dispose()


@pytest.fixture
def owner_engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine logged in as the schema owner, for the test's own reads."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def in_process_ledger(database_url: str, broker: str, topic_prefix: str) -> Iterator[InProcessLedger]:
    running = InProcessLedger(database_url, broker, topic_prefix)
    try:
        yield running
    finally:
        running.close()


def consume_topic(
    broker: str,
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = CONSUME_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Read ``topic`` from the beginning of every partition until ``until(messages)`` holds or the
    bound passes; returns the JSON values read, each with its partition and offset under ``_at``."""
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, consumer_timeout_ms=200)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        values: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while not until(values) and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    value = json.loads(record.value)
                    value["_at"] = (tp.partition, record.offset)
                    values.append(value)
        return values
    finally:
        consumer.close()


def count(engine: sa.Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def balances_table(engine: sa.Engine) -> dict[tuple[str, str], Decimal]:
    with engine.connect() as conn:
        return {
            (account, asset): Decimal(amount)
            for account, asset, amount in conn.execute(sa.text("SELECT account_id, asset, amount FROM balances"))
        }


POSITION_FIELDS = ("quantity", "cost", "realised_pnl", "isolated_margin", "funding_paid")


def positions_table(engine: sa.Engine) -> dict[tuple[str, str, str], tuple[Decimal, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT account_id, instrument, margin_mode, {', '.join(POSITION_FIELDS)} FROM positions")
        )
        return {(row[0], row[1], row[2]): tuple(Decimal(v) for v in row[3:]) for row in rows}


def state_balances(state: Any) -> dict[tuple[str, str], Decimal]:
    return {
        (account_id, asset): amount
        for account_id, account in state.accounts.items()
        for asset, amount in account.balances.items()
    }


def state_positions(state: Any) -> dict[tuple[str, str, str], tuple[Decimal, ...]]:
    return {
        (account_id, instrument, mode): tuple(getattr(position, name) for name in POSITION_FIELDS)
        for account_id, account in state.accounts.items()
        for (instrument, mode), position in account.positions.items()
    }
