"""What ``LogReplay.feed`` keeps beside the fold, by the kind of input: fills by trade, liquidation
fills, the unmatched count, the last change of every mark (and settlement) price."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from clearing.audit.logreplay import LogReplay, ShardTrack
from clearing.domain.numbers import ledger_context
from tests.audit.test_conservation_samples import leg, liquidated, opened, rows
from tests.domain.test_fold import T0, Book, mark
from tests.domain.test_lifecycle import counterpart, liquidation_fill


def market() -> Book:
    book = Book()
    order = liquidated(book, seller_quantity="1.0")
    book.feed(liquidation_fill(order, "9000"))
    book.feed(counterpart(order, "9000", account="B"))
    book.feed(leg("t2", "C", "buy", "2", "9100"))
    book.feed(mark("ETHUSDT", "3000"))
    return book


def position(book: Book, event_type: str, **payload: str) -> int:
    found = [
        p
        for p, event in enumerate(book.log, 1)
        if event.type == event_type and all(event.payload.get(k) == v for k, v in payload.items())
    ]
    assert len(found) == 1, (event_type, payload, found)
    return found[0]


def test_fills_liquidation_fills_and_marks_are_kept_by_kind() -> None:
    book = market()
    replay = opened(LogReplay(decide=True))
    with ledger_context():
        for row in rows(book):
            replay.feed(row)
    replay.finish()
    assert replay.determinism_mismatches == 0

    t1a = position(book, "FillRecorded", fill_id="t1-A")
    t1b = position(book, "FillRecorded", fill_id="t1-B")
    t2 = position(book, "FillRecorded", fill_id="t2-C")
    market_side = position(book, "FillRecorded", fill_id="LC-1")
    liquidation = position(book, "LiquidationFillRecorded")
    side = book.log[liquidation - 1].payload["side"]
    quantity = book.log[liquidation - 1].payload["quantity"]
    # t1's two fills are counterparts ("1.0" decoded is logged as "1"): settled, by position.
    assert "t1" not in replay.fills and replay.trades_settled == {"t1": (t1a, t1b)}
    assert replay.fills["t2"] == [(t2, "C", "BTCUSDT", "buy", "2", "9100")]
    market_trade = book.log[market_side - 1].payload["trade_id"]
    assert list(replay.fills) == [market_trade, "t2"]  # trades in the order of their first fill
    assert replay.trades == 3
    assert replay.fills[market_trade] == [
        (market_side, "B", "BTCUSDT", "buy" if side == "sell" else "sell", quantity, "9000")
    ]
    assert replay.liquidation_fills == [(liquidation, "A", "BTCUSDT", side, quantity, "9000")]
    # The liquidation fill and its market side match; t2 waits for its other side.
    assert replay.unmatched == {("BTCUSDT", "2", "9100"): 1}  # keyed by the wire form

    track = replay.shards[0]
    assert track.mark_change == {
        "BTCUSDT": position(book, "MarkRecorded", symbol="BTCUSDT"),
        "ETHUSDT": position(book, "MarkRecorded", symbol="ETHUSDT"),
    }
    # Only the lone t2 fill lacks its other side: an open break, no longer a finding (its other
    # side may still come, or the exchange may bust it).
    assert replay.counterpart_findings() == []
    assert [(b.position, b.trade_id, b.account_id) for b in replay.open_breaks()] == [(t2, "t2", "C")]


def test_without_the_fill_check_marks_are_still_tracked_and_fills_are_not() -> None:
    book = market()
    replay = LogReplay(decide=False, check_fills=False)
    for row in rows(book):
        replay.feed(row)
    replay.finish()
    assert replay.fills == {} and replay.liquidation_fills == [] and replay.unmatched == {}
    assert replay.shards[0].mark_change["ETHUSDT"] == position(book, "MarkRecorded", symbol="ETHUSDT")


def test_a_settlement_price_is_a_change_of_the_mark() -> None:
    # A dated future's settlement price moves its mark as a mark does (``_apply_settlement``).
    payload = {"type": "settlement", "symbol": "BTCUSDT", "price": "9100", "occurred_at": T0.isoformat()}
    replay = LogReplay(decide=False, check_fills=False)
    at = T0.isoformat()
    replay.feed((1, 0, "SettlementPriceRecorded", json.dumps(payload), at, at, "s0/settlement/1", None, "mark:BTCUSDT"))
    assert replay.shards[0].mark_change == {"BTCUSDT": 1}
    assert replay.shards[0].state.marks["BTCUSDT"].price == Decimal("9100")


def test_the_engine_re_run_refuses_to_compute_outside_the_ledger_context() -> None:
    # The re-run calls the step's undecorated body (fold.step_in_context): under the default
    # context (28 digits, no traps) its sums would round where the ledger's are exact.
    replay = opened(LogReplay(decide=True))
    first = rows(market())[0]
    with pytest.raises(RuntimeError, match="ledger context"):
        replay.feed(first)
    assert replay.events == 0 and replay.head == 0  # nothing of the refused row is kept
    with ledger_context():
        replay.feed(first)
    assert replay.events == 1


def test_the_margin_refresh_after_a_mark_sees_the_holders_as_they_are_now() -> None:
    # ``_refresh_rotation`` keeps the sorted holders between marks: a holder a fill adds or
    # removes in between (the fold changes the sets in place) is in the next refresh or not.
    track = ShardTrack()
    track.state.holders = {"BTCUSDT": {"B", "A"}, "ETHUSDT": {"A"}}
    assert LogReplay._refresh_rotation(track, 10) == ["A", "B"]
    assert LogReplay._refresh_rotation(track, 11) == ["A", "B"]
    track.state.holders["ETHUSDT"].add("C")
    assert LogReplay._refresh_rotation(track, 12) == ["A", "B", "C"]
    track.state.holders["BTCUSDT"].discard("A")
    assert LogReplay._refresh_rotation(track, 13) == ["A", "B", "C"]  # A still holds ETHUSDT
    track.state.holders["ETHUSDT"].discard("A")
    assert LogReplay._refresh_rotation(track, 14) == ["B", "C"]


def test_a_busted_fill_leaves_its_trade_and_a_correction_pairs_with_the_fill_that_stands() -> None:
    from tests.domain.test_pairs_and_busts import BustingBook, bust
    from tests.domain.test_pairs_and_busts import leg as fill_leg

    book = BustingBook()
    book.feed(fill_leg("T1", "A", "buy", "1", "100"))
    book.feed(fill_leg("T1", "B", "sell", "1", "100"))
    book.feed(bust("B-1", "T1-B-sell", "B"))  # a paired trade's second fill busted ...
    book.feed(fill_leg("T1", "C", "sell", "1", "100"))  # ... and corrected under the same trade id
    book.feed(fill_leg("T2", "A", "buy", "1", "100"))
    book.feed(bust("B-2", "T2-A-buy", "A"))  # a lone fill busted
    book.feed(fill_leg("T3", "A", "sell", "2", "100"))  # a lone fill: an open break
    replay = opened(LogReplay(decide=True))  # the book's log starts under the bundled parameters
    with ledger_context():
        for row in rows(book):
            replay.feed(row)
    replay.finish()
    assert replay.determinism_mismatches == 0
    assert replay.busts == []  # each found its fill at once
    assert replay.counterpart_findings() == []
    assert [(b.trade_id, b.account_id, b.side) for b in replay.open_breaks()] == [("T3", "A", "sell")]
    assert replay.unmatched == {("BTCUSDT", "2", "100"): -1}
    assert not replay.conservation_bad and replay.conservation_explained == {"USDT": Decimal(200)}
