"""Alembic environment: the database URL comes from the caller or from settings, never from an ini.

Order: ``config.attributes["url"]`` (set by ``clearing.store.db.upgrade``), then the
``-x url=...`` command-line argument, then ``CLEARING_DATABASE_URL`` or the embedded PostgreSQL
under ``CLEARING_HOME`` (started if needed). ``config.attributes["connection"]`` may instead hold an
open SQLAlchemy connection to run in.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context

from clearing.store.tables import metadata

log = logging.getLogger("clearing.migrations")

config = context.config
target_metadata = metadata


def _database_url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return str(url)
    from clearing.embedded import ensure_services
    from clearing.settings import get_settings

    return ensure_services(get_settings(), need_broker=False).database_url


def _configure_and_run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to standard output instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    engine = sa.create_engine(_database_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            _configure_and_run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
