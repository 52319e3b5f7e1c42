"""Engines and migrations (no business rules).

``make_engine(url, role="clearing_app")`` gives connections that have ``SET ROLE clearing_app``
before anyone uses them, so the log's privileges (INSERT and SELECT only) bind the application even
when it logs in as the schema owner. Migrations run as the login user, never under the role.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from clearing.store.jsontext import load_json

log = logging.getLogger(__name__)

# Where the Alembic environment and revisions live: the top-level ``migrations`` package.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def _migrations_dir() -> Path:
    """The ``migrations`` package directory, wherever the package is installed."""
    try:
        import migrations
    except ImportError:  # running from a source tree without the package on sys.path
        return MIGRATIONS_DIR
    files = getattr(migrations, "__file__", None)
    return Path(files).resolve().parent if files else MIGRATIONS_DIR


def normalise_url(url: str) -> str:
    """Use the psycopg 3 driver for plain ``postgresql://`` / ``postgres://`` URLs."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, role: str | None = None, **kw: Any) -> sa.Engine:
    """A SQLAlchemy engine on the psycopg 3 driver. With ``role``, every new connection runs
    ``SET ROLE <role>`` (quoted as an identifier) before it is handed out; ``kw`` goes to
    ``sqlalchemy.create_engine``."""
    engine = sa.create_engine(normalise_url(url), **kw)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        from psycopg.types.json import set_json_loads

        set_json_loads(load_json, dbapi_connection)
        # Sessions in UTC, the ledger's one time zone: SQL that cuts time (a day's bucket) cuts it
        # the same whatever the server's setting, and psycopg loads timestamps with
        # ``datetime.UTC`` rather than a ZoneInfo such as the Etc/UTC of Debian's and the
        # embedded server, which cost a time-zone lookup per value loaded and per
        # ``format_time`` (a fifth of the hash chain check's time). Committed, as SET ROLE below.
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.commit()

    if role is not None:
        if not role:
            raise ValueError("role must be a non-empty role name or None")

        @event.listens_for(engine, "connect")
        def _set_role(dbapi_connection: Any, _record: Any) -> None:
            from psycopg import sql

            # The statement runs in the connection's first transaction; commit it so that a later
            # ROLLBACK of the caller's work does not undo the SET ROLE.
            with dbapi_connection.cursor() as cursor:
                cursor.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            dbapi_connection.commit()

    return engine


def alembic_config(url: str | None = None, *, connection: sa.Connection | None = None) -> Any:
    """An Alembic ``Config`` built in code: script location is the ``migrations`` package; the
    database is ``url`` or ``connection`` (else settings / embedded services, see env.py)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_migrations_dir()))
    if url is not None:
        config.attributes["url"] = normalise_url(url)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (``alembic upgrade head``)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
    log.info("database upgraded to %s", revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Undo migrations down to ``revision`` (``alembic downgrade base`` by default)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)
    log.info("database downgraded to %s", revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at, None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
