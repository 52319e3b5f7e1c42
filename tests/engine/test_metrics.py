from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest

from clearing.engine.ledger import BatchResult
from clearing.engine.metrics import LedgerMetrics
from clearing.engine.outbox import EMPTY_BACKLOG, OutboxBacklog


def test_a_batch_shows_up_in_the_ledger_metrics() -> None:
    metrics = LedgerMetrics(shard=3)
    metrics.observe(
        BatchResult(
            records=10,
            appended=7,
            decisions=2,
            duplicates=1,
            dead_letters=2,
            last_position=99,
            seconds=0.02,
            decision_types={"MarginCallIssued": 2},
        )
    )
    metrics.set_lag({("clearing.fills", 1): 42})
    text = generate_latest(metrics.registry).decode()
    assert 'clearing_ledger_records_total{shard="3"} 10.0' in text
    assert 'clearing_ledger_decisions_total{shard="3",type="MarginCallIssued"} 2.0' in text
    assert 'clearing_ledger_log_position{shard="3"} 99.0' in text
    assert 'clearing_ledger_consumer_lag{partition="1",shard="3",topic="clearing.fills"} 42.0' in text
    assert 'clearing_ledger_batch_seconds_bucket{le="0.025",shard="3"} 1.0' in text


def test_the_outbox_backlog_and_the_age_of_its_oldest_row_are_exported() -> None:
    metrics = LedgerMetrics(shard=1)
    created = datetime.now(UTC) - timedelta(seconds=120)
    metrics.watch_outbox(lambda: OutboxBacklog(17, 5, created, 120.0))
    text = generate_latest(metrics.registry).decode()
    assert 'clearing_ledger_outbox_unpublished{shard="1"} 17.0' in text
    age = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('clearing_ledger_outbox_oldest_unpublished_age_seconds{shard="1"}')
    )
    assert 120.0 <= age < 180.0  # the age at scrape time, not at the reading


def test_an_empty_outbox_exports_no_age() -> None:
    metrics = LedgerMetrics(shard=0)
    metrics.watch_outbox(lambda: EMPTY_BACKLOG)
    text = generate_latest(metrics.registry).decode()
    assert 'clearing_ledger_outbox_unpublished{shard="0"} 0.0' in text
    assert 'clearing_ledger_outbox_oldest_unpublished_age_seconds{shard="0"} 0.0' in text
