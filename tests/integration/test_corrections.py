"""Inputs that would break the books never enter the log, and a booked fill can be corrected,
through the real broker and PostgreSQL: a trade's second fill that is not its first's other side
is dead-lettered while matched pairs book; a lone fill is an open break for ``audit verify`` (with
its age, not a failure) until a ``fill_bust`` reverses it, after which verify is clean; a bust of
an unknown or already busted fill is dead-lettered, and a redelivered bust is a no-op."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.verify import verify
from clearing.domain.state import FEE_ACCOUNT
from tests.integration.conftest import InProcessLedger, balances_table, consume_topic, count, produce

pytestmark = pytest.mark.integration


def _t(second: int) -> str:
    return f"2026-11-23T12:00:{second:02d}.000Z"


def _deposit(transfer_id: str, account: str) -> dict[str, Any]:
    return {
        "type": "deposit",
        "transfer_id": transfer_id,
        "account_id": account,
        "asset": "USDT",
        "amount": "10000",
        "occurred_at": _t(1),
    }


def _fill(fill_id: str, trade_id: str, account: str, side: str, second: int = 2, **changes: Any) -> dict[str, Any]:
    return {
        "type": "fill",
        "fill_id": fill_id,
        "trade_id": trade_id,
        "account_id": account,
        "instrument": "BTCUSDT",
        "side": side,
        "quantity": "0.01",
        "price": "65000",
        "fee": "0.65",
        "fee_asset": "USDT",
        "liquidity": "taker",
        "margin_mode": "cross",
        "occurred_at": _t(second),
        **changes,
    }


def _bust(bust_id: str, fill_id: str, account: str) -> dict[str, Any]:
    return {
        "type": "fill_bust",
        "bust_id": bust_id,
        "fill_id": fill_id,
        "account_id": account,
        "reason": "erroneous trade",
        "occurred_at": _t(40),
    }


def _mark(price: str, second: int) -> dict[str, Any]:
    return {"type": "mark", "symbol": "BTCUSDT", "price": price, "occurred_at": _t(second)}


FUNDED = [
    ("transfers", "A1", _deposit("D-1", "A1")),
    ("transfers", "A2", _deposit("D-2", "A2")),
    ("transfers", "A3", _deposit("D-3", "A3")),
    ("marks", "BTCUSDT", _mark("65000", 1)),
]


def _letters(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT "offset", error FROM dead_letters ORDER BY topic, partition, "offset"'))
        return [(str(offset), error) for offset, error in rows]


def _positions(engine: sa.Engine) -> dict[str, Decimal]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT account_id, quantity FROM positions WHERE instrument = 'BTCUSDT'"))
        return {account: Decimal(quantity) for account, quantity in rows if Decimal(quantity) != 0}


def _checks(engine: sa.Engine) -> tuple[bool, dict[str, Any]]:
    report = verify(engine)
    return report.ok, {check.name: check for check in report.checks}


def test_mismatched_second_fills_are_dead_lettered_while_matched_pairs_book(
    in_process_ledger: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    running = in_process_ledger
    firsts = [("fills", "A1", _fill(f"F-{t}", f"T-{t}", "A1", "buy")) for t in ("q", "p", "i", "s")]
    setup = produce(broker, topic_prefix, [*FUNDED, *firsts])
    running.run_until(setup.ends)

    wrong = {
        "T-q": _fill("F-q2", "T-q", "A2", "sell", 3, quantity="0.02"),
        "T-p": _fill("F-p2", "T-p", "A2", "sell", 3, price="65000.5"),
        "T-i": _fill("F-i2", "T-i", "A2", "sell", 3, instrument="ETHUSDT"),
        "T-s": _fill("F-s2", "T-s", "A2", "buy", 3),
    }
    matched = [
        ("fills", "A1", _fill("F-ok1", "T-ok1", "A1", "buy", 3)),
        ("fills", "A3", _fill("F-ok1s", "T-ok1", "A3", "sell", 3)),
        ("fills", "A3", _fill("F-ok2", "T-ok2", "A3", "buy", 3, quantity="0.5", price="65010")),
        ("fills", "A2", _fill("F-ok2s", "T-ok2", "A2", "sell", 3, quantity="0.50", price="65010.0")),
    ]
    mixed = produce(broker, topic_prefix, [*(("fills", "A2", fill) for fill in wrong.values()), *matched])
    running.run_until(mixed.ends)

    errors = [error for _offset, error in _letters(owner_engine)]
    assert len(errors) == 4, errors
    for trade_id, words in {
        "T-q": "quantity 0.02 is not 0.01",
        "T-p": "price 65000.5 is not 65000",
        "T-i": "instrument ETHUSDT is not BTCUSDT",
        "T-s": "side buy is the first fill's side",
    }.items():
        (error,) = [e for e in errors if f"trade {trade_id}," in e]
        assert words in error and f"F-{trade_id[2:]}" in error, error
    dlq = consume_topic(broker, topic_prefix + "dlq", lambda values: len(values) >= 4)
    assert sorted(m["error"] for m in dlq) == sorted(errors)
    # The matched pairs booked; the wrong second fills did not (A2 holds the T-ok2 short only).
    assert _positions(owner_engine) == {
        "A1": Decimal("0.05"),
        "A2": Decimal("-0.5"),
        "A3": Decimal("0.49"),
    }
    # + 1: a new ledger opens its shard's log with the bundled risk parameters.
    assert running.stats.appended == 1 + len(FUNDED) + len(firsts) + len(matched)

    # The four trades are open breaks, not failures; their true second fills close them.
    ok, checks = _checks(owner_engine)
    assert ok and checks["counterparts"].details["open_breaks"] == 4
    right = [("fills", "A2", _fill(f"F-{t}r", f"T-{t}", "A2", "sell", 4)) for t in ("q", "p", "i", "s")]
    running.run_until(produce(broker, topic_prefix, right).ends)
    ok, checks = _checks(owner_engine)
    assert ok and checks["counterparts"].details["open_breaks"] == 0
    assert "open_breaks_amount" not in checks["conservation"].details


def test_a_bust_restores_verify_and_bad_busts_are_dead_lettered(
    in_process_ledger: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    running = in_process_ledger
    setup = produce(
        broker,
        topic_prefix,
        [
            *FUNDED,
            ("fills", "A1", _fill("F-1", "T-1", "A1", "buy")),
            ("fills", "A2", _fill("F-1s", "T-1", "A2", "sell")),
            ("fills", "A3", _fill("F-L", "T-L", "A3", "sell", 5)),  # its other side never comes
            ("marks", "BTCUSDT", _mark("65100", 30)),
        ],
    )
    running.run_until(setup.ends)
    balances_before_lone = {("A3", "USDT"): Decimal("10000"), (FEE_ACCOUNT, "USDT"): Decimal("1.30")}

    # An open break: listed with its age (event time of the log's latest event - its own), not a failure.
    ok, checks = _checks(owner_engine)
    assert ok
    counterparts = checks["counterparts"]
    assert counterparts.ok and counterparts.details["open_breaks"] == 1
    (listed,) = counterparts.details["open_breaks_listed"]
    assert (listed["trade_id"], listed["account_id"], listed["side"], listed["age_seconds"]) == (
        "T-L",
        "A3",
        "sell",
        25.0,
    )
    assert checks["conservation"].ok and checks["conservation"].details["open_breaks_amount"] == {"USDT": "650"}

    # The exchange busts it: the books are as before the fill, and verify is clean.
    running.run_until(produce(broker, topic_prefix, [("fills", "A3", _bust("B-1", "F-L", "A3"))]).ends)
    ok, checks = _checks(owner_engine)
    assert ok and checks["counterparts"].details["open_breaks"] == 0 and checks["counterparts"].details["busts"] == 1
    assert "open_breaks_amount" not in checks["conservation"].details
    balances = balances_table(owner_engine)
    assert {key: balances[key] for key in balances_before_lone} == balances_before_lone
    assert "A3" not in _positions(owner_engine)
    assert count(owner_engine, "SELECT count(*) FROM events WHERE type = 'FillBusted'") == 1

    # The same bust again is a redelivery (a no-op); a second bust of that fill and a bust of an
    # unknown fill are dead-lettered with the reason.
    bad = produce(
        broker,
        topic_prefix,
        [
            ("fills", "A3", _bust("B-1", "F-L", "A3")),
            ("fills", "A3", _bust("B-2", "F-L", "A3")),
            ("fills", "A1", _bust("B-3", "F-nope", "A1")),
        ],
    )
    running.run_until(bad.ends)
    errors = sorted(error for _offset, error in _letters(owner_engine))
    assert len(errors) == 2, errors
    assert any("F-L was already busted by B-1" in e for e in errors), errors
    assert any("no fill 'F-nope' is booked for account A1" in e for e in errors), errors
    assert count(owner_engine, "SELECT count(*) FROM events WHERE type = 'FillBusted'") == 1
    assert running.stats.duplicates == 1
    dlq = consume_topic(broker, topic_prefix + "dlq", lambda values: len(values) >= 2)
    assert sorted(m["error"] for m in dlq) == errors
    ok, _checks_after = _checks(owner_engine)
    assert ok
