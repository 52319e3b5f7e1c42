"""``clearing audit explain`` of a margin call and a liquidation order on an account holding options:
each option's standard option margin is shown term by term, and the terms recompute by hand to the
figures of the decision."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.explain import explain, render
from clearing.simulate import Message
from tests.audit.audit_data import ledger_database
from tests.conftest import PgServer

pytestmark = [pytest.mark.integration]

D = Decimal
CALL = "BTC-26MAR27-70000-C"
PUT = "BTC-26MAR27-60000-P"
T = "2026-11-23T12:00:{:02d}Z"


def up(value: Decimal) -> Decimal:
    return value.quantize(D("0.00000001"), rounding=ROUND_CEILING)


def _messages() -> list[Message]:
    """S writes a call and a put against MM, then the underlying jumps and the call's mark with it."""
    out: list[Message] = []

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

    for account, amount in (("S", "20000"), ("MM", "10000000")):
        out.append(Message("transfers", account, {"type": "deposit", "transfer_id": f"d{account}",
                                                  "account_id": account, "asset": "USDT", "amount": amount,
                                                  "occurred_at": T.format(0)}))  # fmt: skip
    mark(1, "BTC", "60000")
    mark(2, CALL, "1500", "0.6")
    mark(3, PUT, "900", "0.65")
    fill(4, "S", "sell", "1", "1500", CALL)
    fill(5, "MM", "buy", "1", "1500", CALL)
    fill(6, "S", "sell", "1", "900", PUT)
    fill(7, "MM", "buy", "1", "900", PUT)
    mark(8, "BTC", "79000")
    mark(9, CALL, "12000", "0.8")
    return out


@pytest.fixture
def options_db(pg_server: PgServer) -> Iterator[sa.Engine]:
    with ledger_database(pg_server, "options", _messages()) as engine:
        yield engine


def _ids(engine: sa.Engine, sql: str) -> list[str]:
    with engine.connect() as conn:
        return [str(v) for v in conn.execute(sa.text(sql)).scalars()]


def test_explain_of_a_call_on_an_options_account_shows_each_options_arithmetic(options_db: sa.Engine) -> None:
    calls = _ids(options_db, "SELECT payload->>'margin_call_id' FROM events WHERE type = 'MarginCallIssued'")
    assert calls
    result: dict[str, Any] = explain(options_db, calls[0])
    assert result["matches_decision"]
    payload = result["decision"]["payload"]
    initial = maintenance = value = D(0)
    for p in result["scope"]["positions"]:
        o = p["option"]
        u, k, mark, n = D(o["underlying_mark"]), D(o["strike"]), D(p["price_used"]), D(o["contracts"])
        assert o["short"]
        mr, ir, fr = D(o["maintenance_rate"]), D(o["initial_rate"]), D(o["minimum_rate"])
        if o["option_type"] == "call":
            otm = max(k - u, D(0))
            per_mm = mr * u + mark
            per_im = max(ir * u - otm, fr * u) + mark
        else:
            otm = max(u - k, D(0))
            per_mm = max(mr * u, mr * mark) + mark
            per_im = max(max(ir * u - otm, fr * u) + mark, per_mm)
        assert (otm, per_mm, per_im) == (D(o["out_of_the_money"]), D(o["maintenance_per_contract"]),
                                         D(o["initial_per_contract"]))  # fmt: skip
        maintenance += up(per_mm * n)
        initial += up(per_im * n)
        value += D(p["quantity"]) * D(p["contract_size"]) * mark
    assert (D(payload["maintenance_margin"]), D(payload["initial_margin"])) == (maintenance, initial)
    assert D(payload["equity"]) == D(20000) + 1500 + 900 + value
    text = render(result)
    assert "short call: OTM = max(70000 - 79000, 0) = 0" in text
    assert "maintenance per contract = max(0.075 x 79000 = 5925" in text  # the put's rule, both terms
    assert "matches the decision" in text


def test_explain_of_the_liquidation_order_closes_the_short_option_first(options_db: sa.Engine) -> None:
    orders = _ids(options_db, "SELECT payload->>'liquidation_id' FROM events WHERE type = 'LiquidationOrderIssued' "
                              "ORDER BY position")  # fmt: skip
    assert orders
    result = explain(options_db, orders[0])
    assert result["matches_decision"]
    assert result["liquidation"]["position"]["instrument"] == CALL  # the larger requirement of two short options
    assert "Bankruptcy price" in render(result)


def test_the_report_charts_the_option_positions_and_the_underlying(options_db: sa.Engine, tmp_path: Any) -> None:
    import re

    from clearing.audit.report import write_report

    output = tmp_path / "report.html"
    timeline = write_report(options_db, "S", output)
    assert [(p.quantity) for p in timeline.option_positions[CALL]] == [D(-1)]
    assert [(p.quantity) for p in timeline.option_positions[PUT]] == [D(-1)]
    assert "BTC" in timeline.marks  # the options' underlying, though S never traded it
    document = output.read_text(encoding="utf-8")
    assert "Option positions (contracts, negative = short)" in document
    assert len(re.findall(r"<polyline", document)) >= 3 + len(timeline.marks) + 2
