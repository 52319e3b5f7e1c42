"""Portfolio margin on the scenario grid (``scenarios``): worked grids derived by hand, each rule of
CONTRACT v2 "Portfolio margin" on its own, and properties against brute force.

Most hand grids use options with iv 0 and vol_up_floor 0 (every volatility cell is then 0) or at
their expiry: Black-76 is then the intrinsic value (CONTRACT v2), so every cell can be written
down without a computer. One grid prices a naked short call with real volatilities; its Black-76
values are written out and checked against ``black76.price`` at its full 50 digits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain import black76, decimalmath
from clearing.domain.params import InstrumentSpec, PortfolioMarginSpec
from clearing.domain.scenarios import (
    Cell,
    RiskArray,
    ScenarioError,
    ScenarioGrid,
    account_requirement,
    days_to_expiry,
    grid_pricing_digits,
    linear_array,
    option_array,
    option_pair_arrays,
    pack,
    packed_requirement_figures,
    requirement_figures,
    requirement_wire,
    scaled_quantities,
    scenario_grid,
    short_option_contracts,
    underlying_requirement,
    volatility_cells,
)

D = Decimal
AT = datetime(2027, 1, 1, tzinfo=UTC)
EXPIRY_30D = AT + timedelta(days=30)


def grid_spec(**overrides: Any) -> PortfolioMarginSpec:
    document: dict[str, Any] = {
        "underlying": "BTC", "price_range": "0.2", "price_steps": 2,
        "vol_up": "0.5", "vol_down": "0.25", "vol_up_floor": "0", "vol_power": "0.3", "vol_reference_days": "30",
        "extreme_moves": ["-0.5", "0.5"], "extreme_weight": "0.3",
        "short_option_minimum_rate": "0.01", "maintenance_factor": "0.8",
    }
    document.update(overrides)
    return PortfolioMarginSpec.model_validate(document)


CONTRACT_BLOCK = {
    "underlying": "BTC", "price_range": "0.16", "price_steps": 4,
    "vol_up": "0.5", "vol_down": "0.25", "vol_up_floor": "0.5", "vol_power": "0.3", "vol_reference_days": "30",
    "extreme_moves": ["-0.33", "0.5"], "extreme_weight": "0.35",
    "short_option_minimum_rate": "0.01", "maintenance_factor": "0.8",
}


def perpetual(symbol: str = "BTCUSDT", underlying: str = "BTC", contract_size: str = "1") -> InstrumentSpec:
    return InstrumentSpec.model_validate({
        "symbol": symbol, "kind": "perpetual", "underlying": underlying, "settlement_asset": "USDT",
        "contract_size": contract_size,
        "tiers": [{"notional_cap": None, "initial_rate": "0.01", "maintenance_rate": "0.005"}],
    })


def option(option_type: str, strike: str, expiry: datetime = EXPIRY_30D, contract_size: str = "1",
           underlying: str = "BTC") -> InstrumentSpec:
    return InstrumentSpec.model_validate({
        "symbol": f"{underlying}-{strike}-{option_type[0].upper()}", "kind": "option", "underlying": underlying,
        "option_type": option_type, "strike": strike, "expiry": expiry.isoformat(), "settlement_asset": "USDT",
        "contract_size": contract_size,
    })


def pnls(array: RiskArray) -> list[Decimal]:
    return list(array.pnl)


def cells_of(grid: ScenarioGrid) -> list[tuple[Decimal, str, bool]]:
    return [(cell.move, cell.volatility, cell.extreme) for cell in grid.cells]


# ------------------------------------------------------------------------------------------------
# The grid


def test_the_contract_block_gives_nine_moves_by_three_volatility_cells_then_the_extreme_cells() -> None:
    grid = scenario_grid(PortfolioMarginSpec.model_validate(CONTRACT_BLOCK))
    moves = [D("-0.16"), D("-0.12"), D("-0.08"), D("-0.04"), D(0), D("0.04"), D("0.08"), D("0.12"), D("0.16")]
    expected = [(move, vol, False) for move in moves for vol in ("up", "unchanged", "down")]
    expected += [(D("-0.33"), "unchanged", True), (D("0.5"), "unchanged", True)]
    assert cells_of(grid) == expected
    assert [cell.weight for cell in grid.cells[-2:]] == [D("0.35"), D("0.35")]
    assert {cell.weight for cell in grid.cells[:-2]} == {D(1)}


def test_the_multiplier_scales_the_price_range_not_the_extreme_moves() -> None:
    grid = scenario_grid(grid_spec(), D("1.5"))  # 0.2 x 1.5 = 0.3 over 2 steps
    assert grid.moves == (D("-0.3"), D("-0.15"), D(0), D("0.15"), D("0.3"), D("-0.5"), D("0.5"))


def test_a_move_that_does_not_terminate_is_rounded_half_even_to_12_places() -> None:
    grid = scenario_grid(grid_spec(price_range="0.1", price_steps=3))
    assert grid.moves[:3] == (D("-0.1"), D("-0.066666666667"), D("-0.033333333333"))


def test_a_multiplier_that_takes_the_price_to_zero_is_refused() -> None:
    with pytest.raises(ScenarioError, match="zero or below"):
        scenario_grid(grid_spec(price_range="0.4"), D("2.5"))


# ------------------------------------------------------------------------------------------------
# Volatility cells


def test_volatility_cells_at_the_reference_days_move_iv_by_vol_up_and_vol_down() -> None:
    # DTE = 30 = vol_reference_days: k_o = 1^0.3 = exp(0.3 ln 1) = exp(0) = 1 exactly.
    spec = grid_spec(vol_up_floor="0.5")
    assert volatility_cells(spec, D("0.6"), D(30)) == (D("0.90"), D("0.6"), D("0.450"))  # 0.6 x 1.5, 0.6 x 0.75


def test_the_vol_up_floor_lifts_a_low_volatility() -> None:
    # iv 0.2: up = max(0.2 x 1.5 = 0.3, 0.5) = 0.5; down = 0.2 x 0.75 = 0.15.
    spec = grid_spec(vol_up_floor="0.5")
    assert volatility_cells(spec, D("0.2"), D(30)) == (D("0.5"), D("0.2"), D("0.150"))


def test_the_power_scales_the_shocks_by_days_to_expiry() -> None:
    # DTE 960: k_o = (30 / 960)^0.2 = (1/32)^(1/5) = 1/2; up = 0.6 (1 + 0.5 x 0.5) = 0.75,
    # down = 0.6 (1 - 0.25 x 0.5) = 0.525 (to the 50 digits exp(0.2 ln(1/32)) carries).
    spec = grid_spec(vol_power="0.2")
    up, unchanged, down = volatility_cells(spec, D("0.6"), D(960))
    assert abs(up - D("0.75")) < D("1e-45") and abs(down - D("0.525")) < D("1e-45") and unchanged == D("0.6")


def test_days_below_one_count_as_one_day() -> None:
    # DTE 0.25 -> max(DTE, 1) = 1: k_o = 30^0.3 = exp(0.3 x 3.401197) = exp(1.020359) = 2.77419111..., as at DTE 1.
    spec = grid_spec()
    at_quarter_day = volatility_cells(spec, D("0.6"), D("0.25"))
    assert at_quarter_day == volatility_cells(spec, D("0.6"), D(1))
    with localcontext(Context(prec=60)) as wide:
        k = wide.exp(D("0.3") * wide.ln(D(30)))
        assert abs(at_quarter_day[0] - D("0.6") * (1 + D("0.5") * k)) < D("1e-45")
    assert str(k)[:10] == "2.77419111"


def test_the_down_cell_stops_at_zero() -> None:
    # vol_down 1 and k_o = 30^0.3 > 1 at DTE 1: 0.6 x (1 - 2.77...) < 0, so the cell is 0.
    assert volatility_cells(grid_spec(vol_down="1"), D("0.6"), D(1))[2] == D(0)


def test_days_to_expiry_are_unrounded_seconds_over_86400() -> None:
    assert days_to_expiry(AT + timedelta(hours=36), AT) == D("1.5")
    assert days_to_expiry(AT, AT + timedelta(hours=12)) == D("-0.5")


# ------------------------------------------------------------------------------------------------
# Worked grids by hand (price_range 0.2, price_steps 2: moves -0.2, -0.1, 0, 0.1, 0.2; extreme
# moves -0.5 and 0.5 at weight 0.3; the underlying BTC at 100)


def test_a_perpetual_hedged_by_a_long_put_needs_no_margin_and_the_first_equal_cell_is_the_worst() -> None:
    grid = scenario_grid(grid_spec())
    perp, put = perpetual(), option("put", "100")
    # Perpetual at its mark 100: 100 x m = -20, -10, 0, 10, 20 (x3 volatility cells); -50, 50.
    perp_array = linear_array(grid, perp, D(100))
    assert pnls(perp_array) == [D(v) for v in (-20,) * 3 + (-10,) * 3 + (0,) * 3 + (10,) * 3 + (20,) * 3 + (-50, 50)]
    # Put K 100, iv 0 and vol_up_floor 0: every cell is at volatility 0, so Black-76 is
    # max(K - F (1 + m), 0): 20, 10, 0, 0, 0, and 50, 0 at the extremes; base max(100 - 100, 0) = 0.
    put_array = option_array(grid, put, D(100), D(0), AT)
    assert pnls(put_array) == [D(v) for v in (20,) * 3 + (10,) * 3 + (0,) * 3 + (0,) * 3 + (0,) * 3 + (50, 0)]
    arrays = {perp.symbol: perp_array, put.symbol: put_array}
    # 1 perpetual + 1 put: 0, 0, 0, 10, 20 and extremes 0, 50: no cell loses.
    result = underlying_requirement(grid, [(perp, D(1)), (put, D(1))], arrays, D(100))
    assert [s.pnl for s in result.scenarios] == [D(v) for v in (0,) * 9 + (10,) * 3 + (20,) * 3 + (0, 50)]
    assert result.worst_loss == 0 and result.short_option_minimum == 0
    assert result.initial_margin == 0 and result.maintenance_margin == 0
    # Every cell up to move 0 ties at 0: the first in grid order (move -0.2, up) is the worst.
    assert result.worst_cell == Cell(D("-0.2"), "up", False, D(1)) and result.worst_index == 0
    # The perpetual alone loses 20 at -0.2 (first cell: up) against 0.3 x 50 = 15 at -0.5.
    alone = underlying_requirement(grid, [(perp, D(1))], arrays, D(100))
    assert alone.worst_loss == D(20) and alone.initial_margin == D(20) and alone.maintenance_margin == D(16)
    assert alone.worst_cell.move == D("-0.2") and alone.worst_cell.volatility == "up"
    assert alone.scenarios[15].weighted_pnl == D("-15.0") and alone.scenarios[15].pnl == D(-50)


def test_a_covered_call_loses_what_the_underlying_loses_below_and_is_capped_above() -> None:
    grid = scenario_grid(grid_spec())
    perp, call = perpetual(), option("call", "110")
    # Call K 110 at F (1 + m) = 80, 90, 100, 110, 120 and 50, 150: intrinsic 0, 0, 0, 0, 10 and 0, 40;
    # base max(100 - 110, 0) = 0.
    arrays = {perp.symbol: linear_array(grid, perp, D(100)), call.symbol: option_array(grid, call, D(100), D(0), AT)}
    assert pnls(arrays[call.symbol]) == [D(v) for v in (0,) * 12 + (10,) * 3 + (0, 40)]
    # +1 perpetual - 1 call: -20, -10, 0, 10, 20 - 10 = 10; extremes -50 - 0 = -50, 50 - 40 = 10.
    result = underlying_requirement(grid, [(perp, D(1)), (call, D(-1))], arrays, D(100))
    assert [s.pnl for s in result.scenarios] == [
        D(v) for v in (-20,) * 3 + (-10,) * 3 + (0,) * 3 + (10,) * 3 + (10,) * 3 + (-50, 10)
    ]
    # Extreme -0.5 weighs 0.3 x -50 = -15, less than the -20 of move -0.2: W = 20.
    # S = 0.01 x U 100 x contract_size 1 x |-1| = 1. IM = max(20, 1) = 20; MM = 0.8 x 20 = 16.
    assert result.worst_loss == D(20) and result.short_option_minimum == D(1)
    assert (result.initial_margin, result.maintenance_margin) == (D(20), D(16))
    assert result.worst_cell == Cell(D("-0.2"), "up", False, D(1))


# A naked short call with real volatilities: K 100, F 100, iv 0.5, 30 days (t = 30/365), grid
# price_range 0.1 in 1 step (moves -0.1, 0, 0.1), vol_up 0.5, vol_down 0.25, vol_up_floor 0,
# DTE 30 = vol_reference_days so k_o = 1: up 0.75, unchanged 0.5, down 0.375. Black-76 call values
# C(F, sigma) (r = 0; from black76.price at 50 digits, written to 15 places here):
CALL = {
    ("90", "0.75"): D("4.086004734376639"), ("90", "0.5"): D("1.827693354323751"),
    ("90", "0.375"): D("0.881784858587687"),
    ("100", "0.75"): D("8.561494005898518"), ("100", "0.5"): D("5.713767509099935"),
    ("100", "0.375"): D("4.286930236047177"),
    ("110", "0.75"): D("14.854382072773961"), ("110", "0.5"): D("12.275433781321186"),
    ("110", "0.375"): D("11.159631566668621"),
}


def test_the_black76_values_written_for_the_naked_short_call_are_black76s() -> None:
    years = D(30) / D(365)
    for (forward, volatility), value in CALL.items():
        assert abs(black76.price("call", D(forward), D(100), years, D(volatility)) - value) < D("1e-15")


def test_a_naked_short_call_is_margined_by_its_worst_cell_up_the_price_and_up_the_volatility() -> None:
    grid = scenario_grid(grid_spec(price_range="0.1", price_steps=1, extreme_moves=[], extreme_weight="0"))
    call = option("call", "100")
    array = option_array(grid, call, D(100), D("0.5"), AT)
    assert array.volatilities == (D("0.75"), D("0.5"), D("0.375"))
    base = CALL[("100", "0.5")]  # 5.713767509099935
    # Per contract, C(F (1 + m), cell volatility) - 5.713767509099935, to 12 places:
    expected = [
        CALL[("90", "0.75")] - base,  # -1.627762774723296
        CALL[("90", "0.5")] - base,  # -3.886074154776184
        CALL[("90", "0.375")] - base,  # -4.831982650512248
        CALL[("100", "0.75")] - base,  # 2.847726496798583
        D(0),  # move 0, unchanged: the base itself
        CALL[("100", "0.375")] - base,  # -1.426837273052758
        CALL[("110", "0.75")] - base,  # 9.140614563674026
        CALL[("110", "0.5")] - base,  # 6.561666272221251
        CALL[("110", "0.375")] - base,  # 5.445864057568686
    ]
    assert [abs(a - b) <= D("0.5e-12") + D("1e-15") for a, b in zip(array.pnl, expected, strict=True)] == [True] * 9
    # Short 2: P&L -2 x each. The worst is move 0.1 up: -2 x 9.140614563674 = -18.281229127348.
    result = underlying_requirement(grid, [(call, D(-2))], {call.symbol: array}, D(100))
    assert result.worst_cell == Cell(D("0.1"), "up", False, D(1))
    assert abs(result.worst_loss - D("18.281229127348")) <= D("1e-12")
    # S = 0.01 x 100 x 1 x 2 = 2 < W; IM = W rounded up to 1e-8, MM = 0.8 x W = 14.62498330..., up.
    assert result.short_option_minimum == D(2)
    assert result.initial_margin == D("18.28122913")
    assert result.maintenance_margin == D("14.62498331")


# ------------------------------------------------------------------------------------------------
# The other rules, one at a time


def test_an_extreme_cell_counts_at_its_weight_and_can_be_the_worst() -> None:
    # Long perpetual: -20 at move -0.2; extreme -0.5 at weight 0.5 counts 0.5 x -50 = -25: worse.
    grid = scenario_grid(grid_spec(extreme_weight="0.5"))
    perp = perpetual()
    result = underlying_requirement(grid, [(perp, D(1))], {perp.symbol: linear_array(grid, perp, D(100))}, D(100))
    assert result.worst_cell == Cell(D("-0.5"), "unchanged", True, D("0.5"))
    assert result.worst.pnl == D(-50) and result.worst.weighted_pnl == D("-25.0")
    assert result.worst_loss == D(25) and result.initial_margin == D(25)


def test_the_short_option_minimum_margins_a_far_out_of_the_money_short() -> None:
    # Short 3 calls K 200 (contract_size 2) at iv 0: worthless in every cell (F at most 150), W = 0;
    # S = 0.01 x U 100 x (|-3| x 2) = 6; IM = 6; MM = 0.8 x 6 = 4.8.
    grid = scenario_grid(grid_spec())
    call = option("call", "200", contract_size="2")
    arrays = {call.symbol: option_array(grid, call, D(100), D(0), AT)}
    result = underlying_requirement(grid, [(call, D(-3))], arrays, D(100))
    assert result.worst_loss == 0 and result.short_option_minimum == D(6)
    assert (result.initial_margin, result.maintenance_margin) == (D(6), D("4.8"))
    # A long of the same option adds nothing to S.
    long_result = underlying_requirement(grid, [(call, D(3))], arrays, D(100))
    assert long_result.short_option_minimum == 0 and long_result.initial_margin == 0


def test_maintenance_is_the_factor_of_initial_each_rounded_up() -> None:
    # 0.123456789 perpetuals lose 0.123456789 x 20 = 2.46913578 at move -0.2: IM = 2.46913578 (exact);
    # MM = 0.8 x 2.46913578 = 1.975308624, rounded up to 1.97530863.
    grid = scenario_grid(grid_spec())
    perp = perpetual()
    result = underlying_requirement(
        grid, [(perp, D("0.123456789"))], {perp.symbol: linear_array(grid, perp, D(100))}, D(100)
    )
    assert result.initial_margin == D("2.46913578") and result.maintenance_margin == D("1.97530863")


def test_an_option_at_its_expiry_is_worth_its_intrinsic_value_in_every_cell() -> None:
    # Valued at its expiry (t = 0), a put K 100 with iv 0.8 is intrinsic in every volatility cell.
    grid = scenario_grid(grid_spec(vol_up_floor="0.5"))
    put = option("put", "100", expiry=AT)
    assert pnls(option_array(grid, put, D(100), D("0.8"), AT)) == [
        D(v) for v in (20,) * 3 + (10,) * 3 + (0,) * 9 + (50, 0)
    ]


def test_no_offset_between_underlyings_the_account_pays_the_sum() -> None:
    # Long 1 BTC perpetual at 100 and short 1 ETH perpetual at 100: on one grid they would cancel;
    # on their own grids each loses 20 (BTC at -0.2, ETH at +0.2): 20 + 20 = 40, MM 16 + 16 = 32.
    btc_grid, eth_grid = scenario_grid(grid_spec()), scenario_grid(grid_spec(underlying="ETH"))
    btc, eth = perpetual("BTCUSDT", "BTC"), perpetual("ETHUSDT", "ETH")
    btc_arrays = {btc.symbol: linear_array(btc_grid, btc, D(100))}
    eth_arrays = {eth.symbol: linear_array(eth_grid, eth, D(100))}
    btc_part = underlying_requirement(btc_grid, [(btc, D(1))], btc_arrays, D(100))
    eth_part = underlying_requirement(eth_grid, [(eth, D(-1))], eth_arrays, D(100))
    assert eth_part.worst_cell.move == D("0.2")
    total = account_requirement([btc_part, eth_part])
    assert (total.initial_margin, total.maintenance_margin) == (D(40), D(32))
    assert [part.underlying for part in total.underlyings] == ["BTC", "ETH"]
    with pytest.raises(ScenarioError, match="moves with ETH"):
        linear_array(btc_grid, eth, D(100))


def test_an_array_of_another_grid_is_refused() -> None:
    perp = perpetual()
    other = scenario_grid(grid_spec(), D("1.5"))  # the same document under another multiplier
    arrays = {perp.symbol: linear_array(other, perp, D(100))}
    with pytest.raises(ScenarioError, match="another grid"):
        underlying_requirement(scenario_grid(grid_spec()), [(perp, D(1))], arrays, D(100))


# ------------------------------------------------------------------------------------------------
# Digits and properties


def test_pricing_digits_grow_with_the_size_of_the_figure_and_a_small_deviation() -> None:
    # 12 places + 6 guard + 6 integer digits of 120000 x 1 + 1 leading zero of 0.17 = 25.
    assert grid_pricing_digits(D(120000), D(70000), D(1), D("0.17")) == 25
    assert grid_pricing_digits(D(120000), D(70000), D(1), None) == 24
    assert grid_pricing_digits(D(120000), D(70000), D(1), D("0.0000017")) == 30
    assert grid_pricing_digits(D(10) ** 31, D(1), D(1), None) == 50  # never more than the default


@settings(max_examples=25, deadline=None)
@given(
    forward=st.decimals(min_value=D("0.5"), max_value=D(200000), places=2),
    moneyness=st.sampled_from([D("0.5"), D("0.9"), D(1), D("1.1"), D(2)]),
    iv=st.decimals(min_value=D("0.01"), max_value=D(3), places=3),
    hours=st.integers(min_value=1, max_value=24 * 400),
    option_type=st.sampled_from(["call", "put"]),
)
def test_cells_priced_with_fewer_digits_are_the_full_precision_values_to_12_places(
    forward: Decimal, moneyness: Decimal, iv: Decimal, hours: int, option_type: str
) -> None:
    strike = (forward * moneyness).quantize(D("0.01")) or D("0.01")
    grid = scenario_grid(PortfolioMarginSpec.model_validate(CONTRACT_BLOCK))
    spec = option(option_type, str(strike), expiry=AT + timedelta(hours=hours))
    array = option_array(grid, spec, forward, iv, AT)
    years = black76.year_fraction(AT + timedelta(hours=hours), AT)
    base = black76.price(option_type, forward, strike, years, iv)  # type: ignore[arg-type]
    vols = dict(zip(("up", "unchanged", "down"), array.volatilities or (), strict=True))
    for cell, figure in zip(grid.cells, array.pnl, strict=True):
        full = black76.price(option_type, forward * (1 + cell.move), strike, years, vols[cell.volatility])  # type: ignore[arg-type]
        assert abs(figure - (full - base)) <= D("0.5e-12") + D("1e-16")


BOOK_INSTRUMENTS = [perpetual(), option("call", "100"), option("put", "95"), option("call", "120", contract_size="0.1")]


@settings(max_examples=30, deadline=None)
@given(
    book=st.lists(
        st.tuples(st.integers(0, len(BOOK_INSTRUMENTS) - 1),
                  st.decimals(min_value=-50, max_value=50, places=3).filter(lambda q: q != 0)),
        min_size=1, max_size=4, unique_by=lambda item: item[0],
    ),
    mark=st.sampled_from([D(80), D(100), D("104.5")]),
    iv=st.sampled_from([D("0.3"), D("0.8")]),
)
def test_summed_shared_arrays_equal_each_position_priced_on_its_own_and_never_undercut_the_worst_loss(
    book: list[tuple[int, Decimal]], mark: Decimal, iv: Decimal
) -> None:
    grid = scenario_grid(PortfolioMarginSpec.model_validate(CONTRACT_BLOCK))
    positions = [(BOOK_INSTRUMENTS[index], quantity) for index, quantity in book]

    def array_of(spec: InstrumentSpec) -> RiskArray:
        if spec.kind == "option":
            return option_array(grid, spec, mark, iv, AT)
        return linear_array(grid, spec, mark)

    shared = {spec.symbol: array_of(spec) for spec in BOOK_INSTRUMENTS}
    result = underlying_requirement(grid, positions, shared, mark)
    # Brute force: each position priced afresh, P&L = quantity x its own per-contract figure.
    direct = [D(0)] * len(grid.cells)
    for spec, quantity in positions:
        own = array_of(spec)
        direct = [total + quantity * figure for total, figure in zip(direct, own.pnl, strict=True)]
    assert [s.pnl for s in result.scenarios] == direct
    weighted = [p * c.weight if c.extreme else p for p, c in zip(direct, grid.cells, strict=True)]
    worst = min(weighted)
    assert result.worst_index == weighted.index(worst)
    assert result.initial_margin >= -worst and result.initial_margin >= max(-w for w in weighted)
    assert result.maintenance_margin >= D("0.8") * result.worst_loss
    shorts = sum((-q * s.contract_size for s, q in positions if s.kind == "option" and q < 0), D(0))
    assert result.initial_margin >= D("0.01") * mark * shorts


# ------------------------------------------------------------------------------------------------
# Packed integer sums give the Decimal sums' figures


def test_a_figure_with_more_places_than_packing_takes_is_not_packed() -> None:
    grid = scenario_grid(grid_spec())
    perp = perpetual(contract_size="0.000000000000000001")  # 18 places x m's 1 place: 19, packed
    assert pack(linear_array(grid, perp, D("100.1"))) is not None
    wide = perpetual(contract_size="0.000000000000000001")
    assert pack(linear_array(grid, wide, D("100.000000000000000001"))) is None  # 18 + 18 + 1 places


def test_sums_that_could_leave_their_field_fall_back() -> None:
    # Wire values at their limits: mark and contract size 1e19 give |V| = 1e19 x 1e19 x 0.5 x 1e24 =
    # 5e61 at move 0.5; a quantity of 1e19 with 18 places is Q ~ 1e37: 5e98 passes 2^190 ~ 1.6e57.
    grid = scenario_grid(grid_spec())
    perp = perpetual(contract_size=str(10**19))
    packed = pack(linear_array(grid, perp, D(10) ** 19))
    assert packed is not None
    quantities, places = scaled_quantities([D("10000000000000000000.000000000000000001")])
    assert places == 18
    assert packed_requirement_figures(grid, [(quantities[0], packed)], places, D(0), D(1)) is None
    # Contract size 1 and 1000.5 contracts (Q = 10005 at 1 place): sums near 5e46, 156 bits, so the
    # cells are ordered by their third word: the Decimal figures all the same.
    unit = perpetual()
    array = linear_array(grid, unit, D(10) ** 19)
    small_packed = pack(array)
    assert small_packed is not None
    quantity = D("-1000.5")
    small, small_places = scaled_quantities([quantity])
    expected, _ = requirement_figures(grid, [(quantity, array.pnl)], D(0), D(1))
    assert packed_requirement_figures(grid, [(small[0], small_packed)], small_places, D(0), D(1)) == expected
    assert expected.worst_index == 12  # a short loses most at move +0.2, its first cell (up)


@settings(max_examples=60, deadline=None)
@given(
    book=st.lists(
        st.tuples(st.integers(0, 3), st.decimals(min_value=-500, max_value=500, places=4).filter(lambda q: q != 0)),
        min_size=1, max_size=6,
    ),
    mark=st.sampled_from([D(80), D(100), D("104.5")]),
    weight=st.sampled_from([D(0), D("0.35"), D(1)]),
    iv=st.sampled_from([D(0), D("0.45")]),
)
def test_packed_integer_sums_give_the_decimal_figures(book: list[tuple[int, Decimal]], mark: Decimal,
                                                       weight: Decimal, iv: Decimal) -> None:
    # Iv 0 keeps the option arrays to intrinsic values (full of equal cells: ties); 0.45 prices them.
    grid = scenario_grid(grid_spec(extreme_weight=str(weight)))
    instruments = [perpetual(), option("call", "100"), option("put", "95"), option("call", "90", contract_size="0.1")]
    arrays = {
        spec.symbol: (
            option_array(grid, spec, mark, iv, AT) if spec.kind == "option" else linear_array(grid, spec, mark)
        )
        for spec in instruments
    }
    positions = [(instruments[index], quantity) for index, quantity in book]
    pairs = [(quantity, arrays[spec.symbol].pnl) for spec, quantity in positions]
    shorts = short_option_contracts(positions)
    expected, _ = requirement_figures(grid, pairs, shorts, mark)
    quantities, places = scaled_quantities([quantity for _, quantity in positions])
    packed = {symbol: pack(array) for symbol, array in arrays.items()}
    packed_pairs = []
    for (spec, _), scaled in zip(positions, quantities, strict=True):
        found = packed[spec.symbol]
        assert found is not None
        packed_pairs.append((scaled, found))
    assert packed_requirement_figures(grid, packed_pairs, places, shorts, mark) == expected


def test_the_calculator_spells_the_grid_in_grid_order_with_the_worst_cell() -> None:
    # The covered call of the hand grid above: W = 20 at move -0.2 (up); extremes -50 (weighted
    # -15) and 10 (weighted 3).
    grid = scenario_grid(grid_spec())
    perp, call = perpetual(), option("call", "110")
    arrays = {perp.symbol: linear_array(grid, perp, D(100)), call.symbol: option_array(grid, call, D(100), D(0), AT)}
    wire = requirement_wire(underlying_requirement(grid, [(perp, D(1)), (call, D(-1))], arrays, D(100)))
    assert wire["underlying"] == "BTC" and wire["initial_margin"] == "20" and wire["maintenance_margin"] == "16"
    assert wire["worst_cell"] == {"move": "-0.2", "volatility": "up"}
    assert wire["scenarios"][:4] == [
        {"move": "-0.2", "volatility": "up", "pnl": "-20"},
        {"move": "-0.2", "volatility": "unchanged", "pnl": "-20"},
        {"move": "-0.2", "volatility": "down", "pnl": "-20"},
        {"move": "-0.1", "volatility": "up", "pnl": "-10"},
    ]
    assert wire["scenarios"][-2:] == [
        {"move": "-0.5", "volatility": "unchanged", "extreme": True, "pnl": "-50", "weighted_pnl": "-15"},
        {"move": "0.5", "volatility": "unchanged", "extreme": True, "pnl": "10", "weighted_pnl": "3"},
    ]
    assert len(wire["scenarios"]) == 17


def test_a_call_and_a_put_of_one_strike_share_one_pricing_with_the_figures_of_each_alone() -> None:
    grid = scenario_grid(PortfolioMarginSpec.model_validate(CONTRACT_BLOCK))
    call, put = option("call", "70000"), option("put", "70000")
    pair = option_pair_arrays(grid, call, put, D("64000.5"), D("0.61"), AT, D("0.03"))
    assert pair == (option_array(grid, call, D("64000.5"), D("0.61"), AT, D("0.03")),
                    option_array(grid, put, D("64000.5"), D("0.61"), AT, D("0.03")))
    # Parity cell by cell: P - C changes by -e^(-r t) F m, here with r = 0.03 and t = 30/365.
    discount = decimalmath.exp(-D("0.03") * D(30) / D(365))
    for cell, call_pnl, put_pnl in zip(grid.cells, pair[0].pnl, pair[1].pnl, strict=True):
        assert abs((put_pnl - call_pnl) + discount * D("64000.5") * cell.move) <= D("1e-12")
    with pytest.raises(ScenarioError, match="not a call and a put"):
        option_pair_arrays(grid, call, option("put", "80000"), D(64000), D("0.61"), AT)
