"""The replay's fast path builds the same messages as validation, for every input type, and a fill
read straight from its text the same message as a fill read as a dict."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from clearing.audit.fillwire import FILL_READER, PRICE, QUANTITY, FillFields
from clearing.audit.logreplay import _fill_message, decode_fill
from clearing.domain import events as ev
from clearing.domain.events import trusted_message
from clearing.domain.messages import decode
from clearing.domain.state import LedgerState
from clearing.simulate import Scenario, generate
from clearing.store.jsontext import load_json


def test_fast_messages_equal_validated_messages() -> None:
    samples = [m for m in generate(Scenario(accounts=5, trades=20, steps=60, funding_every_steps=20))]
    raw = [(m.kind, m.encode()) for m in samples]
    raw += [
        (
            "marks",
            b'{"type":"mark","symbol":"BTC-27DEC26-70000-C","price":"1234.5","iv":"0.61",'
            b'"occurred_at":"2026-11-23T12:00:00.123Z"}',
        ),
        ("marks", b'{"type":"settlement","symbol":"BTCUSDT","price":"70000","occurred_at":"2026-11-23T12:00:00Z"}'),
        (
            "transfers",
            b'{"type":"isolated_margin","transfer_id":"M-1","account_id":"A1","instrument":"BTCUSDT",'
            b'"amount":"-250","occurred_at":"2026-11-23T12:00:00Z"}',
        ),
        (
            "liquidations",
            b'{"type":"liquidation_fill","liquidation_id":"L-17","fill_id":"LF-1","account_id":"A1",'
            b'"instrument":"BTCUSDT","side":"sell","quantity":"0.5","price":"59000",'
            b'"occurred_at":"2026-11-23T12:00:00Z"}',
        ),
        ("admin", b'{"type":"risk_parameters","parameters":{"version":"x"},"occurred_at":"2026-11-23T12:00:00Z"}'),
        (
            "fills",
            b'{"type":"fill","fill_id":"F-9","trade_id":"T-9","account_id":"A1","instrument":"BTCUSDT",'
            b'"side":"buy","quantity":"1","price":"2","occurred_at":"2026-11-23T12:00:00Z"}',
        ),
    ]
    kinds = set()
    for kind, value in raw:
        message = decode(kind, value)
        payload = message.wire()  # what the log holds
        event_type = ev.INPUT_EVENT_TYPES[message.type][0]
        fast = trusted_message(event_type, payload)
        assert fast == message and type(fast) is type(message)
        assert fast.wire() == payload
        kinds.add(message.type)
    assert kinds >= {
        "fill",
        "deposit",
        "withdrawal",
        "mark",
        "funding",
        "settlement",
        "isolated_margin",
        "liquidation_fill",
        "risk_parameters",
    }


def test_a_time_read_again_at_once_is_the_time_read_before_and_every_other_is_its_own() -> None:
    # A trade's two fills carry one time: the second reads the first's (``inputs._time``).
    from clearing.domain import inputs

    texts = [
        "2026-11-23T12:00:00.000001Z",
        "2026-11-23T12:00:00.000001Z",
        "2026-11-23T12:00:00.000002Z",
        "2026-11-23T12:00:00.000001Z",
        "2026-11-23T12:00:00Z",
    ]
    read = [inputs._time(text) for text in texts]
    assert read == [datetime.fromisoformat(text) for text in texts]
    assert read[1] is read[0] and read[3] is not read[0]


# ---------------------------------------------------------------------------------------------
# a fill read straight from its text (clearing/audit/fillwire.py) is the fill read as a dict

WIRE_NUMBERS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**12), max_value=10**12).map(
        lambda d: format(d, "f")
    ),
    st.integers(min_value=-(2**70), max_value=2**70),  # JSON integers, beyond 64 bits too
)
NAMES = st.text(min_size=1, max_size=12)
OPTIONAL = object()  # the key is left out
FILL_DEFAULTS = {"margin_mode": "cross"}  # what FillFields holds for an absent key (else None)


@st.composite
def fill_payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "fill",
        "fill_id": draw(NAMES),
        "trade_id": draw(NAMES),
        "account_id": draw(NAMES),
        "instrument": draw(NAMES),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "quantity": draw(WIRE_NUMBERS),
        "price": draw(WIRE_NUMBERS),
        "occurred_at": draw(st.datetimes(timezones=st.just(UTC))).isoformat().replace("+00:00", "Z"),
    }
    for key, values in (
        ("fee", st.one_of(st.none(), WIRE_NUMBERS)),
        ("fee_asset", st.one_of(st.none(), NAMES)),
        ("liquidity", st.one_of(st.none(), st.sampled_from(["maker", "taker"]))),
        ("margin_mode", st.sampled_from(["cross", "isolated"])),
    ):
        value = draw(st.one_of(st.just(OPTIONAL), values))
        if value is not OPTIONAL:
            payload[key] = value
    # Fields a later schema may add: skipped by both readers.
    payload.update(draw(st.dictionaries(st.sampled_from(["venue", "extra", "n"]), st.one_of(NAMES, st.integers()))))
    keys = draw(st.permutations(list(payload)))
    return {key: payload[key] for key in keys}


COMPLETE_FILL: dict[str, Any] = {
    "fill_id": "F-1", "trade_id": "T-1", "account_id": "A", "instrument": "BTCUSDT", "side": "buy",
    "quantity": "1", "price": "2", "occurred_at": "2026-11-23T12:00:00Z",
}  # fmt: skip


@given(payload=fill_payloads(), as_bytes=st.booleans())
def test_a_fill_read_straight_into_its_values_is_the_fill_read_as_a_dict(
    payload: dict[str, Any], as_bytes: bool
) -> None:
    text = json.dumps(payload, ensure_ascii=False)  # as PostgreSQL writes JSONB: ", " and ": "
    data: str | bytes = text.encode() if as_bytes else text
    values = decode_fill(data)
    assert values is not None
    read = load_json(data)
    assert read == payload
    for name, value in zip(FillFields.__struct_fields__, values, strict=True):
        expected = read.get(name, FILL_DEFAULTS.get(name))
        assert value == expected and type(value) is type(expected), name
    assert _fill_message(values, LedgerState()).values() == trusted_message("FillRecorded", read).values()


def test_a_replayed_fill_names_its_account_by_the_states_own_string() -> None:
    state = LedgerState()
    known = state.account("".join(["ACC-", "7"]))  # built at run time: not the literal below
    seven = decode_fill(json.dumps({**COMPLETE_FILL, "account_id": "ACC-7"}))
    eight = decode_fill(json.dumps({**COMPLETE_FILL, "account_id": "ACC-8"}))
    assert seven is not None and eight is not None
    assert seven[2] == known.account_id and seven[2] is not known.account_id
    assert _fill_message(seven, state).account_id is known.account_id  # found by identity in the fold
    assert _fill_message(eight, state).account_id == "ACC-8"  # an account the state does not have yet


def test_what_is_not_a_fill_payload_is_left_to_the_general_reader() -> None:
    assert decode_fill(json.dumps(COMPLETE_FILL)) is not None
    for name in COMPLETE_FILL:
        assert decode_fill(json.dumps({k: v for k, v in COMPLETE_FILL.items() if k != name})) is None, name
    deep = json.dumps(COMPLETE_FILL)[:-1] + ', "x": ' + "[" * 5_000 + "]" * 5_000 + "}"
    for text in ("[1, 2]", '"fill"', "{", "", '{"fill_id": "F-1",}', deep):
        assert decode_fill(text) is None, text[:40]
    # Numbers as the standard library reads them: integers of any size, floats from their text.
    values = decode_fill(json.dumps({**COMPLETE_FILL, "quantity": 2**80, "price": 0.1})[:-1] + ', "fee": 1e400}')
    assert values is not None
    assert (values[QUANTITY], values[PRICE], values[FILL_READER.names.index("fee")]) == (2**80, 0.1, float("inf"))


def test_the_fields_are_the_fills_in_the_order_its_reader_takes_them() -> None:
    from clearing.domain.inputs import FILL

    assert FillFields.__struct_fields__ == FILL_READER.names
    assert sorted(FILL_READER.names) == sorted(spec.name for spec in FILL.fields)
    assert FillFields.__struct_fields__[QUANTITY] == "quantity" and FillFields.__struct_fields__[PRICE] == "price"
