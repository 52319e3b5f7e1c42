"""Issue 25 end to end, on the embedded PostgreSQL and broker: a first crash empties the insurance
fund (a liquidation filled beyond the bankruptcy price draws it dry); a second leaves a bankrupt
long that the fund cannot cover, so the ledger cancels its open liquidation order and deleverages
the most profitable shorts, highest rank first. The exchange side (a test consumer) reads the
cancellation on clearing.liquidation-orders and the auto_deleveraged messages on
clearing.deleveraging; the cancelled order's late execution is booked; ``audit verify`` passes
and ``audit explain ADL-...`` adds the ADL and the late execution up."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.adl_explain import explain_adl, render_adl
from clearing.audit.asof import live_adl_standing
from clearing.audit.explain import explain, render
from clearing.audit.report import build_timeline, render_html
from clearing.audit.verify import verify
from clearing.domain import events as ev
from clearing.domain.params import bundled_document
from tests.integration.conftest import InProcessLedger, consume_topic, produce

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
FUND = "system:insurance-fund"


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def deposit(account: str, amount: str, seconds: int = 0) -> tuple[str, str, dict[str, Any]]:
    value = {
        "type": "deposit",
        "transfer_id": f"d-{account}",
        "account_id": account,
        "asset": "USDT",
        "amount": amount,
        "occurred_at": at(seconds),
    }
    return "transfers", account, value


def fill(
    account: str, side: str, quantity: str, price: str, fid: str, mode: str = "cross", seconds: int = 1, trade: str = ""
) -> Any:
    value = {
        "type": "fill",
        "fill_id": fid,
        "trade_id": trade or "T" + fid,
        "account_id": account,
        "instrument": "BTCUSDT",
        "side": side,
        "quantity": quantity,
        "price": price,
        "fee": "0",
        "fee_asset": "USDT",
        "margin_mode": mode,
        "occurred_at": at(seconds),
    }
    return "fills", account, value


def mark(price: str, seconds: int) -> Any:
    return "marks", "BTCUSDT", {"type": "mark", "symbol": "BTCUSDT", "price": price, "occurred_at": at(seconds)}


def liquidation_fill(order: dict[str, Any], price: str, seconds: int) -> Any:
    value = {
        "type": "liquidation_fill",
        "liquidation_id": order["liquidation_id"],
        "fill_id": "LF-" + order["liquidation_id"],
        "account_id": order["account_id"],
        "instrument": "BTCUSDT",
        "side": order["side"],
        "quantity": order["quantity"],
        "price": price,
        "occurred_at": at(seconds),
    }
    return "liquidations", order["account_id"], value


def orders(engine: sa.Engine, account: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row.payload)
            for row in conn.execute(
                sa.text(
                    "SELECT payload FROM events WHERE type = :t AND payload ->> 'account_id' = :a ORDER BY position"
                ),
                {"t": ev.LIQUIDATION_ORDER_ISSUED, "a": account},
            )
        ]


def decisions(engine: sa.Engine, event_type: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT payload FROM events WHERE type = :t ORDER BY position"), {"t": event_type})
        return [dict(row.payload) for row in rows]


def test_a_crash_empties_the_fund_and_later_bankruptcies_deleverage_the_most_profitable_shorts(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    ledger, engine = in_process_ledger, in_process_ledger.engine
    document = copy.deepcopy(bundled_document())
    document["version"] = "adl-e2e.1"
    document["adl"] = {"enabled": True}
    setup: list[Any] = [("admin", None, {"type": "risk_parameters", "parameters": document, "occurred_at": at(0)})]
    # X: long 2 at 10,000 on 1,000; A: long 1 at 10,000 on 1,000. The shorts: B 0.4 at 10,000
    # (800), C 0.3 at 12,000 (400), D 0.3 at 7,000 (2,000, losing below 7,000... winning here),
    # E 0.4 isolated at 10,000 (800 of isolated margin). M makes the market. The fund holds 960.
    for account, amount in (
        ("X", "1000"),
        ("A", "1000"),
        ("B", "800"),
        ("C", "400"),
        ("D", "2000"),
        ("E", "800"),
        ("M", "1000000"),
        (FUND, "960"),
    ):
        setup.append(deposit(account, amount))
    setup.append(
        (
            "transfers",
            "E",
            {
                "type": "isolated_margin",
                "transfer_id": "t-E",
                "account_id": "E",
                "instrument": "BTCUSDT",
                "amount": "800",
                "occurred_at": at(0),
            },
        )
    )
    setup += [
        fill("X", "buy", "2", "10000", "x1", trade="TX"),
        fill("M", "sell", "2", "10000", "mx", trade="TX"),
        fill("A", "buy", "1", "10000", "a1", trade="TA"),
        fill("M", "sell", "1", "10000", "ma", trade="TA"),
    ]
    for account, quantity, price, mode in (
        ("B", "0.4", "10000", "cross"),
        ("C", "0.3", "12000", "cross"),
        ("D", "0.3", "7000", "cross"),
        ("E", "0.4", "10000", "isolated"),
    ):
        setup += [
            fill(account, "sell", quantity, price, account + "1", mode, trade="T" + account),
            fill("M", "buy", quantity, price, "m" + account, trade="T" + account),
        ]
    # First leg of the crash: X at -200, the fund (960) can cover it: an order to the exchange.
    setup.append(mark("9400", 10))
    ledger.run_until(produce(broker, topic_prefix, setup).ends)
    [x_order] = orders(engine, "X")
    assert decisions(engine, ev.POSITION_AUTO_DELEVERAGED) == []
    # The exchange fills it at 9,000: X's loss 2,000 + fee 90 on 1,000: the fund (960 + 90) is
    # drawn dry and 40 stays X's deficit.
    ledger.run_until(
        produce(
            broker,
            topic_prefix,
            [liquidation_fill(x_order, "9000", 11), fill("M", "buy", "2", "9000", "mlx", seconds=11)],
        ).ends
    )
    [drawn] = decisions(engine, ev.INSURANCE_FUND_DRAWN)
    assert (drawn["account_id"], drawn["amount"]) == ("X", "1050")
    # Second leg: A liquidating at 9,010 (an order goes out), then 8,000 before it executes:
    # equity -1,000 against an empty fund.
    ledger.run_until(produce(broker, topic_prefix, [mark("9010", 20)]).ends)
    [a_order] = orders(engine, "A")
    ledger.run_until(produce(broker, topic_prefix, [mark("8000", 21)]).ends)
    taken = decisions(engine, ev.POSITION_AUTO_DELEVERAGED)
    # A's bankruptcy price 8,000 + 1,000 / 1 = 9,000; C (rank 0.5), B and E (0.4, a tie: B
    # first), the last in part; D's losing short is left alone.
    assert [(p["account_id"], p["quantity"], p["price"], p["rank"]) for p in taken] == [
        ("C", "0.3", "9000", "0.5"),
        ("B", "0.4", "9000", "0.4"),
        ("E", "0.3", "9000", "0.4"),
    ]
    # The exchange executes A's cancelled order anyway: a fact, booked.
    late = [liquidation_fill(a_order, "7990", 22), fill("M", "buy", "1", "7990", "mla", seconds=22)]
    ledger.run_until(produce(broker, topic_prefix, late).ends)

    # The exchange side sees the cancellation and every step.
    cancels = consume_topic(
        broker,
        topic_prefix + "liquidation-orders",
        lambda v: any(m["type"] == "liquidation_order_cancelled" for m in v),
    )
    [cancel] = [m for m in cancels if m["type"] == "liquidation_order_cancelled"]
    assert (cancel["liquidation_id"], cancel["account_id"]) == (a_order["liquidation_id"], "A")
    assert cancel["reason"]
    # The late sell leaves A short 1 at 7,990, its fee (39.95) and the 10 lost at the 8,000 mark
    # on a balance of 0: bankrupt again, with the fund still empty, so that short is deleveraged
    # against the only long, M's.
    steps = consume_topic(broker, topic_prefix + "deleveraging", lambda v: len(v) >= 4)
    assert [(m["type"], m["account_id"], m["side"], m["quantity"], m["bankrupt_account_id"]) for m in steps] == [
        ("auto_deleveraged", "C", "buy", "0.3", "A"),
        ("auto_deleveraged", "B", "buy", "0.4", "A"),
        ("auto_deleveraged", "E", "buy", "0.3", "A"),
        ("auto_deleveraged", "M", "sell", "1", "A"),
    ]
    assert len({m["adl_id"] for m in steps}) == 4
    for m in steps:
        assert m.keys() >= {
            "adl_id",
            "account_id",
            "instrument",
            "side",
            "quantity",
            "price",
            "rank",
            "bankrupt_account_id",
            "position",
            "cause_position",
        }

    # Who is next in line (account show, the API): E's profitable short before D's losing one.
    with owner_engine.connect() as conn:
        e, d = live_adl_standing(conn, "E"), live_adl_standing(conn, "D")
    assert e[("BTCUSDT", "isolated")]["adl_quantile"] == 5 and d[("BTCUSDT", "cross")]["adl_quantile"] == 3
    assert Decimal(e[("BTCUSDT", "isolated")]["adl_rank"]) > 0 > Decimal(d[("BTCUSDT", "cross")]["adl_rank"])

    # The report of the bankrupt account charts the fund (960, then 1,050 with X's fee, drawn to
    # 0, then the late execution's fee 39.95: less than A's second deficit, 49.95, so that one is
    # deleveraged too) with every draw and ADL step, and shows A's own ADL steps (logged on the
    # counterparties' streams).
    timeline = build_timeline(owner_engine, "A")
    assert [p.balance for p in timeline.fund] == [Decimal(v) for v in ("0", "960", "1050", "0", "39.95")]
    assert [e.type for e in timeline.fund_events].count(ev.POSITION_AUTO_DELEVERAGED) == 4
    assert ev.INSURANCE_FUND_DRAWN in [e.type for e in timeline.fund_events]
    assert sum(e.type == ev.POSITION_AUTO_DELEVERAGED for e in timeline.markers) == 4
    assert "Insurance fund balance" in render_html(timeline)

    report = verify(owner_engine)
    assert report.ok, [c.as_dict() for c in report.checks if not c.ok]

    explained = explain_adl(owner_engine, taken[2]["adl_id"])
    assert explained["matches_decision"]
    assert explained["insurance_fund"] == "0" and explained["bankrupt"]["equity"] == "-1000"
    assert [(r["account_id"], r["taken"]) for r in explained["ranking"]] == [
        ("C", "0.3"),
        ("B", "0.4"),
        ("E", "0.3"),
        ("D", "0"),
    ]
    assert explained["adds_up"] == {
        "position_before": "1",
        "auto_deleveraged": "-1",
        "late_executions": "-1",
        "position_after": "-1",
        "late_quantity": "1",
    }
    assert "late executions of the cancelled orders -1 = -1" in render_adl(explained)
    # The order's own explanation follows it to its cancellation and its late execution.
    order_explained = explain(owner_engine, a_order["liquidation_id"])
    assert [e["type"] for e in order_explained["later_events"]] == [
        ev.LIQUIDATION_ORDER_CANCELLED,
        ev.LIQUIDATION_FILL_RECORDED,
    ]
    text = render(order_explained)
    assert "cancelled at" in text and "executed at" in text and "sell 1 at 7990" in text
