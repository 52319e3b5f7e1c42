"""Margin-model requests and dynamic margin through the engine, on PostgreSQL and the broker: the
``margin_model`` decisions go out on ``clearing.account-updates`` (keyed by the account), every
dynamic-margin sample on ``clearing.margin-rates`` with the contract's fields, a multiplier rise
calls a standard account in the step that takes it, and ``audit verify`` re-runs the fold to the
same decisions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.verify import verify
from clearing.domain import events as ev
from clearing.domain.dynamicmargin import BOUNDARIES_PER_EVENT_MAX
from clearing.domain.params import bundled_document
from tests.integration.conftest import InProcessLedger, consume_topic, produce

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # on an hour boundary


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def deposit(account: str, amount: str, seconds: int, tid: str = "") -> tuple[str, str, dict[str, Any]]:
    value = {"type": "deposit", "transfer_id": tid or f"d-{account}-{seconds}", "account_id": account,
             "asset": "USDT", "amount": amount, "occurred_at": at(seconds)}  # fmt: skip
    return "transfers", account, value


def fill(account: str, side: str, fid: str, trade: str, seconds: int) -> tuple[str, str, dict[str, Any]]:
    value = {"type": "fill", "fill_id": fid, "trade_id": trade, "account_id": account, "instrument": "BTCUSDT",
             "side": side, "quantity": "1", "price": "10000", "fee": "0", "fee_asset": "USDT",
             "occurred_at": at(seconds)}  # fmt: skip
    return "fills", account, value


def mark(symbol: str, price: str, seconds: int) -> tuple[str, str, dict[str, Any]]:
    return "marks", symbol, {"type": "mark", "symbol": symbol, "price": price, "occurred_at": at(seconds)}


def model_request(account: str, model: str, rid: str, seconds: int) -> tuple[str, str, dict[str, Any]]:
    value = {"type": "margin_model", "request_id": rid, "account_id": account, "model": model,
             "occurred_at": at(seconds)}  # fmt: skip
    return "transfers", account, value


def decided(engine: sa.Engine, *types: str) -> list[tuple[int, str, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT position, type, payload FROM events WHERE type = ANY(:t) ORDER BY position"),
            {"t": list(types)},
        )
        return [(int(row.position), row.type, dict(row.payload)) for row in rows]


def test_model_decisions_and_rate_samples_reach_their_topics_and_verify(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    ledger = in_process_ledger
    document = copy.deepcopy(bundled_document())
    document["version"] = "rates-e2e.1"
    document["dynamic_margin"] = [
        {"underlying": "BTC", "sample_seconds": 3600, "lambda": "0.9", "initial_volatility": "0.02",
         "reference_volatility": "0.02", "multiplier_floor": "1", "multiplier_cap": "3", "release_buffer": "0.25"}
    ]  # fmt: skip
    # A: 80 USDT, long 1 BTCUSDT at 10,000 (standard MM 40). P: 1,600 USDT, the same long; under
    # portfolio its IM is 1,600 (the -16% cell), MM 1,280. B: the short side of both.
    phases: list[list[Any]] = [
        [("admin", None, {"type": "risk_parameters", "parameters": document, "occurred_at": at(0)})],
        [deposit("A", "80", 60), deposit("P", "1600", 60), deposit("B", "100000", 60)],
        [fill("A", "buy", "a1", "T1", 120), fill("B", "sell", "b1", "T1", 120),
         fill("P", "buy", "p1", "T2", 120), fill("B", "sell", "b2", "T2", 120)],
        [mark("BTCUSDT", "10000", 1800), mark("BTC", "100", 1800)],
        # P meets the portfolio IM (1,600 >= 1,600); A does not (80 < 1,600).
        [model_request("P", "portfolio", "S-1", 1860), model_request("A", "portfolio", "S-2", 1870)],
        # 13:10 crosses 13:00 (S_0 = 100: multiplier 1.25); BTC 110 at 13:20; 14:05 crosses 14:00
        # (S_1 = 110: multiplier 1.78073231945, and A's MM 71.22929278 against equity 80: a warning).
        [deposit("Z", "1", 4200)],
        [mark("BTC", "110", 4800)],
        [deposit("Z", "1", 7500)],
    ]  # fmt: skip
    for phase in phases:
        ledger.run_until(produce(broker, topic_prefix, phase).ends)

    updates = consume_topic(broker, topic_prefix + "account-updates", lambda values: len(values) >= 2)
    assert sorted((u["type"], u["request_id"], u["account_id"], u["model"]) for u in updates) == [
        ("margin_model_changed", "S-1", "P", "portfolio"),
        ("margin_model_rejected", "S-2", "A", "portfolio"),
    ]
    rejected = next(u for u in updates if u["type"] == "margin_model_rejected")
    assert rejected["reason"] == "equity 80 is below the initial margin 1600 that the portfolio model requires"
    changed = next(u for u in updates if u["type"] == "margin_model_changed")
    assert (changed["previous_model"], changed["equity"], changed["initial_margin"]) == ("standard", "1600", "1600")

    rates = consume_topic(broker, topic_prefix + "margin-rates", lambda values: len(values) >= 2)
    assert [(r["type"], r["underlying"], r["sample_at"], r["multiplier"]) for r in rates] == [
        ("margin_rates_changed", "BTC", "2026-11-23T13:00:00.000000Z", "1.25"),
        ("margin_rates_changed", "BTC", "2026-11-23T14:00:00.000000Z", "1.78073231945"),
    ]
    logged = decided(ledger.engine, ev.MARGIN_RATES_CHANGED)
    for message, (position, _type, payload) in zip(rates, logged, strict=True):
        assert message["position"] == position and message["volatility"] == payload["volatility"]
        assert message["raw_multiplier"] == payload["raw_multiplier"]
        assert message["parameters_version"] == "rates-e2e.1"
    assert [r["volatility"] for r in rates] == ["0.02", "0.035614646389"]

    calls = consume_topic(broker, topic_prefix + "margin-calls", lambda values: len(values) >= 2)
    by_account = {c["account_id"]: c for c in calls if c["type"] == "margin_call_issued"}
    # P: re-margined under portfolio as its request was approved (1,280 / 1,600 = 0.8: warning).
    # A: called by the multiplier rise, caused by the deposit that crossed 14:00.
    assert by_account["P"]["margin_ratio"] == "0.8"
    assert by_account["A"]["maintenance_margin"] == "71.22929278"
    assert by_account["A"]["cause_position"] == logged[1][0] - 1

    # An event after more than BOUNDARIES_PER_EVENT_MAX hourly boundaries is dead-lettered whole,
    # never sampled in part; the one at the limit is taken, every boundary sampled.
    last = 7500 + 3600 * BOUNDARIES_PER_EVENT_MAX
    ledger.run_until(produce(broker, topic_prefix, [deposit("Z", "1", last + 3600, "too-late")]).ends)
    with ledger.engine.connect() as conn:
        [error] = conn.execute(sa.text("SELECT error FROM dead_letters")).scalars().all()
    assert "dynamic margin BTC" in error and "BOUNDARIES_PER_EVENT_MAX" in error
    assert len(decided(ledger.engine, ev.MARGIN_RATES_CHANGED)) == 2
    ledger.run_until(produce(broker, topic_prefix, [deposit("Z", "1", last, "at-the-limit")]).ends)
    assert len(decided(ledger.engine, ev.MARGIN_RATES_CHANGED)) == 2 + BOUNDARIES_PER_EVENT_MAX

    report = verify(owner_engine)
    assert report.ok, [c.as_dict() for c in report.checks if not c.ok]
