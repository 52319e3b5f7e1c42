"""The replay's fast path builds the same messages as validation, for every input type."""

from __future__ import annotations

from datetime import datetime

from clearing.domain import events as ev
from clearing.domain.events import trusted_message
from clearing.domain.messages import decode
from clearing.simulate import Scenario, generate


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
