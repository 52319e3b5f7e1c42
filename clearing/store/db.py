"""Engines and migrations (no business rules).

``make_engine(url, role="clearing_app")`` gives connections that have ``SET ROLE clearing_app``
before anyone uses them, so the log's privileges (INSERT and SELECT only) bind the application even
when it logs in as the schema owner. Migrations run as the login user, never under the role.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event

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


# A run of this many digits may be an integer beyond 64 bits (2**63 has 19 digits). Found by mapping
# every digit to "0" and looking for a run of zeros: two passes in C over the bytes, a quarter of
# the time of a regular expression's search for ``[0-9]{19}`` on the log's payloads.
_LONG_DIGITS_RUN = b"0" * 19
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"0" * 9)


def load_json(data: bytes | bytearray | memoryview | str) -> Any:
    """JSONB as Python values. orjson, because a replay reads every payload of the log and the
    standard library's parser was a fifth of its time; payloads hold strings (decimals), integers
    and nested objects, which both parsers read alike, so the hash chain's canonical bytes of a
    payload read back do not change. Except for integers beyond 64 bits, which orjson reads as
    floats: a document with a run of 19 or more digits (in a string or not) is read by the
    standard library, which keeps every integer exact."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _LONG_DIGITS_RUN in raw.translate(_DIGITS_TO_ZERO):
        return json.loads(raw)
    return orjson.loads(raw)


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
