"""The database schema as SQLAlchemy Core tables (no business rules).

The Alembic revisions in ``migrations/versions`` are written by hand and are what builds the
schema; these definitions describe the same tables for queries, and a test compares the two.
Constraint and index names come from ``NAMING_CONVENTION`` so that they are stable.

Money, prices, quantities and rates are ``NUMERIC`` (exact decimals, no scale: the domain decides
rounding). Every projection row carries ``as_of_position``, the log position it reflects.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

TZ = sa.DateTime(timezone=True)

# The append-only log. ``position`` is assigned by the single writer (gap-free, so no sequence:
# a rolled-back nextval would leave a hole that a tailing reader could not tell from a late commit).
events = sa.Table(
    "events",
    metadata,
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
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
    sa.UniqueConstraint("idempotency_key"),
    sa.UniqueConstraint("shard", "stream", "stream_version"),
    sa.Index(None, "shard", "position"),
    sa.Index(None, "stream", "position"),
    sa.Index(None, "type", "position"),
    sa.Index(None, "occurred_at"),
)

# Next offset to read per (shard, topic, partition), written in the same transaction as the events
# it produced. ``broker_instance`` names the embedded broker the offset belongs to (None for Kafka).
consumer_offsets = sa.Table(
    "consumer_offsets",
    metadata,
    sa.Column("shard", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("broker_instance", sa.Text, nullable=True),
    sa.Column("updated_at", TZ, nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),  # BIGSERIAL
    sa.Column("shard", sa.SmallInteger, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("key", BYTEA, nullable=True),
    sa.Column("raw", BYTEA, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=True),
    # For a conflicting duplicate: the version already in the log.
    sa.Column("existing_payload", JSONB, nullable=True),
    sa.Column("received_at", TZ, nullable=False),
    sa.UniqueConstraint("topic", "partition", "offset", "shard"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),  # BIGSERIAL
    sa.Column("position", sa.BigInteger, nullable=True),  # NULL for dead letters
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=True),
    sa.Column("value", JSONB, nullable=False),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("published_at", TZ, nullable=True),
    sa.Index("ix_outbox_unpublished", "id", postgresql_where=sa.text("published_at IS NULL")),
)

# ------------------------------------------------------------------------------------------------
# Projections

balances = sa.Table(
    "balances",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("asset", sa.Text, primary_key=True),
    sa.Column("amount", sa.Numeric, nullable=False),
    sa.Column("as_of_position", sa.BigInteger, nullable=False),
    # The shard whose state the row is of: a system account has a row in every shard.
    sa.Column("shard", sa.SmallInteger, primary_key=True, autoincrement=False),
)

positions = sa.Table(
    "positions",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("instrument", sa.Text, primary_key=True),
    sa.Column("margin_mode", sa.Text, primary_key=True),
    sa.Column("quantity", sa.Numeric, nullable=False),
    sa.Column("cost", sa.Numeric, nullable=False),
    sa.Column("entry_price", sa.Numeric, nullable=True),
    sa.Column("realised_pnl", sa.Numeric, nullable=False),
    sa.Column("isolated_margin", sa.Numeric, nullable=False),
    sa.Column("funding_paid", sa.Numeric, nullable=False),
    sa.Column("as_of_position", sa.BigInteger, nullable=False),
)

marks = sa.Table(
    "marks",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("price", sa.Numeric, nullable=False),
    sa.Column("iv", sa.Numeric, nullable=True),
    sa.Column("occurred_at", TZ, nullable=False),
    sa.Column("as_of_position", sa.BigInteger, nullable=False),
)

margin_state = sa.Table(
    "margin_state",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("scope", sa.Text, primary_key=True),  # "cross" or "isolated:<instrument>"
    sa.Column("equity", sa.Numeric, nullable=False),
    sa.Column("initial_margin", sa.Numeric, nullable=False),
    sa.Column("maintenance_margin", sa.Numeric, nullable=False),
    sa.Column("margin_ratio", sa.Numeric, nullable=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("as_of_position", sa.BigInteger, nullable=False),
    # The scope's margin model; NULL on rows written before margin models (all standard).
    sa.Column("margin_model", sa.Text, nullable=True),
    # Per underlying of the scope's open positions: the multiplier in force and, on a portfolio
    # grid, its requirement and worst cell (migration 2026_12_08_0001); NULL without positions.
    sa.Column("underlyings", JSONB, nullable=True),
)

margin_calls = sa.Table(
    "margin_calls",
    metadata,
    sa.Column("margin_call_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("level", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # open | resolved | liquidated | bankrupt
    sa.Column("issued_position", sa.BigInteger, nullable=False),
    sa.Column("issued_at", TZ, nullable=False),
    sa.Column("deadline", TZ, nullable=True),
    sa.Column("last_position", sa.BigInteger, nullable=False),
    sa.Column("payload", JSONB, nullable=False),  # the latest decision's payload
    sa.Column("as_of_position", sa.BigInteger, nullable=False),
    sa.Index(None, "account_id", "status"),
)

liquidations = sa.Table(
    "liquidations",
    metadata,
    sa.Column("liquidation_id", sa.Text, primary_key=True),
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
    sa.Index(None, "account_id"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("shard", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("state", BYTEA, nullable=False),  # ``position`` is the log position it is as of
)

PROJECTION_TABLES = (balances, positions, marks, margin_state, margin_calls, liquidations)
