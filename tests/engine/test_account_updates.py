"""Isolated-margin transfer decisions go out on ``clearing.account-updates`` (CONTRACT v2), and a
conflicting duplicate's dead letter carries both versions (DESIGN.md)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.engine.ledger import Ledger, RawRecord
from clearing.store.db import make_engine

pytestmark = [pytest.mark.integration]

PREFIX = "x."
AT = "2026-11-23T12:00:0{}Z"


def record(kind: str, offset: int, value: dict[str, Any]) -> RawRecord:
    return RawRecord(kind, PREFIX + kind, 0, offset, b"A", json.dumps(value).encode())


def outbox(engine: sa.Engine, topic: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(
            sa.text("SELECT value FROM outbox WHERE topic = :t ORDER BY id"), {"t": topic}
        )]


def test_isolated_margin_decisions_are_published_on_account_updates(database_url: str) -> None:
    engine = make_engine(database_url, role="clearing_app")
    try:
        ledger = Ledger(engine, topic_prefix=PREFIX)
        ledger.load()
        move = {"type": "isolated_margin", "transfer_id": "M-1", "account_id": "A", "instrument": "BTCUSDT",
                "amount": "100", "occurred_at": AT.format(2)}
        ledger.process([
            record("marks", 0, {"type": "mark", "symbol": "BTCUSDT", "price": "100", "occurred_at": AT.format(1)}),
            record("transfers", 0, {"type": "deposit", "transfer_id": "D-1", "account_id": "A", "asset": "USDT",
                                    "amount": "1000", "occurred_at": AT.format(1)}),
            record("fills", 0, {"type": "fill", "fill_id": "F-1", "trade_id": "T-1", "account_id": "A",
                                "instrument": "BTCUSDT", "side": "buy", "quantity": "1", "price": "100", "fee": "0",
                                "fee_asset": "USDT", "margin_mode": "isolated", "occurred_at": AT.format(3)}),
            record("transfers", 1, move),
            # More than the cross wallet holds:
            record("transfers", 2, {**move, "transfer_id": "M-2", "amount": "5000", "occurred_at": AT.format(4)}),
        ])
        with engine.connect() as conn:
            decided = conn.execute(sa.text(
                "SELECT type, payload->>'transfer_id' FROM events "
                "WHERE type IN ('IsolatedMarginTransferred', 'IsolatedMarginTransferRejected') ORDER BY position"
            )).all()
        messages = outbox(engine, PREFIX + "account-updates")
        names = {"IsolatedMarginTransferred": "isolated_margin_transferred",
                 "IsolatedMarginTransferRejected": "isolated_margin_rejected"}
        assert [(m["type"], m["transfer_id"]) for m in messages] == [(names[t], i) for t, i in decided]
        assert {"isolated_margin_transferred", "isolated_margin_rejected"} == {m["type"] for m in messages}, messages
        for message in messages:
            assert message["account_id"] == "A" and message["instrument"] == "BTCUSDT"
            assert message["amount"] in ("100", "5000") and message["position"] > 0
        rejected = next(m for m in messages if m["type"] == "isolated_margin_rejected")
        assert rejected["reason"]

        # The same transfer id with another amount: a conflicting duplicate, both versions on the topic.
        ledger.process([record("transfers", 3, {**move, "amount": "101"})])
        letters = outbox(engine, PREFIX + "dlq")
        assert len(letters) == 1
        assert json.loads(base64.b64decode(letters[0]["raw"]))["amount"] == "101"
        assert letters[0]["existing_payload"]["amount"] == "100"
        assert letters[0]["existing_payload"]["transfer_id"] == "M-1"
    finally:
        engine.dispose()


def test_the_account_updates_topic_is_created_with_the_others(broker: str) -> None:
    from kafka import KafkaAdminClient

    from consumers.kafka_input import ensure_topics

    ensure_topics(broker, "acct-updates-test.")
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        assert {"acct-updates-test.account-updates", "acct-updates-test.margin-rates"} <= set(admin.list_topics())
    finally:
        admin.close()
