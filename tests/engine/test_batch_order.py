"""A poll hands records over grouped by partition; the ledger folds them in event time order."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.engine.ledger import Ledger, RawRecord
from clearing.store.db import make_engine


def record(kind: str, partition: int, offset: int, value: dict[str, Any] | bytes) -> RawRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord(kind, "t." + kind, partition, offset, b"k", raw)


def deposit(account: str, at: str) -> dict[str, Any]:
    return {
        "type": "deposit",
        "transfer_id": "D" + account,
        "account_id": account,
        "asset": "USDT",
        "amount": "10000",
        "occurred_at": at,
    }


def fill(account: str, side: str, at: str) -> dict[str, Any]:
    return {
        "type": "fill",
        "fill_id": f"F{account}",
        "trade_id": "T1",
        "account_id": account,
        "instrument": "BTCUSDT",
        "side": side,
        "quantity": "1",
        "price": "50000",
        "occurred_at": at,
    }


@pytest.mark.integration
def test_a_catch_up_batch_books_deposits_before_the_fills_they_fund(database_url: str) -> None:
    # As a poll returns them: all of the fills topic first, then the transfers topic.
    records = [
        record("fills", 0, 0, fill("A", "buy", "2026-11-23T12:00:02Z")),
        record("fills", 1, 0, fill("B", "sell", "2026-11-23T12:00:02Z")),
        record("fills", 1, 1, b"{not json"),
        record("transfers", 0, 0, deposit("A", "2026-11-23T12:00:01Z")),
        record("transfers", 1, 0, deposit("B", "2026-11-23T12:00:01Z")),
    ]
    engine = make_engine(database_url)
    try:
        result = Ledger(engine, topic_prefix="t.").process(records)
        with engine.connect() as conn:
            types = conn.execute(sa.text("SELECT type FROM events ORDER BY position")).scalars().all()
            offsets = dict(conn.execute(sa.text("SELECT topic || partition, next_offset FROM consumer_offsets")).all())
    finally:
        engine.dispose()
    # Funded before they trade: no margin call (10,000 each against 50,000 x 0.8% initial). The
    # log opens with the parameters it starts under.
    assert types == [
        "RiskParametersChanged",
        "CollateralDeposited",
        "CollateralDeposited",
        "FillRecorded",
        "FillRecorded",
    ]
    assert result.decisions == 0 and result.dead_letters == 1
    assert offsets == {"t.fills0": 1, "t.fills1": 2, "t.transfers0": 1, "t.transfers1": 1}
