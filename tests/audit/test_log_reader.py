"""The log reader (``iter_log``) fetches ahead of the fold in a thread (``prefetched``): the same rows
in the same order as the plain query, errors raised where they happen in the stream, and no thread,
cursor or connection left behind when the consumer stops early or fails."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit import replay as replay_module
from clearing.audit.replay import LOG_COLUMNS, iter_log, prefetched
from clearing.domain.events import MODEL_BY_EVENT_TYPE
from clearing.engine.ledger import Ledger
from clearing.engine.records import RawRecord
from clearing.store.db import make_engine
from clearing.store.jsontext import load_json
from tests.audit.audit_data import APP_ROLE, market_url, owner  # noqa: F401  (fixtures)


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "clearing-log-reader"]


def batches_of(
    items: list[int], size: int, fail_at_call: int | None = None
) -> tuple[Callable[[], list[int]], list[int]]:
    """A ``fetch`` over ``items`` in batches of ``size``, counting its calls; it raises on call
    ``fail_at_call`` (1-based)."""
    calls = [0]

    def fetch() -> list[int]:
        calls[0] += 1
        if calls[0] == fail_at_call:
            raise RuntimeError(f"fetch {calls[0]} failed")
        start = (calls[0] - 1) * size
        return items[start : start + size]

    return fetch, calls


@pytest.mark.parametrize("ahead", [1, 3])
def test_prefetched_yields_every_item_of_every_batch_in_order(ahead: int) -> None:
    items = list(range(1_000))
    fetch, calls = batches_of(items, 7)
    assert list(prefetched(fetch, ahead)) == items
    assert calls[0] == 1_000 // 7 + 2  # the last, short batch and the empty one that ends the stream
    assert not readers()


def test_an_error_in_fetch_is_raised_after_the_batches_before_it() -> None:
    items = list(range(100))
    fetch, calls = batches_of(items, 10, fail_at_call=4)
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="fetch 4 failed"):
        for item in prefetched(fetch, 2):
            seen.append(item)
    assert seen == items[:30]
    assert calls[0] == 4
    assert not readers()


def test_closing_early_stops_the_reader_and_joins_it() -> None:
    fetch, calls = batches_of(list(range(10_000)), 10)
    stream = prefetched(fetch, 2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert not readers()
    # The consumer holds one batch, the queue two, the reader one more at most.
    assert calls[0] <= 4


def test_a_consumer_error_mid_stream_leaves_no_reader_behind() -> None:
    fetch, _calls = batches_of(list(range(10_000)), 10)

    def consume() -> None:
        for item in prefetched(fetch, 2):
            if item == 25:
                raise ValueError("the fold failed")

    with pytest.raises(ValueError, match="the fold failed"):
        consume()
    assert not readers()


def test_ahead_must_hold_a_batch() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        next(prefetched(lambda: [1], 0))


# --------------------------------------------------------------------------------------------
# on the database

integration = pytest.mark.integration


def plain_rows(conn: sa.Connection, where: str = "TRUE", params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    query = f"SELECT {LOG_COLUMNS} FROM events WHERE {where} ORDER BY position"
    return [tuple(row) for row in conn.execute(sa.text(query), params or {})]


@pytest.fixture
def small_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many batches from the small market, so that the reader runs ahead and wraps around.
    monkeypatch.setattr(replay_module, "REPLAY_FETCH_ROWS", 7)


@integration
def test_iter_log_gives_the_rows_of_the_plain_query_in_position_order(
    owner: sa.Engine,  # noqa: F811
    small_fetches: None,
) -> None:
    with owner.connect() as conn:
        everything = plain_rows(conn)
        assert len(everything) > 500
        assert [tuple(row) for row in iter_log(conn)] == everything
        head = everything[-1][0]
        after, upto = head // 3, 2 * head // 3
        assert [tuple(row) for row in iter_log(conn, after=after, upto=upto)] == plain_rows(
            conn, "position > :a AND position <= :u", {"a": after, "u": upto}
        )
        assert [tuple(row) for row in iter_log(conn, shard=0, after=upto)] == plain_rows(
            conn, "shard = 0 AND position > :a", {"a": upto}
        )
        assert list(iter_log(conn, after=head)) == []
    assert not readers()


@integration
def test_iter_log_gives_each_payload_as_json_text_that_parses_to_the_stored_document(
    owner: sa.Engine,  # noqa: F811
) -> None:
    with owner.connect() as conn:
        stored = conn.execute(sa.text("SELECT position, payload FROM events ORDER BY position")).all()
        rows = list(iter_log(conn))
    assert [row[0] for row in rows] == [position for position, _ in stored]
    assert all(type(row[3]) is str for row in rows)
    assert [load_json(row[3]) for row in rows] == [payload for _, payload in stored]
    assert not readers()


def append_liquidation_fill(url: str) -> int:
    """Execute the market's first liquidation order through the ledger (the simulator sends no
    liquidation fills); returns the position of the fill's row."""
    engine = make_engine(url, role=APP_ROLE)
    try:
        with engine.connect() as conn:
            order = conn.execute(
                sa.text("SELECT payload FROM events WHERE type = 'LiquidationOrderIssued' ORDER BY position LIMIT 1")
            ).scalar_one()
            last = conn.execute(sa.text("SELECT max(occurred_at) FROM events")).scalar_one()
        fill = {
            "type": "liquidation_fill",
            "liquidation_id": order["liquidation_id"],
            "fill_id": "LF-reader",
            "account_id": order["account_id"],
            "instrument": order["instrument"],
            "side": order["side"],
            "quantity": order["quantity"],
            "price": "1000",
            "occurred_at": last.isoformat(),
        }
        ledger = Ledger(engine)
        ledger.load()
        record = RawRecord(
            "liquidations", "clearing.liquidations", 0, 0, order["account_id"].encode(), json.dumps(fill).encode()
        )
        ledger.process([record])
        with engine.connect() as conn:
            return int(
                conn.execute(sa.text("SELECT position FROM events WHERE type = 'LiquidationFillRecorded'")).scalar_one()
            )
    finally:
        engine.dispose()


@integration
def test_the_columns_only_decisions_need_are_null_on_the_rows_of_inputs(
    market_url: str,  # noqa: F811
    owner: sa.Engine,  # noqa: F811
) -> None:
    """A decision's row carries its occurred_at, key, cause and stream, which the replay compares
    with the re-run's; an input's carries none of them (its payload holds what the fold reads),
    but a liquidation fill's occurred_at (the margin events carry it)."""
    liquidation_fill = append_liquidation_fill(market_url)
    with owner.connect() as conn:
        stored = {
            int(row[0]): tuple(row[1:])
            for row in conn.execute(
                sa.text("SELECT position, type, occurred_at::text, idempotency_key, cause_position, stream FROM events")
            )
        }
        rows = list(iter_log(conn))
    assert len(rows) == len(stored)
    seen = {"input": 0, "decision": 0}
    for row in rows:
        event_type, occurred_at, key, cause, stream = stored[row[0]]
        if event_type in MODEL_BY_EVENT_TYPE:
            seen["input"] += 1
            kept = occurred_at if event_type == "LiquidationFillRecorded" else None
            assert (row[4], row[6], row[7], row[8]) == (kept, None, None, None), row
        else:
            seen["decision"] += 1
            assert (row[4], row[6], row[7], row[8]) == (occurred_at, key, cause, stream), row
    assert seen["input"] > 100 and seen["decision"] > 10, seen
    fill_row = next(row for row in rows if row[0] == liquidation_fill)
    assert fill_row[2] == "LiquidationFillRecorded" and fill_row[4] is not None


@integration
def test_stopping_early_closes_the_cursor_and_frees_the_connection(
    owner: sa.Engine,  # noqa: F811
    small_fetches: None,
) -> None:
    with owner.connect() as conn:
        rows = iter_log(conn)
        first = [tuple(next(rows)) for _ in range(20)]
        rows.close()
        assert not readers()
        assert first == plain_rows(conn)[:20]
        assert conn.execute(sa.text("SELECT count(*) FROM pg_cursors")).scalar_one() == 0

        def fold_fails() -> None:
            for row in iter_log(conn):
                if row[0] == 30:
                    raise ValueError("the fold failed")

        with pytest.raises(ValueError, match="the fold failed"):
            fold_fails()
        assert not readers()
        assert conn.execute(sa.text("SELECT count(*) FROM pg_cursors")).scalar_one() == 0


@integration
def test_a_connection_lost_mid_stream_is_raised_after_the_rows_before_it(
    owner: sa.Engine,  # noqa: F811
    small_fetches: None,
) -> None:
    with owner.connect() as conn:
        everything = plain_rows(conn)
        backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        seen: list[tuple[Any, ...]] = []
        rows: Iterator[Any] = iter_log(conn)
        seen.append(tuple(next(rows)))
        with owner.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        with pytest.raises(sa.exc.OperationalError):
            for row in rows:
                seen.append(tuple(row))
        assert not readers()
        # Whatever arrived before the connection was lost is the log's first rows, in order.
        assert seen == everything[: len(seen)]
        assert len(seen) < len(everything)
        conn.invalidate()
