"""Engines, migrations and the database roles' passwords (no business rules).

``make_engine(url, role="clearing_app")`` logs in *as* ``clearing_app`` on the server and database
of ``url``: the session user is the role itself, so no SQL on the connection can ``RESET ROLE``
into the rights of whoever owns the schema (it used to log in as the owner and ``SET ROLE``, and
``RESET ROLE`` undid that). Migrations and ``projections rebuild`` run as the login user of
``url``, the owner.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy import event

from clearing.store.jsontext import load_json

log = logging.getLogger(__name__)

# The roles the first revision creates and the login-roles revision lets log in.
APP_ROLE = "clearing_app"  # the ledger: SELECT and INSERT on the log, maintains the other tables
READER_ROLE = "clearing_reader"  # the API and reports: SELECT only
# How ``set_role_passwords`` hashes a password before it leaves the process (as psql's \password).
PASSWORD_ALGORITHM = b"scram-sha-256"

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


def role_url(url: str, role: str, password: SecretStr | str | None = None) -> str:
    """``url`` with ``role`` as its user: the same server, database and options. The password is
    ``password`` when given; else the URL's own when its user already is ``role`` (a process given
    its own URL); else none (peer, certificate or trust authentication)."""
    parsed = sa.engine.make_url(normalise_url(url))
    if isinstance(password, SecretStr):
        password = password.get_secret_value()
    if password is None and parsed.username == role:
        password = None if parsed.password is None else str(parsed.password)
    return parsed._replace(username=role, password=password).render_as_string(hide_password=False)


def make_engine(url: str, *, role: str | None = None, password: SecretStr | str | None = None, **kw: Any) -> sa.Engine:
    """A SQLAlchemy engine on the psycopg 3 driver. With ``role``, it logs in as that role
    (:func:`role_url`; ``password`` is the role's); ``kw`` goes to ``sqlalchemy.create_engine``."""
    if role is not None:
        if not role:
            raise ValueError("role must be a non-empty role name or None")
        url = role_url(url, role, password)
    elif password is not None:
        raise ValueError("a password is given only with the role it belongs to")
    engine = sa.create_engine(normalise_url(url), **kw)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        from psycopg.types.json import set_json_loads

        set_json_loads(load_json, dbapi_connection)
        # Sessions in UTC, the ledger's one time zone: SQL that cuts time (a day's bucket) cuts it
        # the same whatever the server's setting, and psycopg loads timestamps with
        # ``datetime.UTC`` rather than a ZoneInfo such as the Etc/UTC of Debian's and the
        # embedded server, which cost a time-zone lookup per value loaded and per
        # ``format_time`` (a fifth of the hash chain check's time). Committed, so that a later
        # ROLLBACK of the caller's work does not undo it.
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.commit()

    return engine


def set_role_passwords(url: str, passwords: Mapping[str, SecretStr]) -> list[str]:
    """Give each role its password (``ALTER ROLE ... PASSWORD``), connected as ``url``'s user (the
    owner, with the right to alter the roles). The password is hashed here (SCRAM-SHA-256), so
    neither the statement nor the server's log ever holds it in clear. Returns the roles set."""
    if not passwords:
        return []
    from psycopg import sql

    engine = make_engine(url, poolclass=sa.pool.NullPool)
    done: list[str] = []
    try:
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            if raw is None:
                raise RuntimeError("no database connection to set the roles' passwords on")
            for role, secret in passwords.items():
                verifier = raw.pgconn.encrypt_password(
                    secret.get_secret_value().encode("utf-8"), role.encode("utf-8"), PASSWORD_ALGORITHM
                )
                with raw.cursor() as cursor:
                    cursor.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                            sql.Identifier(role), sql.Literal(verifier.decode("ascii"))
                        )
                    )
                done.append(role)
    finally:
        engine.dispose()
    for role in done:
        log.info("set the password of role %s", role)
    return done


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


class SchemaNotCurrent(RuntimeError):
    """The database's schema is not the one this code needs, and this login may not migrate it."""


def head_revisions() -> set[str]:
    """The revisions the code's migrations end at (one, unless branches are waiting for a merge)."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def prepare_schema(url: str, role: str, password: SecretStr | None = None) -> None:
    """Before the ledger starts: with the owner's login (``url``'s user is not ``role``: the
    embedded server, a single-login deployment), apply the migrations as ever. With the role's own
    login (a least-privilege deployment), which may not migrate, check the schema is at the head
    and raise :class:`SchemaNotCurrent` saying what to run otherwise."""
    if sa.engine.make_url(normalise_url(url)).username != role:
        upgrade(url)
        return
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, role=role, password=password, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except sa.exc.ProgrammingError as error:  # alembic_version is readable by the role from 2026_12_07_0001
        raise SchemaNotCurrent(
            f"{role} may not read the schema's revision, so the schema predates the login roles: run `clearing db "
            f"upgrade` with the schema owner's login first"
        ) from error
    finally:
        engine.dispose()
    wanted = head_revisions()
    if current != wanted:
        found = ", ".join(sorted(current)) or "no revision (an empty database)"
        raise SchemaNotCurrent(
            f"the database is at {found} but this clearing needs {', '.join(sorted(wanted))}, and {role} may not "
            f"migrate it: run `clearing db upgrade` with the schema owner's login first"
        )


def current_revision(url: str) -> str | None:
    """The revision the database is at, None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
