"""``clearing audit explain`` of the liquidation orders of a portfolio account whose plan takes two
orders: each order's quantity search is re-run on the book with the orders before it applied (the
portfolio requirement is not additive), and recomputes to the figures of the decision; ``audit
verify`` replays the log to the same decisions. The book is test_portfolio_liquidation's "one
position is not enough" (the derivation is written there): short 1 call and long 0.5 BTCUSDT,
the call closed in full, then 0.2 of the perpetual measured with the call closed."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.explain import explain
from clearing.audit.verify import verify
from clearing.simulate import Message
from tests.audit.audit_data import ledger_database
from tests.conftest import PgServer
from tests.domain.test_portfolio_model import parameters_document

pytestmark = [pytest.mark.integration]

CALL = "BTC-26MAR27-60000-C"
T = "2026-11-23T12:00:{:02d}Z"


def _messages() -> list[Message]:
    parameters = {
        "type": "risk_parameters",
        "parameters": copy.deepcopy(parameters_document()),
        "occurred_at": T.format(0),
    }
    out: list[Message] = [Message("admin", "params", parameters)]

    def fill(n: int, account: str, side: str, q: str, price: str, instrument: str) -> None:
        out.append(Message("fills", account, {
            "type": "fill", "fill_id": f"F{n}", "trade_id": f"T{n // 2}", "account_id": account,
            "instrument": instrument, "side": side, "quantity": q, "price": price, "fee": "0", "margin_mode": "cross",
            "occurred_at": T.format(n)}))  # fmt: skip

    def mark(n: int, symbol: str, price: str, iv: str | None = None) -> None:
        value = {"type": "mark", "symbol": symbol, "price": price, "occurred_at": T.format(n)}
        if iv is not None:
            value["iv"] = iv
        out.append(Message("marks", symbol, value))

    for account, amount in (("P", "9000"), ("MM", "10000000")):
        out.append(Message("transfers", account, {"type": "deposit", "transfer_id": f"d{account}",
                                                  "account_id": account, "asset": "USDT", "amount": amount,
                                                  "occurred_at": T.format(1)}))  # fmt: skip
    out.append(Message("transfers", "P", {"type": "margin_model", "request_id": "S-1", "account_id": "P",
                                          "model": "portfolio", "occurred_at": T.format(2)}))  # fmt: skip
    mark(3, "BTC", "60000")
    mark(3, "BTCUSDT", "60000")
    mark(3, CALL, "2000", "0")
    fill(4, "P", "buy", "0.5", "60000", "BTCUSDT")
    fill(5, "MM", "sell", "0.5", "60000", "BTCUSDT")
    fill(6, "P", "sell", "1", "2000", CALL)
    fill(7, "MM", "buy", "1", "2000", CALL)
    mark(8, CALL, "7000", "0")
    return out


@pytest.fixture
def portfolio_db(pg_server: PgServer) -> Iterator[sa.Engine]:
    with ledger_database(pg_server, "portfolio", _messages()) as engine:
        yield engine


def _orders(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT payload FROM events WHERE type = 'LiquidationOrderIssued' ORDER BY position")
        )
        return [dict(row.payload) for row in rows]


def test_explain_reruns_each_orders_search_on_the_book_with_the_earlier_orders_applied(
    portfolio_db: sa.Engine,
) -> None:
    orders = _orders(portfolio_db)
    assert [(o["instrument"], o["quantity"], o["full"]) for o in orders] == [
        (CALL, "1", True),
        ("BTCUSDT", "0.2", False),
    ]
    cell = {"underlying": "BTC", "move": "0.5", "volatility": "unchanged", "extreme": True}
    assert all(o["worst_cells"] == [cell] for o in orders)
    first, second = (explain(portfolio_db, o["liquidation_id"]) for o in orders)
    assert first["matches_decision"] and second["matches_decision"]
    search = second["liquidation"]
    assert (search["equity_before"], search["maintenance_before"]) == ("3965", "3840")
    at_quantity, one_less = search["at_quantity_and_one_step_less"]
    assert (at_quantity["reduce_by"], at_quantity["maintenance_after"], at_quantity["equity_after"]) == (
        "0.2", "2304", "3905")  # fmt: skip
    assert at_quantity["meets_target"] and not one_less["meets_target"]
    assert (one_less["reduce_by"], one_less["maintenance_after"]) == ("0.1", "3072")


def test_verify_replays_the_portfolio_liquidation_to_the_same_decisions(portfolio_db: sa.Engine) -> None:
    report = verify(portfolio_db)
    assert report.ok, json.dumps(report.as_dict(), default=str, indent=1)
    by_name = {check.name: check for check in report.checks}
    assert by_name["replay_determinism"].details["decisions_compared"] >= 2
