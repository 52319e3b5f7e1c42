"""Read-side queries over the projections, shared by the CLI and the back-office API (one owner
of each query). Every list has a LIMIT; decimals come back as ``Decimal``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from clearing.domain.numbers import to_wire

LIST_ROWS_MAX = 1_000


def _wire(value: Any) -> Any:
    if isinstance(value, Decimal):
        return to_wire(value)
    return value


def log_head(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT coalesce(max(position), 0) FROM events")).scalar_one())


def account_view(conn: sa.Connection, account_id: str) -> dict[str, Any] | None:
    """Balances, positions, margin state and open margin calls of one account as the projections
    hold them, with the log position they are as of. None when the ledger never saw the account."""
    balances = conn.execute(
        sa.text("SELECT asset, amount, as_of_position FROM balances WHERE account_id = :a ORDER BY asset"),
        {"a": account_id},
    ).all()
    positions = conn.execute(
        sa.text(
            "SELECT instrument, margin_mode, quantity, entry_price, cost, realised_pnl, isolated_margin, funding_paid, "
            "as_of_position FROM positions WHERE account_id = :a ORDER BY instrument, margin_mode"
        ),
        {"a": account_id},
    ).all()
    margin = conn.execute(
        sa.text(
            "SELECT scope, equity, initial_margin, maintenance_margin, margin_ratio, status, as_of_position "
            "FROM margin_state WHERE account_id = :a ORDER BY scope"
        ),
        {"a": account_id},
    ).all()
    calls = conn.execute(
        sa.text(
            "SELECT margin_call_id, scope, level, status, deadline, issued_position, last_position FROM margin_calls "
            "WHERE account_id = :a AND status = 'open' ORDER BY issued_position LIMIT :limit"
        ),
        {"a": account_id, "limit": LIST_ROWS_MAX},
    ).all()
    if not balances and not positions and not margin:
        return None
    as_of = max([row.as_of_position for row in (*balances, *positions, *margin)], default=0)
    view: dict[str, Any] = {
        "account_id": account_id,
        "as_of_position": as_of,
        "balances": {row.asset: _wire(row.amount) for row in balances},
        "positions": [
            {
                "instrument": row.instrument,
                "margin_mode": row.margin_mode,
                "quantity": _wire(row.quantity),
                "entry_price": _wire(row.entry_price),
                "cost": _wire(row.cost),
                "realised_pnl": _wire(row.realised_pnl),
                "isolated_margin": _wire(row.isolated_margin),
                "funding_paid": _wire(row.funding_paid),
            }
            for row in positions
        ],
        "margin": {
            row.scope: {
                "equity": _wire(row.equity),
                "initial_margin": _wire(row.initial_margin),
                "maintenance_margin": _wire(row.maintenance_margin),
                "margin_ratio": _wire(row.margin_ratio),
                "status": row.status,
            }
            for row in margin
        },
        "open_margin_calls": [
            {
                "margin_call_id": row.margin_call_id,
                "scope": row.scope,
                "level": row.level,
                "deadline": row.deadline.isoformat() if row.deadline is not None else None,
                "issued_position": row.issued_position,
            }
            for row in calls
        ],
    }
    cross = view["margin"].get("cross")
    if cross is not None:
        view.update({name: cross[name] for name in ("equity", "initial_margin", "maintenance_margin", "margin_ratio")})
        view["status"] = cross["status"]
    return view


def summary(conn: sa.Connection) -> dict[str, Any]:
    """Counts for the demo and the dashboards."""
    by_type = conn.execute(sa.text("SELECT type, count(*) FROM events GROUP BY type ORDER BY count(*) DESC")).all()
    dead = conn.execute(
        sa.text("SELECT error, count(*) AS n FROM dead_letters GROUP BY error ORDER BY n DESC LIMIT 10")
    ).all()
    accounts = conn.execute(
        sa.text("SELECT count(DISTINCT account_id) FROM balances WHERE account_id NOT LIKE 'system:%'")
    ).scalar_one()
    open_positions = conn.execute(sa.text("SELECT count(*) FROM positions WHERE quantity <> 0")).scalar_one()
    return {
        "log_position": log_head(conn),
        "events_by_type": {row[0]: int(row[1]) for row in by_type},
        "dead_letters": {row[0]: int(row[1]) for row in dead},
        "dead_letters_total": int(conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one()),
        "accounts": int(accounts),
        "open_positions": int(open_positions),
        "outbox_unpublished": int(
            conn.execute(sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar_one()
        ),
    }
