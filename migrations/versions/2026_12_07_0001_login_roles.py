"""The ledger and the readers log in as their own roles.

Revision ID: 2026_12_07_0001
Revises: 2026_11_23_0001
Create Date: 2026-12-07

Until this revision the ledger and the API logged in as the schema owner and ran ``SET ROLE``;
any SQL on such a connection could ``RESET ROLE`` and have the owner's rights back. From here
``clearing_app`` (the ledger) and ``clearing_reader`` (the API, ``account show``, reports) are
LOGIN roles, and the processes log in as them: their session user is the role itself, which holds
no membership in the owner, so there is nothing to reset to.

How a role authenticates is the deployment's choice (pg_hba.conf): a password, which ``clearing
db upgrade`` sets from ``CLEARING_DATABASE_ROLE_PASSWORD`` / ``CLEARING_READER_ROLE_PASSWORD``;
peer or certificate authentication; or, on the embedded server, trust on its Unix socket.

Neither role may create tables, so neither can build or swap in the projections' shadow tables,
which only the owner does (``projections rebuild``). PostgreSQL 15 and later give PUBLIC no
CREATE on the public schema; an older server does, and the revision warns with the statements an
administrator runs to close it (they touch every user of the schema, so they are not run here).
Both roles may read ``alembic_version``: a ledger that logs in as its own role does not migrate,
it checks that the schema is the one its code expects (``clearing.store.db.prepare_schema``).

Roles are cluster-wide: the ledger of another database on the same server may be logging in as
them, so downgrade leaves them as they are.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "2026_12_07_0001"
down_revision: str | Sequence[str] | None = "2026_11_23_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "clearing_app"
READER_ROLE = "clearing_reader"
ROLES = (APP_ROLE, READER_ROLE)


def _allow_login(role: str) -> None:
    # Roles are shared by every database on the server: tests migrate many databases at once, and
    # two sessions altering the same role row at the same instant fail with "tuple concurrently
    # updated" (internal_error). The other session was doing the same thing: look again.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF (SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}') IS NOT TRUE THEN
                ALTER ROLE {role} LOGIN;
            END IF;
        EXCEPTION WHEN internal_error THEN
            IF (SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}') IS NOT TRUE THEN
                RAISE;
            END IF;
        END
        $$
        """
    )


def upgrade() -> None:
    for role in ROLES:
        _allow_login(role)
    op.execute(f"GRANT SELECT ON alembic_version TO {APP_ROLE}, {READER_ROLE}")
    op.execute(
        f"""
        DO $$
        BEGIN
            IF has_schema_privilege('{APP_ROLE}', current_schema(), 'CREATE')
                    OR has_schema_privilege('{READER_ROLE}', current_schema(), 'CREATE') THEN
                RAISE WARNING 'the roles {APP_ROLE} and {READER_ROLE} may create tables in schema %', current_schema()
                    USING HINT = format('as the schema''s owner run: REVOKE CREATE ON SCHEMA %I FROM PUBLIC; '
                                        'GRANT CREATE ON SCHEMA %I TO %I', current_schema(), current_schema(),
                                        current_user);
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    # The roles' LOGIN is the server's (see the docstring); only this database's grant is undone.
    op.execute(f"REVOKE SELECT ON alembic_version FROM {APP_ROLE}, {READER_ROLE}")
