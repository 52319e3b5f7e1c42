"""What the input adapters hand the ledger: raw records, and the order they are merged in.

Kept apart from the ledger (clearing/engine/ledger.py) so that the Kafka input process
(consumers/input_process.py) starts without importing the database layer.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


class RawRecord(NamedTuple):
    """One Kafka record as the consumer hands it over: the topic's kind (``fills``, ``marks``...)
    says how to decode it. (A named tuple: the consumer builds one per record, at a third of a
    frozen dataclass's cost.)"""

    kind: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class SourceLostRecords(RuntimeError):
    """Raised by a record source when its broker holds fewer records than the ledger consumed (a
    new or wiped cluster, a restarted in-memory broker): reading on would skip records, or read
    other ones under old offsets. ``cluster`` is the broker's id now (None when unknown); the
    message says what was found and what to do."""

    cluster: str | None = None


# At equal event times: parameters, then collateral, then prices, then trades.
KIND_ORDER = {"admin": 0, "transfers": 1, "marks": 2, "fills": 3, "liquidations": 4}


def merge_key(at: datetime, record: RawRecord) -> tuple[datetime, int, str, int, int]:
    """The order of records across partitions: event time, then the kind (``KIND_ORDER``), then
    where it was read (unique). The Kafka adapter (consumers/kafka_input.py) merges its partitions
    by this key too, so batches arrive in this order; the ledger's batch merge
    (``ledger.in_event_time_order``) checks it."""
    return (at, KIND_ORDER.get(record.kind, 9), record.topic, record.partition, record.offset)
