"""Conservation is sampled only where the books must balance: no fill waits for its other side."""

from __future__ import annotations

import json
from typing import Any

from clearing.audit.logreplay import LogReplay, ShardTrack
from clearing.domain import events as ev
from clearing.domain.numbers import ledger_context
from tests.domain.test_fold import T0, Book, deposit, mark, message, opened_state
from tests.domain.test_lifecycle import counterpart, liquidation_fill


def rows(book: Book) -> list[tuple[Any, ...]]:
    """The book's log as the replay reads it from the events table (``iter_log``: the payload and
    the times as text)."""
    return [
        (position, 0, event.type, json.dumps(event.payload), event.occurred_at.isoformat(), T0.isoformat(),
         event.idempotency_key,
         event.cause_position, event.stream)
        for position, event in enumerate(book.log, 1)
    ]


def opened(replay: LogReplay) -> LogReplay:
    """``replay`` with shard 0 starting where a book's log starts: just after the bundled parameters
    a ledger opens a log with, which the book leaves out (a replay starts before a log's first
    event, under the log-start parameters)."""
    replay.shards[0] = ShardTrack(state=opened_state())
    return replay


def leg(trade: str, account: str, side: str, quantity: str, price: str) -> Any:
    return message("fills", type="fill", fill_id=f"{trade}-{account}", trade_id=trade, account_id=account,
                   instrument="BTCUSDT", side=side, quantity=quantity, price=price, occurred_at=T0.isoformat())


def liquidated(book: Book, seller_quantity: str = "1") -> Any:
    """A, B and C deposit; A buys 1 BTCUSDT from B at 10,000 (B's fill says ``seller_quantity``);
    a mark at 9,000 liquidates A. Returns the liquidation order."""
    book.feed(deposit("A", "1000", "dA"))
    book.feed(deposit("B", "100000", "dB"))
    book.feed(deposit("C", "100000", "dC"))
    book.feed(leg("t1", "A", "buy", "1", "10000"))
    book.feed(leg("t1", "B", "sell", seller_quantity, "10000"))
    orders = [d for d in book.feed(mark("BTCUSDT", "9000")) if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert orders
    return orders[0]


def test_a_half_booked_trade_beside_a_liquidation_fill_is_not_a_balanced_point() -> None:
    book = Book()
    order = liquidated(book)
    # The liquidation fill arrives; before its market side does, one fill of an unrelated trade.
    book.feed(liquidation_fill(order, "9000"))
    half = len(book.log) + 1
    book.feed(leg("t9", "C", "buy", "2", "9100"))
    book.feed(counterpart(order, "9000", account="B"))
    book.feed(leg("t9", "B", "sell", "2", "9100"))

    replay = opened(LogReplay(decide=True, conservation_every=1))
    with ledger_context():
        for row in rows(book):
            replay.feed(row)
    replay.finish()
    assert replay.determinism_mismatches == 0
    # One half-booked trade and one liquidation fill: as many of each, which is what the sample
    # condition once counted, but not a point where the books balance.
    assert book.log[half - 1].payload["fill_id"] == "t9-C"
    assert half not in replay.conservation_checks
    assert replay.conservation_bad == []
    assert replay.conservation_checks[-1] == len(book.log)
