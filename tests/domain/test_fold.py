"""The fold: positions, PnL, fees and funding by worked example, and the invariants by property."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain.fold import admit, conservation, replay_event, step
from clearing.domain.messages import InputError, decode
from clearing.domain.params import bundled_parameters
from clearing.domain.state import FEE_ACCOUNT, LedgerState

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)


def message(kind: str, **fields: Any) -> Any:
    import json

    fields.setdefault("occurred_at", T0.isoformat())
    return decode(kind, json.dumps(fields).encode())


def fill(
    account: str,
    side: str,
    quantity: str,
    price: str,
    *,
    fid: str,
    fee: str = "0",
    mode: str = "cross",
    instrument: str = "BTCUSDT",
) -> Any:
    return message(
        "fills",
        type="fill",
        fill_id=fid,
        trade_id="T" + fid,
        account_id=account,
        instrument=instrument,
        side=side,
        quantity=quantity,
        price=price,
        fee=fee,
        fee_asset="USDT",
        margin_mode=mode,
    )


def deposit(account: str, amount: str, tid: str, asset: str = "USDT") -> Any:
    return message("transfers", type="deposit", transfer_id=tid, account_id=account, asset=asset, amount=amount)


def mark(symbol: str, price: str, at: datetime = T0) -> Any:
    return message("marks", type="mark", symbol=symbol, price=price, occurred_at=at.isoformat())


def opened_state() -> LedgerState:
    """The state of a log a ledger opened with the bundled parameters, just after that event: the
    start of these tests' logs, which leave the event out (a new ``LedgerState`` is a log before
    its first event, under the log-start parameters, which list no options)."""
    return LedgerState(parameters=bundled_parameters())


class Book:
    """A state plus the log the live path wrote, for replay comparisons."""

    def __init__(self) -> None:
        self.state = opened_state()
        self.log: list[ev.Event] = []
        self.decisions: list[ev.Event] = []

    def feed(self, msg: Any) -> list[ev.Event]:
        admit(self.state, msg)
        position = len(self.log) + 1
        decisions = step(self.state, msg, position)
        self.log.append(ev.input_event(msg, 0))
        self.log.extend(decisions)
        self.decisions.extend(decisions)
        return decisions


def test_long_then_partial_close_realises_pnl_on_the_closed_share() -> None:
    book = Book()
    book.feed(deposit("A", "10000", "d1"))
    book.feed(fill("A", "buy", "1", "100", fid="1"))
    book.feed(fill("A", "buy", "2", "103", fid="2"))
    # cost = 1 x 100 + 2 x 103 = 306; average entry 102
    position = book.state.accounts["A"].positions[("BTCUSDT", "cross")]
    assert (position.quantity, position.cost) == (D(3), D(306))
    book.feed(fill("A", "sell", "1.5", "110", fid="3"))
    # closes half the cost (153): realised = 1.5 x 110 - 153 = 12
    assert position.quantity == D("1.5")
    assert position.cost == D(153)
    assert position.realised_pnl == D(12)
    assert book.state.accounts["A"].balance("USDT") == D(10012)


def test_flip_through_zero_closes_everything_then_opens_the_rest() -> None:
    book = Book()
    book.feed(fill("A", "buy", "2", "100", fid="1"))
    book.feed(fill("A", "sell", "5", "90", fid="2"))
    position = book.state.accounts["A"].positions[("BTCUSDT", "cross")]
    # close 2: realised 2 x 90 - 200 = -20; open short 3 at 90: cost -270
    assert position.realised_pnl == D(-20)
    assert (position.quantity, position.cost) == (D(-3), D(-270))
    assert position.entry_price(D(1)) == D(90)


def test_inexact_partial_close_rounds_the_credit_down() -> None:
    book = Book()
    book.feed(fill("A", "buy", "1", "100", fid="1"))
    book.feed(fill("B", "sell", "1", "100", fid="2"))
    book.feed(fill("A", "buy", "2", "100.005", fid="3"))  # cost 300.01 for 3
    book.feed(fill("B", "sell", "2", "100.005", fid="4"))
    book.feed(fill("A", "sell", "1", "100", fid="5"))
    book.feed(fill("B", "buy", "1", "100", fid="6"))
    position = book.state.accounts["A"].positions[("BTCUSDT", "cross")]
    # The closed third of the cost is 100.0033333...: the cost removed rounds up to 100.00333334
    # (half-even would give ...33), so the PnL credited, 100 - 100.00333334 = -0.00333334, is
    # rounded down, never above the exact figure.
    assert position.realised_pnl == D("-0.00333334")
    # The rounding stays in the remaining cost, so both sides still balance to the last digit.
    assert position.cost == D("200.00666666")
    assert conservation(book.state) == {}


def test_fees_move_to_the_fee_account() -> None:
    book = Book()
    book.feed(fill("A", "buy", "1", "100", fid="1", fee="0.05"))
    book.feed(fill("B", "sell", "1", "100", fid="2", fee="-0.01"))  # maker rebate
    assert book.state.accounts["A"].balance("USDT") == D("-0.05")
    assert book.state.accounts["B"].balance("USDT") == D("0.01")
    assert book.state.accounts[FEE_ACCOUNT].balance("USDT") == D("0.04")


def test_funding_positive_rate_takes_from_longs_and_gives_to_shorts() -> None:
    book = Book()
    book.feed(fill("L", "buy", "2", "100", fid="1"))
    book.feed(fill("S", "sell", "2", "100", fid="2"))
    book.feed(mark("BTCUSDT", "110"))
    book.feed(message("marks", type="funding", symbol="BTCUSDT", rate="0.0001"))
    # payment = 2 x 110 x 0.0001 = 0.022
    assert book.state.accounts["L"].balance("USDT") == D("-0.022")
    assert book.state.accounts["S"].balance("USDT") == D("0.022")
    book.feed(
        message(
            "marks", type="funding", symbol="BTCUSDT", rate="-0.0002", occurred_at=(T0 + timedelta(hours=8)).isoformat()
        )
    )
    assert book.state.accounts["L"].balance("USDT") == D("0.022")
    assert conservation(book.state) == {}


def test_isolated_position_returns_its_collateral_when_closed() -> None:
    book = Book()
    book.feed(deposit("A", "1000", "d1"))
    book.feed(
        message(
            "transfers", type="isolated_margin", transfer_id="m1", account_id="A", instrument="BTCUSDT", amount="200"
        )
    )
    assert book.state.accounts["A"].balance("USDT") == D(800)
    book.feed(fill("A", "buy", "1", "100", fid="1", mode="isolated"))
    book.feed(fill("A", "sell", "1", "95", fid="2", mode="isolated"))
    position = book.state.accounts["A"].positions[("BTCUSDT", "isolated")]
    assert position.isolated_margin == 0
    assert book.state.accounts["A"].balance("USDT") == D(995)


def test_unknown_instrument_and_stale_mark_are_not_admitted() -> None:
    state = LedgerState()
    with pytest.raises(InputError, match="unknown instrument 'DOGEUSDT'"):
        admit(state, fill("A", "buy", "1", "1", fid="x", instrument="DOGEUSDT"))
    book = Book()
    book.feed(mark("BTCUSDT", "100", T0 + timedelta(seconds=5)))
    with pytest.raises(InputError, match="stale mark"):
        admit(book.state, mark("BTCUSDT", "99", T0))


def test_withdrawal_beyond_balance_is_rejected_with_a_reason() -> None:
    book = Book()
    book.feed(deposit("A", "100", "d1"))
    [decision] = book.feed(
        message("transfers", type="withdrawal", transfer_id="w1", account_id="A", asset="USDT", amount="150")
    )
    assert decision.type == ev.WITHDRAWAL_REJECTED
    assert "insufficient USDT" in decision.payload["reason"]
    [decision] = book.feed(
        message("transfers", type="withdrawal", transfer_id="w2", account_id="A", asset="USDT", amount="40")
    )
    assert decision.type == ev.WITHDRAWAL_APPROVED
    assert book.state.accounts["A"].balance("USDT") == D(60)
    assert conservation(book.state) == {}


# ---------------------------------------------------------------------------------------------
# properties

ACCOUNTS = ["A", "B", "C", "D"]
prices = st.integers(min_value=1, max_value=2_000_000).map(lambda cents: D(cents) / 100)
quantities = st.integers(min_value=1, max_value=5_000).map(lambda milli: D(milli) / 1000)


# Dynamic margin in the random markets (``markets(rates=True)``): a block per underlying of the
# perpetuals, sampled every minute, so that the markets' time steps cross boundaries.
RATES_SAMPLE_SECONDS = 60
UNDERLYINGS = {"BTCUSDT": "BTC", "ETHUSDT": "ETH"}


def rates_document(version: str = "rates-1", **overrides: Any) -> dict[str, Any]:
    """The bundled document with a dynamic_margin block for BTC and ETH (the figures of
    tests/domain/test_dynamicmargin.py's worked series, sampled every ``RATES_SAMPLE_SECONDS``
    unless ``overrides`` say otherwise)."""
    from clearing.domain.params import bundled_document

    document = bundled_document()
    document["version"] = version
    block = {
        "sample_seconds": RATES_SAMPLE_SECONDS, "lambda": "0.9", "initial_volatility": "0.02",
        "reference_volatility": "0.02", "multiplier_floor": "1", "multiplier_cap": "3", "release_buffer": "0.25",
        **overrides,
    }  # fmt: skip
    document["dynamic_margin"] = [{"underlying": underlying, **block} for underlying in ("BTC", "ETH")]
    return document


@st.composite
def markets(draw: st.DrawFn, *, models: bool = False, rates: bool = False) -> list[Any]:
    """Random markets of the perpetuals. ``models``: accounts also ask to change margin model
    (``margin_model`` requests). ``rates``: the log starts with a document that enables dynamic
    margin (``rates_document``), the underlyings are marked too, and time moves by steps that
    cross sample boundaries (none, one, several at once)."""
    msgs: list[Any] = []
    at = T0
    kinds = ["trade", "trade", "deposit", "mark", "funding", "withdrawal", "isolated"]
    if models:
        kinds += ["model", "model"]
    if rates:
        kinds += ["underlying", "underlying"]
        msgs.append(message("admin", type="risk_parameters", parameters=rates_document(), occurred_at=at.isoformat()))
    for index in range(draw(st.integers(min_value=1, max_value=40))):
        at += timedelta(seconds=draw(st.sampled_from([1, 1, 1, 30, 61, 150])) if rates else 1)
        kind = draw(st.sampled_from(kinds))
        instrument = draw(st.sampled_from(["BTCUSDT", "ETHUSDT"]))
        if kind == "model":
            msgs.append(
                message(
                    "transfers",
                    type="margin_model",
                    request_id=f"s{index}",
                    account_id=draw(st.sampled_from(ACCOUNTS)),
                    model=draw(st.sampled_from(["portfolio", "portfolio", "standard"])),
                    occurred_at=at.isoformat(),
                )
            )
        elif kind == "underlying":
            symbol = UNDERLYINGS[instrument]
            msgs.append(
                message("marks", type="mark", symbol=symbol, price=str(draw(prices)), occurred_at=at.isoformat())
            )
        elif kind == "trade":
            buyer, seller = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=2, max_size=2, unique=True))
            q, p = draw(quantities), draw(prices)
            mode = draw(st.sampled_from(["cross", "cross", "isolated"]))
            fee = str(draw(st.integers(min_value=-5, max_value=50)) / D(100))
            for side, account in (("buy", buyer), ("sell", seller)):
                msgs.append(
                    message(
                        "fills",
                        type="fill",
                        fill_id=f"{index}{side}",
                        trade_id=f"T{index}",
                        account_id=account,
                        instrument=instrument,
                        side=side,
                        quantity=str(q),
                        price=str(p),
                        fee=fee,
                        margin_mode=mode,
                        occurred_at=at.isoformat(),
                    )
                )
        elif kind == "deposit":
            amount = draw(st.integers(min_value=1, max_value=10**6))
            msgs.append(
                message(
                    "transfers",
                    type="deposit",
                    transfer_id=f"d{index}",
                    account_id=draw(st.sampled_from(ACCOUNTS)),
                    asset="USDT",
                    amount=str(amount),
                    occurred_at=at.isoformat(),
                )
            )
        elif kind == "withdrawal":
            amount = draw(st.integers(min_value=1, max_value=10**5))
            msgs.append(
                message(
                    "transfers",
                    type="withdrawal",
                    transfer_id=f"w{index}",
                    account_id=draw(st.sampled_from(ACCOUNTS)),
                    asset="USDT",
                    amount=str(amount),
                    occurred_at=at.isoformat(),
                )
            )
        elif kind == "isolated":
            amount = draw(st.integers(min_value=-500, max_value=2000).filter(bool))
            msgs.append(
                message(
                    "transfers",
                    type="isolated_margin",
                    transfer_id=f"m{index}",
                    account_id=draw(st.sampled_from(ACCOUNTS)),
                    instrument=instrument,
                    amount=str(amount),
                    occurred_at=at.isoformat(),
                )
            )
        elif kind == "mark":
            msgs.append(
                message("marks", type="mark", symbol=instrument, price=str(draw(prices)), occurred_at=at.isoformat())
            )
        else:
            rate = D(draw(st.integers(min_value=-100, max_value=100))) / 100_000
            msgs.append(message("marks", type="funding", symbol=instrument, rate=str(rate), occurred_at=at.isoformat()))
    return msgs


def run_live(msgs: list[Any], book: Book | None = None) -> Book:
    """Feeds ``msgs`` to ``book`` (a new ``Book`` by default), skipping what admission refuses."""
    book = Book() if book is None else book
    for msg in msgs:
        try:
            book.feed(msg)
        except InputError:
            continue
    return book


def snapshot(state: LedgerState) -> dict[str, Any]:
    return {
        account_id: (
            dict(account.balances),
            {
                key: (p.quantity, p.cost, p.realised_pnl, p.isolated_margin, p.funding_paid)
                for key, p in account.positions.items()
            },
        )
        for account_id, account in state.accounts.items()
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets())
def test_books_balance_after_any_sequence(msgs: list[Any]) -> None:
    book = run_live(msgs)
    assert conservation(book.state) == {}
    for account in book.state.accounts.values():
        for position in account.positions.values():
            if position.quantity == 0:
                # A closed isolated position never holds negative collateral: its loss is capped
                # there, and the insurance fund takes the rest.
                assert position.cost == 0
                assert position.isolated_margin >= 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets())
def test_replaying_the_log_gives_the_live_state_and_the_same_decisions(msgs: list[Any]) -> None:
    live = run_live(msgs)
    replayed = opened_state()
    for event in live.log:
        replay_event(replayed, event.type, event.payload)
    assert snapshot(replayed) == snapshot(live.state)
    # The inputs as the log holds them (wire payloads read back) decide the same again.
    again = run_live([ev.message_of(e.type, e.payload) for e in live.log if e.type in ev.MODEL_BY_EVENT_TYPE])
    assert [(d.type, d.payload, d.idempotency_key) for d in again.decisions] == [
        (d.type, d.payload, d.idempotency_key) for d in live.decisions
    ]


def margin_view(state: LedgerState) -> dict[str, Any]:
    """What the margin models and dynamic margin keep in the state, beside ``snapshot``: each
    account's model and margin statuses, the volatility state of each underlying, event time."""
    return {
        "accounts": snapshot(state),
        "models": {account_id: account.margin_model for account_id, account in state.accounts.items()},
        "margin": {
            account_id: {scope: (s.status, s.margin_call_id, s.deadline, tuple(s.pending_orders))
                         for scope, s in account.margin.items()}
            for account_id, account in state.accounts.items()
        },
        "volatility": dict(state.volatility),
        "event_time": state.last_occurred_at,
    }  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets(models=True, rates=True))
def test_replay_equals_live_with_margin_model_requests_and_rate_changes(msgs: list[Any]) -> None:
    from hypothesis import event

    live = run_live(msgs)
    kinds = {d.type for d in live.decisions}
    event(f"model changed: {ev.MARGIN_MODEL_CHANGED in kinds}; rates sampled: {ev.MARGIN_RATES_CHANGED in kinds}")
    replayed = opened_state()
    for logged in live.log:
        replay_event(replayed, logged.type, logged.payload)
    assert margin_view(replayed) == margin_view(live.state)
    assert conservation(live.state) == {}
    # The inputs as the log holds them decide the same again, rate changes and model decisions
    # included, in the same order and with the same keys.
    again = run_live([ev.message_of(e.type, e.payload) for e in live.log if e.type in ev.MODEL_BY_EVENT_TYPE])
    assert [(d.type, d.stream, d.payload, d.idempotency_key) for d in again.decisions] == [
        (d.type, d.stream, d.payload, d.idempotency_key) for d in live.decisions
    ]
    assert margin_view(again.state) == margin_view(live.state)


def test_funding_between_the_two_fills_of_a_trade_stays_in_the_pool_and_the_books_balance() -> None:
    # The fills of one trade come from different partitions: funding may land between them.
    from clearing.domain.state import FUNDING_POOL_ACCOUNT

    book = Book()
    book.feed(mark("BTCUSDT", "100"))
    book.feed(fill("L", "buy", "2", "100", fid="1"))
    book.feed(message("marks", type="funding", symbol="BTCUSDT", rate="0.001"))
    book.feed(fill("S", "sell", "2", "100", fid="2"))
    # Only the long paid: 2 x 100 x 0.001 = 0.2, held by the pool, not lost.
    assert book.state.accounts["L"].balance("USDT") == D("-0.2")
    assert book.state.accounts[FUNDING_POOL_ACCOUNT].balance("USDT") == D("0.2")
    assert conservation(book.state) == {}


def test_every_simulated_message_decodes() -> None:
    # Decimal's str() can give "2E+2"; the wire form must always be plain.
    from decimal import Decimal

    from clearing.simulate import Scenario, generate

    for scenario in (
        Scenario(seed=7, accounts=200, trades=5_000, steps=120, crash_at=0.75),
        Scenario(seed=3, accounts=50, trades=2_000, steps=60, crash_at=0.6, crash_depth=Decimal("0.45")),
    ):
        for simulated in generate(scenario):
            decode(simulated.kind, simulated.encode())


def test_a_fill_after_new_parameters_books_with_their_contract_size() -> None:
    # The fold reads an instrument's contract size and settlement asset from a copy of the
    # parameters (LedgerState.terms): a new document must be read, not the copy of the old one.
    from clearing.domain.params import bundled_document

    book = Book()
    book.feed(deposit("A", "100000", "dA"))
    book.feed(fill("A", "buy", "1", "100", fid="f1"))
    assert book.state.accounts["A"].positions[("BTCUSDT", "cross")].cost == D("100")
    document = bundled_document()
    for spec in document["instruments"]:
        if spec["symbol"] == "BTCUSDT":
            spec["contract_size"] = "0.5"
    book.feed(message("admin", type="risk_parameters", parameters=document))
    book.feed(fill("A", "buy", "1", "100", fid="f2"))
    assert book.state.accounts["A"].positions[("BTCUSDT", "cross")].cost == D("150")


def wire(digits: int, places: int) -> str:
    return format(D(digits).scaleb(-places), "f")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.tuples(st.integers(1, 10**7), st.integers(0, 8), st.booleans()), min_size=1, max_size=6),
    price=st.tuples(st.integers(1, 10**8), st.integers(0, 6)),
    rate=st.tuples(st.integers(-(10**4), 10**4).filter(bool), st.integers(2, 8)),
)
def test_funding_pays_each_position_and_the_pool_to_the_last_digit_and_exponent(
    sizes: list[tuple[int, int, bool]], price: tuple[int, int], rate: tuple[int, int]
) -> None:
    """Each payment is q x contract size x mark x rate, and the pool's balance the sum of the
    payments in holder order, spelled as those products and sums spell (a snapshot holds the
    spelling: the fold computes the payments from one unit product and credits the pool once)."""
    from clearing.domain.state import FUNDING_POOL_ACCOUNT

    book = Book()
    book.feed(mark("BTCUSDT", wire(*price)))
    for n, (digits, places, isolated) in enumerate(sizes):
        quantity, mode = wire(digits, places), "isolated" if isolated else "cross"
        book.feed(fill(f"L{n}", "buy", quantity, wire(*price), fid=f"{n}b", mode=mode))
        book.feed(fill(f"S{n}", "sell", quantity, wire(*price), fid=f"{n}s", mode=mode))
    state = book.state
    size = state.parameters.instruments_by_symbol["BTCUSDT"].contract_size
    mark_price, funding_rate = D(wire(*price)), D(wire(*rate))
    before = {
        account_id: (
            account.balance("USDT"),
            {key: (p.funding_paid, p.isolated_margin) for key, p in account.positions.items()},
        )
        for account_id, account in state.accounts.items()
    }
    book.feed(message("marks", type="funding", symbol="BTCUSDT", rate=wire(*rate)))
    pool = before.get(FUNDING_POOL_ACCOUNT, (D(0), {}))[0]
    for account_id in sorted(state.holders["BTCUSDT"]):
        balance, positions = before[account_id]
        account = state.accounts[account_id]
        for key, position in account.positions.items():
            payment = position.quantity * size * mark_price * funding_rate
            pool += payment
            paid, isolated_margin = positions[key]
            assert str(position.funding_paid) == str(paid + payment)
            if key[1] == "isolated":
                assert str(position.isolated_margin) == str(isolated_margin - payment)
            else:
                balance += -payment
        assert str(account.balance("USDT")) == str(balance)
    assert str(state.accounts[FUNDING_POOL_ACCOUNT].balance("USDT")) == str(pool)
    assert conservation(state) == {}


def textbook_trade(held: D, cost: D, quantity: D, price: D, size: D) -> tuple[D, D, D]:
    """``booking.trade``'s rule as first written, one product per term: (quantity, cost, realised)."""
    from clearing.domain.numbers import divide, round_credit

    if held == 0 or (held > 0) == (quantity > 0):
        return held + quantity, cost + quantity * price * size, D(0)
    closing = min(abs(quantity), abs(held))
    direction = D(1) if held > 0 else D(-1)
    removed = cost if closing == abs(held) else -round_credit(-divide(cost * closing, abs(held)))
    realised = direction * closing * price * size - removed
    cost, held = cost - removed, held - direction * closing
    opening = abs(quantity) - closing
    if opening > 0:
        held, cost = -direction * opening, -direction * opening * price * size
    return held, cost, realised


@settings(max_examples=80, deadline=None)
@given(
    size=st.sampled_from(["1", "1.0", "1.00", "0.5", "10", "1E+1", "0.001"]),
    mode=st.sampled_from(["cross", "isolated"]),
    balance=st.sampled_from([None, "0", "100.50", "0.00000001"]),
    trades=st.lists(
        st.tuples(
            st.integers(-(10**6), 10**6).filter(bool), st.integers(0, 6), st.integers(1, 10**7), st.integers(0, 5)
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_a_trade_books_the_textbook_figures_to_the_last_digit_and_exponent(
    size: str, mode: str, balance: str | None, trades: list[tuple[int, int, int, int]]
) -> None:
    """``booking.trade`` computes each figure once, leaves out a product with a contract size of
    exactly 1 and adds no zero for a fill that only opens: the position, the realised PnL, the
    balance and the isolated margin must still be spelled as the textbook rule spells them (a
    snapshot holds the spelling), for sizes that are 1 in another spelling too."""
    from clearing.domain.booking import trade
    from clearing.domain.numbers import ledger_context
    from clearing.domain.state import InstrumentTerms

    state = LedgerState()
    account = state.account("A")
    if balance is not None:
        account.credit("USDT", D(balance))
    position = account.position("BTCUSDT", mode)
    terms = InstrumentTerms(D(size), "USDT")
    held, cost, pnl, isolated = D(0), D(0), D(0), D(0)
    balances = dict(account.balances)
    with ledger_context():
        for quantity_digits, quantity_places, price_digits, price_places in trades:
            quantity, price = D(quantity_digits).scaleb(-quantity_places), D(price_digits).scaleb(-price_places)
            realised = trade(state, account, position, terms, quantity, price)
            held, cost, expected = textbook_trade(held, cost, quantity, price, D(size))
            pnl += expected
            if mode == "isolated":
                isolated += expected
                if held == 0 and isolated > 0:
                    balances["USDT"] = balances.get("USDT", D(0)) + isolated
                    isolated = D(0)
            else:
                balances["USDT"] = balances.get("USDT", D(0)) + expected
            assert (str(position.quantity), str(position.cost), str(realised)) == (str(held), str(cost), str(expected))
            assert (str(position.realised_pnl), str(position.isolated_margin)) == (str(pnl), str(isolated))
            assert {a: str(v) for a, v in account.balances.items()} == {a: str(v) for a, v in balances.items()}
