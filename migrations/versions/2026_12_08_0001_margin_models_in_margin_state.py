"""Margin state names the scope's margin model and, per underlying it holds, dynamic margin's
multiplier in force and (portfolio scopes) the grid's requirement and worst cell.

Revision ID: 2026_12_08_0001
Revises: 2026_12_07_0002
Create Date: 2026-12-08

Issue 24 (CONTRACT v2 "Margin models", "Portfolio margin", "Dynamic margin"): ``account show`` and
the API carry the account's model, the worst cell of each underlying of a portfolio scope and the
multiplier in force per underlying. Both columns are added without a default and stay NULL on the
rows written before: those rows are of the standard model (every account was, before margin-model
requests), and a reader says so for NULL; the next batch that writes a row fills them, and
``clearing projections rebuild`` fills every row.

* ``margin_model``: the model that margins the scope (the account's for its cross scope,
  ``standard`` for an isolated position).
* ``underlyings``: a JSON array, one object per underlying of the scope's open positions, sorted:
  ``{"underlying", "multiplier"}`` and, for an underlying the portfolio model margins on its grid,
  ``"initial_margin"``, ``"maintenance_margin"`` and ``"worst_cell"`` (``{"move", "volatility"}``,
  with ``"extreme": true`` for an extreme cell). NULL when the scope holds no open position.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "2026_12_08_0001"
down_revision: str | Sequence[str] | None = "2026_12_07_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("margin_state", sa.Column("margin_model", sa.Text, nullable=True))
    op.add_column("margin_state", sa.Column("underlyings", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("margin_state", "underlyings")
    op.drop_column("margin_state", "margin_model")
