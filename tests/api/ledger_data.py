"""Feed the ledger without a broker: simulator messages become ``RawRecord``s handed to
``Ledger.process`` in batches, as the Kafka consumer would hand them over."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from clearing.engine.ledger import Ledger, RawRecord
from clearing.simulate import Message

BATCH_RECORDS = 500
TOPIC_PREFIX = "clearing."


def records_of(messages: Iterable[Message], prefix: str = TOPIC_PREFIX) -> list[RawRecord]:
    offsets: dict[str, int] = {}
    records = []
    for message in messages:
        offset = offsets.get(message.kind, 0)
        offsets[message.kind] = offset + 1
        records.append(
            RawRecord(message.kind, prefix + message.kind, 0, offset, message.key.encode(), message.encode())
        )
    return records


def feed(engine: sa.Engine, records: list[RawRecord], batch: int = BATCH_RECORDS) -> Ledger:
    """Process ``records`` in batches through one ledger on shard 0; returns the ledger."""
    ledger = Ledger(engine)
    ledger.load()
    for start in range(0, len(records), batch):
        ledger.process(records[start : start + batch])
    return ledger
