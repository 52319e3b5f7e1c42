"""Auto-deleveraging (CONTRACT v2 ``adl``) by worked example, and its invariants by property."""

from __future__ import annotations

import copy
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import adl
from clearing.domain import events as ev
from clearing.domain.booking import apply_decision
from clearing.domain.decisions import PositionAutoDeleveraged
from clearing.domain.fold import conservation, replay_event
from clearing.domain.marginmodel import CROSS, isolated_scope
from clearing.domain.models import scope_risk
from clearing.domain.params import bundled_document
from clearing.domain.state import MarkState
from tests.domain.test_fold import Book, deposit, fill, mark, message, opened_state, snapshot
from tests.domain.test_lifecycle import at, types
from tests.domain.test_options import option_markets


def adl_parameters(enabled: bool = True) -> Any:
    document = copy.deepcopy(bundled_document())
    document["version"] = "adl-test.1"
    document["adl"] = {"enabled": enabled}
    return message("admin", type="risk_parameters", parameters=document)


def isolated_transfer(account: str, amount: str, tid: str) -> Any:
    return message(
        "transfers", type="isolated_margin", transfer_id=tid, account_id=account, instrument="BTCUSDT", amount=amount
    )


def crowd(enabled: bool = True) -> Book:
    """A: 1,000 USDT, long 1 BTCUSDT at 10,000: the account that goes bankrupt. M, a market maker,
    sold it to A and bought from the shorts, B, C, D (cross) and E (isolated), who stay:

        B  short 0.4 at 10,000   deposit   800   cross
        C  short 0.3 at 12,000   deposit   400   cross
        D  short 0.3 at  7,000   deposit 2,000   cross     (a losing short once the mark is 8,000)
        E  short 0.4 at 10,000   isolated margin 800
        M  long 0.4 (the rest of what it bought)
    """
    book = Book()
    book.feed(adl_parameters(enabled))
    for account, amount in (("A", "1000"), ("B", "800"), ("C", "400"), ("D", "2000"), ("E", "800"), ("M", "1000000")):
        book.feed(deposit(account, amount, "d" + account))
    book.feed(fill("A", "buy", "1", "10000", fid="a1"))
    book.feed(fill("M", "sell", "1", "10000", fid="m1"))
    for account, quantity, price in (("B", "0.4", "10000"), ("C", "0.3", "12000"), ("D", "0.3", "7000")):
        book.feed(fill(account, "sell", quantity, price, fid=account + "1"))
        book.feed(fill("M", "buy", quantity, price, fid="m" + account))
    book.feed(isolated_transfer("E", "800", "t1"))
    book.feed(fill("E", "sell", "0.4", "10000", fid="e1", mode="isolated"))
    book.feed(fill("M", "buy", "0.4", "10000", fid="mE"))
    return book


def ratio(book: Book, account: str, scope: str = CROSS) -> D:
    risk = scope_risk(book.state, book.state.accounts[account], scope)
    return risk.margin_ratio if risk.margin_ratio is not None else D(0)


def test_the_ranking_of_the_opposite_positions_by_hand() -> None:
    # The shorts ranked at a mark of 8,000 (set directly: fed as an input, it would deleverage).
    # pnl = (q x M - cost) / |cost|, leverage = M / |M - B|, B = M + equity / |q| for a short.
    book = crowd()
    book.state.marks["BTCUSDT"] = MarkState(D(8000), at(1))
    ranked = adl.ranking(book.state, "BTCUSDT", long=False)
    assert [(c.account_id, c.margin_mode) for c in ranked] == [
        ("C", "cross"),
        ("B", "cross"),
        ("E", "isolated"),
        ("D", "cross"),
    ]
    by = {c.account_id: c for c in ranked}
    # B: pnl (-3,200 + 4,000) / 4,000 = 0.2; equity 800 + 800 = 1,600; B = 8,000 + 1,600 / 0.4
    # = 12,000; leverage 8,000 / 4,000 = 2; rank 0.4.
    assert (by["B"].pnl, by["B"].bankruptcy_price, by["B"].leverage, by["B"].rank) == (
        D("0.2"),
        D(12000),
        D(2),
        D("0.4"),
    )
    # E (isolated): pnl 0.2; equity 800 + 800 = 1,600 on 0.4: the same B, leverage and rank as
    # B's: a tie, B first (the lower account id).
    assert by["E"][6:] == by["B"][6:]  # bankruptcy price, pnl, leverage, rank
    # C: pnl 1,200 / 3,600 = 1/3; equity 400 + 1,200 = 1,600; B = 8,000 + 1,600 / 0.3;
    # leverage 8,000 / 5,333.33... = 1.5; rank 0.5.
    assert round(by["C"].pnl, 12) == D("0.333333333333")
    assert round(by["C"].leverage or 0, 12) == D("1.5")
    assert round(by["C"].rank or 0, 12) == D("0.5")
    # D loses: pnl (-2,400 + 2,100) / 2,100 = -1/7; equity 1,700; leverage 8,000 / (1,700 / 0.3)
    # = 24/17; rank = pnl / leverage = -17/168.
    assert round(by["D"].pnl, 12) == round(D(-1) / 7, 12)
    assert round(by["D"].rank or 0, 12) == round(D(-17) / 168, 12)
    # Quantiles: 4 shorts, the first is in the top fifth.
    assert [adl.quantile(place, 4) for place in range(4)] == [5, 4, 3, 2]


def test_a_bankruptcy_beyond_the_fund_cancels_the_orders_and_deleverages_in_rank_order() -> None:
    book = crowd()
    before = {
        name: ratio(book, name, scope) for name, scope in (("B", CROSS), ("C", CROSS), ("E", isolated_scope("BTCUSDT")))
    }
    # 9,010: A's equity 10 < maintenance 36.04: liquidation, one order closing the long.
    decisions = book.feed(mark("BTCUSDT", "9010", at(1)))
    [order] = [d for d in decisions if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    # 8,000 before the order executes: equity -1,000, the fund holds 0: auto-deleveraging.
    decisions = book.feed(mark("BTCUSDT", "8000", at(2)))
    assert types(decisions)[:4] == [
        ev.LIQUIDATION_ORDER_CANCELLED,
        ev.POSITION_AUTO_DELEVERAGED,
        ev.POSITION_AUTO_DELEVERAGED,
        ev.POSITION_AUTO_DELEVERAGED,
    ]
    cancelled = decisions[0].payload
    assert (cancelled["liquidation_id"], cancelled["account_id"]) == (order.payload["liquidation_id"], "A")
    taken = [d.payload for d in decisions if d.type == ev.POSITION_AUTO_DELEVERAGED]
    # A's bankruptcy price: 8,000 - (-1,000) / 1 = 9,000; C, B in full, then 0.3 of E's 0.4.
    assert [(p["account_id"], p["margin_mode"], p["side"], p["quantity"], p["price"], p["rank"]) for p in taken] == [
        ("C", "cross", "buy", "0.3", "9000", "0.5"),
        ("B", "cross", "buy", "0.4", "9000", "0.4"),
        ("E", "isolated", "buy", "0.3", "9000", "0.4"),
    ]
    assert len({p["adl_id"] for p in taken}) == 3
    assert all(p["bankrupt_account_id"] == "A" and p["bankrupt_equity"] == "-1000" for p in taken)
    state = book.state
    # A sold 1 at 9,000: realised -1,000, balance 0, the call resolved, the fund untouched.
    assert state.accounts["A"].balance("USDT") == D(0)
    assert "cross" not in state.accounts["A"].margin
    assert decisions[-1].type == ev.MARGIN_CALL_RESOLVED
    assert decisions[-1].payload["resolution"] == "deficit covered by auto-deleveraging"
    assert state.accounts.get("system:insurance-fund") is None or state.accounts["system:insurance-fund"].balance(
        "USDT"
    ) == D(0)
    # C bought back 0.3 at 9,000: realised 900; B 0.4: 400; E keeps 0.1 short, 300 realised into
    # its isolated margin. D's losing short is untouched.
    assert state.accounts["C"].balance("USDT") == D(1300)
    assert state.accounts["B"].balance("USDT") == D(1200)
    isolated = state.accounts["E"].positions[("BTCUSDT", "isolated")]
    assert (isolated.quantity, isolated.isolated_margin) == (D("-0.1"), D(1100))
    assert state.accounts["D"].positions[("BTCUSDT", "cross")].quantity == D("-0.3")
    # ADL improved every counterparty's margin ratio.
    for name, scope in (("B", CROSS), ("C", CROSS), ("E", isolated_scope("BTCUSDT"))):
        assert ratio(book, name, scope) < before[name] or ratio(book, name, scope) == 0
    assert conservation(state) == {}
    # The order executes anyway, late: a fact, booked (A sells 1 more at 8,000 and is now short).
    late = message(
        "liquidations",
        type="liquidation_fill",
        liquidation_id=order.payload["liquidation_id"],
        fill_id="LF-1",
        account_id="A",
        instrument="BTCUSDT",
        side="sell",
        quantity="1",
        price="8000",
        occurred_at=at(3).isoformat(),
    )
    book.feed(late)
    book.feed(fill("M", "buy", "1", "8000", fid="m-late"))
    assert state.accounts["A"].positions[("BTCUSDT", "cross")].quantity == D(-1)
    assert conservation(state) == {}
    replayed = opened_state()
    for event in book.log:
        replay_event(replayed, event.type, event.payload)
    assert snapshot(replayed) == snapshot(state)


def test_without_the_adl_block_the_deficit_is_recorded_as_before() -> None:
    book = crowd(enabled=False)
    book.feed(mark("BTCUSDT", "9010", at(1)))
    decisions = book.feed(mark("BTCUSDT", "8000", at(2)))
    assert ev.POSITION_AUTO_DELEVERAGED not in types(decisions)
    assert ev.LIQUIDATION_ORDER_CANCELLED not in types(decisions)
    assert book.state.accounts["A"].positions[("BTCUSDT", "cross")].quantity == D(1)


def test_a_fund_that_covers_the_deficit_leaves_the_liquidation_to_the_exchange() -> None:
    book = crowd()
    book.feed(deposit("system:insurance-fund", "5000", "fund"))
    book.feed(mark("BTCUSDT", "9010", at(1)))
    decisions = book.feed(mark("BTCUSDT", "8000", at(2)))
    assert ev.POSITION_AUTO_DELEVERAGED not in types(decisions)


def test_what_no_opposite_position_covers_stays_a_recorded_deficit() -> None:
    # Positions sum to zero over the book, so the only short besides B's 0.25 is A's own (an
    # isolated short of 0.75, never a candidate against A's cross long); M ends flat.
    book = Book()
    book.feed(adl_parameters())
    for account, amount in (("A", "6000"), ("B", "100000"), ("M", "1000000")):
        book.feed(deposit(account, amount, "d" + account))
    book.feed(isolated_transfer("A", "5000", "tA"))
    book.feed(fill("A", "sell", "0.75", "10000", fid="a0", mode="isolated"))
    book.feed(fill("M", "buy", "0.75", "10000", fid="m0"))
    book.feed(fill("A", "buy", "1", "10000", fid="a1"))
    book.feed(fill("M", "sell", "1", "10000", fid="m1"))
    book.feed(fill("B", "sell", "0.25", "10000", fid="b1"))
    book.feed(fill("M", "buy", "0.25", "10000", fid="m2"))
    decisions = book.feed(mark("BTCUSDT", "8000", at(1)))
    taken = [d.payload for d in decisions if d.type == ev.POSITION_AUTO_DELEVERAGED]
    assert [(p["account_id"], p["quantity"], p["price"]) for p in taken] == [("B", "0.25", "9000")]
    # 0.25 sold at 9,000 covers a quarter of the 1,000: -750 left, recorded as a deficit.
    [bankrupted] = [d.payload for d in decisions if d.type == ev.ACCOUNT_BANKRUPTED]
    assert (bankrupted["deficit"], bankrupted["insurance_fund_drawn"]) == ("750", "0")
    assert book.state.accounts["A"].positions[("BTCUSDT", "cross")].quantity == D("0.75")
    assert conservation(book.state) == {}


# ---------------------------------------------------------------------------------------------
# properties


@st.composite
def crashes(draw: st.DrawFn) -> list[Any]:
    """Random books of longs and shorts (cross and isolated, thin deposits) and a walk of marks
    with crashes both ways, ADL enabled."""
    msgs: list[Any] = [adl_parameters()]
    accounts = ["A", "B", "C", "D", "E"]
    for name in accounts:
        msgs.append(deposit(name, str(draw(st.integers(min_value=50, max_value=3000))), "d" + name))
    for index in range(draw(st.integers(min_value=1, max_value=8))):
        buyer, seller = draw(st.lists(st.sampled_from(accounts), min_size=2, max_size=2, unique=True))
        quantity = str(D(draw(st.integers(min_value=1, max_value=20))) / 10)
        price = str(draw(st.integers(min_value=8000, max_value=12000)))
        mode = draw(st.sampled_from(["cross", "cross", "isolated"]))
        if mode == "isolated":
            for name in (buyer, seller):
                amount = str(draw(st.integers(min_value=1, max_value=400)))
                msgs.append(isolated_transfer(name, amount, f"t{index}{name}"))
        msgs.append(fill(buyer, "buy", quantity, price, fid=f"{index}b", mode=mode))
        msgs.append(fill(seller, "sell", quantity, price, fid=f"{index}s", mode=mode))
    for step in range(draw(st.integers(min_value=1, max_value=6))):
        msgs.append(mark("BTCUSDT", str(draw(st.integers(min_value=5000, max_value=16000))), at(step + 1)))
    return msgs


def run(msgs: list[Any]) -> Book:
    book = Book()
    for msg in msgs:
        try:
            book.feed(msg)
        except Exception as error:  # inadmissible inputs are skipped, as the ledger dead-letters them
            if type(error).__name__ not in {"InputError", "UnknownSymbol", "StaleMark"}:
                raise
    return book


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crashes())
def test_adl_conserves_replays_and_only_reduces(msgs: list[Any]) -> None:
    book = run(msgs)
    state = book.state
    assert conservation(state) == {}
    replayed = opened_state()
    for event in book.log:
        replay_event(replayed, event.type, event.payload)
    assert snapshot(replayed) == snapshot(state)
    for event in book.decisions:
        if event.type != ev.POSITION_AUTO_DELEVERAGED:
            continue
        p = event.payload
        held, quantity = D(p["position_quantity"]), D(p["quantity"])
        # The counterparty's position is reduced, never flipped or opened: it was on the
        # opposite side and takes no more than it held.
        assert quantity <= abs(held)
        assert (held < 0) == (p["side"] == "buy")
        assert (D(p["bankrupt_quantity"]) > 0) == (held < 0)
        assert p["account_id"] != p["bankrupt_account_id"]


@pytest.mark.parametrize("enabled", [False])
def test_a_log_without_the_adl_block_never_deleverages(enabled: bool) -> None:
    book = crowd(enabled)
    for step, price in enumerate(("9010", "8000", "7000", "5000")):
        book.feed(mark("BTCUSDT", price, at(step + 1)))
    assert ev.POSITION_AUTO_DELEVERAGED not in types(book.decisions)


@settings(max_examples=200, deadline=None)
@given(
    long=st.booleans(),
    size=st.integers(min_value=1, max_value=50),
    entry=st.integers(min_value=5000, max_value=15000),
    mark_price=st.integers(min_value=5000, max_value=15000),
    collateral=st.integers(min_value=10, max_value=5000),
    share=st.integers(min_value=1, max_value=100),
    depth=st.integers(min_value=0, max_value=100),
)
def test_adl_at_a_price_within_the_takers_own_bankruptcy_price_never_raises_its_margin_ratio(
    long: bool, size: int, entry: int, mark_price: int, collateral: int, share: int, depth: int
) -> None:
    """A counterparty's ratio after a step is no higher than before whenever the ADL price P is
    no worse than its own bankruptcy price B (then the loss x |P - M| is at most the x / |q|
    share of its equity, and its requirement falls by at least that share: a tier table's
    requirement over notional grows with the notional). P = M + depth% of the way to B."""
    book = Book()
    book.feed(adl_parameters())
    book.feed(deposit("T", str(collateral), "dT"))
    book.feed(isolated_transfer("T", str(collateral), "tT"))
    quantity = D(size) / 10
    book.feed(fill("T", "buy" if long else "sell", str(quantity), str(entry), fid="t1", mode="isolated"))
    book.state.marks["BTCUSDT"] = MarkState(D(mark_price), at(1))
    state = book.state
    scope = isolated_scope("BTCUSDT")
    before = scope_risk(state, state.accounts["T"], scope)
    if before.equity <= 0:
        return
    [figures] = adl.ranking(state, "BTCUSDT", long=long)
    price = D(mark_price) + (figures.bankruptcy_price - D(mark_price)) * D(depth) / 100
    taken = quantity * D(share) / 100
    apply_decision(
        state,
        PositionAutoDeleveraged(
            "T",
            "ADL-x",
            "BTCUSDT",
            "isolated",
            "sell" if long else "buy",
            taken,
            price,
            None,
            D(0),
            None,
            quantity if long else -quantity,
            D(entry),
            D(mark_price),
            "Z",
            "cross",
            "cross",
            -taken,
            D(0),
            D(0),
            None,
            "adl-test.1",
        ),
    )
    after = scope_risk(state, state.accounts["T"], scope)
    assert after.maintenance_margin <= before.maintenance_margin
    if after.maintenance_margin > 0:
        assert before.margin_ratio is not None and after.margin_ratio is not None
        assert after.margin_ratio <= before.margin_ratio


def test_a_cascade_of_defaults_longer_than_the_remargin_rounds_is_deleveraged_to_its_end() -> None:
    """Each ADL step books a loss against the mark on its counterparty: a thin one defaults in
    turn. Twenty accounts, each short what the one before is long (BTC, ETH alternately) on 60 to
    155 USDT, the lower ids the more leveraged (first in line, and re-margined earlier in a round,
    so the cascade needs a round a level): it took 20 rounds, and stopped the ledger at 8 (a
    fixpoint error) before ADL rounds were counted apart. S and T, flush, end it."""
    n = 20
    book = Book()
    book.feed(adl_parameters())
    names = [f"A{n - 1 - i:02d}" for i in range(n)]
    for name in names:
        book.feed(deposit(name, "1000" if name == names[0] else str(60 + 5 * int(name[1:])), "d" + name))
    for name in ("S", "T", "M"):
        book.feed(deposit(name, "10000000", "d" + name))
    trades = [(names[0], "M", "BTCUSDT", "1", "14000"), ("M", "S", "BTCUSDT", "1", "10000")]
    trades.append(("M", "T", "ETHUSDT", "1", "2000"))
    sizes = {"BTCUSDT": ("0.5", "10000"), "ETHUSDT": ("1", "2000")}
    for i, name in enumerate(names[1:], start=1):
        short, long = ("BTCUSDT", "ETHUSDT") if i % 2 else ("ETHUSDT", "BTCUSDT")
        trades += [("M", name, short, *sizes[short]), (name, "M", long, *sizes[long])]
    for i, (buyer, seller, instrument, quantity, price) in enumerate(trades):
        book.feed(fill(buyer, "buy", quantity, price, fid=f"b{i}", instrument=instrument))
        book.feed(fill(seller, "sell", quantity, price, fid=f"s{i}", instrument=instrument))
    book.feed(mark("ETHUSDT", "2000", at(1)))
    decisions = book.feed(mark("BTCUSDT", "10000", at(2)))
    taken = [d.payload for d in decisions if d.type == ev.POSITION_AUTO_DELEVERAGED]
    assert {p["bankrupt_account_id"] for p in taken} == set(names)
    assert {p["account_id"] for p in taken} >= {"S", "T"}
    assert conservation(book.state) == {}
    replayed = opened_state()
    for event in book.log:
        replay_event(replayed, event.type, event.payload)
    assert snapshot(replayed) == snapshot(book.state)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option_markets())
def test_adl_with_options_conserves_and_replays(msgs: list[Any]) -> None:
    """The options market of tests/domain/test_options.py with ADL enabled: option positions
    (cross only) are ranked and taken like any other, booked as premiums (``trade_option``)."""
    book = run([adl_parameters(), *msgs])
    assert conservation(book.state) == {}
    replayed = opened_state()
    for event in book.log:
        replay_event(replayed, event.type, event.payload)
    assert snapshot(replayed) == snapshot(book.state)
