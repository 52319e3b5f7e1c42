"""Shared fixtures: a real PostgreSQL and a real Kafka-compatible broker.

By default both are embedded and private to the test session (a fresh machine passes with no
setup). Point the tests at other servers with:

- ``CLEARING_TEST_DATABASE_URL``: a PostgreSQL server the tests may create and drop databases on,
  e.g. ``postgresql://postgres@127.0.0.1:5432/postgres`` (trust auth, or a password in the URL);
- ``CLEARING_TEST_KAFKA_BOOTSTRAP``: a Kafka cluster, e.g. ``127.0.0.1:9092``.

Fixtures:
- ``pg_server`` (session): a :class:`PgServer`, the server itself;
- ``database_url`` (function): SQLAlchemy URL of a fresh database migrated with ``upgrade head``,
  dropped afterwards;
- ``broker`` (session): bootstrap string ``host:port`` of the broker;
- ``topic_prefix`` (function): a prefix no other test uses, e.g. ``t1a2b3c4d.``;
- ``clearing_settings`` (function): ``Settings`` combining the three above.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

if TYPE_CHECKING:
    from clearing.settings import Settings

TEST_DATABASE_URL_ENV = "CLEARING_TEST_DATABASE_URL"
TEST_KAFKA_BOOTSTRAP_ENV = "CLEARING_TEST_KAFKA_BOOTSTRAP"


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests may create databases on."""

    admin_url: sa.URL  # SQLAlchemy URL (psycopg) of its maintenance database
    embedded: bool

    def url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3) of ``database`` on this server."""
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def libpq_url(self, database: str | None = None) -> str:
        """libpq URL (for psycopg.connect) of ``database``, the maintenance database by default."""
        url = self.admin_url if database is None else self.admin_url.set(database=database)
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.libpq_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        # FORCE: a test that forgot to dispose an engine must not leave the database behind.
        with psycopg.connect(self.libpq_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL: ``CLEARING_TEST_DATABASE_URL`` if set, else an embedded server in
    a temporary folder, deleted at the end of the session."""
    from clearing.store.db import normalise_url

    configured = os.environ.get(TEST_DATABASE_URL_ENV)
    if configured:
        yield PgServer(admin_url=sa.engine.make_url(normalise_url(configured)), embedded=False)
        return

    from clearing.embedded import server_socket_dir, socket_url, start_postgres_server

    # A short path: the server's Unix socket lives in its data folder (108-byte limit).
    parent = Path(tempfile.mkdtemp(prefix="clearing-pg-"))
    server = start_postgres_server(parent / "data", cleanup_mode="delete")
    try:
        url = socket_url(server_socket_dir(server), "postgres")
        yield PgServer(admin_url=sa.engine.make_url(url), embedded=True)
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database built by ``alembic upgrade head``; dropped after the test."""
    from clearing.store.db import upgrade

    name = f"clearing_test_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap ``host:port`` of the session's broker: ``CLEARING_TEST_KAFKA_BOOTSTRAP`` if set,
    else a tansu broker on a free loopback port, killed at the end of the session."""
    configured = os.environ.get(TEST_KAFKA_BOOTSTRAP_ENV)
    if configured:
        yield configured
        return

    from clearing.embedded import launch_broker, stop_broker

    broker_dir = Path(tempfile.mkdtemp(prefix="clearing-broker-"))
    process = launch_broker(broker_dir)
    try:
        yield process.bootstrap
    finally:
        stop_broker(broker_dir)
        shutil.rmtree(broker_dir, ignore_errors=True)


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix unique to this test, so tests sharing one broker never see each other's
    topics (e.g. ``t1a2b3c4d.`` gives ``t1a2b3c4d.fills``)."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def clearing_settings(database_url: str, broker: str, topic_prefix: str, tmp_path: Path) -> Settings:
    """Settings pointing at this test's database, the session's broker and a unique topic prefix
    (``home`` is the test's temporary folder, so nothing embedded is started from it)."""
    from pydantic import SecretStr

    from clearing.settings import Settings

    return Settings(
        database_url=SecretStr(database_url),
        kafka_bootstrap=broker,
        topic_prefix=topic_prefix,
        home=tmp_path / "home",
    )
