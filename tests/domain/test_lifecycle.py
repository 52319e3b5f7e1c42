"""The margin-call lifecycle, liquidation orders and the default waterfall by worked example."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from clearing.domain import events as ev
from clearing.domain.fold import conservation, replay_event
from clearing.domain.messages import InputError
from clearing.domain.state import INSURANCE_FUND_ACCOUNT
from tests.domain.test_fold import T0, Book, deposit, fill, mark, markets, message, opened_state, snapshot


def types(decisions: list[ev.Event]) -> list[str]:
    return [d.type for d in decisions]


def at(seconds: int) -> Any:
    return T0 + timedelta(seconds=seconds)


def counterpart(order: ev.Event, price: str, quantity: str | None = None, fid: str = "LC-1", account: str = "C") -> Any:
    """The market side that took a liquidation order: an ordinary fill of another account."""
    p = order.payload
    side = "buy" if p["side"] == "sell" else "sell"
    return fill(account, side, quantity or p["quantity"], price, fid=fid, instrument=p["instrument"])


def liquidation_fill(order: ev.Event, price: str, quantity: str | None = None, fid: str = "LF-1") -> Any:
    p = order.payload
    return message(
        "liquidations", type="liquidation_fill", liquidation_id=p["liquidation_id"], fill_id=fid,
        account_id=p["account_id"], instrument=p["instrument"], side=p["side"],
        quantity=quantity or p["quantity"], price=price, occurred_at=at(100).isoformat(),
    )


@pytest.fixture
def book() -> Book:
    # A: 1,000 USDT, long 1 BTCUSDT at 10,000 (maintenance 0.4% in tier 1). B: the short side.
    book = Book()
    book.feed(deposit("A", "1000", "dA"))
    book.feed(deposit("B", "100000", "dB"))
    book.feed(fill("A", "buy", "1", "10000", fid="a1"))
    book.feed(fill("B", "sell", "1", "10000", fid="b1"))
    return book


def test_a_falling_mark_walks_the_account_from_warning_to_liquidation(book: Book) -> None:
    # 9,050: equity 1,000 - 950 = 50; maintenance 9,050 x 0.004 = 36.2; ratio 0.724: between
    # resolve (0.7) and warning (0.8): nothing.
    assert book.feed(mark("BTCUSDT", "9050", at(1))) == []
    # 9,045: equity 45, maintenance 36.18, ratio 0.804 >= 0.8: a warning.
    [issued] = book.feed(mark("BTCUSDT", "9045", at(2)))
    assert issued.type == ev.MARGIN_CALL_ISSUED
    assert issued.payload["level"] == "warning"
    assert issued.payload["margin_ratio"] == "0.804"
    assert issued.payload["margin_call_id"] == f"MC-{issued.cause_position}"
    # shortfall: deposit that brings the ratio below 0.7 = 36.18 / 0.7 - 45 = 6.68571429 (up)
    assert issued.payload["shortfall"] == "6.68571429"
    # 9,010: equity 10, maintenance 36.04, ratio 3.604 >= 1 with no grace: maintenance, then
    # liquidation at once, with an order that closes the whole position (a part cannot reach 0.7).
    decisions = book.feed(mark("BTCUSDT", "9010", at(3)))
    assert types(decisions) == [ev.MARGIN_CALL_ESCALATED, ev.MARGIN_CALL_ESCALATED, ev.LIQUIDATION_ORDER_ISSUED]
    assert [d.payload["level"] for d in decisions[:2]] == ["maintenance", "liquidation"]
    assert {d.payload["margin_call_id"] for d in decisions[:2]} == {issued.payload["margin_call_id"]}
    order = decisions[2].payload
    assert (order["side"], order["quantity"], order["full"]) == ("sell", "1", True)
    # bankruptcy price: 9,010 - equity 10 / 1 = 9,000
    assert order["bankruptcy_price"] == "9000"
    # A liquidating account cannot withdraw.
    [rejected] = book.feed(message("transfers", type="withdrawal", transfer_id="w1", account_id="A", asset="USDT",
                                   amount="1", occurred_at=at(4).isoformat()))
    assert rejected.type == ev.WITHDRAWAL_REJECTED and "liquidation" in rejected.payload["reason"]


def test_a_liquidation_fill_beyond_the_bankruptcy_price_draws_the_insurance_fund(book: Book) -> None:
    book.feed(mark("BTCUSDT", "9010", at(3)))
    order = book.decisions[-1]
    # Executed at 9,005: realised 9,005 - 10,000 = -995; fee 9,005 x 0.005 = 45.025 to the fund.
    # A is left at 1,000 - 995 - 45.025 = -40.025; the fund holds 45.025 and covers it.
    decisions = book.feed(liquidation_fill(order, "9005"))
    book.feed(counterpart(order, "9005"))
    assert types(decisions) == [ev.INSURANCE_FUND_DRAWN, ev.MARGIN_CALL_RESOLVED]
    assert decisions[0].payload["amount"] == "40.025"
    assert book.state.accounts["A"].balance("USDT") == 0
    assert book.state.accounts[INSURANCE_FUND_ACCOUNT].balance("USDT") == D("5")
    assert book.state.accounts["A"].margin == {}
    assert conservation(book.state) == {}


def test_an_empty_insurance_fund_leaves_the_deficit_recorded(book: Book) -> None:
    book.feed(mark("BTCUSDT", "9010", at(3)))
    order = book.decisions[-1]
    # Executed at 8,900: A loses 1,100 + fee 44.5 = -144.5; the fund (44.5) covers 44.5.
    decisions = book.feed(liquidation_fill(order, "8900"))
    book.feed(counterpart(order, "8900"))
    assert types(decisions) == [ev.INSURANCE_FUND_DRAWN, ev.ACCOUNT_BANKRUPTED]
    assert decisions[1].payload["deficit"] == "100"
    assert book.state.accounts["A"].margin["cross"].status == "bankrupt"
    assert conservation(book.state) == {}


def test_partial_liquidation_reduces_only_what_restores_the_target_ratio() -> None:
    book = Book()
    book.feed(deposit("A", "20000", "dA"))
    book.feed(deposit("B", "1000000", "dB"))
    book.feed(fill("A", "buy", "40", "10000", fid="a1"))
    book.feed(fill("B", "sell", "40", "10000", fid="b1"))
    # Mark 9,560: notional 382,400 is in tier 3 (1%, amount 1,300): maintenance 3,824 - 1,300 =
    # 2,524; equity 20,000 - 40 x 440 = 2,400; ratio 1.05: liquidation (no grace).
    decisions = book.feed(mark("BTCUSDT", "9560", at(1)))
    assert decisions[-1].type == ev.LIQUIDATION_ORDER_ISSUED
    order = decisions[-1].payload
    # Selling x at the mark costs the fee 9,560 x 0.005 = 47.8 a unit. x = 13 leaves 27 (258,120,
    # tier 3): maintenance 1,281.2 > 0.7 x (2,400 - 621.4) = 1,245.02: not enough. x = 14 leaves 26
    # (248,560, tier 2: 0.5%, amount 50): maintenance 1,192.8 <= 0.7 x 1,730.8 = 1,211.56: enough.
    assert (order["quantity"], order["full"]) == ("14", False)
    # Bankruptcy price: 9,560 - 2,400 / 14 = 9,388.571428571428..., a long's rounded up.
    assert order["bankruptcy_price"] == "9388.5714285715"


@pytest.mark.parametrize("written", ["40", "40.00"])
def test_the_liquidation_step_does_not_depend_on_how_the_fill_wrote_its_quantity(written: str) -> None:
    # "40.00" is logged (and snapshotted, and replayed) as "40": a step read from the decoded
    # Decimal's exponent (0.01) ordered 13.6 live and 14 after a restart or in ``audit verify``.
    book = Book()
    book.feed(deposit("A", "20000", "dA"))
    book.feed(deposit("B", "1000000", "dB"))
    book.feed(fill("A", "buy", written, "10000", fid="a1"))
    book.feed(fill("B", "sell", written, "10000", fid="b1"))
    live = book.feed(mark("BTCUSDT", "9560", at(1)))
    again = Book()
    again.log = book.log[: -len(live) - 1]
    for event in again.log:
        replay_event(again.state, event.type, event.payload)
    assert [d.payload for d in again.feed(mark("BTCUSDT", "9560", at(1)))] == [d.payload for d in live]
    assert live[-1].payload["quantity"] == "14"


def test_resolution_needs_the_ratio_below_resolve_ratio(book: Book) -> None:
    book.feed(mark("BTCUSDT", "9045", at(1)))  # warning at ratio 0.804
    # 9,048: equity 48, maintenance 36.192, ratio 0.754: under warning but not under resolve: stays.
    assert book.feed(mark("BTCUSDT", "9048", at(2))) == []
    # A deposit of 10 makes equity 58 and the ratio 0.624 < 0.7: resolved.
    [resolved] = book.feed(deposit("A", "10", "dA2"))
    assert resolved.type == ev.MARGIN_CALL_RESOLVED
    assert book.state.accounts["A"].margin == {}


def test_an_unknown_or_overfilled_liquidation_is_not_admitted(book: Book) -> None:
    from clearing.domain.fold import admit

    book.feed(mark("BTCUSDT", "9010", at(3)))
    order = book.decisions[-1]
    with pytest.raises(InputError, match="no liquidation order with quantity left"):
        unknown = ev.Event(**{**order._asdict(), "payload": {**order.payload, "liquidation_id": "L-404"}})
        admit(book.state, liquidation_fill(unknown, "9000"))
    with pytest.raises(InputError, match="more than"):
        admit(book.state, liquidation_fill(order, "9000", quantity="2"))


def test_grace_period_delays_liquidation_until_the_deadline() -> None:
    import json

    from clearing.domain.params import bundled_document

    document = bundled_document()
    document["version"] = "grace-60"
    document["margin_call"]["grace_period_seconds"] = 60
    book = Book()
    book.feed(message("admin", type="risk_parameters", parameters=json.loads(json.dumps(document))))
    book.feed(deposit("A", "1000", "dA"))
    book.feed(deposit("B", "100000", "dB"))
    book.feed(fill("A", "buy", "1", "10000", fid="a1"))
    book.feed(fill("B", "sell", "1", "10000", fid="b1"))
    [issued] = book.feed(mark("BTCUSDT", "9010", at(10)))
    assert issued.payload["level"] == "maintenance"
    assert issued.payload["deadline"] == "2026-11-23T12:01:10.000000Z"
    assert book.feed(mark("BTCUSDT", "9011", at(30))) == []  # still within the grace period
    decisions = book.feed(mark("BTCUSDT", "9012", at(70)))  # deadline passed, still below maintenance
    assert types(decisions) == [ev.MARGIN_CALL_ESCALATED, ev.LIQUIDATION_ORDER_ISSUED]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets())
def test_liquidation_fills_fed_back_keep_the_books_balanced_and_replayable(msgs: list[Any]) -> None:
    book = Book()
    fills = 0
    for msg in msgs:
        try:
            decisions = book.feed(msg)
        except InputError:
            continue
        for decision in decisions:
            if decision.type == ev.LIQUIDATION_ORDER_ISSUED and decision.payload["scope"] == "cross":
                fills += 1
                lf = liquidation_fill(decision, decision.payload["mark"], fid=f"LF-{fills}")
                lf = lf.replace(occurred_at=msg.occurred_at)
                book.feed(lf)
                other = "D" if decision.payload["account_id"] != "D" else "C"
                book.feed(counterpart(decision, decision.payload["mark"], fid=f"LC-{fills}", account=other))
    assert conservation(book.state) == {}
    replayed = opened_state()
    for event in book.log:
        replay_event(replayed, event.type, event.payload)
    assert snapshot(replayed) == snapshot(book.state)


def test_an_execution_of_a_cancelled_order_is_still_booked(book: Book) -> None:
    book.feed(mark("BTCUSDT", "9010", at(3)))
    order = book.decisions[-1]
    # The price recovers before the exchange executes: the call resolves and the order is
    # cancelled. The exchange had already executed it; the fill is a fact and is booked.
    [resolved] = book.feed(mark("BTCUSDT", "9990", at(4)))
    assert resolved.type == ev.MARGIN_CALL_RESOLVED
    assert resolved.payload["cancelled_orders"] == [order.payload["liquidation_id"]]
    book.feed(liquidation_fill(order, "9990"))
    book.feed(counterpart(order, "9990"))
    assert book.state.accounts["A"].positions[("BTCUSDT", "cross")].quantity == 0
    assert order.payload["liquidation_id"] not in book.state.liquidations
    assert conservation(book.state) == {}


def test_an_isolated_loss_beyond_an_empty_fund_is_taken_by_the_fund_alone() -> None:
    book = Book()
    book.feed(deposit("A", "1000", "dA"))
    book.feed(deposit("B", "100000", "dB"))
    book.feed(message("transfers", type="isolated_margin", transfer_id="m1", account_id="A",
                      instrument="BTCUSDT", amount="200"))
    book.feed(fill("A", "buy", "1", "10000", fid="a1", mode="isolated"))
    book.feed(fill("B", "sell", "1", "10000", fid="b1"))
    # A closes at 9,700 by an ordinary trade: a 300 loss against 200 of collateral.
    decisions = book.feed(fill("A", "sell", "1", "9700", fid="a2", mode="isolated"))
    book.feed(fill("B", "buy", "1", "9700", fid="b2"))
    assert types(decisions) == [ev.INSURANCE_FUND_DRAWN]
    assert decisions[0].payload["amount"] == "100"
    assert decisions[0].payload["beyond_fund"] == "100"
    # The loss stops at the collateral: A's wallet keeps its 800; the fund shows the 100 it is short.
    assert book.state.accounts["A"].balance("USDT") == D(800)
    assert book.state.accounts[INSURANCE_FUND_ACCOUNT].balance("USDT") == D(-100)
    assert all(d.payload["account_id"] != INSURANCE_FUND_ACCOUNT for d in book.decisions)
    assert conservation(book.state) == {}


def test_a_bankrupt_account_that_trades_again_is_liquidated_at_once(book: Book) -> None:
    book.feed(mark("BTCUSDT", "9010", at(3)))
    order = book.decisions[-1]
    book.feed(liquidation_fill(order, "8900"))
    book.feed(counterpart(order, "8900"))
    assert book.state.accounts["A"].margin["cross"].status == "bankrupt"
    # The exchange should have stopped it, but a fill is a fact: A buys 0.5 more.
    decisions = book.feed(fill("A", "buy", "0.5", "8900", fid="a9"))
    book.feed(fill("C", "sell", "0.5", "8900", fid="c9"))
    assert types(decisions) == [ev.LIQUIDATION_ORDER_ISSUED]
    assert (decisions[0].payload["side"], decisions[0].payload["quantity"]) == ("sell", "0.5")
    assert conservation(book.state) == {}


@pytest.mark.parametrize("brute_force", [False, True])
def test_a_bankrupt_account_whose_fill_covers_its_deficit_is_called_in_that_step_if_its_positions_need_it(
    book: Book, brute_force: bool
) -> None:
    """The step that resolves a bankrupt call goes on as a healthy scope: a bankrupt scope once
    resolved and stopped there, off its fixpoint, so brute force called it at the next mark of
    anything it held while the trigger index (at the same price) never looked (found by the
    index-versus-brute-force property test with options: test_a_bankrupt_option_writer_...)."""
    book.state.triggers.brute_force = brute_force
    book.feed(mark("BTCUSDT", "9010", at(3)))
    order = book.decisions[-1]
    book.feed(liquidation_fill(order, "8900"))
    book.feed(counterpart(order, "8900"))
    account = book.state.accounts["A"]
    assert (account.margin["cross"].status, account.deficit, account.balance("USDT")) == ("bankrupt", 100, -100)
    # A buys 5 at 8,980 with the mark at 9,010: equity -100 + 5 x 30 = 50 covers the deficit, but
    # maintenance is 45,050 x 0.4% = 180.2: the ratio is 3.604, a maintenance call at once, and
    # liquidation with no grace.
    decisions = book.feed(fill("A", "buy", "5", "8980", fid="a9").replace(occurred_at=at(5)))
    book.feed(fill("B", "sell", "5", "8980", fid="b9").replace(occurred_at=at(5)))
    assert types(decisions) == [
        ev.MARGIN_CALL_RESOLVED, ev.MARGIN_CALL_ISSUED, ev.MARGIN_CALL_ESCALATED, ev.LIQUIDATION_ORDER_ISSUED,
    ]  # fmt: skip
    resolved, issued, escalated, again = (d.payload for d in decisions)
    assert (resolved["level"], resolved["resolution"], resolved["equity"]) == ("bankrupt", "deficit covered", "50")
    assert (issued["level"], issued["equity"], issued["maintenance_margin"]) == ("maintenance", "50", "180.2")
    assert resolved["margin_call_id"] == order.payload["margin_call_id"]  # the call that bankrupted A
    new_call = f"MC-{decisions[0].cause_position}"  # a new call, of the fill
    assert issued["margin_call_id"] == escalated["margin_call_id"] == again["margin_call_id"] == new_call
    assert (escalated["level"], again["side"]) == ("liquidation", "sell")
    assert (account.deficit, account.margin["cross"].status) == (0, "liquidation")
    # At its fixpoint: a mark at the same price decides nothing, in either mode.
    assert book.feed(mark("BTCUSDT", "9010", at(6))) == []
    assert conservation(book.state) == {}


def test_a_bankrupt_option_writer_whose_premium_covers_its_deficit_is_called_as_brute_force_calls_it() -> None:
    """The example the property test (test_options: the index decides exactly as brute force)
    shrank to. B writes a call for 1 against its mark of 254 with nothing deposited: called,
    liquidated, bankrupt. It writes another at 505 with a rebate: equity 0.3 covers the deficit
    but not maintenance (379.67). The resolution used to end the step there, leaving B off its
    fixpoint: brute force called it at the next mark of BTC (the same price), the index did not."""
    from tests.domain.test_triggers import decisions, run

    call = "BTC-26MAR27-70000-C"
    later = T0 + timedelta(seconds=1)

    def written(price: str, fee: str, fid: str, when: Any) -> Any:
        return message("fills", type="fill", fill_id=fid, trade_id="T" + fid, account_id="B", instrument=call,
                       side="sell", quantity="0.1", price=price, fee=fee, fee_asset="USDT", margin_mode="cross",
                       occurred_at=when.isoformat())  # fmt: skip

    msgs = [
        message("marks", type="mark", symbol=call, price="254", iv="0.6", occurred_at=T0.isoformat()),
        written("1", "0", "t0s", T0),
        mark("BTC", "47236.00", later),
        written("505", "-0.5", "t8s", later),
        mark("BTC", "47236.00", later),
    ]
    indexed = run(msgs, brute_force=False)
    assert decisions(indexed) == decisions(run(msgs, brute_force=True))
    fill_position = 14  # the second fill: its own step resolves the bankrupt call and issues the next
    at_fill = [(d.type, d.payload["margin_call_id"]) for d in indexed.decisions if d.cause_position == fill_position]
    assert at_fill == [
        (ev.MARGIN_CALL_RESOLVED, "MC-2"), (ev.MARGIN_CALL_ISSUED, "MC-14"), (ev.MARGIN_CALL_ESCALATED, "MC-14"),
        (ev.LIQUIDATION_ORDER_ISSUED, "MC-14"),
    ]  # fmt: skip


def test_an_offered_decision_id_that_no_decision_carries_is_offered_again() -> None:
    """Ids are taken by the decisions that carry them, not by the re-margins that offer them:
    brute force (which looks at more scopes than the index) once numbered a call MC-214-2 where
    the index said MC-214, because a liquidating scope it looked at offered an id and emitted
    nothing (found by the index-versus-brute-force property test)."""
    from clearing.domain.lifecycle import _Ids

    ids = _Ids(214)
    assert ids.next("MC") == ids.next("MC") == "MC-214"
    ids.take({"margin_call_id": "MC-214"})
    assert ids.next("MC") == "MC-214-2"
    ids.take({"margin_call_id": "MC-214", "liquidation_id": "L-214"})  # a later decision of that call
    assert (ids.next("MC"), ids.next("L")) == ("MC-214-2", "L-214-2")
