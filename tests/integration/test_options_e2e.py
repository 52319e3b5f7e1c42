"""Issue 23 end to end on the embedded services: options are traded (premiums and fees booked), the
underlying crashes, the short put sellers are called and liquidated (short options first, by the
liquidator filling the orders at the mark), the options expire and settle at their intrinsic
value, the books balance, ``account show``'s projections carry the options, and ``audit verify``
passes. Nothing sleeps: every wait polls a bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.verify import verify
from clearing.domain import events as ev
from clearing.domain.fold import conservation
from clearing.engine.ledger import Ledger
from clearing.liquidator import MARKET_MAKER, Liquidator
from tests.integration.conftest import InProcessLedger, merge_ends, produce
from tests.integration.test_margin_e2e import _caught_up, _log, _settle

pytestmark = [pytest.mark.integration]

D = Decimal
PUT = "BTC-26MAR27-60000-P"
CALL = "BTC-26MAR27-70000-C"
EXPIRY = "2027-03-26T08:00:00Z"
START = datetime(2026, 12, 1, tzinfo=UTC)
SELLERS = ("W1", "W2", "W3")  # short puts (W3 with the most collateral: called, not liquidated)
BUYERS = ("L1",)


def _at(seconds: int) -> str:
    return (START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _market() -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    n = 0

    def fill(account: str, side: str, quantity: str, price: str, instrument: str, fee: str = "0.5") -> None:
        nonlocal n
        n += 1
        out.append(("fills", account, {
            "type": "fill", "fill_id": f"F{n}", "trade_id": f"T{(n + 1) // 2}", "account_id": account,
            "instrument": instrument, "side": side, "quantity": quantity, "price": price, "fee": fee,
            "margin_mode": "cross", "occurred_at": _at(n)}))  # fmt: skip

    def mark(seconds: int, symbol: str, price: str, iv: str | None = None) -> None:
        value: dict[str, Any] = {"type": "mark", "symbol": symbol, "price": price, "occurred_at": _at(seconds)}
        if iv is not None:
            value["iv"] = iv
        out.append(("marks", symbol, value))

    for account, amount in (("W1", "12000"), ("W2", "15000"), ("W3", "60000"), ("L1", "20000")):
        out.append(("transfers", account, {"type": "deposit", "transfer_id": f"d{account}", "account_id": account,
                                           "asset": "USDT", "amount": amount, "occurred_at": _at(0)}))  # fmt: skip
    mark(0, "BTC", "65000")
    mark(0, PUT, "2500", "0.6")
    mark(0, CALL, "4000", "0.6")
    # Each seller writes 1 put to MM; L1 buys 2 calls from W3; 80 seconds of trading.
    for seller in SELLERS:
        fill(seller, "sell", "1", "2500", PUT)
        fill(MARKET_MAKER, "buy", "1", "2500", PUT)
    fill("L1", "buy", "2", "4000", CALL)
    fill("W3", "sell", "2", "4000", CALL)
    # The crash: BTC falls 40% in steps, the put's mark rises with it (its intrinsic value plus 1,500).
    for step, price in enumerate(range(61000, 38000, -4000)):
        mark(100 + step * 10, "BTC", str(price))
        mark(101 + step * 10, PUT, str(max(60000 - price, 0) + 1500), "0.9")
        mark(102 + step * 10, CALL, str(max(price - 70000, 0) + 100), "0.9")
    return out


def _settlements() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("marks", symbol, {"type": "settlement", "symbol": symbol, "price": "41000", "occurred_at": EXPIRY})
        for symbol in (PUT, CALL)
    ]


def test_options_traded_crashed_called_liquidated_settled_and_verified(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    liquidator = Liquidator(broker, topic_prefix)
    try:
        liquidator.publish_deposit()
        in_process_ledger.run_until(dict(liquidator.produced))
        _settle(in_process_ledger, liquidator, produce(broker, topic_prefix, _market()).ends)
        # Expiry comes after the liquidations are executed (the liquidator fills at the order's time).
        ends = produce(broker, topic_prefix, _settlements()).ends
        _settle(in_process_ledger, liquidator, ends)
        assert _caught_up(liquidator)
        in_process_ledger.run_until(merge_ends(ends, liquidator.produced))
    finally:
        liquidator.close()

    engine = in_process_ledger.engine
    log = _log(engine)
    decisions = [row for row in log if row.source_topic is None]
    called = {row.payload["account_id"] for row in decisions if row.type == ev.MARGIN_CALL_ISSUED}
    orders = [row.payload for row in decisions if row.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert {"W1", "W2"} <= called  # the short put sellers with the least collateral
    assert {o["account_id"] for o in orders} >= {"W1", "W2"}
    assert all(o["instrument"] == PUT and o["side"] == "buy" for o in orders if o["account_id"] in ("W1", "W2"))
    filled = {row.payload["liquidation_id"] for row in log if row.type == "LiquidationFillRecorded"}
    assert {o["liquidation_id"] for o in orders} == filled

    ledger = Ledger(engine)
    ledger.load()
    state = ledger.state
    assert conservation(state) == {}
    # Settled: every option position closed; the long call expired out of the money (41,000 <
    # 70,000): L1 keeps what it had less the premium and the fee.
    assert all(p.quantity == 0 for a in state.accounts.values() for p in a.positions.values())
    assert state.accounts["L1"].balance("USDT") == D(20000) - 8000 - D("0.5")
    # The market maker's puts that survived paid out 60,000 - 41,000 = 19,000 each at settlement.
    mm_put = state.accounts[MARKET_MAKER].positions[(PUT, "cross")]
    assert mm_put.quantity == 0 and mm_put.realised_pnl != 0

    # account show reads these projections: the call seller's margin row and its option position.
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT instrument, quantity, realised_pnl FROM positions "
                                    "WHERE account_id = 'W3' ORDER BY instrument")).all()  # fmt: skip
    assert {row.instrument for row in rows} == {PUT, CALL}

    report = verify(owner_engine)
    assert report.ok, [check.as_dict() for check in report.checks if not check.ok]
