"""Exact decimals: parsing from the wire, the arithmetic context, and every rounding rule.

This module owns rounding. Each rule says which way it rounds and why; nothing else in the
ledger path calls ``quantize`` with a rounding mode of its own.

Why a context of our own: Python's default context keeps 28 significant digits and would round a
product such as quantity x price x funding rate silently. The ledger context keeps far more digits
than any bounded wire value can produce in the products we form (see ``WIRE_INTEGER_DIGITS_MAX``
and ``WIRE_FRACTION_DIGITS_MAX``), so additions and multiplications are exact; divisions are the
only inexact operations and every one of them goes through a helper below that names its rounding.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Clamped,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    getcontext,
    setcontext,
)
from functools import wraps
from typing import Final, ParamSpec, TypeVar

WIRE_INTEGER_DIGITS_MAX = 20
WIRE_FRACTION_DIGITS_MAX = 18
WIRE_NUMBER_CHARS_MAX = WIRE_INTEGER_DIGITS_MAX + WIRE_FRACTION_DIGITS_MAX + 2

# Products of three wire values (quantity x price x rate) need at most 3 x 38 digits.
LEDGER_PRECISION_DIGITS = 160
LEDGER_CONTEXT = Context(
    prec=LEDGER_PRECISION_DIGITS,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Clamped],
)

# Final: the compiled modules read these from a C static, not from this module's dict (a lookup
# each time). Compare a decimal with ZERO, not with the literal 0: an int operand becomes a
# fresh Decimal on every comparison (13 an event of the verify replay, 2-3% of its instructions).
ZERO: Final = Decimal(0)
ONE: Final = Decimal(1)
MINUS_ONE: Final = Decimal(-1)

# Money (balances, requirements, fees, PnL adjustments) is kept to 1e-8 of a unit wherever a
# division forces a rounding; exact products keep all their digits.
MONEY_QUANTUM: Final = Decimal("0.00000001")
# Ratios and averaged prices shown to people: 1e-10 is far below any tick size we meet.
RATIO_QUANTUM: Final = Decimal("0.0000000001")
PRICE_QUANTUM: Final = Decimal("0.0000000001")
# Model figures on the wire (model_price, volatility, multipliers, scenario pnl): CONTRACT v2 asks
# for at least 12 decimal places.
MODEL_QUANTUM: Final = Decimal("0.000000000001")

_WIRE_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


class NumberError(ValueError):
    """A value on the wire is not an exact decimal we accept; the message says why."""


def parse_decimal(value: object, field: str) -> Decimal:
    """Parse a wire number: a JSON string holding a plain decimal, or a JSON integer.

    Floats, NaN, infinities, exponents, booleans and oversize values are refused with a sentence
    that names the field, because a float has already lost the exact value the sender meant.
    """
    if isinstance(value, bool):
        raise NumberError(f'{field} must be a decimal string such as "12.5", not a boolean')
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise NumberError(f"{field} must be a finite decimal, got {value}")
        text = format(value, "f")
    elif isinstance(value, str):
        text = value.strip()
    elif isinstance(value, float):
        raise NumberError(
            f'{field} must be a decimal string such as "65000.5", not the JSON number {value!r}: '
            "binary floating point cannot carry exact amounts"
        )
    else:
        raise NumberError(f"{field} must be a decimal string, got {type(value).__name__}")
    if len(text) > WIRE_NUMBER_CHARS_MAX:
        raise NumberError(f"{field} has {len(text)} characters; at most {WIRE_NUMBER_CHARS_MAX} are accepted")
    if not _WIRE_DECIMAL.fullmatch(text):
        raise NumberError(f'{field} must be a plain decimal like "-12.50" (no exponent, NaN or infinity), got {text!r}')
    integer, _, fraction = text.lstrip("-").partition(".")
    if len(integer) > WIRE_INTEGER_DIGITS_MAX or len(fraction) > WIRE_FRACTION_DIGITS_MAX:
        raise NumberError(
            f"{field} has {len(integer)} integer and {len(fraction)} fraction digits; at most "
            f"{WIRE_INTEGER_DIGITS_MAX} and {WIRE_FRACTION_DIGITS_MAX} are accepted"
        )
    return Decimal(text)


def to_wire(value: Decimal) -> str:
    """The canonical wire form of a decimal: plain notation, no exponent, no trailing zeros.

    That is ``format(value, "f")`` without its trailing fractional zeros. ``str`` spells a decimal
    the same way unless it takes an exponent (a positive exponent, or more than six zeros after
    the point), in under half the time, and snapshots and payloads spell tens of thousands of
    decimals at a time: so ``str`` first, ``format`` where it wrote an exponent."""
    if not value:
        return "0"
    text = str(value)
    if "E" in text:
        text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def is_wire(text: str) -> bool:
    """Whether ``text``, a plain decimal (a minus or not, digits without leading zeros, a fraction
    or not: no exponent), is already ``to_wire`` of its value: no trailing fractional zero, not
    "-0". Lets a decoder keep the text it was sent instead of spelling the value again."""
    return text[-1] != "0" if "." in text else text != "-0"


# The rounding rules below pass ``quantize`` its rounding and context by position: by keyword, the
# decimal module's argument parsing cost about 1,000 instructions a call more (a fifth of a
# rounding; a verify replay rounds several times a fill).
def round_requirement(value: Decimal) -> Decimal:
    """Margin requirements and amounts owed round up (towards more margin): against the account,
    so that rounding can never let an account look safer than it is."""
    return value.quantize(MONEY_QUANTUM, ROUND_CEILING, LEDGER_CONTEXT)


def round_credit(value: Decimal) -> Decimal:
    """Amounts credited to an account round down (towards negative infinity): the ledger never
    pays out a fraction it cannot back."""
    return value.quantize(MONEY_QUANTUM, ROUND_FLOOR, LEDGER_CONTEXT)


def round_ratio(value: Decimal) -> Decimal:
    """Margin ratios round up: a ratio is compared against call thresholds, and rounding it down
    could delay a call."""
    return value.quantize(RATIO_QUANTUM, ROUND_CEILING, LEDGER_CONTEXT)


def round_display_price(value: Decimal) -> Decimal:
    """Averaged prices (entry price) are shown, never booked: half-even to 1e-10."""
    return value.quantize(PRICE_QUANTUM, ROUND_HALF_EVEN, LEDGER_CONTEXT)


def round_model_value(value: Decimal) -> Decimal:
    """Model figures shown on the wire (Black-76 ``model_price``, volatilities, margin
    multipliers, scenario P&L) are estimates, not amounts owed: half-even to 1e-12 (CONTRACT v2),
    no side favoured."""
    return value.quantize(MODEL_QUANTUM, ROUND_HALF_EVEN, LEDGER_CONTEXT)


def round_bankruptcy_price(value: Decimal, *, long: bool) -> Decimal:
    """Bankruptcy prices protect the insurance fund: a long's rounds up (its position is sold
    no lower), a short's rounds down (it is bought back no higher)."""
    rounding = ROUND_CEILING if long else ROUND_FLOOR
    return value.quantize(PRICE_QUANTUM, rounding, LEDGER_CONTEXT)


def round_liquidation_price(value: Decimal, *, long: bool) -> Decimal:
    """Liquidation prices are warnings to the account holder: a long's rounds up and a short's
    down, so the shown price is reached no later than the real one."""
    return round_bankruptcy_price(value, long=long)


P = ParamSpec("P")
R = TypeVar("R")


_THREAD = threading.local()


def _ledger_context() -> Context:
    """This thread's copy of the ledger context (a context's flags are written by every
    operation, so threads do not share one)."""
    context: Context | None = getattr(_THREAD, "context", None)
    if context is None:
        context = _THREAD.context = LEDGER_CONTEXT.copy()
    return context


def exact(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` under the ledger context, so its sums and products are exact. Nested
    calls (the fold calls the margin model, which calls the solver) find the context already in
    place and switch nothing."""

    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        current = getcontext()
        ledger = _ledger_context()
        if current is ledger:
            return function(*args, **kwargs)
        setcontext(ledger)
        try:
            return function(*args, **kwargs)
        finally:
            setcontext(current)

    return wrapper


@contextmanager
def ledger_context() -> Iterator[None]:
    """Run a loop of ``exact`` calls (a batch's fold, a replay) under this thread's ledger
    context, entered once: each call then finds it in place instead of switching to it and back,
    two context-variable writes a call (5% of the instructions of a replayed fill, measured with
    callgrind). Other code in the block computes under it too: more digits, the same traps."""
    current = getcontext()
    setcontext(_ledger_context())
    try:
        yield
    finally:
        setcontext(current)


def require_ledger_context() -> None:
    """Raise unless this thread computes under its ledger context: for a loop under
    ``ledger_context`` that calls the undecorated body of an ``exact`` function on every item
    (``fold.step_in_context``), where the decorator's call through ``*args, **kwargs`` cost more
    than this check."""
    if getcontext() is not _ledger_context():
        raise RuntimeError("not under the ledger context: enter numbers.ledger_context() first")


def divide(numerator: Decimal, denominator: Decimal) -> Decimal:
    """A division at full ledger precision; the caller rounds the result with a named rule."""
    return LEDGER_CONTEXT.divide(numerator, denominator)


# Index bands (triggers.py) only need to be no wider than the exact quotient: a short quotient
# rounded down keeps every later comparison and heap operation on short numbers.
BAND_PRECISION_DIGITS = 34
_BAND_CONTEXT = Context(
    prec=BAND_PRECISION_DIGITS, rounding=ROUND_FLOOR, traps=[InvalidOperation, DivisionByZero, Overflow]
)


def round_bound_up(value: Decimal) -> Decimal:
    """An upper bound the trigger index keeps (what prices can move a scope by) rounds up to 1e-8:
    short numbers, and never a promise the exact figure would not keep."""
    return value.quantize(MONEY_QUANTUM, ROUND_CEILING, LEDGER_CONTEXT)


def round_bound_down(value: Decimal) -> Decimal:
    """A budget the trigger index keeps rounds down to 1e-8, for the same reason."""
    return value.quantize(MONEY_QUANTUM, ROUND_FLOOR, LEDGER_CONTEXT)


def divide_down(numerator: Decimal, denominator: Decimal) -> Decimal:
    """A quotient rounded towards negative infinity to 34 significant digits: never above the
    exact one. For bounds that may err narrow, never wide (the trigger index's bands)."""
    return _BAND_CONTEXT.divide(numerator, denominator)
