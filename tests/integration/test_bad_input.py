"""Bad input through the real broker and PostgreSQL: each class of bad message lands in the
``dead_letters`` table with its raw bytes, its coordinates and an error a person can act on, goes
out as ``rejected`` on ``<prefix>dlq`` with the raw value in base64, costs nothing around it, and
the same consumer goes on processing what comes after."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.conftest import InProcessLedger, consume_topic, encode, produce

pytestmark = pytest.mark.integration

Message = tuple[str, str | None, dict[str, Any] | bytes | str]


def _t(second: int) -> str:
    return f"2026-11-23T12:00:{second:02d}.000Z"


def _deposit(transfer_id: str, account: str, amount: Any = "10000", **extra: Any) -> dict[str, Any]:
    return {
        "type": "deposit",
        "transfer_id": transfer_id,
        "account_id": account,
        "asset": "USDT",
        "amount": amount,
        "occurred_at": _t(1),
        **extra,
    }


def _fill(fill_id: str, account: str, side: str, **changes: Any) -> dict[str, Any]:
    fill = {
        "type": "fill",
        "fill_id": fill_id,
        "trade_id": "T-" + fill_id,
        "account_id": account,
        "instrument": "BTCUSDT",
        "side": side,
        "quantity": "0.01",
        "price": "65000",
        "fee": "0",
        "fee_asset": "USDT",
        "liquidity": "taker",
        "margin_mode": "cross",
        "occurred_at": _t(2),
    }
    fill.update(changes)
    return fill


def _raw_fill(fill_id: str, price_json: str) -> bytes:
    """A fill whose price is written verbatim (a JSON number, NaN...), which json.dumps would not do."""
    text = json.dumps(_fill(fill_id, "A1", "buy", price="@PRICE@"), separators=(",", ":"))
    return text.replace('"@PRICE@"', price_json).encode("utf-8")


def _bust(bust_id: str, fill_id: str, account: str) -> dict[str, Any]:
    return {
        "type": "fill_bust",
        "bust_id": bust_id,
        "fill_id": fill_id,
        "account_id": account,
        "reason": "erroneous trade",
        "occurred_at": _t(5),
    }


def _second(**changes: Any) -> dict[str, Any]:
    """A second fill of the trade SETUP leaves open (A1 bought 0.01 at 65000), changed."""
    fill = _fill("F-x", "A2", "sell", trade_id="T-F-open")
    fill.update(changes)
    return fill


def _mark(price: str, second: int) -> dict[str, Any]:
    return {"type": "mark", "symbol": "BTCUSDT", "price": price, "occurred_at": _t(second)}


# Produced first and ingested before the bad message: collateral, a mark, one trade.
SETUP: list[Message] = [
    ("transfers", "A1", _deposit("D-1", "A1")),
    ("transfers", "A2", _deposit("D-2", "A2")),
    ("marks", "BTCUSDT", _mark("65000", 10)),
    ("fills", "A1", _fill("F-1", "A1", "buy")),
    ("fills", "A2", _fill("F-1s", "A2", "sell")),
    # A trade whose second fill has not come yet, and a lone fill that is busted.
    ("fills", "A1", _fill("F-open", "A1", "buy")),
    ("fills", "A1", _fill("F-lone", "A1", "buy")),
    ("fills", "A1", _bust("B-0", "F-lone", "A1")),
]
# A good message on each topic a bad one goes to, produced right after the bad one (same key, so
# the same partition): it must not be lost.
AFTER_ON = {
    "transfers": ("transfers", "A1", _deposit("D-3", "A1", "5")),
    "fills": ("fills", "A1", _fill("F-2", "A1", "buy", occurred_at=_t(20))),
    "marks": ("marks", "BTCUSDT", _mark("65100", 30)),
}
# Produced once everything before is ingested: the consumer is still running and takes it.
LATER: Message = ("transfers", "A2", _deposit("D-4", "A2", "7"))


@dataclass(frozen=True)
class Case:
    bad: Message
    words: tuple[str, ...]  # each must appear in the error
    conflicts_with: dict[str, Any] | None = field(default=None)


CASES = {
    "malformed_json": Case(("transfers", "A1", b'{"type": "deposit", "transfer_id": "D-x"'), ("not valid JSON",)),
    "wrong_type_boolean": Case(("fills", "A1", _fill("F-x", "A1", "buy", quantity=True)), ("quantity", "boolean")),
    "wrong_type_list": Case(("fills", "A1", _fill("F-x", "A1", "buy", quantity=["0.5"])), ("quantity", "list")),
    "float_price": Case(("fills", "A1", _raw_fill("F-x", "65000.5")), ("JSON number 65000.5", "decimal string")),
    "nan_string": Case(("fills", "A1", _fill("F-x", "A1", "buy", price="NaN")), ("price", "NaN")),
    "nan_bare": Case(("fills", "A1", _raw_fill("F-x", "NaN")), ("NaN", "finite decimal")),
    "negative_amount": Case(("transfers", "A1", _deposit("D-x", "A1", "-5")), ("amount", "greater than zero")),
    "zero_amount": Case(("transfers", "A1", _deposit("D-x", "A1", "0")), ("amount", "greater than zero")),
    "unknown_instrument": Case(
        ("fills", "A1", _fill("F-x", "A1", "buy", instrument="DOGEUSDT")), ("unknown instrument", "DOGEUSDT")
    ),
    "oversize_id": Case(("fills", "A1", _fill("F-" + "x" * 198, "A1", "buy")), ("fill_id", "128 characters")),
    "oversize_message": Case(
        ("transfers", "A1", _deposit("D-x", "A1", account_note="n" * 70_000)), ("bytes", "at most 65536")
    ),
    # Both once raised out of the decoder (RecursionError, OverflowError) and failed the batch on
    # every retry, instead of becoming dead letters.
    "deeply_nested": Case(("transfers", "A1", b"[" * 30_000 + b"]" * 30_000), ("nests", "too deeply")),
    "event_time_beyond_the_calendar_in_utc": Case(
        ("transfers", "A1", _deposit("D-x", "A1", occurred_at="0001-01-01T00:00:00+01:00")),
        ("occurred_at", "outside the years 1 to 9999"),
    ),
    "stale_mark": Case(("marks", "BTCUSDT", _mark("64000", 5)), ("stale mark", "BTCUSDT", "older")),
    # Unix epoch times, which pydantic's lax mode once took: only RFC 3339 with a zone passes.
    "epoch_time_as_a_number": Case(
        ("transfers", "A1", _deposit("D-x", "A1", occurred_at=1764547200)),
        ("occurred_at", "RFC 3339", "the JSON number 1764547200", "Unix epoch"),
    ),
    "epoch_time_as_a_string": Case(
        ("fills", "A1", _fill("F-x", "A1", "buy", occurred_at="1764547200")),
        ("occurred_at", "RFC 3339", "'1764547200'", "Unix epoch"),
    ),
    "epoch_time_of_a_mark": Case(
        ("marks", "BTCUSDT", {**_mark("65000", 40), "occurred_at": 1764547200}), ("occurred_at", "Unix epoch")
    ),
    # A trade's second fill that is not the other side of its first: booked, verify would fail for ever.
    "pair_quantity_differs": Case(("fills", "A2", _second(quantity="0.02")), ("T-F-open", "quantity 0.02 is not 0.01")),
    "pair_price_differs": Case(("fills", "A2", _second(price="65001")), ("T-F-open", "price 65001 is not 65000")),
    "pair_instrument_differs": Case(
        ("fills", "A2", _second(instrument="ETHUSDT")), ("T-F-open", "instrument ETHUSDT is not BTCUSDT")
    ),
    "pair_same_side": Case(("fills", "A2", _second(side="buy")), ("T-F-open", "side buy is the first fill's side")),
    "bust_of_an_unknown_fill": Case(("fills", "A1", _bust("B-x", "F-nope", "A1")), ("no fill 'F-nope' is booked",)),
    "bust_of_a_busted_fill": Case(("fills", "A1", _bust("B-x", "F-lone", "A1")), ("F-lone", "already busted by B-0")),
    "conflicting_duplicate": Case(
        ("fills", "A1", _fill("F-1", "A1", "buy", price="65000.5")),
        ("conflicting duplicate", "F-1", "different content"),
        conflicts_with=_fill("F-1", "A1", "buy"),
    ),
}


def _log_sources(engine: sa.Engine) -> set[tuple[str, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT source_topic, source_partition, source_offset FROM events WHERE source_topic IS NOT NULL")
        ).all()
    return {(topic, int(partition), int(offset)) for topic, partition, offset in rows}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_message_is_dead_lettered_and_nothing_else_is_lost(
    name: str, in_process_ledger: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    case = CASES[name]
    running = in_process_ledger
    setup = produce(broker, topic_prefix, SETUP)
    running.run_until(setup.ends)

    bad_kind, bad_key, bad_value = case.bad
    around = produce(broker, topic_prefix, [case.bad, AFTER_ON[bad_kind]])
    running.run_until(around.ends)
    bad_at, after_at = around.coordinates
    raw = encode(bad_value)

    # The dead letter: raw bytes, coordinates, key and an error that says what is wrong.
    with owner_engine.connect() as conn:
        letters = conn.execute(
            sa.text('SELECT topic, partition, "offset", key, raw, error, existing_payload FROM dead_letters')
        ).all()
    assert len(letters) == 1, letters
    topic, partition, offset, key, stored_raw, error, existing = letters[0]
    assert (topic, partition, offset) == bad_at
    assert bytes(stored_raw) == raw
    assert bad_key is not None and bytes(key) == bad_key.encode()
    for word in case.words:
        assert word in error, f"{word!r} not in the error {error!r}"
    if case.conflicts_with is not None:
        # Both versions are kept: the logged one in the dead letter, the new one in its raw bytes.
        assert existing is not None
        assert {k: existing[k] for k in ("fill_id", "account_id", "price")} == {
            k: case.conflicts_with[k] for k in ("fill_id", "account_id", "price")
        }
    else:
        assert existing is None

    # Published as `rejected` on the DLQ topic, the raw value in base64.
    dlq = consume_topic(broker, topic_prefix + "dlq", lambda values: len(values) >= 1)
    assert len(dlq) == 1, dlq
    rejected = dlq[0]
    assert rejected["type"] == "rejected"
    assert (rejected["topic"], rejected["partition"], rejected["offset"]) == bad_at
    assert base64.b64decode(rejected["raw"]) == raw
    assert rejected["error"] == error
    assert rejected["key"] == bad_key

    # Nothing else lost: every good message is in the log, the bad one is not.
    sources = _log_sources(owner_engine)
    assert set(setup.coordinates) <= sources
    assert after_at in sources
    assert bad_at not in sources

    # The consumer goes on: a good message produced afterwards is processed.
    later = produce(broker, topic_prefix, [LATER])
    running.run_until(later.ends)
    assert later.coordinates[0] in _log_sources(owner_engine)
    assert running.stats.dead_letters == 1
    assert running.stats.appended == 1 + len(SETUP) + 2  # the parameters the log opens with, first
