"""Least privilege: the ledger and the readers log in as their own roles, so no SQL they run can
take the owner's rights back, and only the owner may rebuild the projections.

Before the login-roles revision both logged in as the owner and ran ``SET ROLE``: as
``clearing_reader``, ``RESET ROLE; UPDATE balances ...`` succeeded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.exc import DBAPIError

from clearing.api.app import make_reader_engine
from clearing.audit.rebuild import TABLES as PROJECTION_TABLES
from clearing.audit.rebuild import RebuildRefused, rebuild
from clearing.settings import Settings
from clearing.store import db

pytestmark = pytest.mark.integration

ALL_TABLES = (
    "events", "consumer_offsets", "dead_letters", "outbox", "balances", "positions", "marks", "margin_state",
    "margin_calls", "liquidations", "snapshots",
)
CLI_TIMEOUT_S = 120


@pytest.fixture
def owner(database_url: str) -> Iterator[sa.Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def ledger(database_url: str) -> Iterator[sa.Engine]:
    """The ledger's engine, built as ``clearing run`` builds it (consumers/process.py)."""
    settings = Settings(database_url=SecretStr(database_url))
    engine = db.make_engine(database_url, role=settings.database_role, password=settings.database_role_password)
    yield engine
    engine.dispose()


@pytest.fixture
def api_reader(database_url: str) -> Iterator[sa.Engine]:
    """The API's engine, built as ``clearing api`` builds it."""
    engine = make_reader_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded(owner: sa.Engine) -> None:
    with owner.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO balances (account_id, asset, amount, as_of_position, shard) "
                "VALUES ('A1', 'USDT', 10, 1, 0)"
            )
        )


def _owner_name(owner: sa.Engine) -> str:
    with owner.connect() as conn:
        return str(conn.execute(sa.text("SELECT tableowner FROM pg_tables WHERE tablename = 'events'")).scalar_one())


def _refusal(engine: sa.Engine, *statements: str) -> BaseException:
    """Run ``statements`` in one transaction; the last must be refused. Returns the driver's error."""
    with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
        for statement in statements:
            conn.execute(sa.text(statement))
    cause = caught.value.orig
    assert cause is not None
    return cause


@pytest.mark.parametrize("role_engine", ["ledger", "api_reader"])
def test_role_connections_are_the_role_itself_even_after_reset_role(
    role_engine: str, request: pytest.FixtureRequest, owner: sa.Engine
) -> None:
    engine: sa.Engine = request.getfixturevalue(role_engine)
    role = {"ledger": db.APP_ROLE, "api_reader": db.READER_ROLE}[role_engine]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT session_user, current_user")).one() == (role, role)
        conn.execute(sa.text("RESET ROLE"))
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == role
        superuser = conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = session_user")).scalar_one()
        assert superuser is False
    cause = _refusal(engine, f'SET ROLE "{_owner_name(owner)}"')
    assert isinstance(cause, psycopg.errors.InsufficientPrivilege)


def test_the_reader_cannot_become_the_ledger_nor_the_ledger_the_reader(
    ledger: sa.Engine, api_reader: sa.Engine
) -> None:
    assert isinstance(_refusal(api_reader, f"SET ROLE {db.APP_ROLE}"), psycopg.errors.InsufficientPrivilege)
    assert isinstance(_refusal(ledger, f"SET ROLE {db.READER_ROLE}"), psycopg.errors.InsufficientPrivilege)


def test_reset_role_then_update_balances_is_refused_to_the_reader(api_reader: sa.Engine, owner: sa.Engine,
                                                                   seeded: None) -> None:
    # The exploit the issue showed, word for word.
    cause = _refusal(api_reader, "RESET ROLE", "UPDATE balances SET amount = 1000000 WHERE account_id = 'A1'")
    assert isinstance(cause, psycopg.errors.InsufficientPrivilege)
    with owner.connect() as conn:
        assert conn.execute(sa.text("SELECT amount FROM balances WHERE account_id = 'A1'")).scalar_one() == 10


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET type = 'forged'", "DELETE FROM events", "TRUNCATE events"],
    ids=["update", "delete", "truncate"],
)
def test_the_ledger_cannot_change_the_log_even_after_reset_role(ledger: sa.Engine, statement: str) -> None:
    cause = _refusal(ledger, "RESET ROLE", statement)
    assert isinstance(cause, psycopg.errors.InsufficientPrivilege)
    assert "permission denied for table events" in str(cause)


@pytest.mark.parametrize("table", ALL_TABLES)
def test_the_reader_cannot_write_any_table(api_reader: sa.Engine, table: str) -> None:
    for statement in (
        f"INSERT INTO {table} DEFAULT VALUES",
        f"UPDATE {table} SET {_first_column(api_reader, table)} = {_first_column(api_reader, table)}",
        f"DELETE FROM {table}",
        f"TRUNCATE {table}",
    ):
        cause = _refusal(api_reader, statement)
        assert isinstance(cause, psycopg.errors.InsufficientPrivilege), statement
    with api_reader.connect() as conn:
        conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _first_column(engine: sa.Engine, table: str) -> str:
    with engine.connect() as conn:
        return str(sa.inspect(conn).get_columns(table)[0]["name"])


@pytest.mark.parametrize("role_engine", ["ledger", "api_reader"])
def test_neither_role_can_create_tables_or_swap_the_projections(
    role_engine: str, request: pytest.FixtureRequest
) -> None:
    engine: sa.Engine = request.getfixturevalue(role_engine)
    cause = _refusal(engine, "CREATE TABLE balances_rebuild (LIKE balances INCLUDING ALL)")
    assert isinstance(cause, psycopg.errors.InsufficientPrivilege)
    for table in PROJECTION_TABLES:
        cause = _refusal(engine, f"ALTER TABLE {table} RENAME TO {table}_old")
        assert isinstance(cause, psycopg.errors.InsufficientPrivilege), table
        assert "must be owner" in str(cause)


@pytest.mark.parametrize("role_engine", ["ledger", "api_reader"])
def test_rebuild_refuses_any_login_but_the_owner(role_engine: str, request: pytest.FixtureRequest,
                                                  owner: sa.Engine) -> None:
    engine: sa.Engine = request.getfixturevalue(role_engine)
    with pytest.raises(RebuildRefused) as refused:
        rebuild(engine)
    message = str(refused.value)
    assert "must run as the owner of the projection tables" in message
    assert _owner_name(owner) in message
    assert engine.url.username in message


def test_rebuild_as_the_owner_is_allowed(owner: sa.Engine) -> None:
    report = rebuild(owner)
    assert report.swapped


def test_the_rebuild_command_refuses_the_ledgers_login_with_one_sentence(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "CLEARING_DATABASE_URL": db.role_url(database_url, db.APP_ROLE),
        "CLEARING_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "clearing.cli", "projections", "rebuild"],
        env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "projections rebuild must run as the owner of the projection tables" in done.stderr
    assert "Traceback" not in done.stderr


def _parts(url: str) -> tuple[object, ...]:
    parsed = sa.engine.make_url(url)
    return (parsed.drivername, parsed.username, parsed.password, parsed.host, parsed.port, parsed.database,
            dict(parsed.query))


def test_role_url_logs_in_as_the_role_on_the_same_server_and_database() -> None:
    socket = "postgresql+psycopg://postgres@/clearing?host=/tmp/pg"
    assert _parts(db.role_url(socket, "clearing_app")) == (
        "postgresql+psycopg", "clearing_app", None, None, None, "clearing", {"host": "/tmp/pg"}
    )
    owner = "postgresql://owner:owner-secret@db.example:5432/clearing"
    # The owner's password never goes to another role.
    assert _parts(db.role_url(owner, "clearing_app")) == (
        "postgresql+psycopg", "clearing_app", None, "db.example", 5432, "clearing", {}
    )
    assert _parts(db.role_url(owner, "clearing_app", SecretStr("s3cret")))[1:3] == ("clearing_app", "s3cret")
    # A process given its own login keeps its password.
    own = "postgresql://clearing_app:mine@db.example/clearing"
    assert _parts(db.role_url(own, "clearing_app"))[1:3] == ("clearing_app", "mine")


def test_role_passwords_are_set_hashed_and_never_logged(
    database_url: str, owner: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "pw-" + uuid.uuid4().hex
    settings = Settings(database_url=SecretStr(database_url), reader_role_password=SecretStr(secret))
    assert secret not in repr(settings)
    with owner.connect() as conn:
        before = conn.execute(
            sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": db.READER_ROLE}
        ).scalar_one()
    try:
        with caplog.at_level(logging.DEBUG):
            assert db.set_role_passwords(database_url, settings.role_passwords()) == [db.READER_ROLE]
        with owner.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"), {"r": db.READER_ROLE}
            ).scalar_one()
        assert stored.startswith("SCRAM-SHA-256$")
        assert secret not in stored
        assert secret not in caplog.text
    finally:
        # The role is the server's, shared with other test databases: leave it as it was.
        from psycopg import sql

        with owner.begin() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            restored = sql.NULL if before is None else sql.Literal(before)
            raw.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(db.READER_ROLE), restored))


def test_the_ledger_with_the_owners_login_migrates_as_before(pg_server) -> None:  # type: ignore[no-untyped-def]
    name = f"clearing_test_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        db.prepare_schema(url, db.APP_ROLE)
        assert db.current_revision(url) in db.head_revisions()
    finally:
        pg_server.drop_database(name)


def test_the_ledger_with_its_own_login_checks_the_schema_and_does_not_migrate(database_url: str) -> None:
    own_login = db.role_url(database_url, db.APP_ROLE)
    db.prepare_schema(own_login, db.APP_ROLE)  # at the head: nothing to say
    db.downgrade(database_url, "2026_11_23_0001")
    with pytest.raises(db.SchemaNotCurrent, match="run `clearing db upgrade` with the schema owner's login"):
        db.prepare_schema(own_login, db.APP_ROLE)
    assert db.current_revision(database_url) == "2026_11_23_0001"  # untouched
    db.downgrade(database_url, "base")
    with pytest.raises(db.SchemaNotCurrent, match="run `clearing db upgrade` with the schema owner's login"):
        db.prepare_schema(own_login, db.APP_ROLE)


def test_clearing_run_with_the_ledgers_login_on_an_old_schema_says_what_to_do(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db.downgrade(database_url, "base")
    env = {
        **os.environ,
        "CLEARING_DATABASE_URL": db.role_url(database_url, db.APP_ROLE),
        "CLEARING_KAFKA_BOOTSTRAP": "127.0.0.1:1",  # never reached: the schema check comes first
        "CLEARING_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "clearing.cli", "run"],
        env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "run `clearing db upgrade` with the schema owner's login first" in done.stderr
    assert "Traceback" not in done.stderr
