"""Black-76: the value of a European option on a forward, as CONTRACT v2 defines it.

F = mark of the underlying, K = strike, t = (expiry - valuation time) in seconds / 31,536,000
(365 days), sigma = implied volatility (annualised), r = the document's ``interest_rate``:

    d1 = (ln(F / K) + sigma^2 t / 2) / (sigma sqrt(t)),   d2 = d1 - sigma sqrt(t)
    call = e^(-r t) (F N(d1) - K N(d2))
    put  = e^(-r t) (K N(-d2) - F N(-d1))

and at t <= 0 or sigma = 0 the discounted intrinsic value, e^(-r max(t, 0)) max(F - K, 0) for a
call, e^(-r max(t, 0)) max(K - F, 0) for a put (after the expiry nothing is left to discount).

Every step runs under ``decimalmath.PRICING_CONTEXT``, so the digits are the same on every
machine and whatever context the caller computes under. The value comes back at the context's
precision, unrounded: a figure that goes on the wire rounds with ``numbers.round_model_value``,
one that reaches a requirement with the requirement's rule, where it is used.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

from clearing.domain.decimalmath import exp, ln, normal_cdf, pricing_context, sqrt
from clearing.domain.params import InstrumentSpec, OptionType

SECONDS_PER_YEAR: Final = 31_536_000  # 365 days (CONTRACT v2)
_MICROSECONDS_PER_YEAR: Final = Decimal(SECONDS_PER_YEAR * 1_000_000)
_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_TWO: Final = Decimal(2)


class PricingError(ValueError):
    """Inputs Black-76 cannot price (a non-positive forward or strike, a negative volatility, a
    time without a zone); the message says which."""


def year_fraction(expiry: datetime, valuation_at: datetime) -> Decimal:
    """t = (expiry - valuation time) in seconds / 31,536,000, exact to the microsecond before the
    one division (negative after the expiry). Both times must carry a zone: a naive time has no
    single meaning on the wire (CONTRACT.md)."""
    if expiry.tzinfo is None or valuation_at.tzinfo is None:
        raise PricingError("Black-76 needs times with a zone: the expiry and the valuation time")
    elapsed: timedelta = expiry - valuation_at
    microseconds = (elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds
    with pricing_context():
        return Decimal(microseconds) / _MICROSECONDS_PER_YEAR


def intrinsic_value(option_type: OptionType, forward: Decimal, strike: Decimal) -> Decimal:
    """max(F - K, 0) for a call, max(K - F, 0) for a put: exact (a difference of two inputs)."""
    difference = forward - strike if option_type == "call" else strike - forward
    return difference if difference > _ZERO else _ZERO


def price(
    option_type: OptionType,
    forward: Decimal,
    strike: Decimal,
    years: Decimal,
    volatility: Decimal,
    rate: Decimal = _ZERO,
) -> Decimal:
    """The Black-76 value of one unit of the option (module docstring), at
    ``decimalmath.PRICING_PRECISION_DIGITS`` significant digits, never negative."""
    if option_type not in ("call", "put"):
        raise PricingError(f'option_type must be "call" or "put", got {option_type!r}')
    if not forward > _ZERO:
        raise PricingError(f"Black-76 needs a positive forward (the underlying's mark), got {forward}")
    if not strike > _ZERO:
        raise PricingError(f"Black-76 needs a positive strike, got {strike}")
    if volatility < _ZERO:
        raise PricingError(f"Black-76 needs a volatility of at least 0, got {volatility}")
    with pricing_context():
        discount = exp(-rate * years) if years > _ZERO else _ONE
        if years <= _ZERO or volatility.is_zero():
            return +(discount * intrinsic_value(option_type, forward, strike))
        deviation = volatility * sqrt(years)
        d1 = (ln(forward / strike) + volatility * volatility * years / _TWO) / deviation
        d2 = d1 - deviation
        if option_type == "call":
            value = discount * (forward * normal_cdf(d1) - strike * normal_cdf(d2))
        else:
            value = discount * (strike * normal_cdf(-d2) - forward * normal_cdf(-d1))
        # The two products can be nearly equal (far out of the money): their rounded difference
        # may land a unit below zero in the last digit, where the exact value is a tiny positive.
        return value if value > _ZERO else _ZERO


def option_value(
    spec: InstrumentSpec, underlying_mark: Decimal, volatility: Decimal, valuation_at: datetime, rate: Decimal
) -> Decimal:
    """Black-76 of one unit of the option ``spec`` as CONTRACT v2 wires it: F = the underlying's
    mark, K = the strike, t from the expiry and the valuation time, sigma = the mark's iv, r = the
    document's ``interest_rate``. Unrounded (``numbers.round_model_value`` for the wire)."""
    if spec.option_type is None or spec.strike is None or spec.expiry is None:
        raise PricingError(f"{spec.symbol} is a {spec.kind}, not an option: Black-76 does not price it")
    years = year_fraction(spec.expiry, valuation_at)
    return price(spec.option_type, underlying_mark, spec.strike, years, volatility, rate)
