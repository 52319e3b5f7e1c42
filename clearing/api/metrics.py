"""Prometheus metrics read from the database at scrape time.

The counters are derived from what the log and the tables hold (events by type, decisions by
type, dead letters), so every API replica exports the same numbers and a restart loses nothing;
Prometheus' ``rate()`` over them gives the ingest rate. One collector per app, registered in the
app's own registry (never the process-global one), so several apps can live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from clearing.domain.events import DECISION_TYPES
from clearing.store import queries


class LedgerCollector(Collector):
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            snapshot = queries.metrics_snapshot(conn)

        events = CounterMetricFamily("clearing_events", "Events in the log by type", labels=["type"])
        decisions = CounterMetricFamily(
            "clearing_decisions", "Decision events in the log by type", labels=["type"]
        )
        for event_type, count in snapshot["events_by_type"].items():
            events.add_metric([event_type], count)
            if event_type in DECISION_TYPES:
                decisions.add_metric([event_type], count)
        yield events
        yield decisions

        yield CounterMetricFamily(
            "clearing_dead_letters", "Input records stored as dead letters", value=snapshot["dead_letters_total"]
        )
        offsets = GaugeMetricFamily(
            "clearing_consumer_next_offset",
            "Next offset the ledger will read, per shard, topic and partition (stored with the events)",
            labels=["shard", "topic", "partition"],
        )
        for row in snapshot["consumer_offsets"]:
            offsets.add_metric([str(row["shard"]), row["topic"], str(row["partition"])], row["next_offset"])
        yield offsets
        yield GaugeMetricFamily(
            "clearing_outbox_backlog", "Outbox rows not yet published", value=snapshot["outbox_unpublished"]
        )
        yield GaugeMetricFamily(
            "clearing_log_head_position", "Highest position in the event log", value=snapshot["log_position"]
        )
        last = snapshot["last_recorded_timestamp"]
        yield GaugeMetricFamily(
            "clearing_last_batch_recorded_timestamp_seconds",
            "Ledger time (recorded_at) of the newest event, seconds since the epoch; 0 for an empty log",
            value=0.0 if last is None else last,
        )


def make_registry(engine: sa.Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(engine))
    return registry
