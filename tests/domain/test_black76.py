"""Black-76 and the normal CDF in exact decimals (``decimalmath``, ``black76``): published
reference values, put-call parity, the degenerate cases, the term limits, and the same digits
whatever decimal context the caller computes under."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_DOWN, ROUND_FLOOR, Context, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain import decimalmath
from clearing.domain.black76 import PricingError, intrinsic_value, option_value, price, year_fraction
from clearing.domain.decimalmath import (
    NORMAL_CDF_ABS_MAX,
    NORMAL_CDF_SERIES_ABS_MAX,
    NORMAL_CDF_TERMS_MAX,
    PRICING_PRECISION_DIGITS,
    ConvergenceError,
    normal_cdf,
    normal_pdf,
)
from clearing.domain.numbers import round_model_value

D = Decimal
RELATIVE_1E_10 = D("1e-10")


def times(a: Decimal, b: Decimal) -> Decimal:
    """a x b rounded to the pricing precision, as ``black76`` rounds it."""
    return decimalmath.PRICING_CONTEXT.copy().multiply(a, b)


def relative_error(value: Decimal, reference: Decimal) -> Decimal:
    with localcontext(Context(prec=60)):
        return abs(value - reference) / abs(reference)


# ------------------------------------------------------------------------------------------------
# The normal CDF

# Upper tails Q(z) = 1 - N(z) for z = 1..10, printed with 38 digits from R's Rmpfr at 120 bits,
# `1 - pnorm(mpfr(1:10, 120))` (the reference table of Marsaglia-style tests in public C sources,
# e.g. J. A. Jennings' cdf.c, 2024). Computed as 1 - N at 120 bits, they are exact to about
# 1e-36 in absolute terms (not relative: at z = 10 only 13 digits are right, mpmath agrees).
UPPER_TAILS = {
    1: D("0.15865525393145705141476745436796207774"),
    2: D("0.022750131948179207200282637166533437700"),
    3: D("0.0013498980316300945266518147675949769914"),
    4: D("3.1671241833119921253770756722151496426E-5"),
    5: D("2.8665157187919391167375233287471617709E-7"),
    6: D("9.8658764503769814070086413267918909381E-10"),
    7: D("1.2798125438858350043836233949366514843E-12"),
    8: D("6.2209605742717841235169694954712541828E-16"),
    9: D("1.1285884059538406473237309503891605935E-19"),
    10: D("7.6198530241601301905642134646022885746E-24"),
}

# Either side of the series / continued fraction switch and far in the tail, 40 digits from
# mpmath 1.3 (`mpmath.ncdf` at mp.dps = 80).
MPMATH_VALUES = {
    "-10": D("7.619853024160526065973343251599308363504E-24"),
    "-6.5": D("4.016000583859117808346145422400687488697E-11"),
    "-6.4999999": D("4.016003253416600177281392097347426445502E-11"),
    "6.5": D("0.999999999959839994161408821916538545776"),
    "-20": D("2.753624118606233695075622780857465332807E-89"),
    "-37.5": D("4.605353009581954843827969097610896238921E-308"),
    "0.25": D("0.598706325682923724240853791581033739282"),
    "-1.5": D("0.0668072012688580660044940409798860795229"),
}


@pytest.mark.parametrize("z", sorted(UPPER_TAILS))
def test_the_normal_cdf_matches_published_tails_to_their_precision(z: int) -> None:
    tail = UPPER_TAILS[z]
    with localcontext(Context(prec=60)):
        assert abs(normal_cdf(D(-z)) - tail) < D("1e-36")
        assert abs(normal_cdf(D(z)) - (1 - tail)) < D("1e-36")


@pytest.mark.parametrize("x", sorted(MPMATH_VALUES))
def test_the_normal_cdf_matches_mpmath_on_both_sides_of_the_switch_and_far_out(x: str) -> None:
    assert relative_error(normal_cdf(D(x)), MPMATH_VALUES[x]) < D("1e-39")


def test_the_normal_cdf_at_zero_and_beyond_its_bound_is_exact() -> None:
    assert normal_cdf(D(0)) == D("0.5")
    assert normal_cdf(D("-0")) == D("0.5")
    assert normal_cdf(NORMAL_CDF_ABS_MAX) == 1
    assert normal_cdf(-NORMAL_CDF_ABS_MAX) == 0
    assert normal_cdf(D("1e30")) == 1
    # Just inside the bound the tail is tiny but not zero: relative digits all the way.
    assert D(0) < normal_cdf(-NORMAL_CDF_ABS_MAX + D("0.001")) < D("1e-217000")


def test_the_normal_cdf_refuses_infinity_and_nan() -> None:
    with pytest.raises(ArithmeticError):
        normal_cdf(D("Infinity"))
    with pytest.raises(ArithmeticError):
        normal_cdf(D("NaN"))


@settings(max_examples=150, deadline=None)
@given(st.decimals(min_value=-40, max_value=40, allow_nan=False, allow_infinity=False, places=6))
def test_the_normal_cdf_is_symmetric_and_increasing(x: Decimal) -> None:
    lower, upper = normal_cdf(-x), normal_cdf(x)
    with localcontext(Context(prec=100)):  # the test's own sum exact
        assert abs(lower + upper - 1) <= D(10) ** -(PRICING_PRECISION_DIGITS - 1)
    assert normal_cdf(x + D("0.001")) >= upper


@pytest.mark.parametrize("side", [D(1), D(-1)])
def test_the_normal_cdf_is_continuous_and_increasing_across_the_series_fraction_switch(side: Decimal) -> None:
    """Just below the switch the series answers, at it the continued fraction: the two agree to
    the last digits, so N keeps increasing through the switch."""
    with localcontext(Context(prec=100)):  # the test's own sums exact
        edge = NORMAL_CDF_SERIES_ABS_MAX * side
        step = D("1e-30")
        below, at, above = normal_cdf(edge - step), normal_cdf(edge), normal_cdf(edge + step)
        assert below < at < above
        # The slope there is the density (about 1.5e-10): a step of 1e-30 moves N by about 1.5e-40.
        assert abs((above - below) / (2 * step) - normal_pdf(edge)) < D("1e-8") * normal_pdf(edge)


def test_the_density_is_the_published_one_at_zero() -> None:
    # 1 / sqrt(2 pi) = 0.3989422804014326779399460599343818684758586311649... (OEIS A231863)
    assert normal_pdf(D(0)) == D("0.39894228040143267793994605993438186847585863116493")


def test_series_and_fraction_stay_far_inside_their_term_limit_over_their_ranges() -> None:
    """The switch point keeps both sides short: the largest counts are at the switch (the series
    grows with |x|, the fraction shrinks), under a fifth of NORMAL_CDF_TERMS_MAX."""
    wide = Context(prec=PRICING_PRECISION_DIGITS + decimalmath.NORMAL_CDF_GUARD_DIGITS)
    with localcontext(wide) as context:
        below = NORMAL_CDF_SERIES_ABS_MAX - D("1e-9")
        _, series_terms = decimalmath._series(below, context)
        _, fraction_terms = decimalmath._continued_fraction(NORMAL_CDF_SERIES_ABS_MAX, context)
        _, far_terms = decimalmath._continued_fraction(NORMAL_CDF_ABS_MAX - 1, context)
    assert series_terms < NORMAL_CDF_TERMS_MAX // 5
    assert fraction_terms < NORMAL_CDF_TERMS_MAX // 5
    assert far_terms < fraction_terms


def test_a_series_that_does_not_converge_in_the_named_limit_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decimalmath, "NORMAL_CDF_TERMS_MAX", 10)
    with pytest.raises(ConvergenceError, match="NORMAL_CDF_TERMS_MAX = 10"):
        normal_cdf(D("2"))
    with pytest.raises(ConvergenceError, match="continued fraction"):
        normal_cdf(D("-8"))


# ------------------------------------------------------------------------------------------------
# Black-76 against published values


def test_py_vollib_documented_black_call_discounted_and_undiscounted() -> None:
    # py_vollib (vollib/py_vollib), py_vollib/black/__init__.py doctests: black('c', F=100, K=100,
    # t=0.5, r=0.02, sigma=0.2) = 5.5811067246048118; undiscounted_black(...) = 5.637197779701664
    # (LetsBeRational, P. Jaeckel).
    discounted = price("call", D(100), D(100), D("0.5"), D("0.2"), D("0.02"))
    assert relative_error(discounted, D("5.5811067246048118")) < RELATIVE_1E_10
    undiscounted = price("call", D(100), D(100), D("0.5"), D("0.2"))
    assert relative_error(undiscounted, D("5.637197779701664")) < RELATIVE_1E_10
    # And the put of the same documented case, by parity (at the money: equal to the call).
    put = price("put", D(100), D(100), D("0.5"), D("0.2"), D("0.02"))
    assert relative_error(put, D("5.5811067246048118")) < RELATIVE_1E_10


def test_py_vollib_documented_normalised_black_put_out_and_call_in_the_money() -> None:
    # py_vollib/black/__init__.py doctests of normalised_black: F=100, K=95, t=0.5, sigma=0.3,
    # x = ln(F/K), s = sigma sqrt(t): put 0.061296663817558904, call 0.11259558142181655, where
    # the normalised value is the undiscounted Black value / sqrt(F K).
    scale = D(9500).sqrt(Context(prec=60))
    put = price("put", D(100), D(95), D("0.5"), D("0.3"))
    call = price("call", D(100), D(95), D("0.5"), D("0.3"))
    assert relative_error(put, D("0.061296663817558904") * scale) < RELATIVE_1E_10
    assert relative_error(call, D("0.11259558142181655") * scale) < RELATIVE_1E_10


# OpenGamma Strata, BlackFormulaRepositoryTest.java (PRE_COMPUTER_PRICES): undiscounted Black call
# prices for FORWARD = 104, TIME_TO_EXPIRY = 4.5, by strike (rows) and volatility (columns), which
# Strata checks to 1e-13 relative. A subset: in, near and out of the money, and far out (K = 250).
STRATA_FORWARD = D(104)
STRATA_YEARS = D("4.5")
STRATA_CALLS = {
    ("85", "0.1"): "20.816241352493662",
    ("85", "0.3"): "34.22506482807403",
    ("85", "0.8"): "66.87809290575849",
    ("103", "0.12"): "10.990050517334176",
    ("103", "0.2"): "17.892024398947207",
    ("103", "0.5"): "42.327678792768694",
    ("150", "0.1"): "0.4521972353043875",
    ("150", "0.3"): "13.579915684294491",
    ("250", "0.1"): "1.328198130230618E-4",
    ("250", "0.15"): "0.04468941116428932",
    ("250", "0.3"): "3.8091577630027356",
    ("250", "0.8"): "43.99634090899799",
}


@pytest.mark.parametrize(("strike", "volatility"), sorted(STRATA_CALLS))
def test_strata_black_call_grid(strike: str, volatility: str) -> None:
    reference = D(STRATA_CALLS[(strike, volatility)])
    call = price("call", STRATA_FORWARD, D(strike), STRATA_YEARS, D(volatility))
    assert relative_error(call, reference) < RELATIVE_1E_10
    # The put of the same strike, from the published call by parity (r = 0: P = C - (F - K)).
    put = price("put", STRATA_FORWARD, D(strike), STRATA_YEARS, D(volatility))
    assert abs(put - (reference - (STRATA_FORWARD - D(strike)))) < RELATIVE_1E_10 * STRATA_FORWARD


@pytest.mark.parametrize("rate", ["0.05", "-0.01"])
def test_strata_grid_discounted_at_a_rate(rate: str) -> None:
    """With r != 0 Black-76 is the undiscounted value times e^(-r t) (e^(-0.225) =
    0.79851621875937..., e^(0.045) = 1.04602785990871...)."""
    discount = {"0.05": D("0.7985162187593771"), "-0.01": D("1.0460278599087169")}[rate]
    for (strike, volatility), published in STRATA_CALLS.items():
        call = price("call", STRATA_FORWARD, D(strike), STRATA_YEARS, D(volatility), D(rate))
        assert relative_error(call, D(published) * discount) < RELATIVE_1E_10


def test_hulls_futures_put_example_at_its_printed_precision() -> None:
    # Hull, Options, Futures, and Other Derivatives, the worked example of Black's model for a
    # European put futures option on crude oil: F0 = K = 20, r = 9%, T = 4 months, sigma = 25%;
    # d1 = 0.07216, d2 = -0.07216, put = 1.12 (two decimals as printed).
    put = price("put", D(20), D(20), D(4) / D(12), D("0.25"), D("0.09"))
    assert abs(put - D("1.12")) < D("0.005")


# ------------------------------------------------------------------------------------------------
# Parity, degenerate cases, time


@settings(max_examples=80, deadline=None)
@given(
    forward=st.decimals(min_value="0.01", max_value="1000000", places=2),
    strike=st.decimals(min_value="0.01", max_value="1000000", places=2),
    years=st.decimals(min_value="0.0001", max_value="5", places=4),
    volatility=st.decimals(min_value="0.01", max_value="3", places=2),
    rate=st.decimals(min_value="-0.05", max_value="0.2", places=3),
)
def test_put_call_parity(forward: Decimal, strike: Decimal, years: Decimal, volatility: Decimal, rate: Decimal) -> None:
    """C - P = e^(-rt) (F - K), to the last digits of the larger of F and K."""
    call = price("call", forward, strike, years, volatility, rate)
    put = price("put", forward, strike, years, volatility, rate)
    discount = decimalmath.exp(-rate * years)
    with localcontext(Context(prec=100)):  # the test's own arithmetic exact
        assert abs((call - put) - discount * (forward - strike)) <= max(forward, strike) * D("1e-45")
    assert call >= 0 and put >= 0


@settings(max_examples=80, deadline=None)
@given(
    forward=st.decimals(min_value="1", max_value="200000", places=1),
    strike=st.decimals(min_value="1", max_value="200000", places=1),
    years=st.decimals(min_value="0.001", max_value="3", places=3),
    volatility=st.decimals(min_value="0.05", max_value="2", places=2),
    rate=st.decimals(min_value="0", max_value="0.1", places=3),
    option_type=st.sampled_from(["call", "put"]),
)
def test_a_price_lies_between_its_no_arbitrage_bounds_and_grows_with_volatility(
    forward: Decimal, strike: Decimal, years: Decimal, volatility: Decimal, rate: Decimal, option_type: str
) -> None:
    """e^(-rt) intrinsic <= value <= e^(-rt) F (a call) or e^(-rt) K (a put); and more volatility
    is never worth less (vega >= 0)."""
    value = price(option_type, forward, strike, years, volatility, rate)  # type: ignore[arg-type]
    discount = decimalmath.exp(-rate * years)
    more_volatile = price(option_type, forward, strike, years, volatility + D("0.01"), rate)  # type: ignore[arg-type]
    with localcontext(Context(prec=100)):  # the test's own sums exact
        slack = max(forward, strike) * D("1e-45")
        assert value >= discount * intrinsic_value(option_type, forward, strike) - slack  # type: ignore[arg-type]
        assert value <= discount * (forward if option_type == "call" else strike) + slack
        assert more_volatile >= value - slack


def test_option_value_wires_the_contracts_inputs() -> None:
    """F = the underlying's mark, K = the strike, t from the expiry (27 Dec 2026 08:00Z) and the
    valuation time (73 days before: t = 0.2), sigma = iv, r = interest_rate."""
    from clearing.domain.params import load_parameters
    from tests.domain.test_params import with_option

    parameters = load_parameters(with_option())
    spec = parameters.instrument("BTC-27DEC26-70000-C")
    assert spec is not None
    at = datetime(2026, 10, 15, 8, tzinfo=UTC)  # 73 days before the expiry
    value = option_value(spec, D("65000"), D("0.61"), at, D("0.05"))
    assert value == price("call", D("65000"), D(70000), D("0.2"), D("0.61"), D("0.05"))
    linear = parameters.instrument("BTCUSDT")
    assert linear is not None
    with pytest.raises(PricingError, match="BTCUSDT is a perpetual, not an option"):
        option_value(linear, D("65000"), D("0.61"), at, D(0))


@pytest.mark.parametrize("option_type", ["call", "put"])
@pytest.mark.parametrize("years", ["0", "-0.5"])
def test_at_or_after_expiry_the_value_is_the_intrinsic_value(option_type: str, years: str) -> None:
    # After the expiry there is nothing left to discount: e^(-r max(t, 0)) = 1.
    for forward in (D(90), D(100), D(110)):
        value = price(option_type, forward, D(100), D(years), D("0.6"), D("0.05"))  # type: ignore[arg-type]
        assert value == intrinsic_value(option_type, forward, D(100))  # type: ignore[arg-type]
    assert price("call", D(110), D(100), D(0), D("0.6")) == 10
    assert price("put", D(110), D(100), D(0), D("0.6")) == 0


def test_at_zero_volatility_the_value_is_the_discounted_intrinsic_value() -> None:
    discount = decimalmath.exp(D("-0.05"))  # r = 0.05, t = 1
    assert price("call", D(110), D(100), D(1), D(0), D("0.05")) == times(D(10), discount)
    assert price("put", D(110), D(100), D(1), D(0), D("0.05")) == 0
    assert price("put", D(90), D(100), D(1), D(0), D("0.05")) == times(D(10), discount)


def test_deep_in_and_out_of_the_money_saturate_to_the_discounted_intrinsic_value() -> None:
    """|d1|, |d2| beyond NORMAL_CDF_ABS_MAX: N is exactly 0 or 1, so the value is exactly the
    discounted intrinsic value (in) or exactly 0 (out)."""
    years, volatility, rate = D("0.0001"), D("0.01"), D("0.03")  # sigma sqrt(t) = 1e-4
    discount = decimalmath.exp(-rate * years)
    assert price("call", D(200), D(100), years, volatility, rate) == times(discount, D(100))
    assert price("put", D(200), D(100), years, volatility, rate) == 0
    assert price("put", D(50), D(100), years, volatility, rate) == times(discount, D(50))
    assert price("call", D(50), D(100), years, volatility, rate) == 0


def test_far_out_of_the_money_stays_positive_and_tiny() -> None:
    """Far out but inside the CDF's bound: a small positive value, never negative."""
    call = price("call", D(100), D(400), D("0.25"), D("0.2"))  # d2 about -13.9
    assert D(0) < call < D("1e-40")
    put = price("put", D(400), D(100), D("0.25"), D("0.2"))
    assert D(0) < put < D("1e-40")


def test_prices_are_at_the_pricing_precision_and_round_half_even_to_12_places_for_the_wire() -> None:
    call = price("call", D(100), D(100), D("0.5"), D("0.2"), D("0.02"))
    assert len(call.as_tuple().digits) == PRICING_PRECISION_DIGITS
    assert round_model_value(call) == D("5.581106724605")
    assert round_model_value(D("0.0000000000005")) == D("0.000000000000")
    assert round_model_value(D("0.0000000000015")) == D("0.000000000002")
    assert round_model_value(D("-1.0000000000025")) == D("-1.000000000002")
    assert str(round_model_value(D(7))) == "7.000000000000"


def test_bad_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(PricingError, match="positive forward"):
        price("call", D(0), D(100), D(1), D("0.5"))
    with pytest.raises(PricingError, match="positive strike"):
        price("call", D(100), D(-1), D(1), D("0.5"))
    with pytest.raises(PricingError, match="volatility"):
        price("call", D(100), D(100), D(1), D("-0.1"))
    with pytest.raises(PricingError, match="option_type"):
        price("straddle", D(100), D(100), D(1), D("0.5"))  # type: ignore[arg-type]


def test_year_fraction_counts_365_day_years_to_the_microsecond() -> None:
    start = datetime(2026, 12, 27, 8, 0, tzinfo=UTC)
    assert year_fraction(start + timedelta(days=365), start) == 1
    assert year_fraction(start + timedelta(days=73), start) == D("0.2")
    assert year_fraction(start - timedelta(days=365), start) == -1
    # A leap year is 366 days, so a calendar year across 29 February is 366/365.
    leap = year_fraction(datetime(2028, 12, 27, 8, 0, tzinfo=UTC), datetime(2027, 12, 27, 8, 0, tzinfo=UTC))
    assert leap == decimalmath.PRICING_CONTEXT.copy().divide(D(366), D(365))
    one_microsecond = year_fraction(start + timedelta(microseconds=1), start)
    assert one_microsecond * D(31_536_000_000_000) == 1
    # Zones are honoured: 09:00+01:00 is 08:00Z.
    plus_one = timezone(timedelta(hours=1))
    assert year_fraction(datetime(2026, 12, 27, 9, 0, tzinfo=plus_one), start) == 0
    with pytest.raises(PricingError, match="zone"):
        year_fraction(datetime(2027, 1, 1), start)


# ------------------------------------------------------------------------------------------------
# The same digits everywhere

# Golden digits: any machine, any Python with a correct decimal module, must print these.
GOLDEN_CALL = D("5.5811067246048101204676173496841842911738830005865")


def test_golden_digits_of_one_price() -> None:
    assert price("call", D(100), D(100), D("0.5"), D("0.2"), D("0.02")) == GOLDEN_CALL


@pytest.mark.parametrize(
    "ambient",
    [
        Context(prec=3, rounding=ROUND_DOWN),
        Context(prec=200, rounding=ROUND_FLOOR),
        Context(prec=28, Emax=10, Emin=-10, traps=[]),
    ],
    ids=["3 digits down", "200 digits floor", "narrow exponents"],
)
def test_the_digits_do_not_depend_on_the_callers_context(ambient: Context) -> None:
    cases = [
        ("call", D(100), D(100), D("0.5"), D("0.2"), D("0.02")),
        ("put", D(104), D(250), D("4.5"), D("0.1"), D(0)),
        ("call", D("65123.45"), D(70000), D("0.3041"), D("0.61"), D("0.05")),
    ]
    expected = [price(*case) for case in cases]  # type: ignore[arg-type]
    with localcontext(ambient):
        assert [price(*case) for case in cases] == expected  # type: ignore[arg-type]
        assert normal_cdf(D("-3.123456789")) == normal_cdf(D("-3.123456789"))
    with localcontext(ambient):
        assert price("call", D(100), D(100), D("0.5"), D("0.2"), D("0.02")) == GOLDEN_CALL


def test_the_digits_are_the_same_in_another_thread() -> None:
    found: list[Decimal] = []

    def run() -> None:
        with localcontext(Context(prec=5)):
            found.append(price("call", D(100), D(100), D("0.5"), D("0.2"), D("0.02")))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert found == [GOLDEN_CALL]
