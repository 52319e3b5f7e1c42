"""The decoder's fast path builds the message the checked path builds, and the wire form ``wire()``
gives it, and leaves every message it is not sure of, valid or not, to the checked path (so every
error keeps its wording)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain.messages import (
    _FAST_MODELS,
    _PLAIN_DECIMAL,
    _PLAIN_TIME,
    SCHEMAS,
    TOPIC_TYPES,
    InputError,
    decode,
    decode_checked,
    decode_wire,
    format_time,
    is_wire_time,
)
from clearing.domain.numbers import is_wire, to_wire
from clearing.simulate import Scenario, generate

T = "2026-11-23T12:00:00.123Z"
VALID: dict[str, dict[str, Any]] = {
    "fills": {
        "type": "fill",
        "fill_id": "F-1",
        "trade_id": "T-1",
        "account_id": "A1",
        "instrument": "BTCUSDT",
        "side": "buy",
        "quantity": "0.5",
        "price": "65000.5",
        "fee": "1.25",
        "fee_asset": "USDT",
        "liquidity": "taker",
        "margin_mode": "cross",
        "occurred_at": T,
    },
    "transfers": {
        "type": "deposit",
        "transfer_id": "D-1",
        "account_id": "A1",
        "asset": "USDT",
        "amount": "10000",
        "occurred_at": T,
    },
    "marks": {"type": "mark", "symbol": "BTC-27DEC26-70000-C", "price": "1234.5", "iv": "0.61", "occurred_at": T},
    "liquidations": {
        "type": "liquidation_fill",
        "liquidation_id": "L-17",
        "fill_id": "LF-1",
        "account_id": "A1",
        "instrument": "BTCUSDT",
        "side": "sell",
        "quantity": "0.5",
        "price": "59000",
        "occurred_at": T,
    },
}
MORE = [
    ("transfers", {"type": "withdrawal", "transfer_id": "W-1", "account_id": "A1", "asset": "USDT", "amount": "5",
                   "occurred_at": T}),
    ("transfers", {"type": "isolated_margin", "transfer_id": "M-1", "account_id": "A1", "instrument": "BTCUSDT",
                   "amount": "-250", "occurred_at": T}),
    ("marks", {"type": "funding", "symbol": "BTCUSDT", "rate": "-0.0001", "occurred_at": T}),
    ("marks", {"type": "settlement", "symbol": "BTC-27DEC26", "price": "70000", "occurred_at": T}),
    ("marks", {"type": "mark", "symbol": "BTCUSDT", "price": "64000", "iv": None, "occurred_at": T}),
    ("fills", {**VALID["fills"], "fee_asset": None, "liquidity": None}),
    # Valid spellings that are not the wire form: trailing zeros, "-0", a time not in UTC's spelling.
    ("fills", {**VALID["fills"], "quantity": "2.000", "price": "65000.50", "fee": "-0",
               "occurred_at": "2026-11-23T12:00:00Z"}),
    ("marks", {"type": "mark", "symbol": "BTCUSDT", "price": "64000.10", "occurred_at": "2026-11-23T13:00:00+01:00"}),
]  # fmt: skip

ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -5, 10**30, 1.5, 1e16, [], ["0.5"], {}, {"a": 1},
    "", "x" * 128, "x" * 129, "é" * 128, "é" * 129, "buy", "sell", "maker", "isolated", "cross", "BUY",
    "0", "-0", "0.0", "-0.0", "1.50", "-2.000", "10", "1", "-1", "0.5", "00.5", "1.", ".5", "+5", " 5", "5 ",
    "1e5", "1E5", "NaN", "Infinity",
    "1" * 20, "1" * 21, "0." + "1" * 18, "0." + "1" * 19, "-" + "9" * 20 + "." + "9" * 18,
    "2026-11-23T12:00:00Z", "2026-11-23T12:00:00.1Z", "2026-11-23T12:00:00.123456Z", "2026-11-23T12:00:00.000000Z",
    "2026-11-23T12:00:00.123456+01:00", "0999-11-23T12:00:00.123456Z", "2026-11-23T12:00:00.1234567Z",
    "2026-11-23t12:00:00z", "2026-11-23 12:00:00Z", "2026-11-23T12:00:00", "2026-11-23T12:00:00+05:30",
    "2026-11-23T12:00:00-00:00", "2026-11-23T12:00Z", "2026-02-30T00:00:00Z", "2026-11-23T24:00:00Z",
    "2026-11-23T12:00:60Z", "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
    "2026-11-23T12:00:00+24:00", "20261123T120000Z", "2026-W47-1T12:00:00Z",
]  # fmt: skip


def outcome(decoder: Any, kind: str, raw: bytes) -> tuple[str, Any]:
    try:
        message = decoder(kind, raw)
    except InputError as error:
        return "error", str(error)
    values = [(name, type(value), repr(value)) for name, value in zip(message.FIELDS, message.values(), strict=True)]
    return "message", (type(message), values, message.wire())


def with_wire(kind: str, raw: bytes) -> Any:
    """``decode_wire``'s message, once its wire form is checked against ``wire()``, in order."""
    message, wire = decode_wire(kind, raw)
    assert list(wire.items()) == list(message.wire().items()), raw
    return message


def assert_same(kind: str, raw: bytes) -> None:
    expected = outcome(decode_checked, kind, raw)
    assert outcome(decode, kind, raw) == expected, raw
    assert outcome(with_wire, kind, raw) == expected, raw


def test_every_message_class_has_its_schema_s_fields_in_order() -> None:
    assert set(SCHEMAS) == {model for kinds in TOPIC_TYPES.values() for model in kinds.values()}
    for model, schema in SCHEMAS.items():
        assert list(model.FIELDS) == list(schema.model_fields), model


def test_every_fast_path_model_lists_its_fields_in_order() -> None:
    for model, fast in _FAST_MODELS.items():
        assert fast.names == set(model.FIELDS)
        assert list(fast.template) == list(model.FIELDS)
    fast = {model for kinds in TOPIC_TYPES.values() for model in kinds.values()} - set(_FAST_MODELS)
    # Parameter documents and busts are rare (and a bust's reason is longer than an identifier):
    # validation builds them.
    assert {model.__name__ for model in fast} == {"RiskParametersMessage", "FillBust"}


def test_simulated_and_contract_messages_decode_alike() -> None:
    scenario = Scenario(accounts=8, trades=60, steps=30, funding_every_steps=10)
    samples = [(m.kind, m.encode()) for m in generate(scenario)]
    samples += [(kind, json.dumps(value).encode()) for kind, value in [*VALID.items(), *MORE]]
    for kind, raw in samples:
        assert outcome(decode, kind, raw)[0] == "message"
        assert_same(kind, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'"x"',
        b"{",
        b'\xef\xbb\xbf{"type":"mark"}',
        b'{"type":"mark","symbol":"BTCUSDT","price":"1","occurred_at":"' + T.encode() + b'","price":"2"}',
        b'{"type":"mark","symbol":"BTCUSDT","price":"1","occurred_at":"' + T.encode() + b'","price":2.5}',
        b'{"type":"mark","symbol":"BTCUSDT","price":NaN,"occurred_at":"' + T.encode() + b'"}',
        b'{"type":"mark","symbol":"BTCUSDT","price":123456789012345678901234567890,"occurred_at":"x"}',
        b'{"type":"mark","symbol":"BTC\\ud800","price":"1","occurred_at":"' + T.encode() + b'"}',
        b'{"type":"mark","symbol":"BTC\xff","price":"1","occurred_at":"' + T.encode() + b'"}',
        b'{"type":["mark"],"symbol":"BTCUSDT"}',
        b'{"type":"fill","symbol":"BTCUSDT"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"type":"mark","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"type":"mark","symbol":"' + b"x" * 70_000 + b'"}',
    ],
)
def test_odd_bytes_decode_alike(raw: bytes) -> None:
    for kind in ("marks", "fills", "admin", "nonsense"):
        assert_same(kind, raw)


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from([*VALID.items(), *MORE]),
    st.lists(st.tuples(st.integers(0, 20), st.sampled_from(ODD_VALUES)), max_size=3),
    st.sets(st.integers(0, 20), max_size=2),
    st.booleans(),
)
def test_altered_messages_decode_alike(
    base: tuple[str, dict[str, Any]], changes: list[tuple[int, Any]], dropped: set[int], extra: bool
) -> None:
    kind, value = base
    message = dict(value)
    names = list(message)
    for index, new in changes:
        message[names[index % len(names)]] = new
    for index in dropped:
        message.pop(names[index % len(names)], None)
    if extra:
        message["note"] = "hello"
    assert_same(kind, json.dumps(message).encode())


def test_a_deeply_nested_message_is_an_input_error() -> None:
    with pytest.raises(InputError, match="nests JSON arrays or objects too deeply"):
        decode("fills", b"[" * 30_000 + b"]" * 30_000)


def test_an_event_time_outside_the_calendar_in_utc_is_an_input_error() -> None:
    for stamp in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        raw = json.dumps({**VALID["marks"], "occurred_at": stamp}).encode()
        with pytest.raises(InputError, match="occurred_at is outside the years 1 to 9999"):
            decode("marks", raw)


# The fast path keeps the text it was sent where that is already the wire form; the two tests
# below hold each shortcut to the spelling it stands for.


@settings(max_examples=2000, deadline=None)
@given(st.from_regex(_PLAIN_DECIMAL, fullmatch=True))
def test_a_plain_decimal_is_wire_exactly_when_to_wire_spells_it_so(text: str) -> None:
    assert is_wire(text) == (to_wire(Decimal(text)) == text)


@settings(max_examples=2000, deadline=None)
@given(st.from_regex(_PLAIN_TIME, fullmatch=True))
def test_a_plain_time_is_wire_exactly_when_format_time_spells_it_so(text: str) -> None:
    try:
        at = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):  # not a date of the calendar: the decoder refuses it
        return
    assert is_wire_time(text) == (format_time(at) == text)
