"""Typed decisions: each decision's payload is spelt once, and reading a logged payload and
writing it again gives the same bytes (field names, order and digits), so logs written before the
decisions were typed replay to identical decisions."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings

from clearing.domain import events as ev
from clearing.domain.decisions import DECISIONS, MarginCallIssued, decision_of
from clearing.domain.messages import InputError
from tests.domain.test_fold import Book, markets
from tests.domain.test_lifecycle import liquidation_fill


def round_trip(payload: dict[str, Any], event_type: str) -> dict[str, Any]:
    decision = decision_of(event_type, payload)
    assert decision is not None and event_type == decision.TYPE
    return decision.payload()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets())
def test_every_decision_payload_reads_back_to_the_same_bytes(msgs: list[Any]) -> None:
    book = Book()
    for msg in msgs:
        try:
            decisions = book.feed(msg)
        except InputError:
            continue
        for decision in decisions:
            if decision.type == ev.LIQUIDATION_ORDER_ISSUED:
                with contextlib.suppress(InputError):
                    book.feed(liquidation_fill(decision, decision.payload["mark"], fid=f"LF-{len(book.log)}"))
    for event in book.decisions:
        assert event.type in DECISIONS
        again = round_trip(event.payload, event.type)
        assert json.dumps(again) == json.dumps(event.payload)  # names, order and digits


def test_a_margin_call_payload_has_the_fields_of_the_contract_in_log_order() -> None:
    assert [name for name, _omit, _codec in MarginCallIssued.WIRE] == [
        "account_id",
        "margin_call_id",
        "scope",
        "level",
        "equity",
        "initial_margin",
        "maintenance_margin",
        "margin_ratio",
        "shortfall",
        "deadline",
        "marks",
        "worst_cells",
        "parameters_version",
    ]


def test_a_resolution_without_cancelled_orders_leaves_the_field_out() -> None:
    payload = {
        "account_id": "A", "margin_call_id": "MC-7", "scope": "cross", "level": "warning", "equity": "45",
        "initial_margin": "72.36", "maintenance_margin": "36.18", "margin_ratio": "0.804", "shortfall": "6.68571429",
        "deadline": None, "marks": {"BTCUSDT": "9045"}, "resolution": "ratio below resolve_ratio",
        "parameters_version": "v1",
    }  # fmt: skip
    assert round_trip(payload, ev.MARGIN_CALL_RESOLVED) == payload
    with_orders = {**payload, "parameters_version": "v1"}
    del with_orders["parameters_version"]
    with_orders.update({"cancelled_orders": [], "parameters_version": "v1"})
    assert json.dumps(round_trip(with_orders, ev.MARGIN_CALL_RESOLVED)) == json.dumps(with_orders)
