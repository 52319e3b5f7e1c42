"""Options in the ledger (issue 23): premium, fees, marks with iv, settlement at the intrinsic value,
standard option margin in an account beside linear tiers, the lifecycle on an options account, and
the invariants by property (conservation, replay equals live, the index equals brute force)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain import models
from clearing.domain.fold import conservation, replay_event
from clearing.domain.messages import InputError
from clearing.domain.state import FEE_ACCOUNT
from tests.domain.test_fold import T0, Book, deposit, fill, mark, message, opened_state, snapshot
from tests.domain.test_lifecycle import counterpart, liquidation_fill
from tests.domain.test_triggers import decisions, run

CALL = "BTC-26MAR27-70000-C"  # strike 70,000, contract size 1, settled in USDT
PUT = "BTC-26MAR27-60000-P"
CALL_60 = "BTC-26MAR27-60000-C"
PUT_70 = "BTC-26MAR27-70000-P"
OPTIONS = [CALL, PUT, CALL_60, PUT_70]
STRIKES = {CALL: D(70000), PUT: D(60000), CALL_60: D(60000), PUT_70: D(70000)}
EXPIRY = datetime(2027, 3, 26, 8, tzinfo=UTC)


def option_mark(symbol: str, price: str, iv: str = "0.6", at: datetime = T0) -> Any:
    return message("marks", type="mark", symbol=symbol, price=price, iv=iv, occurred_at=at.isoformat())


def option_fill(account: str, side: str, quantity: str, price: str, *, fid: str, fee: str = "0",
                instrument: str = CALL, at: datetime = T0) -> Any:  # fmt: skip
    return message(
        "fills", type="fill", fill_id=fid, trade_id="T" + fid, account_id=account, instrument=instrument, side=side,
        quantity=quantity, price=price, fee=fee, fee_asset="USDT", margin_mode="cross", occurred_at=at.isoformat(),
    )  # fmt: skip


def settlement(symbol: str, price: str, at: datetime = EXPIRY) -> Any:
    return message("marks", type="settlement", symbol=symbol, price=price, occurred_at=at.isoformat())


def cross(book: Book, account: str) -> Any:
    state = book.state
    return models.scope_risk(state, state.accounts[account], "cross")


# ---------------------------------------------------------------------------------------------
# booking by worked example


def test_a_fill_moves_the_premium_and_the_fee_and_equity_counts_the_option_at_its_mark() -> None:
    book = Book()
    book.feed(deposit("A", "10000", "dA"))
    book.feed(deposit("B", "20000", "dB"))
    book.feed(mark("BTC", "60000"))
    # A buys 2 calls at 1,500 from B: A pays 3,000 and a fee of 3; B receives 3,000 less its fee of 1.
    book.feed(option_fill("A", "buy", "2", "1500", fid="a1", fee="3"))
    book.feed(option_fill("B", "sell", "2", "1500", fid="b1", fee="1"))
    a, b = book.state.accounts["A"], book.state.accounts["B"]
    assert a.balance("USDT") == D("6997") and b.balance("USDT") == D("22999")
    assert book.state.accounts[FEE_ACCOUNT].balance("USDT") == D("4")
    assert a.positions[(CALL, "cross")].cost == D("3000") and b.positions[(CALL, "cross")].cost == D("-3000")
    assert conservation(book.state) == {}
    # Unmarked, the option is valued at its entry price: equity is what the fill left.
    assert cross(book, "A").equity == D("9997")
    book.feed(option_mark(CALL, "1800", iv="0.61"))
    assert book.state.marks[CALL].iv == D("0.61")
    long, short = cross(book, "A"), cross(book, "B")
    assert long.equity == D("6997") + 2 * D("1800")  # long positive
    assert short.equity == D("22999") - 2 * D("1800")  # short negative
    assert long.positions[0].pnl == D("600") and short.positions[0].pnl == D("-600")
    assert conservation(book.state) == {}


def test_a_close_realises_the_premium_difference_and_moves_no_more_than_the_premiums() -> None:
    book = Book()
    book.feed(deposit("A", "10000", "dA"))
    book.feed(option_fill("A", "buy", "3", "1000", fid="a1"))
    book.feed(option_fill("A", "sell", "1", "1600", fid="a2"))  # close a third: +600 realised
    position = book.state.accounts["A"].positions[(CALL, "cross")]
    assert (position.quantity, position.cost, position.realised_pnl) == (D(2), D(2000), D(600))
    assert book.state.accounts["A"].balance("USDT") == D(10000) - 3000 + 1600
    book.feed(option_fill("A", "sell", "5", "900", fid="a3"))  # close 2 (-200), then short 3 at 900
    assert (position.quantity, position.cost, position.realised_pnl) == (D(-3), D(-2700), D(400))
    assert book.state.accounts["A"].balance("USDT") == D(10000) - 3000 + 1600 + 4500


def test_settlement_pays_the_intrinsic_value_from_shorts_to_longs_and_closes_every_position() -> None:
    book = Book()
    for account in ("A", "B", "C"):
        book.feed(deposit(account, "50000", "d" + account))
    book.feed(option_fill("A", "buy", "2", "1500", fid="a1"))
    book.feed(option_fill("B", "sell", "1.5", "1500", fid="b1"))
    book.feed(option_fill("C", "sell", "0.5", "1500", fid="c1"))
    book.feed(option_fill("A", "sell", "1", "900", fid="p1", instrument=PUT))
    book.feed(option_fill("B", "buy", "1", "900", fid="p2", instrument=PUT))
    with pytest.raises(InputError, match="before its expiry"):
        book.feed(settlement(CALL, "73000", at=EXPIRY - timedelta(seconds=1)))
    book.feed(settlement(CALL, "73000"))  # intrinsic 3,000 a contract
    book.feed(settlement(PUT, "73000"))  # out of the money: 0
    state = book.state
    assert state.accounts["A"].balance("USDT") == D(50000) - 3000 + 900 + 2 * 3000
    assert state.accounts["B"].balance("USDT") == D(50000) + 2250 - 900 - D("1.5") * 3000
    assert state.accounts["C"].balance("USDT") == D(50000) + 750 - D("0.5") * 3000
    assert all(p.quantity == 0 for a in state.accounts.values() for p in a.positions.values())
    assert state.holders[CALL] == set() and state.holders[PUT] == set()
    assert state.accounts["A"].positions[(CALL, "cross")].realised_pnl == D(3000)
    assert state.marks[CALL].price == D(3000) and state.marks[PUT].price == D(0)
    assert conservation(state) == {}
    with pytest.raises(InputError, match="after its expiry"):
        book.feed(option_fill("A", "buy", "1", "1", fid="late", at=EXPIRY))


def test_an_isolated_option_fill_and_transfer_are_rejected() -> None:
    book = Book()
    with pytest.raises(InputError, match="cross margin only"):
        book.feed(fill("A", "buy", "1", "100", fid="i1", mode="isolated", instrument=CALL))
    transfer = message("transfers", type="isolated_margin", transfer_id="m1", account_id="A", instrument=CALL,
                       amount="10")  # fmt: skip
    with pytest.raises(InputError, match="held in cross margin only"):
        book.feed(transfer)


# ---------------------------------------------------------------------------------------------
# standard option margin in an account


def test_a_short_call_and_a_short_put_beside_a_perpetual_are_margined_in_one_cross_scope() -> None:
    """By hand, BTC option_margin: initial 0.15, minimum 0.10, maintenance 0.075; U = 60,000.

    Short 1 call K = 70,000 at mark 1,500: OTM = 10,000; IM = max(9,000 - 10,000, 6,000) + 1,500
    = 7,500 (the floor wins); MM = 4,500 + 1,500 = 6,000.
    Short 2 puts K = 60,000 at mark 2,000: OTM = 0; rate term 9,000 > floor 6,000;
    MM = max(4,500, 150) + 2,000 = 6,500; IM = max(9,000 + 2,000, 6,500) = 11,000; x 2.
    Long 1 BTCUSDT at 60,000: tier 1 of the bundled table (IM 1%, MM 0.5%): 600 and 300.
    Equity: 100,000 + 1,500 + 4,000 (premiums) - 1,500 - 4,000 (the shorts at their marks) + 0."""
    book = Book()
    book.feed(deposit("S", "100000", "dS"))
    book.feed(mark("BTC", "60000"))
    book.feed(mark("BTCUSDT", "60000"))
    book.feed(option_mark(CALL, "1500"))
    book.feed(option_mark(PUT, "2000"))
    book.feed(option_fill("S", "sell", "1", "1500", fid="s1"))
    book.feed(option_fill("S", "sell", "2", "2000", fid="s2", instrument=PUT))
    book.feed(fill("S", "buy", "1", "60000", fid="s3"))
    risk = cross(book, "S")
    by = {p.instrument: p for p in risk.positions}
    assert (by[CALL].initial_margin, by[CALL].maintenance_margin) == (D(7500), D(6000))
    assert by[CALL].option.per_contract.floor_term == D(6000) and by[CALL].option.per_contract.rate_term == D(-1000)
    assert (by[PUT].initial_margin, by[PUT].maintenance_margin) == (D(22000), D(13000))
    perpetual = by["BTCUSDT"]
    assert risk.initial_margin == D(7500) + D(22000) + perpetual.initial_margin
    assert risk.maintenance_margin == D(6000) + D(13000) + perpetual.maintenance_margin
    assert risk.equity == D(100000)
    dependencies = models.STANDARD_MODEL.dependencies(book.state.accounts["S"], book.state.parameters, "cross")
    assert dependencies == tuple(sorted(("BTC", "BTCUSDT", CALL, PUT)))


def test_a_deep_in_the_money_put_takes_the_mark_term_of_maintenance() -> None:
    """U = 5,000, K = 60,000, put mark 55,500: MM = max(375, 0.075 x 55,500 = 4,162.5) + 55,500 =
    59,662.5 (the mark term wins); OTM = 0; IM = max(max(750, 500) + 55,500, 59,662.5) = 59,662.5
    (the maintenance branch of the initial rule wins)."""
    book = Book()
    book.feed(deposit("S", "200000", "dS"))
    book.feed(mark("BTC", "5000"))
    book.feed(option_mark(PUT, "55500"))
    book.feed(option_fill("S", "sell", "1", "55500", fid="s1", instrument=PUT))
    position = cross(book, "S").positions[0]
    assert position.maintenance_margin == D("59662.5") and position.initial_margin == D("59662.5")


def test_a_short_option_seller_is_called_and_liquidated_short_options_first_with_a_bankruptcy_price() -> None:
    """S sells 0.1 call (K = 70,000) at 1,500 beside a long of 10 BTCUSDT whose requirement is the
    larger; the underlying jumps to 80,000 and the call's mark to 20,000: equity 7,000 + 150 -
    2,000 falls under maintenance (grace period 0: liquidation). The short call is ordered
    first, whole (0.1 is one quantity step), at the price that uses up the equity:
    B = mark + equity / (0.1 x 1)."""
    book = Book()
    book.feed(deposit("S", "7000", "dS"))
    book.feed(deposit("MM", "10000000", "dMM"))
    book.feed(mark("BTC", "60000"))
    book.feed(mark("BTCUSDT", "60000"))
    book.feed(option_mark(CALL, "1500"))
    book.feed(option_fill("S", "sell", "0.1", "1500", fid="s1"))
    book.feed(option_fill("MM", "buy", "0.1", "1500", fid="m1"))
    book.feed(fill("S", "buy", "10", "60000", fid="s2"))
    book.feed(fill("MM", "sell", "10", "60000", fid="m2"))
    assert book.state.accounts["S"].margin == {}
    book.feed(mark("BTC", "80000"))
    decided = book.feed(option_mark(CALL, "20000", iv="0.9"))
    risk_before = {p.instrument: p for p in cross(book, "S").positions}
    assert risk_before[CALL].maintenance_margin == D("0.1") * (D("0.075") * 80000 + 20000)
    assert risk_before["BTCUSDT"].maintenance_margin > risk_before[CALL].maintenance_margin
    orders = [d for d in decided if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert (orders[0].payload["instrument"], orders[0].payload["side"]) == (CALL, "buy")
    first = orders[0].payload
    assert D(first["equity"]) == D("7150") - D("2000") and D(first["quantity"]) == D("0.1")
    assert D(first["bankruptcy_price"]) == D("20000") + D(first["equity"]) / D("0.1")
    book.feed(liquidation_fill(orders[0], "20000"))
    book.feed(counterpart(orders[0], "20000", account="MM"))
    assert book.state.accounts["S"].positions[(CALL, "cross")].quantity == 0
    assert conservation(book.state) == {}


def test_settlement_withdraws_the_options_open_liquidation_orders() -> None:
    """An order still open at the expiry cannot execute: the settlement closes the position, the
    order leaves the open orders, a late execution is refused, and the scope moves on (here to
    the default waterfall: the call settles 10,000 in the money against 8,500 of balance)."""
    book = Book()
    book.feed(deposit("S", "7000", "dS"))
    book.feed(deposit("MM", "10000000", "dMM"))
    book.feed(mark("BTC", "60000"))
    book.feed(option_fill("S", "sell", "1", "1500", fid="s1"))
    book.feed(option_fill("MM", "buy", "1", "1500", fid="m1"))
    # Unmarked, the call counts at its entry price: 8,500 - 1,500 = 7,000 against 0.075 x 80,000
    # + 1,500 = 7,500 once BTC is at 80,000: liquidation (grace period 0).
    orders = [d for d in book.feed(mark("BTC", "80000")) if d.type == ev.LIQUIDATION_ORDER_ISSUED]
    assert [o.payload["instrument"] for o in orders] == [CALL]
    book.feed(option_mark(CALL, "10500"))
    decided = book.feed(settlement(CALL, "80000"))
    assert book.state.liquidations == {}
    assert book.state.accounts["S"].positions[(CALL, "cross")].quantity == 0
    assert ev.INSURANCE_FUND_DRAWN in {d.type for d in decided} or ev.ACCOUNT_BANKRUPTED in {d.type for d in decided}
    with pytest.raises(InputError, match="no liquidation order with quantity left"):
        book.feed(liquidation_fill(orders[0], "10500"))
    assert conservation(book.state) == {}


def test_a_withdrawal_counts_the_options_requirement() -> None:
    book = Book()
    book.feed(deposit("S", "10000", "dS"))
    book.feed(mark("BTC", "60000"))
    book.feed(option_mark(CALL, "1500"))
    book.feed(option_fill("S", "sell", "1", "1500", fid="s1"))
    # Equity 10,000; initial margin 7,500: 2,500 can go, 2,501 cannot.
    rejected = book.feed(message("transfers", type="withdrawal", transfer_id="w1", account_id="S", asset="USDT",
                                 amount="2501"))  # fmt: skip
    assert [d.type for d in rejected] == [ev.WITHDRAWAL_REJECTED]
    approved = book.feed(message("transfers", type="withdrawal", transfer_id="w2", account_id="S", asset="USDT",
                                 amount="2500"))  # fmt: skip
    # Equity 7,500 against the call's maintenance 6,000: ratio 0.8, the warning level.
    assert [d.type for d in approved] == [ev.WITHDRAWAL_APPROVED, ev.MARGIN_CALL_ISSUED]
    assert approved[1].payload["level"] == "warning"


# ---------------------------------------------------------------------------------------------
# properties

ACCOUNTS = ["A", "B", "C", "D", "E"]


ETH_OPTIONS = ["ETH-26MAR27-3000-C", "ETH-26MAR27-3000-P", "ETH-26MAR27-3500-C", "ETH-26MAR27-3500-P"]
STRIKES.update({"ETH-26MAR27-3000-C": D(3000), "ETH-26MAR27-3000-P": D(3000), "ETH-26MAR27-3500-C": D(3500),
                "ETH-26MAR27-3500-P": D(3500)})  # fmt: skip


def intrinsic(symbol: str, underlying: D) -> D:
    strike = STRIKES[symbol]
    return max(underlying - strike, D(0)) if symbol.endswith("-C") else max(strike - underlying, D(0))


@st.composite
def option_markets(
    draw: st.DrawFn, *, eth: bool = False, ivs: bool = False, jumps: bool = False, fine: bool = False
) -> list[Any]:
    """Accounts long and short options of the chain (some beside a perpetual) against MM, then
    marks of the underlying and of the options walking (each option's mark its intrinsic value
    plus a drawn time value), option trades and fees between the accounts, deposits and
    withdrawals; and, drawn, the settlement of every option at its expiry. ``eth``: the ETH
    chain and perpetual beside BTC's; ``ivs``: each option mark with a drawn iv (else 0.6);
    ``jumps``: now and then minutes to days pass between two events; ``fine``: half the marks of
    an underlying move it by at most 0.3% (the others by up to 8%), through the accounts' bands."""
    msgs: list[Any] = []
    at = T0
    spots = {"BTC": D(draw(st.integers(min_value=40_000, max_value=90_000)))}
    chains = {"BTC": OPTIONS}
    perpetuals = {"BTC": "BTCUSDT"}
    if eth:
        spots["ETH"] = D(draw(st.integers(min_value=2_000, max_value=4_500)))
        chains["ETH"] = ETH_OPTIONS
        perpetuals["ETH"] = "ETHUSDT"
    options = [option for chain in chains.values() for option in chain]
    of = {option: underlying for underlying, chain in chains.items() for option in chain}
    scale = {"BTC": 4_000, "ETH": 200}
    time_value = {o: D(draw(st.integers(min_value=1, max_value=scale[of[o]]))) for o in options}

    def option_iv() -> str:
        return str(D(draw(st.integers(min_value=10, max_value=150))) / 100) if ivs else "0.6"

    def marks_now() -> None:
        for underlying, chain in chains.items():
            msgs.append(mark(underlying, str(spots[underlying]), at))
            for o in chain:
                msgs.append(option_mark(o, str(intrinsic(o, spots[underlying]) + time_value[o]), option_iv(), at=at))

    marks_now()
    for underlying, perpetual in perpetuals.items():
        msgs.append(mark(perpetual, str(spots[underlying]), at))
    msgs.append(deposit("MM", "1000000000", "dMM"))
    for index, account in enumerate(draw(st.lists(st.sampled_from(ACCOUNTS), min_size=1, max_size=5, unique=True))):
        msgs.append(deposit(account, str(draw(st.integers(min_value=500, max_value=60_000))), f"d{account}"))
        for leg in range(draw(st.integers(min_value=1, max_value=3))):
            option = draw(st.sampled_from(options))
            side = draw(st.sampled_from(["sell", "sell", "buy"]))
            q = D(draw(st.integers(min_value=1, max_value=30))) / 10
            price = intrinsic(option, spots[of[option]]) + time_value[option]
            other = "buy" if side == "sell" else "sell"
            fid = f"o{index}{leg}"
            msgs.append(option_fill(account, side, str(q), str(price), fid=fid, instrument=option, at=at))
            msgs.append(option_fill("MM", other, str(q), str(price), fid=fid + "m", instrument=option, at=at))
        if draw(st.booleans()):
            underlying = draw(st.sampled_from(sorted(spots))) if eth else "BTC"
            q = D(draw(st.integers(min_value=1, max_value=10))) / 10
            perpetual = perpetuals[underlying]
            price = str(spots[underlying])
            msgs.append(fill(account, "buy", str(q), price, fid=f"p{index}", instrument=perpetual))
            msgs.append(fill("MM", "sell", str(q), price, fid=f"p{index}m", instrument=perpetual))
    for index in range(draw(st.integers(min_value=3, max_value=30))):
        at += timedelta(seconds=draw(st.integers(min_value=0, max_value=5)))
        if jumps and draw(st.integers(min_value=0, max_value=9)) == 0:
            at += timedelta(minutes=draw(st.sampled_from([1, 30, 240, 1_440, 10_080])))
        kind = draw(st.sampled_from(["underlying"] * 4 + ["option", "option", "trade", "deposit", "withdrawal"]))
        if kind == "underlying":
            underlying = draw(st.sampled_from(sorted(spots))) if eth else "BTC"
            floor = D(1000) if underlying == "BTC" else D(50)
            largest = 30 if fine and draw(st.booleans()) else 800
            spot = max(floor, spots[underlying] * (1 + D(draw(st.integers(-largest, largest))) / 10_000))
            spots[underlying] = spot.quantize(D("0.01"))
            msgs.append(mark(underlying, str(spots[underlying]), at))
            if draw(st.booleans()):
                msgs.append(mark(perpetuals[underlying], str(spots[underlying]), at))
        elif kind == "option":
            option = draw(st.sampled_from(options))
            time_value[option] = D(draw(st.integers(min_value=1, max_value=scale[of[option]])))
            price = intrinsic(option, spots[of[option]]) + time_value[option]
            msgs.append(option_mark(option, str(price), option_iv(), at=at))
        elif kind == "trade":
            buyer, seller = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=2, max_size=2, unique=True))
            option = draw(st.sampled_from(options))
            q = str(D(draw(st.integers(min_value=1, max_value=20))) / 10)
            price = str(D(draw(st.integers(min_value=1, max_value=10_000))))
            fee = str(D(draw(st.integers(min_value=-5, max_value=50))) / 10)
            msgs.append(option_fill(buyer, "buy", q, price, fid=f"t{index}b", instrument=option, fee=fee, at=at))
            msgs.append(option_fill(seller, "sell", q, price, fid=f"t{index}s", instrument=option, fee=fee, at=at))
        else:
            msgs.append(message("transfers", type=kind, transfer_id=f"x{index}", account_id=draw(
                st.sampled_from(ACCOUNTS)), asset="USDT", amount=str(draw(st.integers(min_value=1, max_value=5_000))),
                occurred_at=at.isoformat()))  # fmt: skip
    if draw(st.booleans()):
        for underlying, chain in chains.items():
            price = str(spots[underlying] + D(draw(st.integers(min_value=-5_000, max_value=5_000))) / (
                1 if underlying == "BTC" else 20))  # fmt: skip
            for option in chain:
                msgs.append(settlement(option, price))
    return msgs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option_markets())
def test_books_balance_through_premiums_fees_liquidations_and_settlement(msgs: list[Any]) -> None:
    book = run(msgs, brute_force=False)
    assert conservation(book.state) == {}
    if any(getattr(m, "type", None) == "settlement" for m in msgs):
        assert all(not book.state.holders.get(o) for o in OPTIONS)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option_markets())
def test_the_index_decides_exactly_as_brute_force_with_options(msgs: list[Any]) -> None:
    indexed = run(msgs, brute_force=False)
    assert decisions(indexed) == decisions(run(msgs, brute_force=True))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option_markets(), st.data())
def test_replay_equals_live_with_options(msgs: list[Any], data: st.DataObject) -> None:
    live = run(msgs, brute_force=False)
    replayed = opened_state()
    for event in live.log:
        replay_event(replayed, event.type, event.payload)
    assert snapshot(replayed) == snapshot(live.state)
    cut = data.draw(st.integers(min_value=1, max_value=len(msgs) - 1))
    assert decisions(run(msgs, brute_force=False, replay_at=cut)) == decisions(live)


# ---------------------------------------------------------------------------------------------
# the calculator


def test_risk_evaluate_and_the_ledger_give_the_same_figures_for_the_same_account() -> None:
    """The ledger's account (balances after premiums and fees, positions with their entry prices)
    given to the calculator with the ledger's marks: the same equity, requirements, ratio,
    status and per-position figures; each option's model_price is Black-76 at its mark's iv."""
    from clearing.domain.black76 import option_value
    from clearing.domain.numbers import round_model_value, to_wire
    from clearing.risk import evaluate_document

    book = Book()
    book.feed(deposit("S", "40000", "dS"))
    book.feed(deposit("S", "1", "dSb", asset="BTC"))
    book.feed(mark("BTC", "61234.5"))
    book.feed(mark("BTCUSDT", "61000"))
    book.feed(option_mark(CALL, "1830.25", iv="0.61"))
    book.feed(option_mark(PUT, "2100", iv="0.7"))
    book.feed(option_fill("S", "sell", "1.5", "1800", fid="s1", fee="2.5"))
    book.feed(option_fill("S", "buy", "0.7", "2050", fid="s2", instrument=PUT))
    book.feed(fill("S", "sell", "0.3", "61000", fid="s3"))
    state = book.state
    account = state.accounts["S"]
    ledger = models.account_risk(state, account)
    at = "2027-01-15T08:00:00Z"
    sizes = {symbol: spec.contract_size for symbol, spec in state.parameters.instruments_by_symbol.items()}
    document = {
        "at": at,
        "marks": {symbol: ({"price": str(m.price), "iv": str(m.iv)} if m.iv is not None else str(m.price))
                  for symbol, m in state.marks.items()},
        "account": {
            "balances": {asset: str(amount) for asset, amount in account.balances.items()},
            "positions": [
                {"instrument": p.instrument, "quantity": str(p.quantity),
                 "entry_price": str(p.cost / p.quantity / sizes[p.instrument])}
                for p in account.positions.values() if p.quantity != 0
            ],
        },
    }  # fmt: skip
    output = evaluate_document(document)
    assert output["equity"] == to_wire(ledger.cross.equity)
    assert output["initial_margin"] == to_wire(ledger.cross.initial_margin)
    assert output["maintenance_margin"] == to_wire(ledger.cross.maintenance_margin)
    assert output["margin_ratio"] == to_wire(ledger.cross.margin_ratio)
    assert output["status"] == ledger.cross.status.value
    by = {p.instrument: p for p in ledger.cross.positions}
    for p in output["positions"]:
        assert (p["initial_margin"], p["maintenance_margin"], p["unrealized_pnl"]) == (
            to_wire(by[p["instrument"]].initial_margin), to_wire(by[p["instrument"]].maintenance_margin),
            to_wire(by[p["instrument"]].pnl),
        )  # fmt: skip
    call = next(p for p in output["positions"] if p["instrument"] == CALL)
    spec = state.parameters.instruments_by_symbol[CALL]
    expected = option_value(spec, D("61234.5"), D("0.61"), datetime(2027, 1, 15, 8, tzinfo=UTC), D(0))
    assert call["model_price"] == to_wire(round_model_value(expected))
    assert len(call["model_price"].partition(".")[2]) == 12
    assert call["value"] == "-2745.375" and call["unrealized_pnl"] == "-45.375"  # -1.5 x 1,830.25; less 2,700
    assert call["option_margin"]["floor_term"] == "6123.45"


def test_the_calculator_asks_for_at_with_options_and_refuses_an_isolated_option() -> None:
    from clearing.risk import CalculatorInputError, evaluate_document

    position = {"instrument": CALL, "quantity": "-1", "entry_price": "1200"}
    document: dict[str, Any] = {"marks": {"BTC": "60000", CALL: {"price": "1234.5", "iv": "0.61"}},
                                "account": {"balances": {"USDT": "10000"}, "positions": [position]}}  # fmt: skip
    with pytest.raises(CalculatorInputError, match="at is required when the account holds options"):
        evaluate_document(document)
    with pytest.raises(CalculatorInputError, match="cross margin only"):
        evaluate_document({**document, "at": "2027-01-01T00:00:00Z", "account": {
            "positions": [{**position, "margin_mode": "isolated"}]}})  # fmt: skip
    output = evaluate_document({**document, "at": "2027-01-01T00:00:00Z"})
    option = output["positions"][0]
    assert option["maintenance_margin"] == "5734.5"  # 0.075 x 60,000 + 1,234.5
    assert option["model_price"] is not None
    plain = evaluate_document({**document, "at": "2027-01-01T00:00:00Z", "marks": {"BTC": "60000", CALL: "1234.5"}})
    assert plain["positions"][0]["model_price"] is None  # no iv: no model price


# ---------------------------------------------------------------------------------------------
# the simulation


def test_the_simulated_options_market_books_and_its_crash_liquidates_put_writers() -> None:
    """``clearing simulate --options``: option fills and option marks with iv among the messages,
    every one admitted; the crash calls and liquidates put writers; the books balance. Without
    the flag no option appears (the messages of earlier versions)."""
    from collections import Counter

    from clearing.domain.fold import admit, step
    from clearing.domain.messages import decode
    from clearing.domain.params import bundled_parameters
    from clearing.domain.state import LedgerState
    from clearing.simulate import Scenario, generate

    def scenario(options: bool) -> Scenario:
        return Scenario(seed=5, accounts=40, trades=1_500, steps=100, crash_at=0.6, crash_depth=D("0.45"),
                        options=options)  # fmt: skip

    # A new LedgerState is a log before its first event (log-start parameters, no options); a
    # ledger opens its log with the bundled document, which lists them.
    bundled = bundled_parameters()
    listed = {spec.symbol for spec in bundled.instruments if spec.kind == "option"}

    def names_an_option(value: dict[str, Any]) -> bool:
        return value.get("instrument") in listed or value.get("symbol") in listed

    assert not any(names_an_option(m.value) for m in generate(scenario(False)))
    messages = list(generate(scenario(True)))
    option_fills = [m for m in messages if m.value["type"] == "fill" and names_an_option(m.value)]
    option_marks = [m for m in messages if m.value["type"] == "mark" and "iv" in m.value]
    assert len(option_fills) > 100 and len(option_marks) > 1_000
    state = LedgerState(parameters=bundled)
    seen: Counter[str] = Counter()
    put_writers_liquidated = set()
    for position, simulated in enumerate(messages, 1):
        message = decode(simulated.kind, simulated.encode())
        admit(state, message)  # every simulated message enters the log
        for decision in step(state, message, position):
            seen[decision.type] += 1
            if decision.type == ev.LIQUIDATION_ORDER_ISSUED and decision.payload["instrument"].endswith("-P"):
                put_writers_liquidated.add(decision.payload["account_id"])
    assert len(put_writers_liquidated) >= 5, seen
    assert conservation(state) == {}


def test_a_bankrupt_scope_whose_deficit_a_fill_covers_is_called_in_that_step_when_its_numbers_say_so() -> None:
    """E, bankrupt after its perpetual's liquidation, sells one more call: the premium and a fee
    rebate cover the deficit (equity 0.09), but its short call needs 432.41 of maintenance. The
    resolution and the call it then needs come in the same step, so the scope ends it at a
    fixpoint: the index (which does not look at E again on the next mark of BTC, inside its
    band) decides as brute force (which does)."""
    at = T0
    msgs: list[Any] = [mark("BTC", "58141", at)]
    for option, price in ((CALL, "1"), (PUT, "1860"), (CALL_60, "1"), (PUT_70, "11860")):
        msgs.append(option_mark(option, price, at=at))
    msgs += [mark("BTCUSDT", "58141", at), deposit("MM", "1000000000", "dMM"), deposit("A", "500", "dA"),
             option_fill("A", "sell", "0.1", "1", fid="o00"), option_fill("MM", "buy", "0.1", "1", fid="o00m"),
             deposit("E", "500", "dE")]  # fmt: skip
    for leg in range(3):
        msgs += [option_fill("E", "sell", "0.1", "1", fid=f"o1{leg}"),
                 option_fill("MM", "buy", "0.1", "1", fid=f"o1{leg}m")]  # fmt: skip
    msgs += [fill("E", "buy", "1", "58141", fid="p1"), fill("MM", "sell", "1", "58141", fid="p1m")]
    msgs += [mark("BTC", "57640.99", at)] * 4 + [mark("BTCUSDT", "57640.99", at)]
    msgs += [option_fill("A", "buy", "0.1", "1", fid="t4b", fee="-0.1"),
             option_fill("E", "sell", "0.1", "1", fid="t4s", fee="-0.1"), mark("BTC", "57640.99", at)]  # fmt: skip
    indexed = run(msgs, brute_force=False)
    assert decisions(indexed) == decisions(run(msgs, brute_force=True))
    resolved = [d for d in indexed.decisions if d.type == ev.MARGIN_CALL_RESOLVED and d.payload["level"] == "bankrupt"]
    (resolution,) = resolved
    same_step = [d.type for d in indexed.decisions if d.cause_position == resolution.cause_position]
    assert same_step[:2] == [ev.MARGIN_CALL_RESOLVED, ev.MARGIN_CALL_ISSUED]
