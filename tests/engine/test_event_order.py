"""The batch's event-time order: a batch already in order is returned as it is, and any batch comes
out as the k-way merge of its partitions (the definition) would give it."""

from __future__ import annotations

import heapq
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.engine.ledger import RawRecord, in_event_time_order

START = datetime(2026, 11, 23, tzinfo=UTC)
# At equal event times (the contract the ledger and the Kafka adapter share): parameters, then
# collateral, then prices, then trades.
KINDS = {"admin": 0, "transfers": 1, "marks": 2, "fills": 3, "liquidations": 4}


def reference_order(decoded: list[Any]) -> list[Any]:
    by_partition: dict[tuple[str, int], list[Any]] = {}
    last: dict[tuple[str, int], datetime] = {}
    for item in decoded:
        record, message = item[0], item[1]
        where = (record.topic, record.partition)
        at = message.occurred_at if message is not None else last.get(where, datetime.min.replace(tzinfo=UTC))
        last[where] = at
        key = (at, KINDS[record.kind], record.topic, record.partition, record.offset)
        by_partition.setdefault(where, []).append((key, item))
    if len(by_partition) <= 1:
        return decoded
    return [item for _, item in heapq.merge(*by_partition.values(), key=lambda keyed: keyed[0])]


records = st.lists(
    st.tuples(st.sampled_from(["fills", "transfers", "marks"]), st.integers(0, 2), st.none() | st.integers(0, 20)),
    max_size=40,
)


def _batch(spec: list[tuple[str, int, int | None]], *, by_time: bool) -> list[Any]:
    offsets: dict[tuple[str, int], int] = {}
    decoded = []
    for kind, partition, seconds in spec:
        offset = offsets.get((kind, partition), 0)
        offsets[(kind, partition)] = offset + 1
        record = RawRecord(kind, f"clearing.{kind}", partition, offset, None, b"")
        message = None if seconds is None else SimpleNamespace(occurred_at=START + timedelta(seconds=seconds))
        decoded.append((record, message, None, None))
    return reference_order(decoded) if by_time else decoded


@settings(max_examples=500, deadline=None)
@given(records, st.booleans())
def test_the_batch_order_is_the_merge_of_its_partitions(spec: list[tuple[str, int, int | None]], by_time: bool) -> None:
    decoded = _batch(spec, by_time=by_time)
    assert in_event_time_order(decoded) == reference_order(decoded)  # type: ignore[arg-type]


def test_a_batch_in_order_is_returned_as_it_is() -> None:
    decoded = _batch([("transfers", 0, 1), ("marks", 0, 1), ("fills", 1, 1), ("fills", 0, 2)], by_time=False)
    assert in_event_time_order(decoded) is decoded  # type: ignore[arg-type]
