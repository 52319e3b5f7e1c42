"""Standard option margin (CONTRACT v2), worked by hand: one example per branch of each max and
of the short put's maintenance rule, every figure of the derivation written out. Rates of the
bundled document: initial_rate 0.15, minimum_rate 0.10, maintenance_rate 0.075."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain.optionmargin import LONG, per_contract, position_margin, short_call, short_put
from clearing.domain.params import OptionMarginRates, bundled_parameters

D = Decimal
RATES = OptionMarginRates.model_validate(
    {"underlying": "BTC", "initial_rate": "0.15", "minimum_rate": "0.10", "maintenance_rate": "0.075"}
)


def test_the_bundled_rates_are_the_ones_these_examples_use() -> None:
    rates = bundled_parameters().option_margin_rates("BTC")
    assert rates is not None
    assert (rates.initial_rate, rates.minimum_rate, rates.maintenance_rate) == (D("0.15"), D("0.1"), D("0.075"))


# ------------------------------------------------------------------------------------------------
# Short call: IM = max(initial_rate x U - OTM, minimum_rate x U) + mark; MM = maintenance_rate x U
# + mark; OTM = max(K - U, 0)


def test_short_call_near_the_money_takes_the_rate_term() -> None:
    # U = 60000, K = 62000, mark = 1500.5
    # OTM = max(62000 - 60000, 0) = 2000
    # rate term = 0.15 x 60000 - 2000 = 9000 - 2000 = 7000;  floor = 0.10 x 60000 = 6000
    # IM = max(7000, 6000) + 1500.5 = 8500.5;  MM = 0.075 x 60000 + 1500.5 = 4500 + 1500.5 = 6000.5
    margin = short_call(D(60000), D(62000), D("1500.5"), RATES)
    assert margin.out_of_the_money == 2000
    assert (margin.rate_term, margin.floor_term) == (7000, 6000)
    assert margin.initial == D("8500.5")
    assert margin.maintenance_underlying_term == 4500
    assert margin.maintenance == D("6000.5")
    assert margin.maintenance_mark_term is None


def test_short_call_far_out_of_the_money_takes_the_minimum_rate_floor() -> None:
    # U = 60000, K = 70000, mark = 420.25
    # OTM = max(70000 - 60000, 0) = 10000
    # rate term = 9000 - 10000 = -1000;  floor = 6000
    # IM = max(-1000, 6000) + 420.25 = 6420.25;  MM = 4500 + 420.25 = 4920.25
    margin = short_call(D(60000), D(70000), D("420.25"), RATES)
    assert margin.out_of_the_money == 10000
    assert (margin.rate_term, margin.floor_term) == (-1000, 6000)
    assert margin.initial == D("6420.25")
    assert margin.maintenance == D("4920.25")


def test_short_call_in_the_money_has_no_out_of_the_money_amount() -> None:
    # U = 60000, K = 50000, mark = 10250
    # OTM = max(50000 - 60000, 0) = 0
    # rate term = 9000 - 0 = 9000;  floor = 6000
    # IM = 9000 + 10250 = 19250;  MM = 4500 + 10250 = 14750
    margin = short_call(D(60000), D(50000), D(10250), RATES)
    assert margin.out_of_the_money == 0
    assert margin.initial == 19250
    assert margin.maintenance == 14750


# ------------------------------------------------------------------------------------------------
# Short put: OTM = max(U - K, 0); MM = max(maintenance_rate x U, maintenance_rate x mark) + mark;
# IM = max(max(initial_rate x U - OTM, minimum_rate x U) + mark, MM)


def test_short_put_out_of_the_money_takes_the_floor_and_the_underlying_maintenance_term() -> None:
    # U = 60000, K = 55000, mark = 800
    # OTM = max(60000 - 55000, 0) = 5000
    # MM = max(0.075 x 60000, 0.075 x 800) + 800 = max(4500, 60) + 800 = 5300
    # rate term = 9000 - 5000 = 4000;  floor = 6000;  max(4000, 6000) + 800 = 6800
    # IM = max(6800, 5300) = 6800
    margin = short_put(D(60000), D(55000), D(800), RATES)
    assert margin.out_of_the_money == 5000
    assert (margin.maintenance_underlying_term, margin.maintenance_mark_term) == (4500, 60)
    assert margin.maintenance == 5300
    assert (margin.rate_term, margin.floor_term) == (4000, 6000)
    assert margin.initial == 6800


def test_short_put_in_the_money_takes_the_rate_term() -> None:
    # U = 60000, K = 62000, mark = 2600
    # OTM = max(60000 - 62000, 0) = 0
    # MM = max(4500, 0.075 x 2600 = 195) + 2600 = 7100
    # rate term = 9000 - 0 = 9000;  floor = 6000;  max(9000, 6000) + 2600 = 11600
    # IM = max(11600, 7100) = 11600
    margin = short_put(D(60000), D(62000), D(2600), RATES)
    assert margin.out_of_the_money == 0
    assert (margin.maintenance_underlying_term, margin.maintenance_mark_term) == (4500, 195)
    assert margin.maintenance == 7100
    assert (margin.rate_term, margin.floor_term) == (9000, 6000)
    assert margin.initial == 11600


def test_short_put_after_a_crash_takes_the_mark_maintenance_term_and_initial_equals_maintenance() -> None:
    # The underlying crashed far below the strike: U = 1000, K = 70000, mark = 68990
    # OTM = max(1000 - 70000, 0) = 0
    # MM = max(0.075 x 1000, 0.075 x 68990) + 68990 = max(75, 5174.25) + 68990 = 74164.25
    # rate term = 0.15 x 1000 - 0 = 150;  floor = 0.10 x 1000 = 100;  max(150, 100) + 68990 = 69140
    # IM = max(69140, 74164.25) = 74164.25 (the maintenance margin)
    margin = short_put(D(1000), D(70000), D(68990), RATES)
    assert (margin.maintenance_underlying_term, margin.maintenance_mark_term) == (75, D("5174.25"))
    assert margin.maintenance == D("74164.25")
    assert (margin.rate_term, margin.floor_term) == (150, 100)
    assert margin.initial == D("74164.25")


# ------------------------------------------------------------------------------------------------
# Longs, positions, rounding


def test_a_long_or_flat_position_needs_no_margin() -> None:
    for quantity in (D(2), D(0)):
        assert per_contract("call", quantity, D(60000), D(70000), D(420), RATES) is LONG
        assert per_contract("put", quantity, D(60000), D(70000), D(420), RATES) is LONG
    assert (LONG.initial, LONG.maintenance) == (0, 0)


def test_a_position_multiplies_by_quantity_and_contract_size() -> None:
    # BTC-26MAR27-70000-C of the bundled document (contract size 1), 3 short at U = 60000,
    # mark = 420.25: per contract IM 6420.25, MM 4920.25 (above);
    # IM = 6420.25 x 3 x 1 = 19260.75;  MM = 4920.25 x 3 = 14760.75
    spec = bundled_parameters().instrument("BTC-26MAR27-70000-C")
    assert spec is not None
    margin = position_margin(spec, D(-3), D(60000), D("420.25"), RATES)
    assert margin.contracts == 3
    assert (margin.initial, margin.maintenance) == (D("19260.75"), D("14760.75"))
    long = position_margin(spec, D(3), D(60000), D("420.25"), RATES)
    assert (long.initial, long.maintenance) == (0, 0)


def test_a_position_requirement_rounds_up_to_the_money_quantum() -> None:
    # Short 7 calls of contract size 0.001 (U = 60000, K = 62000), mark = 1500.123456789:
    # per contract IM = 7000 + 1500.123456789 = 8500.123456789, MM = 4500 + 1500.123456789
    # = 6000.123456789; contracts = 7 x 0.001 = 0.007
    # IM = 8500.123456789 x 0.007 = 59.500864197523 -> up to 59.50086420
    # MM = 6000.123456789 x 0.007 = 42.000864197523 -> up to 42.00086420
    spec = bundled_parameters().instrument("BTC-26MAR27-70000-C")
    assert spec is not None
    small = spec.model_copy(update={"strike": D(62000), "contract_size": D("0.001")})
    margin = position_margin(small, D(-7), D(60000), D("1500.123456789"), RATES)
    assert margin.contracts == D("0.007")
    assert margin.initial == D("59.50086420")
    assert margin.maintenance == D("42.00086420")


def test_a_linear_instrument_is_not_margined_as_an_option() -> None:
    spec = bundled_parameters().instrument("BTCUSDT")
    assert spec is not None
    with pytest.raises(ValueError, match="BTCUSDT is a perpetual, not an option"):
        position_margin(spec, D(-1), D(60000), D(100), RATES)


prices = st.decimals(min_value="0.01", max_value="1000000", places=2)
rates = st.tuples(
    st.decimals(min_value="0.001", max_value="1", places=3),
    st.decimals(min_value="0.001", max_value="1", places=3),
    st.decimals(min_value="0.001", max_value="1", places=3),
).map(sorted)


@settings(max_examples=200, deadline=None)
@given(underlying=prices, strike=prices, mark=prices, ordered=rates, option_type=st.sampled_from(["call", "put"]))
def test_a_short_needs_at_least_its_mark_and_initial_at_least_maintenance(
    underlying: Decimal, strike: Decimal, mark: Decimal, ordered: list[Decimal], option_type: str
) -> None:
    """For any rates the document accepts (0 < maintenance <= minimum <= initial <= 1): a short
    option's maintenance margin covers buying it back (>= mark) and initial >= maintenance."""
    maintenance_rate, minimum_rate, initial_rate = ordered
    document_rates = OptionMarginRates(
        underlying="BTC", initial_rate=initial_rate, minimum_rate=minimum_rate, maintenance_rate=maintenance_rate
    )
    margin = per_contract(option_type, D(-1), underlying, strike, mark, document_rates)  # type: ignore[arg-type]
    assert margin.maintenance >= mark
    assert margin.initial >= margin.maintenance
