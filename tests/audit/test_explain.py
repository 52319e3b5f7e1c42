"""``clearing audit explain``: the figures it prints recompute, with a calculator's arithmetic,
to the numbers in the decision's payload."""

from __future__ import annotations

import json
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.explain import explain, render
from tests.audit.audit_data import market_url, owner  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.integration]

D = Decimal
UP8 = D("0.00000001")
UP10 = D("0.0000000001")


def up(value: Decimal, quantum: Decimal = UP8) -> Decimal:
    return value.quantize(quantum, rounding=ROUND_CEILING)


def ids(engine: sa.Engine, sql: str) -> list[str]:
    with engine.connect() as conn:
        return [str(v) for v in conn.execute(sa.text(sql)).scalars()]


def recompute_scope(scope: dict[str, Any]) -> dict[str, Decimal | None]:
    """The explanation's inputs -> equity, requirements, ratio, by hand."""
    collateral = D(0)
    for item in scope["collateral"]:
        if "asset" in item:
            amount, price = D(item["amount"]), D(item["price"])
            lost = D(0)
            for band in item["haircut_bands"]:
                low, high = D(band["from"]), None if band["to"] is None else D(band["to"])
                if amount > low:
                    lost += ((amount if high is None else min(amount, high)) - low) * D(band["haircut"])
            if amount < 0:
                lost = D(0)
            assert lost == D(item["haircut_units"])
            collateral += price * (amount - lost)
        else:
            collateral += D(item["value"])
    pnl = initial = maintenance = D(0)
    for p in scope["positions"]:
        q, cs, price, s = D(p["quantity"]), D(p["contract_size"]), D(p["price_used"]), D(p["settlement_price"])
        notional = abs(q) * cs * price
        assert notional == D(p["notional"])
        floor, cap = D(p["tier_notional_floor"]), p["tier_notional_cap"]
        assert floor <= notional and (cap is None or notional <= D(cap))
        pnl += s * (q * cs * price - D(p["cost"]))
        maintenance += up(s * (notional * D(p["maintenance_rate"]) - D(p["maintenance_amount"])))
        initial += up(s * (notional * D(p["initial_rate"]) - D(p["initial_amount"])))
    equity = collateral + pnl
    ratio = up(maintenance / equity, UP10) if equity > 0 and maintenance > 0 else None
    return {"equity": equity, "initial_margin": initial, "maintenance_margin": maintenance, "margin_ratio": ratio}


def test_margin_calls_recompute_to_their_payload(owner: sa.Engine) -> None:  # noqa: F811
    calls = ids(owner, "SELECT DISTINCT payload->>'margin_call_id' FROM events WHERE type = 'MarginCallIssued'")
    assert calls
    for call_id in calls:
        result = explain(owner, call_id)
        assert result["matches_decision"], call_id
        payload = result["decision"]["payload"]
        figures = recompute_scope(result["scope"])
        for name in ("equity", "initial_margin", "maintenance_margin"):
            assert figures[name] == D(payload[name]), (call_id, name)
        if payload["margin_ratio"] is not None:
            assert figures["margin_ratio"] == D(payload["margin_ratio"])
        resolve = D(result["scope"]["thresholds"]["resolve_ratio"])
        assert D(payload["shortfall"]) == max(D(0), up(figures["maintenance_margin"] / resolve - figures["equity"]))
        text = render(result)
        assert payload["equity"] in text and "matches the decision" in text


def test_liquidation_orders_recompute_to_their_payload(owner: sa.Engine) -> None:  # noqa: F811
    orders = ids(owner, "SELECT payload->>'liquidation_id' FROM events WHERE type = 'LiquidationOrderIssued'")
    assert orders
    for liquidation_id in orders:
        result = explain(owner, liquidation_id)
        assert result["matches_decision"], liquidation_id
        payload, liq = result["decision"]["payload"], result["liquidation"]
        equity, maintenance = D(liq["equity_before"]), D(liq["maintenance_before"])
        assert equity == D(payload["equity"]) and maintenance == D(payload["maintenance_margin"])
        p = liq["position"]
        quantity, cs, mark, s = D(liq["quantity"]), D(p["contract_size"]), D(p["price_used"]), D(p["settlement_price"])
        target = D(liq["target_ratio"])
        for step in liq["at_quantity_and_one_step_less"]:
            reduce = D(step["reduce_by"])
            fee = up(reduce * cs * mark * D(liq["fee_rate"]) * s)
            assert fee == D(step["fee"])
            new_equity = equity - fee
            new_maintenance = maintenance - D(p["maintenance_margin"]) + D(step["maintenance_left"])
            assert (new_equity, new_maintenance) == (D(step["equity_after"]), D(step["maintenance_after"]))
            assert step["meets_target"] == (new_equity > 0 and new_maintenance <= target * new_equity)
        checks = liq["at_quantity_and_one_step_less"]
        if not liq["full"]:
            assert checks[0]["meets_target"]
            if len(checks) > 1:
                assert not checks[1]["meets_target"]  # one step less is not enough: the least quantity
        long = D(p["quantity"]) > 0
        raw = mark - equity / (quantity * cs * s) if long else mark + equity / (quantity * cs * s)
        rounded = raw.quantize(UP10, rounding=ROUND_CEILING if long else "ROUND_FLOOR")
        assert max(rounded, D(0)) == D(payload["bankruptcy_price"])
        assert "Bankruptcy price" in render(result)


def test_cli_explain(market_url: str, owner: sa.Engine, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:  # noqa: F811
    from clearing.cli import main

    call_id = ids(owner, "SELECT payload->>'margin_call_id' FROM events WHERE type = 'MarginCallIssued' LIMIT 1")[0]
    monkeypatch.setenv("CLEARING_DATABASE_URL", market_url)
    assert main(["audit", "explain", call_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == call_id
    assert main(["audit", "explain", "MC-NOPE"]) == 1


LONG_NUMBER = r"\d+\.\d{11,}"  # more decimal places than any price is shown with


def test_the_words_show_prices_at_display_precision_and_omit_what_does_not_apply(owner: sa.Engine) -> None:  # noqa: F811
    import re

    liquidation = ids(owner, "SELECT payload->>'liquidation_id' FROM events WHERE type = 'LiquidationOrderIssued' "
                             "ORDER BY position LIMIT 3")
    calls = ids(owner, "SELECT payload->>'margin_call_id' FROM events WHERE type = 'MarginCallIssued' "
                       "ORDER BY position LIMIT 5")
    assert liquidation and calls
    for decision_id in liquidation + calls:
        result = explain(owner, decision_id)
        words = render(result)
        assert "None" not in words, decision_id
        assert not re.search(LONG_NUMBER, words), (decision_id, re.findall(LONG_NUMBER, words)[:3])
        assert result["matches_decision"]
    # The JSON keeps every digit (a calculator redoes the arithmetic from it).
    search = explain(owner, liquidation[0])["liquidation"]
    assert len(search["bankruptcy_price_unrounded"]) > len(search["bankruptcy_price"])
