"""The margin-call lifecycle on portfolio accounts: liquidation plans that reduce the positions
contributing most to the worst cell by the least quantity that restores target_ratio, measured
on the book re-evaluated with every planned reduction applied; and the worst cells that every
decision under the portfolio model names (and standard decisions leave out).

Hand grids (as in test_portfolio_model): iv 0 and vol_up_floor 0, so every volatility cell is 0
and an option's value in a cell is its intrinsic value (r = 0). BTC and BTCUSDT are marked
60,000; the grid's moves are -0.16 .. 0.16 by 0.04 (a move m moves the underlying by 60,000 m),
the extreme moves -0.33 and 0.5 are counted at 0.35; short_option_minimum_rate 0.01 (600 a
contract here), maintenance_factor 0.8. Per contract of the 60,000 call a cell's P&L is
max(60,000 m, 0) long, of the perpetual 60,000 m. The bundled liquidation policy: target_ratio
0.7, fee_rate 0.005 of the notional at the price in use; resolve_ratio 0.7, no grace period."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal as D
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain import models
from clearing.domain.decisions import WorstCell, decision_of
from clearing.domain.marginmodel import CROSS, Planned, quantity_step
from clearing.domain.messages import InputError
from clearing.domain.portfolio import PORTFOLIO
from tests.domain.test_fold import T0, Book, deposit, fill, mark, message
from tests.domain.test_lifecycle import liquidation_fill
from tests.domain.test_portfolio_model import parameters_document

CALL = "BTC-26MAR27-60000-C"
PUT = "BTC-26MAR27-60000-P"
CALL_70 = "BTC-26MAR27-70000-C"
PUT_70 = "BTC-26MAR27-70000-P"
OPTIONS = [CALL, PUT, CALL_70, PUT_70]
TARGET = D("0.7")
# The worst cells the worked books below end in.
UP_EXTREME = {"underlying": "BTC", "move": "0.5", "volatility": "unchanged", "extreme": True}
DOWN_16 = {"underlying": "BTC", "move": "-0.16", "volatility": "up", "extreme": False}
CALLED = (ev.MARGIN_CALL_ISSUED, ev.MARGIN_CALL_ESCALATED)


def at(seconds: int) -> Any:
    return T0 + timedelta(seconds=seconds)


def option_mark(symbol: str, price: str, iv: str = "0", when: int = 0) -> Any:
    return message("marks", type="mark", symbol=symbol, price=price, iv=iv, occurred_at=at(when).isoformat())


def option_fill(account: str, side: str, quantity: str, price: str, *, fid: str, instrument: str = CALL) -> Any:
    return fill(account, side, quantity, price, fid=fid, instrument=instrument)


def portfolio_book(deposit_a: str) -> Book:
    """Parameters with BTC's grid in force, A (on the portfolio model) holding ``deposit_a``, B
    (standard) the counterparty with plenty; BTC, BTCUSDT and the options marked, iv 0."""
    book = Book()
    book.feed(message("admin", type="risk_parameters", parameters=json.loads(json.dumps(parameters_document()))))
    book.feed(deposit("A", deposit_a, "dA"))
    book.state.accounts["A"].margin_model = PORTFOLIO
    book.feed(deposit("B", "10000000", "dB"))
    book.feed(mark("BTC", "60000"))
    book.feed(mark("BTCUSDT", "60000"))
    for symbol in OPTIONS:
        book.feed(option_mark(symbol, "2000"))
    return book


def cross(book: Book, account: str = "A") -> Any:
    return models.scope_risk(book.state, book.state.accounts[account], CROSS, liquidation_prices=False)


def enough(book: Book, instrument: str, reduce: str) -> bool:
    """Whether reducing ``instrument`` by ``reduce`` alone brings A's cross scope to target_ratio
    (the model's own arithmetic, on the book before any order is executed)."""
    account = book.state.accounts["A"]
    risk = cross(book)
    position = risk.position(instrument)
    assert position is not None
    scope = models.evaluated_scope(book.state, account, risk)
    planned = Planned({}, risk.equity, risk.maintenance_margin)
    return models.model_of(account).reduction(scope, planned, position, D(reduce)).meets(TARGET)


def test_a_naked_short_call_is_bought_back_by_the_least_quantity_that_restores_the_target() -> None:
    """Short 2.05 calls sold at 2,000 with 30,000 deposited. Up moves lose 2.05 x 60,000 m: 19,680
    at +0.16; the extreme +0.5 loses 2.05 x 30,000 = 61,500, x 0.35 = 21,525: the worst cell.
    S = 600 x 2.05 = 1,230; IM = 21,525, MM = 17,220. Equity 30,000 (premium 4,100 in, the calls
    valued -4,100): ratio 0.574, healthy.

    The call's mark rises to 9,000 (iv 0: the grid does not move): equity 34,100 - 18,450 =
    15,650, ratio 1.1003: a maintenance call, and at once (no grace) liquidation. Buying back q
    leaves MM 8,400 (2.05 - q) and costs the fee 9,000 x 0.005 = 45 a contract:
    17,220 - 8,400 q <= 0.7 (15,650 - 45 q) needs q >= 6,265 / 8,368.5 = 0.7486; the step is 0.01.
    q = 0.74: MM 11,004 > 0.7 x 15,616.7 = 10,931.69, not enough; q = 0.75: MM 10,920 <=
    0.7 x 15,616.25 = 10,931.375."""
    book = portfolio_book("30000")
    book.feed(option_fill("A", "sell", "2.05", "2000", fid="a1"))
    book.feed(option_fill("B", "buy", "2.05", "2000", fid="b1"))
    risk = cross(book)
    assert (risk.equity, risk.initial_margin, risk.maintenance_margin) == (D(30000), D(21525), D(17220))
    assert "A" not in {d.payload["account_id"] for d in book.decisions}
    decisions = book.feed(option_mark(CALL, "9000", when=1))
    assert [d.type for d in decisions] == [ev.MARGIN_CALL_ISSUED, ev.MARGIN_CALL_ESCALATED, ev.LIQUIDATION_ORDER_ISSUED]
    for decision in decisions:
        assert decision.payload["worst_cells"] == [UP_EXTREME]
    order = decisions[-1].payload
    assert (order["instrument"], order["side"], order["quantity"], order["full"]) == (CALL, "buy", "0.75", False)
    assert (order["equity"], order["maintenance_margin"]) == ("15650", "17220")
    assert quantity_step(D("-2.05")) == D("0.01")
    assert not enough(book, CALL, "0.74") and enough(book, CALL, "0.75")
    # Executed at the mark: equity 15,650 - 33.75 = 15,616.25, MM 8,400 x 1.3 = 10,920, ratio
    # 0.6993 < resolve_ratio: the call resolves, naming the worst cell it was taken on.
    [resolved] = book.feed(liquidation_fill(decisions[-1], "9000"))
    assert resolved.type == ev.MARGIN_CALL_RESOLVED
    assert (resolved.payload["equity"], resolved.payload["maintenance_margin"]) == ("15616.25", "10920")
    assert resolved.payload["worst_cells"] == [UP_EXTREME]


def test_a_hedged_book_buys_back_the_calls_first_and_keeps_its_hedge_leg() -> None:
    """Long 1 BTCUSDT at 60,000, short 2.5 calls sold at 2,000, 20,000 deposited. Cells: -0.16
    loses 9,600 (the perpetual; the calls expire worthless); +0.16 gains 9,600 on the perpetual and
    loses 2.5 x 9,600 = 24,000 on the calls: -14,400; the extreme +0.5: 30,000 - 75,000 = -45,000,
    x 0.35 = -15,750, the worst; the extreme -0.33: -19,800 x 0.35 = -6,930. IM 15,750 (S = 1,500),
    MM 12,600, equity 20,000: ratio 0.63.

    The contributions to the worst cell: the calls -2.5 x 30,000 x 0.35 = -26,250, the perpetual
    +30,000 x 0.35 = +10,500 (the hedge): the calls go first.

    The call's mark rises to 5,200: equity 25,000 - 13,000 = 12,000, ratio 1.05. Buying back q
    calls (fee 26 each) leaves 2.5 - q short: the extreme +0.5 then loses 0.35 x 30,000 (1.5 - q)
    = 10,500 (1.5 - q), the -0.16 cell still 9,600: MM = max(12,600 - 8,400 q, 7,680).
    q = 0.5: MM 8,400 > 0.7 x 11,987 = 8,390.9, not enough; q = 0.6: the worst cell is now -0.16
    (-9,600 > -9,450 at +0.5, -8,640 at +0.16), MM 7,680 <= 0.7 x 11,984.4 = 8,389.08. One order;
    the perpetual is left as it is."""
    book = portfolio_book("20000")
    book.feed(fill("A", "buy", "1", "60000", fid="a1"))
    book.feed(fill("B", "sell", "1", "60000", fid="b1"))
    book.feed(option_fill("A", "sell", "2.5", "2000", fid="a2"))
    book.feed(option_fill("B", "buy", "2.5", "2000", fid="b2"))
    risk = cross(book)
    assert (risk.equity, risk.initial_margin, risk.maintenance_margin) == (D(20000), D(15750), D(12600))
    account = book.state.accounts["A"]
    scope = models.evaluated_scope(book.state, account, risk)
    assert [p.instrument for p in models.model_of(account).liquidation_order(scope)] == [CALL, "BTCUSDT"]
    decisions = book.feed(option_mark(CALL, "5200", when=1))
    orders = [d.payload for d in decisions if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert [(o["instrument"], o["side"], o["quantity"], o["full"]) for o in orders] == [(CALL, "buy", "0.6", False)]
    assert orders[0]["worst_cells"] == [UP_EXTREME]
    assert not enough(book, CALL, "0.5") and enough(book, CALL, "0.6")
    [resolved] = book.feed(liquidation_fill(decisions[-1], "5200"))
    # 12,000 - 15.6 = 11,984.4; MM 7,680: ratio 0.6408. The book the call resolves on is worst at -0.16.
    assert (resolved.payload["equity"], resolved.payload["maintenance_margin"]) == ("11984.4", "7680")
    assert resolved.payload["worst_cells"] == [DOWN_16]


def test_an_over_hedge_is_reduced_first_and_only_as_far_as_it_helps() -> None:
    """Long 2.05 BTCUSDT against 1 short call (sold at 2,000), 20,000 deposited: over-hedged, so
    the worst cell is -0.16, where the perpetual loses 2.05 x 9,600 = 19,680 and the call nothing:
    IM 19,680 (S = 600), MM 15,744, ratio 0.787. The perpetual contributes -19,680 to that cell
    and the call 0: the hedge leg goes first.

    The call's mark rises to 12,000: equity 22,000 - 12,000 = 10,000, ratio 1.5744. Selling the
    whole perpetual (fee 300 a contract) would leave the naked call, MM 0.8 x 10,500 = 8,400 >
    0.7 x 9,385: the book hedged the other way, not enough (a search that assumed more is always
    better would close it in full and go on to the call). Selling q leaves n = 2.05 - q: the
    -0.16 cell loses 9,600 n and +0.16 loses 9,600 (1 - n), the extreme +0.5 0.35 x 30,000 (1 - n):
    MM = 0.8 x max(9,600 n, 10,500 (1 - n)), least at n = 0.5224. On the falling side,
    7,680 (2.05 - q) <= 0.7 (10,000 - 300 q) needs q >= 8,744 / 7,470 = 1.1705: q = 1.17 leaves
    MM 6,758.4 > 0.7 x 9,649 = 6,754.3, not enough; q = 1.18 leaves MM 6,681.6 <= 0.7 x 9,646 =
    6,752.2."""
    book = portfolio_book("20000")
    book.feed(fill("A", "buy", "2.05", "60000", fid="a1"))
    book.feed(fill("B", "sell", "2.05", "60000", fid="b1"))
    book.feed(option_fill("A", "sell", "1", "2000", fid="a2"))
    book.feed(option_fill("B", "buy", "1", "2000", fid="b2"))
    risk = cross(book)
    assert (risk.equity, risk.initial_margin, risk.maintenance_margin) == (D(20000), D(19680), D(15744))
    decisions = book.feed(option_mark(CALL, "12000", when=1))
    orders = [d.payload for d in decisions if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert [(o["instrument"], o["side"], o["quantity"], o["full"]) for o in orders] == [
        ("BTCUSDT", "sell", "1.18", False)
    ]
    assert orders[0]["worst_cells"] == [DOWN_16]
    assert not enough(book, "BTCUSDT", "2.05")
    assert not enough(book, "BTCUSDT", "1.17") and enough(book, "BTCUSDT", "1.18")
    [resolved] = book.feed(liquidation_fill(decisions[-1], "60000"))
    assert (resolved.payload["equity"], resolved.payload["maintenance_margin"]) == ("9646", "6681.6")


def test_when_one_position_is_not_enough_it_closes_and_the_next_is_measured_with_it_closed() -> None:
    """Short 1 call and long 0.5 BTCUSDT, 9,000 deposited (equity 9,000: the premium 2,000 in,
    the call valued -2,000). The extreme +0.5 loses 30,000 - 15,000 = 15,000, x 0.35 = 5,250;
    +0.16 loses 9,600 - 4,800 = 4,800; -0.16 loses the perpetual's 4,800: IM 5,250 (S = 600),
    MM 4,200, ratio 0.467. The contributions to the worst cell: the call -10,500, the perpetual
    +5,250: the call first.

    The call's mark rises to 7,000: equity 11,000 - 7,000 = 4,000, ratio 1.05: liquidation.
    Closing the call (fee 35; its step is 1) leaves the perpetual alone, the -0.16 cell losing
    4,800: MM 3,840 > 0.7 x 3,965 = 2,775.5: the call alone is not enough, so it closes in full.
    The perpetual is then measured on the book without the call: selling q of 0.5 (fee 300 a
    contract) leaves MM 0.8 x 9,600 (0.5 - q) = 7,680 (0.5 - q) against 0.7 (3,965 - 300 q):
    q >= 1,064.5 / 7,470 = 0.1425, and the step is 0.1: q = 0.1 leaves MM 3,072 > 0.7 x 3,935 =
    2,754.5, not enough; q = 0.2 leaves MM 2,304 <= 0.7 x 3,905 = 2,733.5. (On the book as first
    evaluated, with the call still short, selling the perpetual would have raised the
    maintenance: the +0.5 cell loses more without the hedge.)"""
    book = portfolio_book("9000")
    book.feed(fill("A", "buy", "0.5", "60000", fid="a1"))
    book.feed(fill("B", "sell", "0.5", "60000", fid="b1"))
    book.feed(option_fill("A", "sell", "1", "2000", fid="a2"))
    book.feed(option_fill("B", "buy", "1", "2000", fid="b2"))
    risk = cross(book)
    assert (risk.equity, risk.initial_margin, risk.maintenance_margin) == (D(9000), D(5250), D(4200))
    decisions = book.feed(option_mark(CALL, "7000", when=1))
    orders = [d.payload for d in decisions if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert [(o["instrument"], o["side"], o["quantity"], o["full"]) for o in orders] == [
        (CALL, "buy", "1", True),
        ("BTCUSDT", "sell", "0.2", False),
    ]
    # Each order shows the scope's figures with the orders before it applied.
    assert [(o["equity"], o["maintenance_margin"]) for o in orders] == [("4000", "4200"), ("3965", "3840")]
    assert all(o["worst_cells"] == [UP_EXTREME] for o in orders)
    assert not enough(book, CALL, "1")
    for order in decisions[-2:]:
        book.feed(liquidation_fill(order, order.payload["mark"], fid=f"LF-{order.payload['instrument']}"))
    risk = cross(book)
    assert (risk.equity, risk.maintenance_margin) == (D(3905), D(2304))


def test_standard_accounts_decisions_leave_the_worst_cells_out() -> None:
    """The same short calls on the standard model: its calls and orders carry no worst_cells."""
    book = portfolio_book("30000")
    book.state.accounts["A"].margin_model = "standard"
    book.feed(option_fill("A", "sell", "2.05", "2000", fid="a1"))
    book.feed(option_fill("B", "buy", "2.05", "2000", fid="b1"))
    decisions = book.feed(option_mark(CALL, "20000", when=1))
    assert {d.type for d in decisions} >= {ev.MARGIN_CALL_ISSUED, ev.LIQUIDATION_ORDER_ISSUED}
    assert all("worst_cells" not in d.payload for d in book.decisions)


def test_an_isolated_position_of_a_portfolio_account_is_liquidated_as_the_standard_model_does() -> None:
    """Isolated positions stay on the standard model: 1,000 of isolated margin, then 1 BTCUSDT
    bought at 10,000 into it, marked 9,010 (equity 10, maintenance 36.04): the whole position is
    sold, as in test_lifecycle's first example, and no decision names a worst cell."""
    book = portfolio_book("5000")
    book.feed(message("transfers", type="isolated_margin", transfer_id="m1", account_id="A", instrument="BTCUSDT",
                      amount="1000", occurred_at=at(1).isoformat()))  # fmt: skip
    book.feed(fill("A", "buy", "1", "10000", fid="a1", mode="isolated"))
    book.feed(fill("B", "sell", "1", "10000", fid="b1"))
    assert [d for d in book.decisions if d.payload["account_id"] == "A" and d.type in CALLED] == []
    decisions = [d for d in book.feed(mark("BTCUSDT", "9010", at(3))) if d.payload["account_id"] == "A"]
    orders = [d.payload for d in decisions if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert [(o["scope"], o["side"], o["quantity"], o["full"]) for o in orders] == [
        ("isolated:BTCUSDT", "sell", "1", True)
    ]
    assert decisions and all("worst_cells" not in d.payload for d in decisions)


def test_worst_cells_read_back_from_the_log_to_the_same_bytes() -> None:
    book = portfolio_book("30000")
    book.feed(option_fill("A", "sell", "2.05", "2000", fid="a1"))
    book.feed(option_fill("B", "buy", "2.05", "2000", fid="b1"))
    decisions = book.feed(option_mark(CALL, "9000", when=1))
    decisions += book.feed(liquidation_fill(decisions[-1], "9000"))
    assert len(decisions) == 4
    for event in decisions:
        decision = decision_of(event.type, event.payload)
        assert decision is not None
        assert decision.worst_cells == (WorstCell("BTC", D("0.5"), "unchanged", True),)  # type: ignore[attr-defined]
        assert json.dumps(decision.payload()) == json.dumps(event.payload)
        assert list(event.payload)[-2:] == ["worst_cells", "parameters_version"]


# ---------------------------------------------------------------------------------------------
# property: once the planned orders are executed at the marks, the scope meets target_ratio or
# is closed

hundredths = st.integers(min_value=-300, max_value=300).filter(bool).map(lambda n: str(D(n) / 100))


@st.composite
def portfolio_markets(draw: st.DrawFn) -> list[Any]:
    """A portfolio account's book on BTC (the perpetual and up to four options, any sign, ivs from
    0 to 0.9) and marks that move the underlying and the options after it."""
    msgs: list[Any] = []
    ivs = {symbol: draw(st.sampled_from(["0", "0.3", "0.6", "0.9"])) for symbol in OPTIONS}
    for symbol in OPTIONS:
        msgs.append(option_mark(symbol, str(draw(st.integers(min_value=100, max_value=8000))), ivs[symbol]))
    held = draw(st.lists(st.sampled_from(["BTCUSDT", *OPTIONS]), min_size=1, max_size=4, unique=True))
    for index, instrument in enumerate(held):
        quantity = draw(hundredths)
        side, other = ("buy", "sell") if not quantity.startswith("-") else ("sell", "buy")
        quantity = quantity.lstrip("-")
        price = "60000" if instrument == "BTCUSDT" else "2000"
        msgs.append(fill("A", side, quantity, price, fid=f"a{index}", instrument=instrument))
        msgs.append(fill("B", other, quantity, price, fid=f"b{index}", instrument=instrument))
    for when in range(1, draw(st.integers(min_value=1, max_value=4)) + 1):
        underlying = str(draw(st.integers(min_value=40000, max_value=80000)))
        msgs.append(mark("BTC", underlying, at(when)))
        msgs.append(mark("BTCUSDT", underlying, at(when)))
        for symbol in draw(st.lists(st.sampled_from(OPTIONS), max_size=4, unique=True)):
            price = str(draw(st.integers(min_value=10, max_value=20000)))
            iv = draw(st.sampled_from(["0", "0.3", "0.6", "0.9"]))
            msgs.append(option_mark(symbol, price, iv, when))
    return msgs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=500, max_value=40000), portfolio_markets())
def test_executing_the_planned_orders_at_the_marks_leaves_the_scope_at_target_or_closed(
    deposited: int, msgs: list[Any]
) -> None:
    book = portfolio_book(str(deposited))
    executed = 0
    for msg in msgs:
        try:
            decisions = book.feed(msg)
        except InputError:
            continue
        orders = [d for d in decisions if d.type == ev.LIQUIDATION_ORDER_ISSUED and d.payload["account_id"] == "A"]
        if not orders:
            continue
        for order in orders:
            assert [cell["underlying"] for cell in order.payload["worst_cells"]] == ["BTC"]
            executed += 1
            book.feed(liquidation_fill(order, order.payload["mark"], fid=f"LF-{executed}").replace(
                occurred_at=msg.occurred_at
            ))  # fmt: skip
        risk = cross(book)
        at_target = risk.equity > 0 and risk.maintenance_margin <= TARGET * risk.equity
        assert at_target or not risk.has_open_positions, (risk.equity, risk.maintenance_margin)
    for decision in book.decisions:
        if decision.type in CALLED and decision.payload["account_id"] == "A":
            assert [cell["underlying"] for cell in decision.payload["worst_cells"]] == ["BTC"]
