"""End to end through the real broker and PostgreSQL: messages produced with a plain Kafka
producer become hash-chained log rows, projection rows that match hand arithmetic, stored offsets
equal to what was produced, and published withdrawal decisions; redelivery appends nothing and a
restarted ledger folds the log back to the same state."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.chain import verify_chain
from clearing.engine.ledger import Ledger
from tests.integration.conftest import (
    InProcessLedger,
    Produced,
    balances_table,
    consume_topic,
    count,
    positions_table,
    produce,
    state_balances,
    state_positions,
)

pytestmark = pytest.mark.integration

D = Decimal


def _t(second: int) -> str:
    return f"2026-11-23T12:00:{second:02d}.000Z"


def _fill(
    fill_id: str, trade_id: str, account: str, instrument: str, side: str, qty: str, price: str, fee: str, second: int
) -> tuple[str, str, dict[str, Any]]:
    return (
        "fills",
        account,
        {
            "type": "fill",
            "fill_id": fill_id,
            "trade_id": trade_id,
            "account_id": account,
            "instrument": instrument,
            "side": side,
            "quantity": qty,
            "price": price,
            "fee": fee,
            "fee_asset": "USDT",
            "liquidity": "taker",
            "margin_mode": "cross",
            "occurred_at": _t(second),
        },
    )


def _transfer(
    kind: str, transfer_id: str, account: str, asset: str, amount: str, second: int
) -> tuple[str, str, dict[str, Any]]:
    return (
        "transfers",
        account,
        {
            "type": kind,
            "transfer_id": transfer_id,
            "account_id": account,
            "asset": asset,
            "amount": amount,
            "occurred_at": _t(second),
        },
    )


def _mark(symbol: str, price: str, second: int) -> tuple[str, str, dict[str, Any]]:
    return ("marks", symbol, {"type": "mark", "symbol": symbol, "price": price, "occurred_at": _t(second)})


# Three phases, each ingested before the next is produced: the ledger reads its topics in
# no particular order relative to each other, so collateral is in place before anyone trades and
# the trades are in before the withdrawals are decided (as the settlement pipeline would do).
FUNDING = [
    _mark("BTCUSDT", "65000", 0),
    _mark("ETHUSDT", "3200", 0),
    _transfer("deposit", "D-A1", "A1", "USDT", "10000", 1),
    _transfer("deposit", "D-A2", "A2", "USDT", "20000", 1),
    _transfer("deposit", "D-A2-BTC", "A2", "BTC", "0.5", 1),
    _transfer("deposit", "D-A3", "A3", "USDT", "5000", 1),
]
TRADING = [
    # T-1: A1 buys 0.1 BTCUSDT from A2 at 65000.
    _fill("F-1b", "T-1", "A1", "BTCUSDT", "buy", "0.1", "65000", "3.25", 2),
    _fill("F-1s", "T-1", "A2", "BTCUSDT", "sell", "0.1", "65000", "1.3", 2),
    # T-2: A1 sells 0.04 of it back to A2 at 66000.5.
    _fill("F-2s", "T-2", "A1", "BTCUSDT", "sell", "0.04", "66000.5", "1.32", 3),
    _fill("F-2b", "T-2", "A2", "BTCUSDT", "buy", "0.04", "66000.5", "0.5", 3),
    # T-3: A2 buys 2 ETHUSDT from A3 at 3200.25, no fees.
    _fill("F-3b", "T-3", "A2", "ETHUSDT", "buy", "2", "3200.25", "0", 4),
    _fill("F-3s", "T-3", "A3", "ETHUSDT", "sell", "2", "3200.25", "0", 4),
]
AFTER = [
    _mark("BTCUSDT", "66100", 5),
    # A3 (deposited 5000 on the same partition, before) withdraws 1000: approved.
    _transfer("withdrawal", "W-1", "A3", "USDT", "1000", 6),
    # A1 asks for more than it holds: rejected.
    _transfer("withdrawal", "W-2", "A1", "USDT", "1000000", 6),
]
MESSAGES = [*FUNDING, *TRADING, *AFTER]

# Worked by hand (not by the fold):
# A1 USDT: 10000 - 3.25 (fee T-1) - 1.32 (fee T-2) + realised on T-2. Selling 0.04 of a 0.1 long
#   that cost 6500 removes 6500 x 0.04 / 0.1 = 2600 of cost for 0.04 x 66000.5 = 2640.02 of
#   proceeds: realised 40.02. Balance 10035.45; position 0.06 with cost 3900.
# A2 USDT: 20000 - 1.3 - 0.5 - 40.02 (the mirror of A1's gain) = 19958.18; BTC 0.5;
#   BTCUSDT -0.06 with cost -3900 and realised -40.02; ETHUSDT 2 with cost 6400.5.
# A3 USDT: 5000 - 1000 (W-1) = 4000; ETHUSDT -2 with cost -6400.5.
# Fee account: 3.25 + 1.3 + 1.32 + 0.5 = 6.37.
EXPECTED_BALANCES = {
    ("A1", "USDT"): D("10035.45"),
    ("A2", "USDT"): D("19958.18"),
    ("A2", "BTC"): D("0.5"),
    ("A3", "USDT"): D("4000"),
    ("system:fees", "USDT"): D("6.37"),
}
# (quantity, cost, realised_pnl, isolated_margin, funding_paid)
EXPECTED_POSITIONS = {
    ("A1", "BTCUSDT", "cross"): (D("0.06"), D("3900"), D("40.02"), D(0), D(0)),
    ("A2", "BTCUSDT", "cross"): (D("-0.06"), D("-3900"), D("-40.02"), D(0), D(0)),
    ("A2", "ETHUSDT", "cross"): (D("2"), D("6400.5"), D(0), D(0), D(0)),
    ("A3", "ETHUSDT", "cross"): (D("-2"), D("-6400.5"), D(0), D(0), D(0)),
}
EXPECTED_TYPES = {
    "RiskParametersChanged": 1,  # the bundled parameters the log opens with
    "MarkRecorded": 3,
    "CollateralDeposited": 4,
    "FillRecorded": 6,
    "WithdrawalRequested": 2,
    "WithdrawalApproved": 1,
    "WithdrawalRejected": 1,
}


def _event_types(engine: sa.Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(sa.text("SELECT type, count(*) FROM events GROUP BY type")).all()))


def test_produced_messages_become_log_projections_offsets_and_outputs(
    in_process_ledger: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    coordinates = []
    for phase in (FUNDING, TRADING, AFTER):
        produced = produce(broker, topic_prefix, phase)
        in_process_ledger.run_until(produced.ends)
        coordinates += produced.coordinates
    produced = Produced(coordinates)
    stats = in_process_ledger.stats

    # The log: the parameters it opens with, one input event per message, the two withdrawal
    # decisions.
    assert _event_types(owner_engine) == EXPECTED_TYPES
    assert stats.appended == 1 + len(MESSAGES) and stats.decisions == 2 and stats.dead_letters == 0
    with owner_engine.connect() as conn:
        report = verify_chain(conn)
        sources = {
            tuple(row)
            for row in conn.execute(
                sa.text(
                    "SELECT source_topic, source_partition, source_offset FROM events WHERE source_topic IS NOT NULL"
                )
            )
        }
    assert report.ok, report
    assert report.events == sum(EXPECTED_TYPES.values())
    assert sources == set(produced.coordinates)

    # Offsets stored with the events are exactly the produced end offsets.
    assert in_process_ledger.ledger.stored_offsets().keys() == produced.ends.keys()
    assert {key: value[0] for key, value in in_process_ledger.ledger.stored_offsets().items()} == produced.ends

    # Projections equal the hand arithmetic.
    assert balances_table(owner_engine) == EXPECTED_BALANCES
    assert positions_table(owner_engine) == EXPECTED_POSITIONS
    with owner_engine.connect() as conn:
        marks = dict(conn.execute(sa.text("SELECT symbol, price FROM marks")).all())
    assert marks == {"BTCUSDT": D("66100"), "ETHUSDT": D("3200")}

    # The outbox was published: both decisions are on the withdrawals topic.
    assert count(owner_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    decisions = consume_topic(broker, topic_prefix + "withdrawals", lambda values: len(values) >= 2)
    by_id = {value["transfer_id"]: value for value in decisions}
    assert len(decisions) == 2
    assert by_id["W-1"]["type"] == "withdrawal_approved"
    assert (by_id["W-1"]["account_id"], by_id["W-1"]["asset"], by_id["W-1"]["amount"]) == ("A3", "USDT", "1000")
    assert by_id["W-2"]["type"] == "withdrawal_rejected"
    assert "insufficient" in by_id["W-2"]["reason"]

    # Redelivery: the same messages again append nothing, and are counted as duplicates.
    events_before = count(owner_engine, "SELECT count(*) FROM events")
    again = produce(broker, topic_prefix, MESSAGES)
    assert all(again.ends[key] == 2 * end for key, end in produced.ends.items())
    stats = in_process_ledger.run_until(again.ends)
    assert stats.duplicates == len(MESSAGES)
    assert stats.appended == 1 + len(MESSAGES)  # the run's totals: nothing appended since
    assert count(owner_engine, "SELECT count(*) FROM events") == events_before
    assert {key: value[0] for key, value in in_process_ledger.ledger.stored_offsets().items()} == again.ends
    assert balances_table(owner_engine) == EXPECTED_BALANCES
    assert count(owner_engine, "SELECT count(*) FROM outbox") == 2

    # A restarted ledger folds the log back to the same state.
    live = in_process_ledger.ledger.state
    restarted = Ledger(in_process_ledger.engine, topic_prefix=topic_prefix)
    assert restarted.load() == events_before
    assert state_balances(restarted.state) == state_balances(live) == EXPECTED_BALANCES
    assert state_positions(restarted.state) == state_positions(live) == EXPECTED_POSITIONS
    assert {s: m.price for s, m in restarted.state.marks.items()} == {s: m.price for s, m in live.marks.items()}
    assert restarted.state.deposits == live.deposits == {"USDT": D("35000"), "BTC": D("0.5")}
    assert restarted.state.withdrawals == live.withdrawals == {"USDT": D("1000")}
    assert restarted.head.position == in_process_ledger.ledger.head.position == events_before
