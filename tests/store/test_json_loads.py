"""Payloads read back from JSONB keep every integer exact (the hash chain hashes them again)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from clearing.store.db import make_engine
from clearing.store.jsontext import load_json


def test_integers_beyond_64_bits_read_back_exact(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("""SELECT '{"big": 18446744073709551616, "low": -9223372036854775809, "d": "1.5"}'::jsonb""")
            ).scalar_one()
    finally:
        engine.dispose()
    # orjson alone reads both as floats (1.8446744073709552e+19): the chain would not verify.
    assert value == {"big": 2**64, "low": -(2**63) - 1, "d": "1.5"}
    assert all(type(v) is int for v in (value["big"], value["low"]))


def test_ordinary_documents_read_alike_by_both_parsers() -> None:
    document = b'{"amount": "123.45", "n": 9223372036854775807, "nested": {"k": [1, "x", null, true]}}'
    assert load_json(document) == {"amount": "123.45", "n": 2**63 - 1, "nested": {"k": [1, "x", None, True]}}


BEYOND_64_BITS = [
    2**64,
    -(2**63) - 1,
    10**19,
    99_999_999_999_999_999_999,
    -12_345_678_901_234_567_890_123,
    int("9" * 40),
    int("1234567890" * 4),
]


def test_integers_beyond_64_bits_read_back_exact_wherever_they_stand() -> None:
    for value in BEYOND_64_BITS:
        for document, where in (
            (f"{value}", lambda v: v),
            (f'{{"a": "x", "n": {value}}}', lambda v: v["n"]),
            (f'{{"k": [1, "2026-01-01T00:00:00Z", {{"deep": [{value}]}}]}}', lambda v: v["k"][2]["deep"][0]),
            (f"[{value}, 7]", lambda v: v[0]),
        ):
            read = where(load_json(document.encode()))
            assert type(read) is int and read == value, document


def test_a_long_digit_run_inside_a_string_reads_back_as_the_string() -> None:
    document = b'{"id": "T-12345678901234567890123", "n": 1}'
    assert load_json(document) == {"id": "T-12345678901234567890123", "n": 1}
    assert load_json(memoryview(document)) == load_json(document.decode()) == load_json(bytearray(document))


def test_a_number_with_a_fraction_or_an_exponent_reads_as_the_standard_library_reads_it() -> None:
    document = b'{"a": "x", "f": 1.5, "deep": [{"e": 2e3}, -0.25], "n": 3}'
    assert load_json(document) == json.loads(document)
    assert [type(v) for v in (load_json(b"1.5"), load_json(b"[1, 2.0]")[1])] == [float, float]


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.from_regex(r"-?[0-9]{15,30}(\.[0-9]{1,8})?", fullmatch=True)  # decimals as the log writes them
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


def _typed(value: Any) -> Any:
    """A value with the type of every number in it: 1 and 1.0 (and True) compare equal."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)


@given(JSON_VALUES)
def test_every_document_reads_as_the_standard_library_reads_it(value: Any) -> None:
    """orjson alone turns an integer beyond 64 bits into a float wherever it stands; load_json
    reads every document as ``json.loads`` does, types included, as bytes, text or a view."""
    text = json.dumps(value, ensure_ascii=False)
    expected = _typed(json.loads(text))
    for document in (text, text.encode(), memoryview(text.encode()), bytearray(text.encode())):
        assert _typed(load_json(document)) == expected
