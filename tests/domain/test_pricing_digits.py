"""Pricing at fewer digits than the default (``decimalmath.contexts``, the ``digits`` arguments):
the same fixed contexts built from the number alone, within their bounds, and as accurate as
the digits asked for."""

from __future__ import annotations

from decimal import Context, Decimal, localcontext

import pytest

from clearing.domain import black76, decimalmath
from clearing.domain.decimalmath import PRICING_DIGITS_MAX, PRICING_DIGITS_MIN, contexts, normal_cdf, power

D = Decimal


def test_contexts_outside_their_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="PRICING_DIGITS_MIN"):
        contexts(PRICING_DIGITS_MIN - 1)
    with pytest.raises(ValueError, match="PRICING_DIGITS_MAX"):
        contexts(PRICING_DIGITS_MAX + 1)
    assert contexts(decimalmath.PRICING_PRECISION_DIGITS)[0] is decimalmath.PRICING_CONTEXT


def test_a_context_depends_on_its_digits_only() -> None:
    pricing, cdf = contexts(24)
    assert (pricing.prec, cdf.prec) == (24, 24 + decimalmath.NORMAL_CDF_GUARD_DIGITS)
    assert pricing.Emax == decimalmath.PRICING_CONTEXT.Emax and pricing.traps == decimalmath.PRICING_CONTEXT.traps
    assert contexts(24) is contexts(24)


@pytest.mark.parametrize("x", ["-6.6", "-6.4", "-2.5", "-0.3", "0.7", "3.1", "8"])
def test_the_normal_cdf_at_24_digits_is_the_50_digit_value_to_a_unit_of_its_last_digit(x: str) -> None:
    narrow, full = normal_cdf(D(x), 24), normal_cdf(D(x))
    assert len(narrow.as_tuple().digits) <= 24
    with localcontext(Context(prec=60)):
        assert abs(narrow - full) <= full.copy_abs() * D("1e-23")


def test_black76_at_the_default_digits_is_unchanged_by_asking_for_them() -> None:
    args = ("put", D(64000), D(70000), D("0.05"), D("0.61"), D("0.03"))
    assert black76.price(*args) == black76.price(*args, digits=decimalmath.PRICING_PRECISION_DIGITS)  # type: ignore[arg-type]
    narrow = black76.price(*args, digits=24)  # type: ignore[arg-type]
    assert abs(narrow - black76.price(*args)) < D("1e-17")  # type: ignore[arg-type]


def test_a_non_integral_power_is_exp_of_the_exponent_times_ln() -> None:
    # 32^0.2 = 2; 30^0.3 = exp(0.3 ln 30) = 2.774191114...
    assert abs(power(D(32), D("0.2")) - 2) < D("1e-48")
    with localcontext(Context(prec=70)) as wide:
        assert abs(power(D(30), D("0.3")) - wide.exp(D("0.3") * wide.ln(D(30)))) < D("1e-48")
    with pytest.raises(ArithmeticError):
        power(D(0), D("0.5"))
