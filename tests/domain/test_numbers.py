"""The wire spelling of decimals (``to_wire``): what every payload, decision and snapshot holds; and
the reading of a logged wire number (``inputs.wire_decimal``)."""

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


@given(st.lists(st.decimals(allow_nan=False, allow_infinity=False, places=6), min_size=1, max_size=50))
def test_a_logged_wire_number_reads_as_its_decimal_from_the_cache_too(values: list[Decimal]) -> None:
    """``wire_decimal`` is ``Decimal(text)``, value and exponent, whether it reads the text or the
    cache holds it (the second read of a text)."""
    from clearing.domain import inputs

    inputs._WIRE_DECIMALS.clear()  # room for every text of the example: none is dropped before its second read
    texts = [format(value, "f") for value in values]
    texts += [text + "0" if "." in text else text + ".0" for text in texts]  # another exponent, same value
    for _round in range(2):
        for text in texts:
            found = inputs.wire_decimal(text)
            assert (str(found), found.as_tuple()) == (str(Decimal(text)), Decimal(text).as_tuple())
            assert inputs.wire_decimal(text) is found


def test_the_wire_decimal_cache_starts_again_when_full() -> None:
    from clearing.domain import inputs

    inputs._WIRE_DECIMALS.clear()
    first = inputs.wire_decimal("65000.50")
    for n in range(inputs.WIRE_DECIMALS_MAX):
        inputs.wire_decimal(str(n))
    again = inputs.wire_decimal("65000.50")
    assert again is not first  # read again: the cache had started again, without it
    assert (str(again), again.as_tuple()) == ("65000.50", Decimal("65000.50").as_tuple())
    assert inputs.wire_decimal(12) == Decimal(12)
