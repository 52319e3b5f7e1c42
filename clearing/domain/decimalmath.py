"""ln, exp, sqrt and the standard normal distribution in ``Decimal``, with the same digits on
every machine (DESIGN.md: no platform ``math`` in anything that reaches a decision).

Why the digits cannot depend on the platform:

* Every operation runs under ``PRICING_CONTEXT``, built here field by field (precision, rounding,
  exponent limits, traps), never taken from the caller's thread: the ambient context, whatever it
  is, changes nothing (``pricing_context`` swaps it in and back).
* ``+ - * /`` are correctly rounded under that context (IEEE 754 / the General Decimal Arithmetic
  specification), and so are ``Context.ln``, ``Context.exp`` and ``Context.sqrt``: the result is
  the exact value rounded once, so two correct implementations (CPython's libmpdec, or its pure
  Python ``_pydecimal``) cannot disagree by a digit. ``**`` with a non-integral exponent is *not*
  guaranteed correctly rounded by libmpdec, so nothing here uses it.
* The normal CDF is ours: a fixed sequence of those operations (a Taylor series or a continued
  fraction, chosen by |x| against a named bound) that stops by a rule on the decimal values
  themselves, so the same inputs take the same steps everywhere.

Accuracy. ``normal_cdf`` is computed with ``NORMAL_CDF_GUARD_DIGITS`` more digits than the
context, then rounded once to it: the error bound of each branch (below) is far inside the guard
digits, so the result is within one unit in the last place of ``PRICING_PRECISION_DIGITS``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    Underflow,
    localcontext,
)
from typing import Final

# Significant digits of every pricing computation. Prices reach the wire with 12 decimal places
# (CONTRACT v2) and wire values have at most 20 integer digits, so 32 digits would carry any
# price; the rest is headroom for the cancellation in F N(d1) - K N(d2).
PRICING_PRECISION_DIGITS: Final = 50
# Digits the normal CDF carries beyond the context while it sums, so that the cancellation of
# 1/2 - (series) for x down to -NORMAL_CDF_SERIES_ABS_MAX (10 digits at -6.5) and the rounding
# of each step stay below the last digit it returns.
NORMAL_CDF_GUARD_DIGITS: Final = 15
# Exponent limits written out (not left to the platform's defaults) and wide enough for
# exp(-x^2 / 2) at |x| < NORMAL_CDF_ABS_MAX, about 1e-217148.
PRICING_EXPONENT_MAX: Final = 999_999
PRICING_CONTEXT: Final = Context(
    prec=PRICING_PRECISION_DIGITS,
    rounding=ROUND_HALF_EVEN,
    Emax=PRICING_EXPONENT_MAX,
    Emin=-PRICING_EXPONENT_MAX,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[InvalidOperation, DivisionByZero, Overflow, Underflow],
)
_CDF_CONTEXT: Final = Context(
    prec=PRICING_PRECISION_DIGITS + NORMAL_CDF_GUARD_DIGITS,
    rounding=ROUND_HALF_EVEN,
    Emax=PRICING_EXPONENT_MAX,
    Emin=-PRICING_EXPONENT_MAX,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[InvalidOperation, DivisionByZero, Overflow, Underflow],
)

# Below this |x| the Taylor series, at and above it the continued fraction. The series needs
# more terms as x grows (141 at 6.5), the fraction fewer (22,665 at 0.5, 175 at 6.5); the series
# for x < 0 also cancels about log10(1 / (2 N(x))) digits (10 at -6.5), which the guard digits
# absorb.
NORMAL_CDF_SERIES_ABS_MAX: Final = Decimal("6.5")
# At and beyond this |x| the upper tail exp(-x^2/2) / (x sqrt(2 pi)) < 1e-217000: N(x) is 1 (or 0)
# to any precision a price can use, and exp(-x^2/2) would leave the exponent range.
NORMAL_CDF_ABS_MAX: Final = Decimal(1000)
# A term count no input inside the bounds above comes near (at most 175; the tests measure it):
# a series or fraction that has not converged by then is a bug, and stops loudly.
NORMAL_CDF_TERMS_MAX: Final = 1_000

# pi to 80 digits (more than _CDF_CONTEXT carries), for sqrt(2 pi).
_PI: Final = Decimal(
    "3.1415926535897932384626433832795028841971693993751058209749445923078164062862089986"
)
_HALF: Final = Decimal("0.5")
_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_TWO: Final = Decimal(2)


class ConvergenceError(ArithmeticError):
    """A series or continued fraction did not converge within its named term limit: a bug or an
    input outside the bounds the limit was chosen for, never a value to carry on with."""


def pricing_context() -> AbstractContextManager[Context]:
    """Compute under a fresh copy of ``PRICING_CONTEXT`` (a copy: an operation writes the flags of
    its context, and threads must not share them); the caller's context comes back after."""
    return localcontext(PRICING_CONTEXT)


def ln(value: Decimal) -> Decimal:
    """The natural logarithm, correctly rounded to ``PRICING_PRECISION_DIGITS`` digits."""
    return PRICING_CONTEXT.copy().ln(value)


def exp(value: Decimal) -> Decimal:
    """e to the power ``value``, correctly rounded to ``PRICING_PRECISION_DIGITS`` digits."""
    return PRICING_CONTEXT.copy().exp(value)


def sqrt(value: Decimal) -> Decimal:
    """The square root, correctly rounded to ``PRICING_PRECISION_DIGITS`` digits."""
    return PRICING_CONTEXT.copy().sqrt(value)


_SQRT_TWO_PI: Final = _CDF_CONTEXT.copy().sqrt(_CDF_CONTEXT.copy().multiply(_TWO, _PI))


def normal_pdf(x: Decimal) -> Decimal:
    """The standard normal density exp(-x^2/2) / sqrt(2 pi), to ``PRICING_PRECISION_DIGITS``
    significant digits."""
    with localcontext(_CDF_CONTEXT) as wide:
        value = wide.exp(-(x * x) / _TWO) / _SQRT_TWO_PI
    return PRICING_CONTEXT.copy().plus(value)


def normal_cdf(x: Decimal) -> Decimal:
    """N(x), the standard normal cumulative distribution, to ``PRICING_PRECISION_DIGITS``
    significant digits (relative, in both tails: N(-30) keeps its digits, it is not 0).

    With phi the density and a = |x|:

    * a < NORMAL_CDF_SERIES_ABS_MAX: N(x) = 1/2 + sign(x) phi(a) S(a), where
      S(a) = a + a^3/3 + a^5/(3 5) + a^7/(3 5 7) + ... (every term positive; Abramowitz and
      Stegun 26.2.11, the series Marsaglia 2004 evaluates);
    * a >= NORMAL_CDF_SERIES_ABS_MAX: the upper tail Q(a) = phi(a) / (a + 1/(a + 2/(a + 3/(a +
      ...)))) (Laplace's continued fraction, A&S 26.2.14), and N(x) = Q(a) for x < 0, 1 - Q(a)
      for x > 0: the small tail is computed directly, never as a difference of near-equal values;
    * a >= NORMAL_CDF_ABS_MAX: exactly 0 or 1 (the tail is below 1e-217000).
    """
    if not x.is_finite():
        raise InvalidOperation(f"the normal CDF needs a finite argument, got {x}")
    if x.is_zero():
        return _HALF
    a = x.copy_abs()  # not abs(): that rounds to the caller's context
    if a >= NORMAL_CDF_ABS_MAX:
        return _ZERO if x < _ZERO else _ONE
    with localcontext(_CDF_CONTEXT) as wide:
        density = wide.exp(-(a * a) / _TWO) / _SQRT_TWO_PI
        if a < NORMAL_CDF_SERIES_ABS_MAX:
            half_width = density * _series(a, wide)[0]
            value = _HALF + half_width if x > _ZERO else _HALF - half_width
        else:
            tail = density / _continued_fraction(a, wide)[0]
            value = tail if x < _ZERO else _ONE - tail
    return PRICING_CONTEXT.copy().plus(value)


def _series(a: Decimal, context: Context) -> tuple[Decimal, int]:
    """S(a) = sum over n >= 0 of a^(2n+1) / (1 3 5 ... (2n+1)), under ``context``, and the number
    of terms it took.

    Stops once the terms fall (2n + 3 > 2 a^2, so each next term is under half the last and the
    rest of the series is below the current term) and the current term no longer reaches the
    context's last digit of the sum."""
    square = a * a
    twice_square = square + square
    term = a
    total = a
    threshold = Decimal(1).scaleb(-context.prec)
    for n in range(1, NORMAL_CDF_TERMS_MAX + 1):
        divisor = 2 * n + 1
        term = term * square / divisor
        total += term
        if divisor + 2 > twice_square and term < total * threshold:
            return total, n
    raise ConvergenceError(
        f"the normal CDF series at |x| = {a} did not converge in NORMAL_CDF_TERMS_MAX = "
        f"{NORMAL_CDF_TERMS_MAX} terms"
    )


def _continued_fraction(a: Decimal, context: Context) -> tuple[Decimal, int]:
    """D(a) = a + 1/(a + 2/(a + 3/(a + ...))), by the modified Lentz method, under ``context``,
    and the number of terms it took.

    Every partial numerator and denominator is positive, so successive convergents bracket D(a)
    (a Stieltjes fraction): once one convergent moves the value by less than the context's last
    digit, the true value lies within that step."""
    threshold = Decimal(1).scaleb(-context.prec)
    value = a
    numerator_part = a  # C_j of Lentz's method
    denominator_part = _ZERO  # D_j
    for j in range(1, NORMAL_CDF_TERMS_MAX + 1):
        partial = Decimal(j)
        denominator_part = _ONE / (a + partial * denominator_part)
        numerator_part = a + partial / numerator_part
        step = numerator_part * denominator_part
        value *= step
        if abs(step - _ONE) < threshold:
            return value, j
    raise ConvergenceError(
        f"the normal CDF continued fraction at |x| = {a} did not converge in NORMAL_CDF_TERMS_MAX = "
        f"{NORMAL_CDF_TERMS_MAX} terms"
    )
