"""The ``portfolio`` margin model (``clearing.domain.portfolio``) through the calculator and the
interface: hedged and naked books under both models with their grids derived by hand, the
calculator's cells against ``scenarios.underlying_requirement``, the model against brute force
(every cell priced per account), and no offset between underlyings.

Hand grids use iv 0 and vol_up_floor 0: every volatility cell is then 0 and Black-76 is the
intrinsic value (r = 0), so each cell is written down without a computer. BTC and BTCUSDT are
both marked 60,000; the grid's moves are -0.16 .. 0.16 by 0.04, extremes -0.33 and 0.5 at 0.35."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import margin, models
from clearing.domain.dynamicmargin import VolatilityState
from clearing.domain.marginmodel import CROSS, EvaluatedScope, Planned, StateMarks, valuation_time
from clearing.domain.numbers import ZERO, round_requirement, to_wire
from clearing.domain.params import bundled_document, load_parameters
from clearing.domain.portfolio import PORTFOLIO, PortfolioMarks
from clearing.domain.scenarios import (
    linear_array,
    option_array,
    requirement_wire,
    scenario_grid,
    underlying_requirement,
)
from clearing.domain.state import Account, LedgerState, MarkState, Position
from clearing.risk import evaluate_document, render_text

CALL = "BTC-26MAR27-60000-C"
PUT = "BTC-26MAR27-60000-P"
CALL_70 = "BTC-26MAR27-70000-C"
PUT_70 = "BTC-26MAR27-70000-P"
ETH_CALL = "ETH-26MAR27-3000-C"
AT = "2027-01-01T00:00:00Z"
AT_TIME = datetime(2027, 1, 1, tzinfo=UTC)


def block(underlying: str, **overrides: Any) -> dict[str, Any]:
    found = {
        "underlying": underlying, "price_range": "0.16", "price_steps": 4,
        "vol_up": "0.5", "vol_down": "0.25", "vol_up_floor": "0", "vol_power": "0.3", "vol_reference_days": "30",
        "extreme_moves": ["-0.33", "0.5"], "extreme_weight": "0.35",
        "short_option_minimum_rate": "0.01", "maintenance_factor": "0.8",
    }  # fmt: skip
    found.update(overrides)
    return found


def parameters_document(**overrides: Any) -> dict[str, Any]:
    document = copy.deepcopy(bundled_document())
    document["version"] = "portfolio-test"
    document["portfolio_margin"] = [block("BTC", **overrides), block("ETH", **overrides)]
    return document


def calculator(positions: list[dict[str, str]], model: str, *, iv: str = "0") -> dict[str, Any]:
    return evaluate_document({
        "parameters": parameters_document(), "margin_model": model, "at": AT,
        "marks": {"BTC": "60000", "BTCUSDT": "60000", "ETH": "3000", "ETHUSDT": "3000",
                  CALL: {"price": "2000", "iv": iv}, PUT: {"price": "1500", "iv": iv}},
        "account": {"balances": {"USDT": "100000"}, "positions": positions},
    })  # fmt: skip


LONG_PERP = {"instrument": "BTCUSDT", "quantity": "1", "entry_price": "60000"}
SHORT_CALL = {"instrument": CALL, "quantity": "-1", "entry_price": "2000"}
LONG_PUT = {"instrument": PUT, "quantity": "1", "entry_price": "1500"}


def test_a_covered_call_needs_less_initial_margin_under_portfolio_than_under_standard() -> None:
    """Long 1 BTCUSDT + short 1 60,000 call. Per cell: perp 60,000 m; call -max(60,000 m, 0).
    m < 0: 60,000 m (-9,600 at -0.16, the worst, in all three vol cells); m >= 0: 0. Extreme -0.33:
    -19,800 x 0.35 = -6,930; 0.5: 0. W = 9,600; S = 0.01 x 60,000 x 1 = 600; IM = 9,600,
    MM = 0.8 x 9,600 = 7,680. Standard: perp 1% / 0.5% of 60,000 = 500 / 250; call
    max(0.15 x 60,000 - 0, 0.10 x 60,000) + 2,000 = 11,000 / 0.075 x 60,000 + 2,000 = 6,500."""
    standard = calculator([LONG_PERP, SHORT_CALL], "standard")
    portfolio = calculator([LONG_PERP, SHORT_CALL], PORTFOLIO)
    assert (standard["initial_margin"], standard["maintenance_margin"]) == ("11500", "6750")
    assert (portfolio["initial_margin"], portfolio["maintenance_margin"]) == ("9600", "7680")
    assert D(portfolio["initial_margin"]) < D(standard["initial_margin"])
    assert portfolio["equity"] == standard["equity"] == "98000"  # 100,000 less the call's 2,000 at its mark
    assert "underlyings" not in standard
    (btc,) = portfolio["underlyings"]
    assert btc["worst_cell"] == {"move": "-0.16", "volatility": "up"}  # first of three equal cells
    cells = {(c["move"], c["volatility"], c.get("extreme", False)): c for c in btc["scenarios"]}
    moves = ("-0.16", "-0.12", "-0.08", "-0.04", "0", "0.04", "0.16")
    assert [cells[(m, "unchanged", False)]["pnl"] for m in moves] == [
        "-9600", "-7200", "-4800", "-2400", "0", "0", "0",
    ]  # fmt: skip
    assert cells[("-0.33", "unchanged", True)] == {
        "move": "-0.33", "volatility": "unchanged", "extreme": True, "pnl": "-19800", "weighted_pnl": "-6930",
    }  # fmt: skip
    assert cells[("0.5", "unchanged", True)]["weighted_pnl"] == "0"


def test_a_conversion_needs_only_the_short_option_minimum_under_portfolio() -> None:
    """Long perp + long 60,000 put + short 60,000 call: 60,000 m + max(-60,000 m, 0) -
    max(60,000 m, 0) = 0 in every cell, so W = 0 and IM = S = 600, MM = 480. Standard: 500 + 0 +
    11,000 = 11,500 and 250 + 0 + 6,500 = 6,750: both figures lower under portfolio."""
    standard = calculator([LONG_PERP, LONG_PUT, SHORT_CALL], "standard")
    portfolio = calculator([LONG_PERP, LONG_PUT, SHORT_CALL], PORTFOLIO)
    assert (standard["initial_margin"], standard["maintenance_margin"]) == ("11500", "6750")
    assert (portfolio["initial_margin"], portfolio["maintenance_margin"]) == ("600", "480")
    (btc,) = portfolio["underlyings"]
    assert {c["pnl"] for c in btc["scenarios"]} == {"0"}
    assert btc["worst_cell"] == {"move": "-0.16", "volatility": "up"}


def test_a_naked_short_call_is_margined_for_its_extreme_cell() -> None:
    """Short 1 60,000 call alone: -max(60,000 m, 0), -9,600 at 0.16; the extreme 0.5 loses 30,000,
    x 0.35 = 10,500, the worst. IM = 10,500, MM = 8,400 (standard: 11,000 / 6,500). The position's
    own figures are the same (it is the whole book)."""
    standard = calculator([SHORT_CALL], "standard")
    portfolio = calculator([SHORT_CALL], PORTFOLIO)
    assert (standard["initial_margin"], standard["maintenance_margin"]) == ("11000", "6500")
    assert (portfolio["initial_margin"], portfolio["maintenance_margin"]) == ("10500", "8400")
    (btc,) = portfolio["underlyings"]
    assert btc["worst_cell"] == {"move": "0.5", "volatility": "unchanged", "extreme": True}
    assert btc["scenarios"][-1] == {
        "move": "0.5", "volatility": "unchanged", "extreme": True, "pnl": "-30000", "weighted_pnl": "-10500",
    }  # fmt: skip
    (position,) = portfolio["positions"]
    assert (position["initial_margin"], position["maintenance_margin"]) == ("10500", "8400")
    shown = "portfolio BTC: initial 10500  maintenance 8400  worst cell move 0.5 volatility unchanged (extreme) of 29"
    assert shown in render_text(portfolio)
    assert position["liquidation_price"] is None


def test_the_calculators_cells_are_scenarios_underlying_requirement_with_real_volatilities() -> None:
    """iv 0.6 on both options: the calculator's underlyings entry is exactly ``requirement_wire`` of
    ``underlying_requirement`` over arrays priced here from the same inputs."""
    output = calculator([LONG_PERP, SHORT_CALL, {**LONG_PUT, "quantity": "2"}], PORTFOLIO, iv="0.6")
    parameters = load_parameters(parameters_document())
    spec = parameters.portfolio_margin_spec("BTC")
    assert spec is not None
    grid = scenario_grid(spec)
    specs = parameters.instruments_by_symbol
    arrays = {
        "BTCUSDT": linear_array(grid, specs["BTCUSDT"], D(60000)),
        CALL: option_array(grid, specs[CALL], D(60000), D("0.6"), AT_TIME),
        PUT: option_array(grid, specs[PUT], D(60000), D("0.6"), AT_TIME),
    }
    book = [(specs["BTCUSDT"], D(1)), (specs[CALL], D(-1)), (specs[PUT], D(2))]
    expected = underlying_requirement(grid, book, arrays, D(60000))
    assert output["underlyings"] == [requirement_wire(expected)]
    assert len(output["underlyings"][0]["scenarios"]) == 9 * 3 + 2
    assert output["initial_margin"] == to_wire(expected.initial_margin)
    assert expected.worst_loss > expected.short_option_minimum  # the grid, not the minimum, decides


def test_no_offset_between_underlyings() -> None:
    """Long 1 BTCUSDT (60,000) and short 20 ETHUSDT (60,000): on one underlying they would cancel;
    on two, each is margined alone. BTC: worst -0.16, 9,600 (extreme -0.33: 19,800 x 0.35 = 6,930);
    ETH: -20 x 3,000 x 0.16 = -9,600 at +0.16, but the extreme 0.5 loses 30,000, x 0.35 = 10,500.
    IM = 9,600 + 10,500 = 20,100 = the sum of each book alone; MM = 7,680 + 8,400 = 16,080."""
    short_eth = {"instrument": "ETHUSDT", "quantity": "-20", "entry_price": "3000"}
    both = calculator([LONG_PERP, short_eth], PORTFOLIO)
    btc = calculator([LONG_PERP], PORTFOLIO)
    eth = calculator([short_eth], PORTFOLIO)
    assert (both["initial_margin"], both["maintenance_margin"]) == ("20100", "16080")
    assert D(both["initial_margin"]) == D(btc["initial_margin"]) + D(eth["initial_margin"])
    assert [u["underlying"] for u in both["underlyings"]] == ["BTC", "ETH"]
    assert both["underlyings"][1]["worst_cell"] == {"move": "0.5", "volatility": "unchanged", "extreme": True}


def test_an_option_without_its_iv_is_a_clear_error_under_portfolio() -> None:
    from clearing.risk import CalculatorInputError

    with pytest.raises(CalculatorInputError, match="implied volatility"):
        evaluate_document({
            "parameters": parameters_document(), "margin_model": PORTFOLIO, "at": AT,
            "marks": {"BTC": "60000", CALL: "2000"},
            "account": {"balances": {"USDT": "100000"}, "positions": [SHORT_CALL]},
        })  # fmt: skip


def test_the_model_is_registered_and_isolated_positions_stay_standard() -> None:
    parameters = load_parameters(parameters_document())
    account = Account("A", {"USDT": D(100000)})
    account.positions[("BTCUSDT", "cross")] = Position("BTCUSDT", "cross", D(1), D(60000))
    isolated = Position("ETHUSDT", "isolated", D(-2), D(-6000), isolated_margin=D(500))
    account.positions[("ETHUSDT", "isolated")] = isolated
    marks = {"BTC": D(60000), "BTCUSDT": D(60000), "ETH": D(3000), "ETHUSDT": D(3000)}
    model = models.model_named(PORTFOLIO)
    risk = model.evaluate(account, parameters, marks, liquidation_prices=True)
    standard = margin.evaluate(account, parameters, marks, liquidation_prices=True)
    assert risk.isolated == standard.isolated
    assert risk.cross.initial_margin == D(9600) and risk.cross.underlyings[0].underlying == "BTC"
    assert models.model_of(account) is models.STANDARD_MODEL  # until the account names another
    account.margin_model = PORTFOLIO
    assert models.model_of(account) is model and models.model_of(account, "isolated:ETHUSDT") is models.STANDARD_MODEL
    assert model.dependencies(account, parameters, CROSS) == ("BTC", "BTCUSDT")
    assert model.index_bounds(account, parameters, marks, risk.cross, "BTCUSDT") is None


def test_reduction_re_evaluates_the_scope_with_the_planned_reductions_applied() -> None:
    """The conversion (long perp + long put + short call) has MM 480; closing the long put leaves
    the covered call, MM 7,680 (the standard model's arithmetic would have freed the put's own
    requirement instead). Closing the call alone leaves the protective put (perp + put: no loss
    in any cell, no short option): MM 0; closing it with the put's close planned before it leaves
    the perp alone: -0.16 x 60,000 = -9,600, MM 0.8 x 9,600 = 7,680."""
    parameters = load_parameters(parameters_document())
    account = Account("A", {"USDT": D(100000)})
    account.positions[("BTCUSDT", "cross")] = Position("BTCUSDT", "cross", D(1), D(60000))
    account.positions[(PUT, "cross")] = Position(PUT, "cross", D(1), D(1500))
    account.positions[(CALL, "cross")] = Position(CALL, "cross", D(-1), D(-2000))
    marks = PortfolioMarks(
        {"BTC": D(60000), "BTCUSDT": D(60000), CALL: D(2000), PUT: D(1500)}, {CALL: D(0), PUT: D(0)}, AT_TIME
    )
    model = models.model_named(PORTFOLIO)
    scope = model.evaluate_scope(account, parameters, marks, CROSS, liquidation_prices=False)
    assert scope.maintenance_margin == D(480)
    put, call = scope.position(PUT), scope.position(CALL)
    assert put is not None and call is not None
    evaluated = EvaluatedScope(account, parameters, marks, scope)
    nothing = Planned({}, scope.equity, scope.maintenance_margin)
    after = model.reduction(evaluated, nothing, put, D(1))
    assert after.maintenance == D(7680) and after.left == ZERO
    assert after.fee == margin.reduction(parameters, put, scope.equity, scope.maintenance_margin, D(1)).fee
    assert model.reduction(evaluated, nothing, call, D(1)).maintenance == ZERO
    put_closed = nothing.then(PUT, D(1), after)
    both = model.reduction(evaluated, put_closed, call, D(1))
    assert both.maintenance == D(7680)
    # The fees add up along the plan: the put's (1,500 x 0.005 = 7.5), then the call's (10).
    assert both.equity == scope.equity - D("7.5") - D(10)
    assert account.positions[(PUT, "cross")].quantity == D(1)  # the account itself is left as it was


# ---------------------------------------------------------------------------------------------
# The model against brute force: every cell priced for each account on its own.

BOOK_INSTRUMENTS = ["BTCUSDT", CALL, PUT, CALL_70, PUT_70, "ETHUSDT", ETH_CALL]
IVS = {CALL: D("0.55"), PUT: D("0.6"), CALL_70: D("0.5"), PUT_70: D("0.65"), ETH_CALL: D("0.7")}


def brute_force(parameters: Any, account: Account, prices: dict[str, D], valuation_at: datetime) -> tuple[D, D]:
    """IM and MM summed over underlyings, each cell's P&L summed position by position from arrays
    priced for this account alone; the worst cell found by a plain scan in grid order."""
    specs = parameters.instruments_by_symbol
    books: dict[str, list[tuple[Any, D]]] = {}
    for (symbol, _mode), position in sorted(account.positions.items()):
        if position.quantity != 0:
            books.setdefault(specs[symbol].underlying_symbol, []).append((specs[symbol], position.quantity))
    initial = maintenance = ZERO
    for underlying, book in sorted(books.items()):
        spec = parameters.portfolio_margin_spec(underlying)
        grid = scenario_grid(spec)
        worst = None
        for index, cell in enumerate(grid.cells):
            total = ZERO
            for instrument, quantity in book:
                if instrument.kind == "option":
                    array = option_array(grid, instrument, prices[underlying], IVS[instrument.symbol], valuation_at)
                else:
                    array = linear_array(grid, instrument, prices[instrument.symbol])
                total += quantity * array.pnl[index]
            weighted = total * cell.weight if cell.extreme else total
            if worst is None or weighted < worst:
                worst = weighted
        assert worst is not None
        shorts = sum((-q * s.contract_size for s, q in book if s.kind == "option" and q < 0), ZERO)
        requirement = max(max(ZERO, -worst), spec.short_option_minimum_rate * prices[underlying] * shorts)
        initial += round_requirement(requirement)
        maintenance += round_requirement(spec.maintenance_factor * requirement)
    return initial, maintenance


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    quantities=st.lists(st.sampled_from(["-2", "-1", "-0.5", "0", "0.3", "1", "3"]), min_size=7, max_size=7),
    btc=st.sampled_from(["52000", "60000", "67123.5"]),
    eth=st.sampled_from(["2500", "3000.25"]),
)
def test_the_models_requirements_equal_brute_force(quantities: list[str], btc: str, eth: str) -> None:
    parameters = load_parameters(parameters_document(vol_up_floor="0.5"))
    account = Account("A", {"USDT": D(100000)})
    for symbol, quantity in zip(BOOK_INSTRUMENTS, quantities, strict=True):
        if D(quantity) != 0:
            account.positions[(symbol, "cross")] = Position(symbol, "cross", D(quantity), D(quantity) * D(1000))
    prices = {"BTC": D(btc), "BTCUSDT": D(btc), "ETH": D(eth), "ETHUSDT": D(eth)}
    prices.update({symbol: D(1000) for symbol in IVS})
    marks = PortfolioMarks(prices, IVS, AT_TIME)
    risk = models.model_named(PORTFOLIO).evaluate(account, parameters, marks, liquidation_prices=False)
    expected = brute_force(parameters, account, prices, AT_TIME)
    assert (risk.cross.initial_margin, risk.cross.maintenance_margin) == expected
    assert risk.cross.equity == margin.evaluate(account, parameters, prices, liquidation_prices=False).cross.equity
    for requirement in risk.cross.underlyings:  # never below the worst cell's loss
        assert requirement.initial_margin >= requirement.worst_loss


def test_in_the_ledger_an_option_is_valued_at_the_later_of_its_marks_times_with_the_multiplier_in_force() -> None:
    """``StateMarks`` carries the marks' ivs and times and dynamic margin's multipliers: the
    portfolio model in the ledger prices an option's array at the later of its own mark's time
    and its underlying's (so one array per mark of either), on the grid the multiplier widens."""
    state = LedgerState(parameters=load_parameters(parameters_document()))
    account = state.account("A")
    account.margin_model = PORTFOLIO
    account.credit("USDT", D(100000))
    account.positions[(CALL, "cross")] = Position(CALL, "cross", D(-1), D(-2000))
    option_at, underlying_at = AT_TIME, datetime(2027, 1, 2, tzinfo=UTC)
    state.marks[CALL] = MarkState(D(2000), option_at, D("0.6"))
    state.marks["BTC"] = MarkState(D(60000), underlying_at)
    marks = StateMarks(state)
    assert marks.ivs.get(CALL) == D("0.6") and marks.ivs.get("BTC") is None and dict(marks.ivs) == {CALL: D("0.6")}
    assert valuation_time(marks, CALL, "BTC") == underlying_at
    parameters = state.parameters
    expected = models.PORTFOLIO_MODEL.evaluate_scope(
        account, parameters, PortfolioMarks({CALL: D(2000), "BTC": D(60000)}, {CALL: D("0.6")}, underlying_at), CROSS,
        liquidation_prices=False,
    )  # fmt: skip
    assert models.scope_risk(state, account, CROSS) == expected
    state.volatility["BTC"] = VolatilityState("BTC", started=True, multiplier=D("1.5"))
    assert state.multiplier("BTC") == D("1.5") and StateMarks(state).multipliers == {"BTC": D("1.5")}
    widened = models.PORTFOLIO_MODEL.evaluate_scope(
        account, parameters,
        PortfolioMarks({CALL: D(2000), "BTC": D(60000)}, {CALL: D("0.6")}, underlying_at, {"BTC": D("1.5")}), CROSS,
        liquidation_prices=False,
    )  # fmt: skip
    assert models.scope_risk(state, account, CROSS) == widened
    assert widened.initial_margin > expected.initial_margin
