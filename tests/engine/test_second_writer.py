"""Two writers on one shard: the one whose head is stale stops loudly instead of retrying."""

from __future__ import annotations

import json
import threading

import pytest

from clearing.engine.ledger import Ledger, LedgerBrokenError, RawRecord
from clearing.engine.runner import run
from clearing.store.db import make_engine


def deposit(offset: int) -> RawRecord:
    value = {"type": "deposit", "transfer_id": f"D-{offset}", "account_id": "A", "asset": "USDT", "amount": "1",
             "occurred_at": "2026-11-23T12:00:00Z"}
    return RawRecord("transfers", "x.transfers", 0, offset, b"A", json.dumps(value).encode())


class OneBatch:
    """A record source (Kafka's stand-in; the writer is what is tested) that hands over one batch,
    then asks the run to stop: a run that swallowed the failure ends without raising."""

    def __init__(self, records: list[RawRecord], stop: threading.Event) -> None:
        self.records = records
        self.stop = stop

    def assign(self, stored: object, broker_instance: object) -> None:
        pass

    def poll(self, timeout_ms: int, records_max: int) -> list[RawRecord]:
        records, self.records = self.records, []
        if not records:
            self.stop.set()
        return records

    def close(self) -> None:
        pass


def test_a_second_writer_on_the_shard_stops_the_run(database_url: str) -> None:
    engine = make_engine(database_url, role="clearing_app")
    try:
        first, second = Ledger(engine, topic_prefix="x."), Ledger(engine, topic_prefix="x.")
        first.load()
        second.load()
        first.process([deposit(0)])  # the log moved past where the second writer left it
        stop = threading.Event()
        with pytest.raises(LedgerBrokenError, match="one writer per shard"):
            run(second, OneBatch([deposit(1)], stop), None, stop=stop, install_signal_handlers=False)
    finally:
        engine.dispose()
