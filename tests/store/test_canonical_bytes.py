"""The writer's fast spellings give the bytes every log so far was hashed with.

The hash chain covers canonical JSON and the log's spelling of times; a faster way of producing
them must not change one byte, or existing logs would no longer verify. Each fast path is
checked here against the definition it replaces.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain.messages import SCHEMAS, decode, format_time
from clearing.simulate import Scenario, generate
from clearing.store.hashing import (
    canonical_json,
    canonical_json_bytes,
    canonical_json_reference,
    digest_input,
)


def reference_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reference_digest_input(**row: Any) -> bytes:
    """The bytes a row's hash covers, as every log so far was hashed."""
    head = json.dumps(
        [
            row["position"],
            row["shard"],
            row["stream"],
            row["stream_version"],
            row["type"],
            row["schema_version"],
            reference_time(row["occurred_at"]),
            reference_time(row["recorded_at"]),
            row["source_topic"],
            row["source_partition"],
            row["source_offset"],
            row["idempotency_key"],
            row["cause_position"],
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return (head + "\n" + row["payload_json"]).encode("utf-8")


def test_canonical_json_spells_every_code_point_like_the_reference() -> None:
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(code_points), 4096):
        chunk = code_points[start : start + 4096]
        text = "".join(map(chr, chunk))
        document = {chr(c): chr(c) for c in chunk} | {"all": text, "list": [text, chr(chunk[0])]}
        assert canonical_json(document) == canonical_json_reference(document)
        assert canonical_json_bytes(document) == canonical_json_reference(document).encode("utf-8")


def test_canonical_json_takes_the_reference_path_for_what_orjson_cannot_spell_alike() -> None:
    for value in (
        {"big": 2**64, "small": -(2**63) - 1, "edge": [2**64 - 1, -(2**63)]},
        {"n": 10**40},
        {1: "integer key"},
        [True, False, None, [], {}, (1, 2)],
    ):
        assert canonical_json(value) == canonical_json_reference(value)
        assert canonical_json_bytes(value) == canonical_json_reference(value).encode("utf-8")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_canonical_json_equals_the_reference_on_random_documents(value: Any) -> None:
    assert canonical_json(value) == canonical_json_reference(value)


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None]),
)
def test_format_time_equals_strftime(value: datetime, zone: timezone | None) -> None:
    if zone is not None:
        value = value.replace(tzinfo=zone)
        assert format_time(value) == reference_time(value)
    else:
        assert format_time(value.replace(tzinfo=UTC)) == reference_time(value.replace(tzinfo=UTC))


def test_format_time_keeps_strftime_spelling_of_early_years() -> None:
    for year in (1, 9, 99, 999, 1000):
        value = datetime(year, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
        assert format_time(value) == reference_time(value)


@settings(max_examples=300, deadline=None)
@given(
    position=st.integers(1, 2**62),
    stream=st.text(min_size=1),
    version=st.integers(1, 2**40),
    payload=json_values,
    occurred=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    source=st.none() | st.tuples(st.text(), st.integers(0, 2**31 - 1), st.integers(0, 2**62)),
    cause=st.none() | st.integers(1, 2**62),
)
def test_digest_input_equals_the_reference(
    position: int,
    stream: str,
    version: int,
    payload: Any,
    occurred: datetime,
    source: tuple[str, int, int] | None,
    cause: int | None,
) -> None:
    topic, partition, offset = source if source is not None else (None, None, None)
    row: dict[str, Any] = {
        "position": position,
        "shard": 3,
        "stream": stream,
        "stream_version": version,
        "type": "FillRecorded",
        "schema_version": 1,
        "payload_json": canonical_json(payload),
        "occurred_at": occurred.replace(tzinfo=UTC),
        "recorded_at": datetime(2026, 11, 23, 12, 0, 0, 1, tzinfo=UTC),
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "idempotency_key": f"s3/fill/{stream}",
        "cause_position": cause,
    }
    expected = reference_digest_input(**row)
    texts = {**row, "occurred_at": format_time(row["occurred_at"]), "recorded_at": format_time(row["recorded_at"])}
    assert digest_input(*texts.values()) == expected


def reference_wire(message: Any) -> dict[str, Any]:
    """``Message.wire`` as it was: the fields in the order of the message's pydantic schema."""
    out: dict[str, Any] = {}
    for name in SCHEMAS[type(message)].model_fields:
        value = getattr(message, name)
        if value is None:
            continue
        if isinstance(value, Decimal):
            text = "0" if value == 0 else format(value, "f")
            out[name] = text.rstrip("0").rstrip(".") if "." in text and value != 0 else text
        elif isinstance(value, datetime):
            out[name] = reference_time(value)
        else:
            out[name] = value
    return out


def test_wire_payloads_equal_the_reference_in_content_and_order() -> None:
    samples = list(generate(Scenario(accounts=8, trades=60, steps=30, funding_every_steps=10)))
    assert {m.kind for m in samples} >= {"fills", "transfers", "marks"}
    for sample in samples:
        message = decode(sample.kind, sample.encode())
        wire = message.wire()
        expected = reference_wire(message)
        assert list(wire.items()) == list(expected.items())
        assert canonical_json(wire) == canonical_json_reference(expected)
