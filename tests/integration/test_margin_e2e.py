"""Issue 3 end to end: a simulated crash goes through the ledger; margin calls and liquidation
orders come out on their topics; the liquidator (a simulated exchange) fills the orders and its
fills come back in; at the end every order is filled or cancelled, the books balance, and a fresh
fold of the logged input events reproduces every logged decision exactly.

The ledger runs in-process (``InProcessLedger``, driven by this test's bounded loop) and so does
the liquidator (``poll_once``): nothing sleeps to synchronise, every wait polls a condition."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer

from clearing.domain import events as ev
from clearing.domain.fold import conservation, step
from clearing.domain.state import LedgerState
from clearing.engine.ledger import Ledger
from clearing.liquidator import MARKET_MAKER, Liquidator
from clearing.simulate import Scenario, generate
from tests.integration.conftest import InProcessLedger, consume_topic, merge_ends, produce

pytestmark = [pytest.mark.integration]

SCENARIO = Scenario(seed=5, accounts=40, trades=1_500, steps=100, crash_at=0.6, crash_depth=Decimal("0.45"))
SETTLE_S = 120.0

CALL_FIELDS = {
    "margin_call_id",
    "account_id",
    "level",
    "equity",
    "initial_margin",
    "maintenance_margin",
    "margin_ratio",
    "shortfall",
    "deadline",
    "position",
    "cause_position",
    "occurred_at",
}
ORDER_FIELDS = {
    "liquidation_id",
    "account_id",
    "instrument",
    "side",
    "quantity",
    "bankruptcy_price",
    "position",
    "cause_position",
}


def _caught_up(liquidator: Liquidator) -> bool:
    """The liquidator has read everything on its topic."""
    consumer: KafkaConsumer = liquidator.consumer
    assigned = list(consumer.assignment())
    ends = consumer.end_offsets(assigned)
    return all(consumer.position(tp) >= ends[tp] for tp in assigned)


def _settle(ledger: InProcessLedger, liquidator: Liquidator, ends: dict[tuple[str, int], int]) -> None:
    """Run the ledger and the liquidator in turn until neither has anything left to do."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        assert time.monotonic() < deadline, "the ledger and the liquidator did not settle"
        ledger.run_until(merge_ends(ends, liquidator.produced))
        published = liquidator.poll_once(timeout_ms=100)
        if published == 0 and _caught_up(liquidator):
            ledger.run_until(merge_ends(ends, liquidator.produced))
            if liquidator.poll_once(timeout_ms=100) == 0 and _caught_up(liquidator):
                return


def _log(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT position, type, payload, idempotency_key, cause_position, source_topic FROM events "
                    "WHERE shard = 0 ORDER BY position"
                )
            )
        )


def test_a_crash_is_called_liquidated_filled_and_replays_exactly(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str
) -> None:
    started = time.monotonic()
    liquidator = Liquidator(broker, topic_prefix)
    try:
        # The market maker's deposit is in before any fill of it.
        liquidator.publish_deposit()
        in_process_ledger.run_until(dict(liquidator.produced))
        produced = produce(broker, topic_prefix, ((m.kind, m.key, m.value) for m in generate(SCENARIO)))
        _settle(in_process_ledger, liquidator, produced.ends)
    finally:
        liquidator.close()
    settled = time.monotonic() - started

    engine = in_process_ledger.engine
    log = _log(engine)
    decisions = [row for row in log if row.type in ev.DECISION_TYPES]
    issued = {row.payload["liquidation_id"] for row in decisions if row.type == ev.LIQUIDATION_ORDER_ISSUED}
    calls = [row for row in decisions if row.type in (ev.MARGIN_CALL_ISSUED, ev.MARGIN_CALL_ESCALATED)]
    resolved = [row for row in decisions if row.type == ev.MARGIN_CALL_RESOLVED]
    assert {row.payload["level"] for row in calls} >= {"warning", "maintenance", "liquidation"}
    assert issued and resolved

    # The output topics carry them, with the contract's fields.
    margin_calls = consume_topic(broker, topic_prefix + "margin-calls", lambda v: len(v) >= len(calls) + len(resolved))
    kinds = {m["type"] for m in margin_calls}
    assert {"margin_call_issued", "margin_call_escalated", "margin_call_resolved"} <= kinds
    for m in margin_calls:
        if m["type"] != "account_bankrupted":
            assert m.keys() >= CALL_FIELDS, m
            assert m["level"] in ("warning", "maintenance", "liquidation")
    orders = consume_topic(broker, topic_prefix + "liquidation-orders", lambda v: len(v) >= len(issued))
    assert {m["liquidation_id"] for m in orders if m["type"] == "liquidation_order"} == issued
    for m in orders:
        assert m.keys() >= ORDER_FIELDS, m
        assert m["side"] in ("buy", "sell") and m["account_id"] != MARKET_MAKER

    # Every order was executed and booked, also those a resolution cancelled before the execution
    # came back (an execution is a fact).
    filled = {row.payload["liquidation_id"] for row in log if row.type == "LiquidationFillRecorded"}
    cancelled = {lid for row in resolved for lid in row.payload.get("cancelled_orders", [])}
    assert issued == filled, sorted(issued - filled)
    # Every execution has the market maker's counterpart.
    mm_fills = {
        row.payload["fill_id"]
        for row in log
        if row.type == ev.INPUT_EVENT_TYPES["fill"][0] and row.payload["account_id"] == MARKET_MAKER
    }
    assert {f"LC-{lid}" for lid in filled} <= mm_fills

    # The books balance in the state loaded back from the log.
    ledger = Ledger(engine)
    ledger.load()
    assert conservation(ledger.state) == {}
    assert ledger.state.liquidations == {}

    # A fresh fold of the logged inputs, at their logged positions, decides exactly what was logged.
    state = LedgerState()
    replayed: list[tuple[str, Any, str, int | None]] = []
    for row in log:
        if row.type not in ev.DECISION_TYPES:  # the inputs, the parameters the log opens with first
            for decision in step(state, ev.message_of(row.type, row.payload), row.position):
                replayed.append((decision.type, decision.payload, decision.idempotency_key, decision.cause_position))
    logged = [(row.type, row.payload, row.idempotency_key, row.cause_position) for row in decisions]
    assert _canonical(replayed) == _canonical(logged)
    print(
        f"\n{len(log)} events, {len(decisions)} decisions, {len(issued)} orders ({len(cancelled)} cancelled), "
        f"settled in {settled:.1f} s"
    )


def _canonical(rows: list[tuple[str, Any, str, int | None]]) -> list[tuple[str, str, str, int | None]]:
    import json

    return [(t, json.dumps(p, sort_keys=True), k, c) for t, p, k, c in rows]


def test_the_liquidator_sends_the_same_messages_again_on_a_rerun() -> None:
    """Fill ids, trade ids and times derive from the order: a re-run is a redelivery."""
    from clearing.liquidator import liquidation_messages

    order = {
        "type": "liquidation_order",
        "liquidation_id": "L-9",
        "account_id": "A1",
        "instrument": "BTCUSDT",
        "side": "sell",
        "quantity": "0.5",
        "bankruptcy_price": "59000",
        "mark": "59500",
        "occurred_at": "2026-11-23T12:00:00.000000Z",
    }
    first, second = liquidation_messages(order), liquidation_messages(dict(order))
    assert first == second
    (_, _, execution), (_, key, counterpart) = first
    assert (execution["fill_id"], execution["price"], execution["side"]) == ("LF-L-9", "59500", "sell")
    assert (key, counterpart["side"], counterpart["trade_id"]) == (MARKET_MAKER, "buy", "LT-L-9")
