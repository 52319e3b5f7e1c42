"""The consumer's event-time merge: runs of partitions in, one event-time order out."""

from __future__ import annotations

import json

from clearing.engine.ledger import RawRecord
from consumers.kafka_input import EventTimeMerge, event_time


def rec(kind: str, partition: int, offset: int, second: int) -> RawRecord:
    value = json.dumps({"type": "x", "occurred_at": f"2026-11-23T12:00:{second:02d}Z"}).encode()
    return RawRecord(kind, "t." + kind, partition, offset, None, value)


def order(records: list[RawRecord]) -> list[tuple[str, int]]:
    return [(r.kind, r.offset) for r in records]


def test_a_partition_that_is_behind_holds_back_later_records_of_others() -> None:
    merge = EventTimeMerge()
    merge.add(("t.fills", 0), [rec("fills", 0, 0, 5), rec("fills", 0, 1, 6)])
    # The transfers partition has given nothing yet and is behind its watermark: wait.
    assert merge.release({("t.transfers", 0)}, 100, now=0.0) == []
    merge.add(("t.transfers", 0), [rec("transfers", 0, 0, 1), rec("transfers", 0, 1, 5)])
    # It delivered up to 12:00:05 and is still behind: release up to there, deposits first on ties.
    released = merge.release({("t.transfers", 0)}, 100, now=0.1)
    assert order(released) == [("transfers", 0), ("transfers", 1), ("fills", 0)]
    # Caught up: the rest goes.
    assert order(merge.release(set(), 100, now=0.2)) == [("fills", 1)]


def test_holding_is_bounded_and_partition_order_is_kept() -> None:
    merge = EventTimeMerge()
    # Out of time order inside one partition: offset order wins.
    merge.add(("t.marks", 0), [rec("marks", 0, 0, 9), rec("marks", 0, 1, 3)])
    assert merge.release({("t.fills", 0)}, 100, now=10.0) == []
    assert order(merge.release({("t.fills", 0)}, 100, now=10.6)) == [("marks", 0), ("marks", 1)]


def test_a_record_without_an_event_time_keeps_its_place() -> None:
    assert event_time(b'{"occurred_at": "2026-11-23T12:00:01Z"}') is not None
    assert event_time(b"{not json") is None
    merge = EventTimeMerge()
    bad = RawRecord("fills", "t.fills", 0, 1, None, b"{not json")
    merge.add(("t.fills", 0), [rec("fills", 0, 0, 4), bad, rec("fills", 0, 2, 7)])
    assert order(merge.release(set(), 2, now=0.0)) == [("fills", 0), ("fills", 1)]
    assert order(merge.release(set(), 2, now=0.0)) == [("fills", 2)]


def test_the_hold_restarts_while_the_client_goes_round_the_partitions() -> None:
    merge = EventTimeMerge()
    behind = {("t.fills", 0), ("t.fills", 1), ("t.transfers", 0)}
    merge.add(("t.fills", 0), [rec("fills", 0, 0, 30)])
    assert merge.release(behind, 100, now=0.0) == []
    # A large run of another partition took most of a second to arrive: still catching up.
    merge.add(("t.fills", 1), [rec("fills", 1, 0, 31)])
    assert merge.release(behind, 100, now=0.9) == []
    merge.add(("t.transfers", 0), [rec("transfers", 0, 0, 10)])
    assert order(merge.release(behind, 100, now=1.8)) == [("transfers", 0)]
    # More of a partition already heard from does not restart the clock: a silent one ends it.
    merge.add(("t.fills", 0), [rec("fills", 0, 1, 32)])
    assert merge.release({("t.transfers", 0)}, 100, now=2.0) == []
    merge.add(("t.fills", 0), [rec("fills", 0, 2, 33)])
    assert merge.release({("t.transfers", 0)}, 100, now=2.3) == []
    released = merge.release({("t.transfers", 0)}, 100, now=2.6)
    assert [(r.partition, r.offset) for r in released] == [(0, 0), (1, 0), (0, 1), (0, 2)]
