"""Every output message fits the producer's limit: dead letters of any size are shortened to a
prefix with the whole value's size and SHA-256; the producer is configured with the same limit."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.engine import outputs
from clearing.engine.outbox import _encoded
from tests.domain.test_fold import Book, deposit, fill, mark
from tests.domain.test_portfolio_liquidation import CALL, option_fill, option_mark, portfolio_book


def test_a_dead_letter_that_fits_carries_its_whole_raw_value_and_its_digest() -> None:
    raw = b'{"type": "fill", "quantity": 0.5}'
    kind, key, value = outputs.dead_letter_message("clearing.fills", 2, 17, b"A1", raw, "a float")
    assert (kind, key) == (outputs.DLQ, "A1")
    assert base64.b64decode(value["raw"]) == raw
    assert value["raw_truncated"] is False
    assert value["raw_bytes"] == len(raw)
    assert value["raw_sha256"] == hashlib.sha256(raw).hexdigest()


def test_a_one_megabyte_dead_letter_carries_a_prefix_its_size_and_its_sha256() -> None:
    raw = bytes(range(256)) * 4096  # 1 MiB: 1.33 MiB in base64, over the producer's limit
    _, key, value = outputs.dead_letter_message("clearing.fills", 0, 5, b"A1", raw, "the message is too large")
    assert value["raw_truncated"] is True
    assert base64.b64decode(value["raw"]) == raw[: outputs.DEAD_LETTER_RAW_PREFIX_BYTES]
    assert value["raw_bytes"] == len(raw)
    assert value["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert outputs.message_bytes(key, value) <= outputs.OUTPUT_MESSAGE_BYTES_MAX


@settings(max_examples=30, deadline=None)
@given(
    raw_size=st.integers(min_value=0, max_value=3 * 1024 * 1024),
    key=st.one_of(st.none(), st.binary(max_size=64), st.just(b"\xf0\x9f\x92\xa5" * 100_000)),
    error=st.one_of(st.text(max_size=200), st.just("\U0001f4a5" * 300_000)),
)
def test_no_dead_letter_exceeds_the_output_bound(raw_size: int, key: bytes | None, error: str) -> None:
    raw = b"\x00\xff" * (raw_size // 2)
    _, text_key, value = outputs.dead_letter_message("clearing.fills", 0, 1, key, raw, error)
    assert outputs.message_bytes(text_key, value) <= outputs.OUTPUT_MESSAGE_BYTES_MAX
    assert value["raw_bytes"] == len(raw)
    assert base64.b64decode(value["raw"]) == raw[: len(base64.b64decode(value["raw"]))]


def test_the_relay_shortens_an_oversize_dead_letter_written_before_the_bound() -> None:
    # A row of the outbox as the ledger wrote it before messages were bounded: the whole 1 MB raw.
    raw = b"x" * 1_000_000
    value = {"type": "rejected", "topic": "clearing.fills", "partition": 0, "offset": 3, "key": "A1",
             "error": "the message is 1000000 bytes", "raw": base64.b64encode(raw).decode("ascii")}
    key_bytes, value_bytes = _encoded(7, "A1", value)
    assert len(value_bytes) + len(key_bytes or b"") <= outputs.OUTPUT_MESSAGE_BYTES_MAX
    sent = json.loads(value_bytes)
    assert sent["raw_truncated"] is True and sent["raw_bytes"] == len(raw)
    assert sent["raw_sha256"] == hashlib.sha256(raw).hexdigest()


def test_an_oversize_message_that_cannot_be_shortened_is_refused_loudly() -> None:
    with pytest.raises(outputs.OutputTooLargeError, match="outbox row 9"):
        _encoded(9, "A1", {"type": "margin_call_issued", "account_id": "x" * outputs.OUTPUT_MESSAGE_BYTES_MAX})


def test_a_portfolio_decision_goes_out_with_its_worst_cells_and_a_standard_one_without() -> None:
    book = portfolio_book("30000")
    book.feed(option_fill("A", "sell", "2.05", "2000", fid="a1"))
    book.feed(option_fill("B", "buy", "2.05", "2000", fid="b1"))
    sent = [outputs.decision_message(decision, 40) for decision in book.feed(option_mark(CALL, "9000", when=1))]
    assert [(found[0], found[2]["type"]) for found in sent if found is not None] == [
        (outputs.MARGIN_CALLS, "margin_call_issued"),
        (outputs.MARGIN_CALLS, "margin_call_escalated"),
        (outputs.LIQUIDATION_ORDERS, "liquidation_order"),
    ]
    cell = {"underlying": "BTC", "move": "0.5", "volatility": "unchanged", "extreme": True}
    assert all(found is not None and found[2]["worst_cells"] == [cell] for found in sent)
    # A standard account's call (test_lifecycle's first example): no such field.
    standard = Book()
    standard.feed(deposit("A", "1000", "dA"))
    standard.feed(deposit("B", "100000", "dB"))
    standard.feed(fill("A", "buy", "1", "10000", fid="a1"))
    standard.feed(fill("B", "sell", "1", "10000", fid="b1"))
    sent = [outputs.decision_message(decision, 9) for decision in standard.feed(mark("BTCUSDT", "9010"))]
    assert len(sent) == 3 and all(found is not None and "worst_cells" not in found[2] for found in sent)


def test_margin_model_and_rates_decisions_go_out_on_their_topics_with_the_contracts_fields() -> None:
    from datetime import UTC, datetime
    from typing import Any

    from clearing.domain import events as ev

    at = datetime(2026, 11, 23, 13, tzinfo=UTC)

    def sent(event_type: str, payload: dict[str, Any], position: int) -> tuple[str, str | None, dict[str, Any]]:
        found = outputs.decision_message(ev.Event(event_type, "s", payload, at, "k", position - 1), position)
        assert found is not None
        return found

    request = {"account_id": "A", "request_id": "S-1", "model": "portfolio", "parameters_version": "v"}
    topic, key, value = sent(
        ev.MARGIN_MODEL_CHANGED, {**request, "previous_model": "standard", "equity": "1", "initial_margin": "1"}, 10
    )
    assert (topic, key, value["type"], value["request_id"], value["model"]) == (
        outputs.ACCOUNT_UPDATES, "A", "margin_model_changed", "S-1", "portfolio")  # fmt: skip
    topic, key, value = sent(ev.MARGIN_MODEL_REJECTED, {**request, "reason": "why"}, 11)
    assert (topic, key, value["type"], value["reason"]) == (
        outputs.ACCOUNT_UPDATES, "A", "margin_model_rejected", "why")  # fmt: skip
    rates = {
        "account_id": ev.MARGIN_RATES_ACCOUNT, "underlying": "BTC", "sample_at": "2026-11-23T13:00:00.000000Z",
        "sample_price": "100", "log_return": None, "volatility": "0.02", "raw_multiplier": "1",
        "multiplier": "1.25", "previous_multiplier": "1", "index": 0, "parameters_version": "v",
    }  # fmt: skip
    topic, key, value = sent(ev.MARGIN_RATES_CHANGED, rates, 12)
    assert outputs.MARGIN_RATES in outputs.OUTPUT_TOPICS
    assert (topic, key, value["type"]) == (outputs.MARGIN_RATES, "BTC", "margin_rates_changed")
    wanted = {"underlying", "sample_at", "volatility", "raw_multiplier", "multiplier", "parameters_version", "position"}
    assert wanted <= set(value) and value["position"] == 12
