from prometheus_client import generate_latest

from clearing.engine.ledger import BatchResult
from clearing.engine.metrics import LedgerMetrics


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
