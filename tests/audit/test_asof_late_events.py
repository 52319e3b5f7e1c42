"""The two time-travel questions with the demo's pattern: a liquidation execution arrives late,
stamped with its order's time, after marks that happened later.

Event time (``--as-of-event-time``, and ``--as-of TIMESTAMP``): the fold of the events that had
happened by T, in log order: the late execution counts, the later marks do not. On 05ad1d6 a
timestamp meant "up to the last position whose event happened by T", which the late execution
pushed to the end of the log: every later mark counted. Ledger time (``--as-of-ledger-time``): what
the ledger had recorded by T, a prefix of the log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing import liquidator
from clearing.audit.asof import AsOf, account_as_of, account_view_of
from clearing.audit.report import _risk_series, build_timeline, render_html
from clearing.domain.fold import replay_event
from clearing.domain.inputs import format_time
from clearing.domain.state import LedgerState
from clearing.engine.ledger import Ledger, RawRecord
from clearing.store.db import make_engine, upgrade

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
PREFIX = "clearing."


class Feed:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.offsets: dict[str, int] = {}

    def send(self, *messages: tuple[str, str, dict[str, Any]]) -> None:
        records = []
        for kind, key, value in messages:
            offset = self.offsets.get(kind, 0)
            self.offsets[kind] = offset + 1
            records.append(RawRecord(kind, PREFIX + kind, 0, offset, key.encode(), json.dumps(value).encode()))
        self.ledger.process(records)


def at(seconds: int) -> str:
    return format_time(T0 + timedelta(seconds=seconds))


def mark(price: str, seconds: int) -> tuple[str, str, dict[str, Any]]:
    return ("marks", "BTCUSDT", {"type": "mark", "symbol": "BTCUSDT", "price": price, "occurred_at": at(seconds)})


def deposit(account: str, amount: str, seconds: int) -> tuple[str, str, dict[str, Any]]:
    return ("transfers", account, {"type": "deposit", "transfer_id": f"D-{account}", "account_id": account,
                                   "asset": "USDT", "amount": amount, "occurred_at": at(seconds)})


def fill(account: str, side: str, seconds: int) -> tuple[str, str, dict[str, Any]]:
    return ("fills", account, {"type": "fill", "fill_id": f"F-{account}", "trade_id": "T-1", "account_id": account,
                               "instrument": "BTCUSDT", "side": side, "quantity": "50", "price": "100", "fee": "0",
                               "fee_asset": "USDT", "occurred_at": at(seconds)})


@pytest.fixture
def late_market(pg_server) -> Iterator[sa.Engine]:  # type: ignore[no-untyped-def]
    name = f"clearing_test_late_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        app = make_engine(url, role="clearing_app")
        ledger = Ledger(app)
        ledger.load()
        feed = Feed(ledger)
        feed.send(liquidator.deposit_message(), mark("100", 0), deposit("A", "1000", 1), deposit("B", "100000", 1))
        feed.send(fill("A", "buy", 2), fill("B", "sell", 2))
        feed.send(mark("80.2", 10))  # A (5x long) falls below maintenance: a liquidation order at t0+10s
        feed.send(mark("80.5", 20), mark("81", 30))  # later marks, recorded before the execution
        with app.connect() as conn:
            order = conn.execute(
                sa.text("SELECT payload, occurred_at FROM events WHERE type = 'LiquidationOrderIssued' "
                        "ORDER BY position LIMIT 1")
            ).one()
        # The execution comes back late, stamped with the order's time (clearing/liquidator.py).
        feed.send(*liquidator.liquidation_messages({**order.payload, "occurred_at": format_time(order.occurred_at)}))
        app.dispose()
        engine = make_engine(url)
        yield engine
        engine.dispose()
    finally:
        pg_server.drop_database(name)


def fold_where(engine: sa.Engine, condition: str, **params: Any) -> tuple[LedgerState, int]:
    state = LedgerState()
    last = 0
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT position, type, payload FROM events WHERE {condition} ORDER BY position"), params
        )
        for position, event_type, payload in rows:
            replay_event(state, event_type, payload)
            last = position
    return state, last


def test_event_time_counts_the_late_execution_and_not_the_later_marks(late_market: sa.Engine) -> None:
    with late_market.connect() as conn:
        late = conn.execute(
            sa.text("SELECT position FROM events WHERE type = 'LiquidationFillRecorded'")
        ).scalar_one()
        head = conn.execute(sa.text("SELECT max(position) FROM events")).scalar_one()
    moment = T0 + timedelta(seconds=15)  # after the order and its execution, before the marks 80.5 and 81
    view = account_as_of(late_market, "A", format_time(moment))
    assert view == account_as_of(late_market, "A", AsOf("event_time", moment=moment))
    state, last = fold_where(late_market, "occurred_at <= :t", t=moment)
    expected = account_view_of(state, "A", last)
    assert expected is not None and view is not None
    # Left out: the marks of 80.5 and 81 and the resolution the first one caused.
    assert view["as_of"] == {"question": "event_time", "time": format_time(moment), "events_left_out": 3}
    assert late < view["as_of_position"] == head  # the execution's insurance-fund draw is the last folded
    assert {k: v for k, v in view.items() if k != "as_of"} == expected
    # The execution is in (the position was reduced) and the state is at the mark of 80.2, not 81:
    at_head = account_as_of(late_market, "A", str(head))
    assert at_head is not None and view["positions"] == at_head["positions"]
    assert state.marks["BTCUSDT"].price == Decimal("80.2")
    # The old reading (the log up to the last position whose event happened by T) is the head.
    assert {k: v for k, v in view.items() if k != "as_of"} != at_head


def test_before_the_late_execution_happened_it_is_left_out(late_market: sa.Engine) -> None:
    moment = T0 + timedelta(seconds=5)  # after the fill, before the crash and the order
    view = account_as_of(late_market, "A", AsOf("event_time", moment=moment))
    assert view is not None
    assert view["positions"][0]["quantity"] == "50"
    with late_market.connect() as conn:
        trade = conn.execute(sa.text("SELECT max(position) FROM events WHERE type = 'FillRecorded' "
                                     "AND occurred_at <= :t"), {"t": moment}).scalar_one()
    assert view["as_of_position"] == trade and view["as_of"]["events_left_out"] == 0


def test_ledger_time_is_what_the_ledger_had_recorded(late_market: sa.Engine) -> None:
    with late_market.connect() as conn:
        batches = conn.execute(
            sa.text("SELECT recorded_at, max(position) FROM events GROUP BY recorded_at ORDER BY recorded_at")
        ).all()
    assert len(batches) >= 5
    recorded_at, last = batches[3]  # after the later marks, before the late execution was recorded
    view = account_as_of(late_market, "A", AsOf("ledger_time", moment=recorded_at))
    state, _ = fold_where(late_market, "position <= :p", p=last)
    assert view is not None and view["as_of_position"] == last
    assert {k: v for k, v in view.items() if k != "as_of"} == account_view_of(state, "A", last)
    assert view["as_of"]["question"] == "ledger_time"
    before = account_as_of(late_market, "A", AsOf("ledger_time", moment=batches[0][0] - timedelta(seconds=1)))
    assert before is None


def test_the_reports_equity_line_never_runs_backwards(late_market: sa.Engine) -> None:
    timeline = build_timeline(late_market, "A")
    pairs = zip(timeline.risk, timeline.risk[1:], strict=False)
    assert any(point.occurred_at < previous.occurred_at for previous, point in pairs)  # a late event
    for line in _risk_series(timeline.risk):
        xs = [x for x, _ in line.points]
        assert len(xs) >= 4 and xs == sorted(xs), line.label


def test_the_reports_default_period_is_the_accounts_own_activity(late_market: sa.Engine) -> None:
    timeline = build_timeline(late_market, "B")  # deposited and traded at t0+1s and t0+2s; the log runs to t0+30s
    assert timeline.default_window
    assert timeline.start == T0 + timedelta(seconds=1)
    assert timeline.end is not None and T0 + timedelta(seconds=2) < timeline.end < T0 + timedelta(seconds=3)
    assert [event.type for event in timeline.events] == ["CollateralDeposited", "FillRecorded"]
    assert all(point.at <= T0 + timedelta(seconds=2) for point in timeline.risk)
    assert "first to last event" in render_html(timeline)
    chosen = build_timeline(late_market, "B", end=T0 + timedelta(seconds=25))
    assert not chosen.default_window and chosen.start == T0 + timedelta(seconds=1)
