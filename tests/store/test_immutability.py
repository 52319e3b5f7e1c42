"""The database, not the application, keeps the event log append-only; and the migrations that
build it run both ways."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from clearing.store import db, tables

pytestmark = pytest.mark.integration

APPEND_ONLY = "the event log is append-only: corrections are new events"


def _event_row(position: int, key: str) -> dict[str, object]:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    return {
        "position": position,
        "shard": 0,
        "stream": "account:A1",
        "stream_version": position,
        "type": "collateral_deposited",
        "schema_version": 1,
        "payload": {"account_id": "A1", "asset": "USDT", "amount": "10000"},
        "occurred_at": now,
        "recorded_at": now,
        "source_topic": "clearing.transfers",
        "source_partition": 0,
        "source_offset": position - 1,
        "idempotency_key": key,
        "cause_position": None,
        "prev_hash": b"\x00" * 32,
        "hash": bytes([position]) * 32,
    }


@pytest.fixture
def owner(database_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def app(database_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(database_url, role="clearing_app")
    yield engine
    engine.dispose()


@pytest.fixture
def reader(database_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(database_url, role="clearing_reader")
    yield engine
    engine.dispose()


@pytest.fixture
def one_event(app: sa.Engine) -> None:
    with app.begin() as conn:
        conn.execute(tables.events.insert(), [_event_row(1, "D-1")])


def _refused(engine: sa.Engine, statement: str) -> BaseException:
    with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
        conn.execute(sa.text(statement))
    cause = caught.value.orig
    assert cause is not None
    return cause


MUTATIONS = [
    "UPDATE events SET type = 'forged' WHERE position = 1",
    "DELETE FROM events WHERE position = 1",
    "TRUNCATE events",
]


def test_connections_of_a_role_engine_run_as_that_role(app: sa.Engine) -> None:
    with app.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == "clearing_app"
        conn.rollback()
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == "clearing_app"


def test_application_role_appends_and_reads_events(app: sa.Engine, one_event: None) -> None:
    with app.begin() as conn:
        conn.execute(tables.events.insert(), [_event_row(2, "D-2")])
        keys = conn.execute(sa.select(tables.events.c.idempotency_key).order_by(tables.events.c.position)).scalars()
        assert list(keys) == ["D-1", "D-2"]


@pytest.mark.parametrize("statement", MUTATIONS, ids=["update", "delete", "truncate"])
def test_application_role_may_not_change_or_remove_events(app: sa.Engine, one_event: None, statement: str) -> None:
    cause = _refused(app, statement)
    assert isinstance(cause, psycopg.errors.InsufficientPrivilege)
    assert "permission denied for table events" in str(cause)


@pytest.mark.parametrize("statement", MUTATIONS, ids=["update", "delete", "truncate"])
def test_owner_may_not_change_or_remove_events(owner: sa.Engine, one_event: None, statement: str) -> None:
    cause = _refused(owner, statement)
    assert isinstance(cause, psycopg.errors.RaiseException)
    assert APPEND_ONLY in str(cause)
    with owner.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT type FROM events WHERE position = 1")).scalar_one() == "collateral_deposited"
        )


def test_owner_can_only_tamper_by_disabling_the_trigger_deliberately(owner: sa.Engine, one_event: None) -> None:
    with owner.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events DISABLE TRIGGER events_no_update_delete"))
        conn.execute(sa.text("UPDATE events SET type = 'forged' WHERE position = 1"))
        conn.execute(sa.text("ALTER TABLE events ENABLE TRIGGER events_no_update_delete"))
    with owner.connect() as conn:
        assert conn.execute(sa.text("SELECT type FROM events WHERE position = 1")).scalar_one() == "forged"


def test_application_role_maintains_the_other_tables(app: sa.Engine) -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    with app.begin() as conn:
        conn.execute(
            tables.outbox.insert(),
            [
                {
                    "position": None,
                    "topic": "clearing.dlq",
                    "key": None,
                    "value": {"type": "rejected"},
                    "created_at": now,
                }
            ],
        )
        conn.execute(tables.outbox.update().values(published_at=now))
        conn.execute(
            tables.balances.insert(),
            [{"account_id": "A1", "asset": "USDT", "amount": "1", "as_of_position": 1, "shard": 0}],
        )
        conn.execute(tables.balances.delete())
        conn.execute(
            tables.dead_letters.insert(),
            [
                {
                    "shard": 0,
                    "topic": "clearing.fills",
                    "partition": 0,
                    "offset": 7,
                    "key": b"A1",
                    "raw": b"{",
                    "error": "the message is not valid JSON",
                    "received_at": now,
                }
            ],
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.dead_letters)).scalar_one() == 1


def test_reader_role_reads_but_may_not_insert(reader: sa.Engine, one_event: None) -> None:
    with reader.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.events)).scalar_one() == 1
    with reader.connect() as conn, pytest.raises(DBAPIError) as caught:
        conn.execute(tables.events.insert(), [_event_row(2, "D-2")])
    assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)
    with reader.connect() as conn, pytest.raises(DBAPIError) as caught:
        conn.execute(
            tables.balances.insert(),
            [{"account_id": "A1", "asset": "USDT", "amount": "1", "as_of_position": 1, "shard": 0}],
        )
    assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege)


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    assert head is not None
    return head


def test_migrations_downgrade_to_base_and_upgrade_again(database_url: str, owner: sa.Engine) -> None:
    assert db.current_revision(database_url) == _head_revision()
    db.downgrade(database_url, "base")
    assert db.current_revision(database_url) is None
    with owner.connect() as conn:
        left = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
        functions = conn.execute(
            sa.text("SELECT count(*) FROM pg_proc WHERE proname = 'events_append_only'")
        ).scalar_one()
    assert left == set()
    assert functions == 0
    db.upgrade(database_url)
    assert db.current_revision(database_url) == _head_revision()
    with owner.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) >= set(tables.metadata.tables)
    cause = _refused(owner, "TRUNCATE events")
    assert APPEND_ONLY in str(cause)


def test_migrated_schema_matches_the_table_definitions(owner: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with owner.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, tables.metadata)
    assert differences == []
