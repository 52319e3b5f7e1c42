"""The wire spelling of decimals (``to_wire``): what every payload, decision and snapshot holds."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from clearing.domain.numbers import to_wire


def reference(value: Decimal) -> str:
    """``to_wire`` as every stored payload and snapshot was spelled: ``format(value, "f")``
    without trailing fractional zeros, and "0" for any zero."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@given(st.decimals(allow_nan=False, allow_infinity=False))
@example(Decimal("1E+2"))
@example(Decimal("-1.2E-7"))
@example(Decimal("0.000001"))
@example(Decimal("0.0000001"))
@example(Decimal("-0.00"))
@example(Decimal("123.4500"))
@example(Decimal("1E+30"))
def test_to_wire_is_the_reference_spelling(value: Decimal) -> None:
    assert to_wire(value) == reference(value)
