"""``account show --as-of``: the state at a position equals a fold of the log up to it, with and
without snapshots; a timestamp means the last event (by position) with occurred_at <= T."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from clearing.audit.asof import account_as_of, account_view_of, resolve_position
from clearing.domain.fold import replay_event
from clearing.domain.inputs import format_time
from clearing.domain.state import LedgerState
from clearing.engine.snapshots import state_bytes
from clearing.engine.statecodec import decode_state, encode_state
from clearing.store import queries
from clearing.store.db import make_engine
from tests.audit.audit_data import load_market

pytestmark = [pytest.mark.integration]


@pytest.fixture
def snapshotted(pg_server) -> Iterator[sa.Engine]:  # type: ignore[no-untyped-def]
    """The CRASH market written with a snapshot every 200 events."""
    from clearing.store.db import upgrade

    name = f"clearing_test_asof_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        load_market(url, snapshot_every=200).engine.dispose()
        engine = make_engine(url)
        yield engine
        engine.dispose()
    finally:
        pg_server.drop_database(name)


def folded(engine: sa.Engine, upto: int) -> LedgerState:
    state = LedgerState()
    with engine.connect() as conn:
        for event_type, payload in conn.execute(
            sa.text("SELECT type, payload FROM events WHERE position <= :p ORDER BY position"), {"p": upto}
        ):
            replay_event(state, event_type, payload)
    return state


def test_snapshots_were_written_and_round_trip(snapshotted: sa.Engine) -> None:
    with snapshotted.connect() as conn:
        rows = conn.execute(sa.text("SELECT position, state FROM snapshots ORDER BY position")).all()
    assert len(rows) >= 3
    for position, data in rows:
        expected = folded(snapshotted, int(position))
        assert bytes(data) == state_bytes(expected)
        assert state_bytes(decode_state(encode_state(expected))) == bytes(data)


def test_as_of_a_position_equals_a_fold_up_to_it(snapshotted: sa.Engine) -> None:
    with snapshotted.connect() as conn:
        head = queries.log_head(conn)
        snaps = [int(p) for p in conn.execute(sa.text("SELECT position FROM snapshots")).scalars()]
    # positions before, at and just after snapshots, and the head
    for position in sorted({50, snaps[0], snaps[0] + 1, snaps[-1] + 7, head // 2, head}):
        expected = account_view_of(folded(snapshotted, position), "ACC-00003", position)
        with_snapshots = account_as_of(snapshotted, "ACC-00003", str(position))
        without = account_as_of(snapshotted, "ACC-00003", str(position), use_snapshots=False)
        assert with_snapshots == expected == without, position


def test_as_of_the_head_equals_the_projections(snapshotted: sa.Engine) -> None:
    with snapshotted.connect() as conn:
        head = queries.log_head(conn)
        live = queries.account_view(conn, "ACC-00004")
    past = account_as_of(snapshotted, "ACC-00004", str(head))
    assert live is not None and past is not None
    assert past["balances"] == live["balances"]
    assert [{k: v for k, v in p.items()} for p in past["positions"]] == live["positions"]
    assert past["margin"]["cross"]["status"] == live["margin"]["cross"]["status"]


def test_as_of_a_timestamp_is_the_event_time_fold(snapshotted: sa.Engine) -> None:
    """Without late events the fold of the events that happened by T ends where the last of them
    is: the old reading of a timestamp, kept where it was right."""
    with snapshotted.connect() as conn:
        position, occurred_at = conn.execute(
            sa.text("SELECT position, occurred_at FROM events WHERE position = 400")
        ).one()
        expected = conn.execute(
            sa.text("SELECT max(position) FROM events WHERE occurred_at <= :t"), {"t": occurred_at}
        ).scalar_one()
        stamp = occurred_at.isoformat().replace("+00:00", "Z")
        assert resolve_position(conn, "400") == 400
    view = account_as_of(snapshotted, "ACC-00002", stamp)
    assert view is not None and view["as_of_position"] == expected >= position
    assert view["as_of"] == {"question": "event_time", "time": format_time(occurred_at), "events_left_out": 0}
    assert account_as_of(snapshotted, "ACC-00002", stamp, use_snapshots=False) == view
    with pytest.raises(ValueError, match="time zone"):
        account_as_of(snapshotted, "ACC-00002", "2026-11-23T00:00:00")


def test_an_account_unknown_at_that_position_is_none(snapshotted: sa.Engine) -> None:
    assert account_as_of(snapshotted, "ACC-00030", "3") is None
    assert account_as_of(snapshotted, "NOBODY", "500") is None
