"""Balances are kept per shard: each shard holds its own system accounts.

Revision ID: 2026_12_07_0002
Revises: 2026_12_07_0001
Create Date: 2026-12-07

Every shard's state has its own ``system:fees``, ``system:insurance-fund`` and
``system:funding-pool``; keyed by account and asset, their rows were overwritten by whichever shard
wrote last. The key is now (account_id, asset, shard). An ordinary account lives in one shard and
keeps one row per asset.

Existing rows get the shard of the batch that wrote them (the shard of the event at their
``as_of_position``). A system account's rows of the other shards were lost to the overwrite:
``clearing projections rebuild`` writes them again (each shard's next batch that touches them does
too).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_12_07_0002"
down_revision: str | Sequence[str] | None = "2026_12_07_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("balances", sa.Column("shard", sa.SmallInteger, nullable=False, server_default="0"))
    op.execute(
        "UPDATE balances b SET shard = e.shard FROM events e WHERE e.position = b.as_of_position AND e.shard <> 0"
    )
    op.alter_column("balances", "shard", server_default=None)
    op.drop_constraint("pk_balances", "balances", type_="primary")
    op.create_primary_key("pk_balances", "balances", ["account_id", "asset", "shard"])


def downgrade() -> None:
    # Back to one row per account and asset: of a system account's rows, the latest written stays.
    op.execute(
        "DELETE FROM balances b USING balances newer WHERE newer.account_id = b.account_id "
        "AND newer.asset = b.asset AND (newer.as_of_position, newer.shard) > (b.as_of_position, b.shard)"
    )
    op.drop_constraint("pk_balances", "balances", type_="primary")
    op.create_primary_key("pk_balances", "balances", ["account_id", "asset"])
    op.drop_column("balances", "shard")
