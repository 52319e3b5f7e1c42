"""Prometheus metrics of the ledger process (``clearing run --metrics-port P``): what only the
running process knows — batch latency, ingest counts as they happen, consumer lag — beside the
database-derived metrics the back-office API exports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from clearing.engine.ledger import BatchResult
from clearing.engine.outbox import OutboxBacklog

BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LedgerMetrics:
    def __init__(self, shard: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"shard": str(shard)}
        self._records = Counter(
            "clearing_ledger_records", "Kafka records consumed", ["shard"], registry=self.registry
        ).labels(**labels)
        self._appended = Counter(
            "clearing_ledger_events_appended", "input events appended to the log", ["shard"], registry=self.registry
        ).labels(**labels)
        self._duplicates = Counter(
            "clearing_ledger_duplicates",
            "redelivered messages found in the log (no-ops)",
            ["shard"],
            registry=self.registry,
        ).labels(**labels)
        self._dead_letters = Counter(
            "clearing_ledger_dead_letters", "messages dead-lettered", ["shard"], registry=self.registry
        ).labels(**labels)
        self._decisions = Counter(
            "clearing_ledger_decisions",
            "decision events appended, by type",
            ["shard", "type"],
            registry=self.registry,
        )
        self._batch_seconds = Histogram(
            "clearing_ledger_batch_seconds",
            "time from a batch's first record to its commit",
            ["shard"],
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self._position = Gauge(
            "clearing_ledger_log_position",
            "last log position this writer committed",
            ["shard"],
            registry=self.registry,
        ).labels(**labels)
        self.lag = Gauge(
            "clearing_ledger_consumer_lag",
            "records behind the partition's high watermark",
            ["shard", "topic", "partition"],
            registry=self.registry,
        )
        self.shard = str(shard)

    def observe(self, result: BatchResult) -> None:
        self._records.inc(result.records)
        self._appended.inc(result.appended)
        self._duplicates.inc(result.duplicates)
        self._dead_letters.inc(result.dead_letters)
        for event_type, count in result.decision_types.items():
            self._decisions.labels(shard=self.shard, type=event_type).inc(count)
        self._batch_seconds.observe(result.seconds)
        self._position.set(result.last_position)

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        for (topic, partition), lag in lags.items():
            self.lag.labels(shard=self.shard, topic=topic, partition=str(partition)).set(lag)

    def watch_outbox(self, backlog: Callable[[], OutboxBacklog]) -> None:
        """Export the outbox backlog that ``backlog`` returns (the relay's last reading: the relay
        reads it after every round, at most once a second): rows the broker has not acknowledged
        yet, and the age of the oldest, which keeps growing while the broker is away."""
        unpublished = Gauge(
            "clearing_ledger_outbox_unpublished",
            "outbox rows (decisions, dead letters, checkpoints) the broker has not acknowledged yet",
            ["shard"],
            registry=self.registry,
        ).labels(shard=self.shard)
        unpublished.set_function(lambda: float(backlog().unpublished))
        oldest = Gauge(
            "clearing_ledger_outbox_oldest_unpublished_age_seconds",
            "age now of the oldest outbox row the broker had not acknowledged at the relay's last reading (0: none)",
            ["shard"],
            registry=self.registry,
        ).labels(shard=self.shard)
        oldest.set_function(lambda: backlog().age_s_at(datetime.now(UTC)))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
