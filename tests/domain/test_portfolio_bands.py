"""Bands of portfolio cross scopes for the trigger index (``portfolio.bands``): a worked band, the
scope evaluated anywhere inside its bands (prices and the underlying's mark time together, the
edges included) keeps its level and its place against resolve_ratio, checked against the model's
own evaluation on random books near their thresholds; and the index uses the bands: a mark inside
looks at no one, a price or a time outside re-margins exactly that scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain import models, portfolio, triggers
from clearing.domain.fold import conservation
from clearing.domain.levels import Level, below_resolve
from clearing.domain.marginmodel import CROSS, StateMarks, clock_key, clock_seconds
from clearing.domain.numbers import ZERO, ledger_context
from clearing.domain.params import load_parameters
from clearing.domain.portfolio import PORTFOLIO
from clearing.domain.state import LedgerState, MarkState, Position
from tests.domain.test_fold import Book, deposit, mark
from tests.domain.test_options import ACCOUNTS as option_accounts
from tests.domain.test_options import EXPIRY, option_fill, option_mark, option_markets
from tests.domain.test_portfolio_model import CALL, CALL_70, PUT, PUT_70, parameters_document
from tests.domain.test_triggers import decisions, run

T0 = datetime(2027, 1, 1, tzinfo=UTC)
OPTIONS = (CALL, PUT, CALL_70, PUT_70)
SHARE = D("0.35")


def ledger(**grid: Any) -> LedgerState:
    state = LedgerState(parameters=load_parameters(parameters_document(**grid)))
    state.triggers.stale = False
    return state


def holder(state: LedgerState, account_id: str, usdt: D, positions: dict[str, D], btc: D = ZERO) -> None:
    account = state.account(account_id)
    account.margin_model = PORTFOLIO
    account.credit("USDT", usdt)
    if btc:
        account.credit("BTC", btc)
    for symbol, quantity in positions.items():
        entry = D(60000) if symbol == "BTCUSDT" else D(1000)
        account.positions[(symbol, CROSS)] = Position(symbol, CROSS, quantity, quantity * entry)
        state.holders.setdefault(symbol, set()).add(account_id)


def market(state: LedgerState, btc: D, ivs: dict[str, D], at: datetime = T0, option_at: datetime = T0) -> None:
    state.marks["BTC"] = MarkState(btc, at)
    state.marks["BTCUSDT"] = MarkState(btc, at)
    for symbol, iv in ivs.items():
        state.marks[symbol] = MarkState(D(1000), option_at, iv)


def bands_of(state: LedgerState, account_id: str) -> tuple[Any, dict[str, tuple[D, D]] | None]:
    account = state.accounts[account_id]
    model = models.model_of(account)
    risk = models.scope_risk(state, account, CROSS, liquidation_prices=False)
    symbols = model.dependencies(account, state.parameters, CROSS)
    found = model.budget_bands(account, state.parameters, StateMarks(state), risk, symbols, SHARE)
    assert found is None or found[1] is None  # no record: every fill re-margins
    return risk, None if found is None else found[0]


def banded(state: LedgerState, account_id: str) -> tuple[Any, dict[str, tuple[D, D]]]:
    risk, found = bands_of(state, account_id)
    assert found is not None
    return risk, found


def side(state: LedgerState, account_id: str) -> tuple[Level, bool]:
    """The level and the place against resolve_ratio of the account's cross scope, as the
    lifecycle reads them."""
    risk = models.scope_risk(state, state.accounts[account_id], CROSS, liquidation_prices=False)
    policy = state.parameters.margin_call
    return risk.status, below_resolve(risk.equity, risk.maintenance_margin, risk.margin_ratio, policy)


def moved(state: LedgerState, prices: dict[str, D], seconds: D = ZERO) -> LedgerState:
    """A copy of the marks with ``prices`` and the underlying's mark ``seconds`` later."""
    copy = LedgerState(parameters=state.parameters)
    copy.accounts = state.accounts
    copy.marks = dict(state.marks)
    for symbol, price in prices.items():
        old = copy.marks[symbol]
        copy.marks[symbol] = MarkState(price, old.occurred_at, old.iv)
    btc = copy.marks["BTC"]
    copy.marks["BTC"] = MarkState(btc.price, btc.occurred_at + timedelta(microseconds=int(seconds * 1_000_000)))
    return copy


def test_a_worked_band_of_a_hedged_book() -> None:
    """Short 3 60,000 calls, long 2 60,000 puts, long 0.5 BTCUSDT, 20,000 USDT; BTC 60,000, the
    options marked 1,000 at iv 0.6. Equity 20,000 - 3,000 + 2,000 = 19,000 against an MM the grid
    puts near 19,287: in maintenance, so the smallest gap is MM - E; the grid's moves reach 0.5
    (its extreme), f = 0.8. k_BTCUSDT = 0.5 (1 + 0.8 x 0.5) = 0.7; k_BTC = 0.8 (5 x 1.5 + 0.01 x
    3) = 6.024; the options' bands are empty; three parts share 0.35 of the budget."""
    state = ledger(vol_up_floor="0.5")
    holder(state, "A", D(20000), {CALL: D(-3), PUT: D(2), "BTCUSDT": D("0.5")})
    market(state, D(60000), {CALL: D("0.6"), PUT: D("0.6")})
    risk, bands = banded(state, "A")
    assert risk.status == Level.MAINTENANCE and risk.equity == D(19000)
    assert bands[CALL] == (D(1000), D(1000)) and bands[PUT] == (D(1000), D(1000))
    gap = risk.maintenance_margin - risk.equity
    rounding = 4 * (D("1e-8") * (3 + 1 + 1) + D("1e-10") * (risk.equity + gap)) + D("2e-12") * 5
    part = (gap - rounding) * SHARE / 3
    for symbol, slope in (("BTCUSDT", D("0.7")), ("BTC", D("6.024"))):
        low, high = bands[symbol]
        assert abs((D(60000) - low) - part / slope) < D("1e-9") and abs((high - D(60000)) - part / slope) < D("1e-9")
    low, high = bands[clock_key("BTC")]
    window = high - clock_seconds(T0)
    assert clock_seconds(T0) - low == window and window in {D(s) for s in portfolio.CLOCK_STEPS}
    # Every corner of the box, the edges themselves, keeps the level and the place against resolve.
    before = side(state, "A")
    for btc in (bands["BTC"][0], bands["BTC"][1]):
        for perp in (bands["BTCUSDT"][0], bands["BTCUSDT"][1]):
            for seconds in (-window, window):
                assert side(moved(state, {"BTC": btc, "BTCUSDT": perp}, seconds), "A") == before


def test_a_book_without_options_on_its_grid_gets_no_clock_and_no_band_on_the_underlying() -> None:
    state = ledger()
    holder(state, "A", D(10000), {"BTCUSDT": D(1)})
    market(state, D(60000), {})
    _, bands = banded(state, "A")
    assert set(bands) == {"BTCUSDT"}  # BTC's mark moves nothing of a perpetual's grid


def test_a_negative_interest_rate_or_a_position_without_a_grid_is_not_banded() -> None:
    document = parameters_document()
    document["interest_rate"] = "-0.01"
    state = LedgerState(parameters=load_parameters(document))
    holder(state, "A", D(10000), {CALL: D(-1)})
    market(state, D(60000), {CALL: D("0.6")})
    account = state.accounts["A"]
    risk = models.scope_risk(state, account, CROSS)
    model = models.model_of(account)
    symbols = model.dependencies(account, state.parameters, CROSS)
    assert model.budget_bands(account, state.parameters, StateMarks(state), risk, symbols, SHARE) is None
    state = ledger()
    holder(state, "A", D(10000), {CALL: D(-1), "SOLUSDT": D(1)})
    market(state, D(60000), {CALL: D("0.6")})
    state.marks["SOL"] = state.marks["SOLUSDT"] = MarkState(D(100), T0)
    account = state.accounts["A"]
    risk = models.scope_risk(state, account, CROSS)
    symbols = model.dependencies(account, state.parameters, CROSS)
    assert model.budget_bands(account, state.parameters, StateMarks(state), risk, symbols, SHARE) is None


def test_the_index_re_margins_a_banded_scope_only_for_a_price_or_a_time_outside_its_bands() -> None:
    with ledger_context():  # as the lifecycle calls the index: bands carry more digits than 28
        index_on_marks()


def index_on_marks() -> None:
    state = ledger(vol_up_floor="0.5")
    holder(state, "A", D(20000), {CALL: D(-3), PUT: D(2), "BTCUSDT": D("0.5")})
    holder(state, "B", D(10**7), {CALL: D(3), PUT: D(-2)})
    market(state, D(60000), {CALL: D("0.6"), PUT: D("0.6")})
    triggers.rebuild(state)
    _, bands = banded(state, "A")
    window = bands[clock_key("BTC")][1] - clock_seconds(T0)
    low, _ = bands["BTC"]
    inside = (low + D(60000)) / 2
    state.marks["BTC"] = MarkState(inside, T0 + timedelta(seconds=int(window) - 1))
    assert triggers.crossed(state, "BTC", inside) == (set(), set())
    state.marks["BTC"] = MarkState(inside, T0 + timedelta(seconds=int(window)))  # at the window's end
    assert triggers.crossed(state, "BTC", inside)[0] == {("A", CROSS)}
    state.marks["BTC"] = MarkState(D(60000), T0)
    triggers.refresh(state, "A")  # as the re-margin would, at the reference again
    state.marks["BTC"] = MarkState(low, T0)
    assert triggers.crossed(state, "BTC", low)[0] == {("A", CROSS)}  # at the band's edge
    state.marks[CALL] = MarkState(D(1000), T0, D("0.61"))  # an option's mark: any, even at its price
    assert triggers.crossed(state, CALL, D(1000))[0] == {("A", CROSS), ("B", CROSS)}


# ---------------------------------------------------------------------------------------------
# Anywhere inside the bands, the model's own evaluation keeps the scope on its side.

quantity = st.sampled_from([D(-3), D(-1), D("-0.5"), ZERO, ZERO, D("0.5"), D(1), D(2)])
fraction = st.integers(min_value=-1000, max_value=1000).map(lambda n: D(n) / 1000)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    positions=st.lists(quantity, min_size=5, max_size=5),
    btc=st.integers(min_value=30_000, max_value=95_000),
    ivs=st.lists(st.integers(min_value=5, max_value=150), min_size=4, max_size=4),
    days=st.sampled_from([0, 1, 30, 83, 84, 90, 200]),
    option_hours=st.integers(min_value=-48, max_value=48),
    ratio=st.integers(min_value=30, max_value=160),
    btc_balance=st.sampled_from([ZERO, ZERO, D("0.5"), D(3)]),
    floor=st.sampled_from(["0", "0.5"]),
    rate=st.sampled_from(["0", "0.05"]),
    corners=st.lists(st.tuples(fraction, fraction, fraction), min_size=4, max_size=4),
)
def test_anywhere_inside_the_bands_the_scope_keeps_its_level_and_its_place_against_resolve(
    positions: list[D], btc: int, ivs: list[int], days: int, option_hours: int, ratio: int, btc_balance: D,
    floor: str, rate: str, corners: list[tuple[D, D, D]],
) -> None:  # fmt: skip
    """Random books of the chain and the perpetual, their collateral set so that the ratio is
    near a threshold (0.3 .. 1.6 of maintenance over equity), the options valued days before or
    after their expiry (83 to 84 days from T0 crosses it); then points drawn in the box of the
    bands (BTC's price and time, the perpetual's, a BTC balance's price), each edge included."""
    document = parameters_document(vol_up_floor=floor)
    document["interest_rate"] = rate
    state = LedgerState(parameters=load_parameters(document))
    book = dict(zip((*OPTIONS, "BTCUSDT"), positions, strict=True))
    book = {symbol: q for symbol, q in book.items() if q != ZERO}
    if not any(symbol in OPTIONS for symbol in book):
        return
    at = T0 + timedelta(days=days)
    holder(state, "A", ZERO, book, btc_balance)
    market(state, D(btc), {o: D(iv) / 100 for o, iv in zip(OPTIONS, ivs, strict=True)}, at,
           at + timedelta(hours=option_hours))  # fmt: skip
    state.marks["BTC"] = MarkState(D(btc), at)
    risk = models.scope_risk(state, state.accounts["A"], CROSS, liquidation_prices=False)
    if risk.maintenance_margin <= ZERO:
        return
    wanted = risk.maintenance_margin * 100 / ratio - risk.equity  # USDT that puts the ratio there
    state.accounts["A"].credit("USDT", wanted.quantize(D("0.01")))
    _, bands = bands_of(state, "A")
    if bands is None:
        return  # on a threshold: no budget (every mark of its symbols re-margins it)
    before = side(state, "A")
    reference = clock_seconds(at)
    for b, p, s in corners:
        prices: dict[str, D] = {}
        for symbol, f in (("BTC", b), ("BTCUSDT", p)):
            if symbol in bands:
                low, high = bands[symbol]
                middle = state.marks[symbol].price
                prices[symbol] = middle + f * (high - middle) if f > 0 else middle + f * (middle - low)
        seconds = ZERO
        if clock_key("BTC") in bands:
            seconds = (s * (bands[clock_key("BTC")][1] - reference)).quantize(D("0.000001"))
        assert side(moved(state, prices, seconds), "A") == before


# ---------------------------------------------------------------------------------------------
# The bound itself: E and MM move by no more than the slopes and the drift say.

move = st.integers(min_value=-300, max_value=300).map(lambda n: D(n) / 10_000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    positions=st.lists(quantity, min_size=5, max_size=5),
    btc=st.integers(min_value=30_000, max_value=95_000),
    ivs=st.lists(st.integers(min_value=5, max_value=150), min_size=4, max_size=4),
    days=st.sampled_from([0, 1, 30, 83, 84, 90, 200]),
    option_hours=st.integers(min_value=-48, max_value=48),
    btc_balance=st.sampled_from([ZERO, D("0.5"), D(3)]),
    floor=st.sampled_from(["0", "0.5"]),
    rate=st.sampled_from(["0", "0.05"]),
    moves=st.tuples(move, move, fraction),
    step=st.sampled_from(portfolio.CLOCK_STEPS),
)
def test_equity_and_maintenance_move_by_no_more_than_the_slopes_and_the_drift(
    positions: list[D], btc: int, ivs: list[int], days: int, option_hours: int, btc_balance: D, floor: str,
    rate: str, moves: tuple[D, D, D], step: int,
) -> None:  # fmt: skip
    """|dE| + |dMM| <= k_BTC |dBTC| + k_perp |dperp| + f sum |q| drift(h) + the roundings, for
    moves of BTC (its price and its mark's time, up to h either way) and of the perpetual: what
    every band and clock window is cut from."""
    document = parameters_document(vol_up_floor=floor)
    document["interest_rate"] = rate
    state = LedgerState(parameters=load_parameters(document))
    book = {symbol: q for symbol, q in zip((*OPTIONS, "BTCUSDT"), positions, strict=True) if q != ZERO}
    if not book:
        return
    at = T0 + timedelta(days=days)
    holder(state, "A", D(50000), book, btc_balance)
    market(state, D(btc), {o: D(iv) / 100 for o, iv in zip(OPTIONS, ivs, strict=True)}, at,
           at + timedelta(hours=option_hours))  # fmt: skip
    account = state.accounts["A"]
    risk = models.scope_risk(state, account, CROSS, liquidation_prices=False)
    found = portfolio.sensitivities(account, state.parameters, StateMarks(state), risk)
    assert found is not None
    bound = found.option_quantity * portfolio.CELL_SLACK + D("1e-8") * 2
    prices = {"BTC": D(btc) * (1 + moves[0]), "BTCUSDT": D(btc) * (1 + moves[1])}
    for symbol, price in prices.items():
        bound += found.slopes.get(symbol, ZERO) * abs(price - D(btc))
    seconds = (moves[2] * step).quantize(D("0.000001"))
    for held in found.options.values():
        for spec, size, iv, valued in held.held:
            assert valued is not None
            moved_by = portfolio.drift(state.parameters, held.grid, spec, held.mark, iv, valued, step)
            bound += held.grid.spec.maintenance_factor * size * moved_by
    after = models.scope_risk(moved(state, prices, seconds), account, CROSS, liquidation_prices=False)
    change = abs(after.equity - risk.equity) + abs(after.maintenance_margin - risk.maintenance_margin)
    assert change <= bound


@settings(max_examples=100, deadline=None)
@given(
    option=st.sampled_from(OPTIONS),
    btc=st.integers(min_value=30_000, max_value=95_000),
    iv=st.integers(min_value=1, max_value=150),
    days=st.sampled_from([0, 1, 2, 30, 83, 84, 200]),
    step=st.sampled_from(portfolio.CLOCK_STEPS),
    offset=fraction,
    floor=st.sampled_from(["0", "0.5"]),
)
def test_no_cell_of_an_option_array_moves_by_more_than_its_drift(
    option: str, btc: int, iv: int, days: int, step: int, offset: D, floor: str
) -> None:
    """The array priced at a valuation time moved by up to h either way stays within ``drift``
    of the array at the reference, cell by cell (the figures the ledger sums)."""
    from clearing.domain.scenarios import option_array, scenario_grid

    parameters = load_parameters(parameters_document(vol_up_floor=floor))
    spec = parameters.instruments_by_symbol[option]
    grid = scenario_grid(parameters.portfolio_margin_spec("BTC"))
    at = T0 + timedelta(days=days)
    later = at + timedelta(microseconds=int(offset * step * 1_000_000))
    bound = portfolio.drift(parameters, grid, spec, D(btc), D(iv) / 100, at, step)
    before = option_array(grid, spec, D(btc), D(iv) / 100, at).pnl
    after = option_array(grid, spec, D(btc), D(iv) / 100, later).pnl
    assert max(abs(a - b) for a, b in zip(after, before, strict=True)) <= bound + portfolio.CELL_SLACK


@settings(max_examples=100, deadline=None)
@given(
    option=st.sampled_from(OPTIONS),
    btc=st.integers(min_value=30_000, max_value=95_000),
    iv=st.integers(min_value=1, max_value=150),
    days=st.sampled_from([1, 30, 84, 200]),
    change=move,
)
def test_no_cell_of_an_option_array_moves_by_more_than_its_slope_in_the_underlying(
    option: str, btc: int, iv: int, days: int, change: D
) -> None:
    """|dV_c| <= cs (1 + the largest move above 0) |dF| in every cell, whatever the cell's
    volatility: reached by a call far out of the money at F and in it at F (1 + 0.5)."""
    from clearing.domain.scenarios import option_array, scenario_grid

    parameters = load_parameters(parameters_document(vol_up_floor="0.5"))
    spec = parameters.instruments_by_symbol[option]
    grid = scenario_grid(parameters.portfolio_margin_spec("BTC"))
    at = T0 + timedelta(days=days)
    after = D(btc) * (1 + change)
    before_pnl = option_array(grid, spec, D(btc), D(iv) / 100, at).pnl
    after_pnl = option_array(grid, spec, after, D(iv) / 100, at).pnl
    slope = spec.contract_size * (1 + max(max(grid.moves), ZERO))
    assert max(abs(a - b) for a, b in zip(after_pnl, before_pnl, strict=True)) <= slope * abs(
        after - D(btc)) + portfolio.CELL_SLACK  # fmt: skip


# ---------------------------------------------------------------------------------------------
# In the ledger: the index with bands decides exactly as brute force.


def on_portfolio(book: Book) -> None:
    """The chains' grids in force and every trader on the portfolio model (MM stays standard)."""
    book.state.parameters = load_parameters(parameters_document(vol_up_floor="0.5"))
    for account_id in option_accounts:
        book.state.account(account_id).margin_model = PORTFOLIO


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option_markets(eth=True, ivs=True, jumps=True, fine=True))
def test_the_index_decides_exactly_as_brute_force_for_portfolio_accounts(msgs: list[Any]) -> None:
    indexed = run(msgs, brute_force=False, prepare=on_portfolio)
    assert decisions(indexed) == decisions(run(msgs, brute_force=True, prepare=on_portfolio))
    assert conservation(indexed.state) == {}


def test_time_alone_moves_a_short_call_across_warning_and_the_clock_band_catches_it() -> None:
    """Short one 60,000 call three days before its expiry at BTC 60,000, iv 0.6, 10,170 USDT:
    MM about 8,035, ratio 0.790 (healthy). Two days later, BTC unmoved, the call's cells (valued at
    the later mark's time) lose more in the rising cells as its value at the mark decays: MM
    about 8,190, ratio 0.805: a warning. Only the time of BTC's mark moved: its clock band, not
    its price band, makes the index look (as brute force does)."""
    at = EXPIRY - timedelta(days=3)
    msgs = [
        mark("BTC", "60000", at), option_mark(CALL, "1500", "0.6", at), deposit("MM", "100000000", "dMM"),
        deposit("A", "10170", "dA"), option_fill("A", "sell", "1", "1500", fid="a1", instrument=CALL, at=at),
        option_fill("MM", "buy", "1", "1500", fid="m1", instrument=CALL, at=at),
        mark("BTC", "60000", at + timedelta(seconds=10)), mark("BTC", "60000", at + timedelta(days=2)),
    ]  # fmt: skip
    indexed = run(msgs, brute_force=False, prepare=on_portfolio)
    assert [(d.type, d.payload["level"]) for d in indexed.decisions] == [(ev.MARGIN_CALL_ISSUED, "warning")]
    assert decisions(indexed) == decisions(run(msgs, brute_force=True, prepare=on_portfolio))
    # The mark ten seconds on, inside the window, looked at no one.
    index = run(msgs[:-2], brute_force=False, prepare=on_portfolio).state
    window = index.triggers.heap_symbols["A"]
    assert clock_key("BTC") in window
    index.marks["BTC"] = MarkState(D(60000), at + timedelta(seconds=10))
    with ledger_context():
        assert triggers.crossed(index, "BTC", D(60000)) == (set(), set())
