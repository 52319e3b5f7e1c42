"""Event log, consumer offsets, dead letters, outbox, projections, snapshots; roles and the
append-only guard on the log.

Revision ID: 2026_11_23_0001
Revises:
Create Date: 2026-11-23

Immutability is enforced twice, because either alone has a hole:
- privileges: ``clearing_app`` (what the ledger SETs ROLE to) may only SELECT and INSERT on
  ``events``; ``clearing_reader`` may only SELECT anything;
- a trigger refuses UPDATE, DELETE and TRUNCATE on ``events`` for everyone, the owner and
  superusers included. Only a deliberate ``ALTER TABLE events DISABLE TRIGGER`` by the owner gets
  past it (the audit tests do that on purpose to show tampering is detected).
Roles are cluster-wide and may hold privileges in other databases, so downgrade leaves them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

revision: str = "2026_11_23_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "clearing_app"
READER_ROLE = "clearing_reader"
APPEND_ONLY_MESSAGE = "the event log is append-only: corrections are new events"

TABLES = (
    "events",
    "consumer_offsets",
    "dead_letters",
    "outbox",
    "balances",
    "positions",
    "marks",
    "margin_state",
    "margin_calls",
    "liquidations",
    "snapshots",
)
MUTABLE_TABLES = tuple(name for name in TABLES if name != "events")
SEQUENCES = ("dead_letters_id_seq", "outbox_id_seq")

TZ = sa.DateTime(timezone=True)


def _create_tables() -> None:
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("shard", sa.SmallInteger, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("stream_version", sa.BigInteger, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("schema_version", sa.SmallInteger, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("occurred_at", TZ, nullable=False),
        sa.Column("recorded_at", TZ, nullable=False),
        sa.Column("source_topic", sa.Text, nullable=True),
        sa.Column("source_partition", sa.Integer, nullable=True),
        sa.Column("source_offset", sa.BigInteger, nullable=True),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("cause_position", sa.BigInteger, nullable=True),
        sa.Column("prev_hash", BYTEA, nullable=False),
        sa.Column("hash", BYTEA, nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_events"),
        sa.UniqueConstraint("idempotency_key", name="uq_events_idempotency_key"),
        sa.UniqueConstraint("shard", "stream", "stream_version", name="uq_events_shard_stream_stream_version"),
    )
    op.create_index("ix_events_shard_position", "events", ["shard", "position"])
    op.create_index("ix_events_stream_position", "events", ["stream", "position"])
    op.create_index("ix_events_type_position", "events", ["type", "position"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])

    op.create_table(
        "consumer_offsets",
        sa.Column("shard", sa.SmallInteger, autoincrement=False, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("broker_instance", sa.Text, nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("shard", "topic", "partition", name="pk_consumer_offsets"),
    )

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, autoincrement=True, nullable=False),  # BIGSERIAL
        sa.Column("shard", sa.SmallInteger, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("key", BYTEA, nullable=True),
        sa.Column("raw", BYTEA, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=True),
        sa.Column("existing_payload", JSONB, nullable=True),
        sa.Column("received_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.UniqueConstraint(
            "topic", "partition", "offset", "shard", name="uq_dead_letters_topic_partition_offset_shard"
        ),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, autoincrement=True, nullable=False),  # BIGSERIAL
        sa.Column("position", sa.BigInteger, nullable=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=True),
        sa.Column("value", JSONB, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("published_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL"))

    op.create_table(
        "balances",
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("asset", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
        sa.Column("as_of_position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "asset", name="pk_balances"),
    )

    op.create_table(
        "positions",
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("margin_mode", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("cost", sa.Numeric, nullable=False),
        sa.Column("entry_price", sa.Numeric, nullable=True),
        sa.Column("realised_pnl", sa.Numeric, nullable=False),
        sa.Column("isolated_margin", sa.Numeric, nullable=False),
        sa.Column("funding_paid", sa.Numeric, nullable=False),
        sa.Column("as_of_position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "instrument", "margin_mode", name="pk_positions"),
    )

    op.create_table(
        "marks",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("iv", sa.Numeric, nullable=True),
        sa.Column("occurred_at", TZ, nullable=False),
        sa.Column("as_of_position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("symbol", name="pk_marks"),
    )

    op.create_table(
        "margin_state",
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("equity", sa.Numeric, nullable=False),
        sa.Column("initial_margin", sa.Numeric, nullable=False),
        sa.Column("maintenance_margin", sa.Numeric, nullable=False),
        sa.Column("margin_ratio", sa.Numeric, nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("as_of_position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "scope", name="pk_margin_state"),
    )

    op.create_table(
        "margin_calls",
        sa.Column("margin_call_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("level", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("issued_position", sa.BigInteger, nullable=False),
        sa.Column("issued_at", TZ, nullable=False),
        sa.Column("deadline", TZ, nullable=True),
        sa.Column("last_position", sa.BigInteger, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("as_of_position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("margin_call_id", name="pk_margin_calls"),
    )
    op.create_index("ix_margin_calls_account_id_status", "margin_calls", ["account_id", "status"])

    op.create_table(
        "liquidations",
        sa.Column("liquidation_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("instrument", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("filled_quantity", sa.Numeric, nullable=False),
        sa.Column("bankruptcy_price", sa.Numeric, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("issued_position", sa.BigInteger, nullable=False),
        sa.Column("as_of_position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("liquidation_id", name="pk_liquidations"),
    )
    op.create_index("ix_liquidations_account_id", "liquidations", ["account_id"])

    op.create_table(
        "snapshots",
        sa.Column("shard", sa.SmallInteger, autoincrement=False, nullable=False),
        sa.Column("position", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("state", BYTEA, nullable=False),
        sa.PrimaryKeyConstraint("shard", "position", name="pk_snapshots"),
    )


def _create_roles() -> None:
    # Roles are cluster-wide: another database on the server (or a concurrent migration) may
    # already have made them, hence IF NOT EXISTS and the duplicate_object handler.
    for role in (APP_ROLE, READER_ROLE):
        op.execute(
            f"""
            DO $$
            BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                    CREATE ROLE {role} NOLOGIN;
                END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END
            $$
            """
        )
    # The migrating user must be able to SET ROLE clearing_app (a superuser always can). Where it
    # lacks the right to grant that, an administrator does it: say so instead of failing.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT pg_has_role(current_user, '{APP_ROLE}', 'MEMBER') THEN
                EXECUTE format('GRANT {APP_ROLE} TO %I', current_user);
            END IF;
        EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
            RAISE WARNING 'could not grant {APP_ROLE} to %: ask an administrator to run GRANT {APP_ROLE} TO %',
                current_user, current_user;
        END
        $$
        """
    )


def _grant() -> None:
    tables = ", ".join(TABLES)
    mutable = ", ".join(MUTABLE_TABLES)
    sequences = ", ".join(SEQUENCES)
    op.execute(f"REVOKE ALL ON {tables} FROM PUBLIC")
    op.execute("GRANT USAGE ON SCHEMA public TO clearing_app, clearing_reader")
    op.execute("GRANT SELECT, INSERT ON events TO clearing_app")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {mutable} TO clearing_app")
    op.execute(f"GRANT USAGE, SELECT ON SEQUENCE {sequences} TO clearing_app")
    op.execute(f"GRANT SELECT ON {tables} TO clearing_reader")
    op.execute(f"GRANT SELECT ON SEQUENCE {sequences} TO clearing_reader")


def _append_only_guard() -> None:
    op.execute(
        f"""
        CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% on events refused: {APPEND_ONLY_MESSAGE}', TG_OP
                USING HINT = 'append a correcting event instead of changing or removing one';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events "
        "FOR EACH ROW EXECUTE FUNCTION events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION events_append_only()"
    )


def upgrade() -> None:
    _create_tables()
    _create_roles()
    _grant()
    _append_only_guard()


def downgrade() -> None:
    # DROP TABLE is allowed: the trigger guards rows, not the table (and downgrade is an
    # operator's deliberate act on a database being torn down).
    op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
    op.execute("DROP TRIGGER IF EXISTS events_no_update_delete ON events")
    op.execute("DROP FUNCTION IF EXISTS events_append_only()")
    for name in reversed(TABLES):
        op.drop_table(name)
    op.execute("REVOKE ALL ON SCHEMA public FROM clearing_app, clearing_reader")
