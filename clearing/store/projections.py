"""Projection rows written in the batch's transaction: the state of every account and mark the
batch touched, each row stamped with the log position it is as of.

The rows come from the in-memory state, so they equal a fold of the log up to ``as_of`` by
construction; ``audit verify`` and ``projections rebuild`` check exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from clearing.domain.state import LedgerState

_UPSERT_BALANCE = sa.text(
    "INSERT INTO {table} (account_id, asset, amount, as_of_position) VALUES (:account_id, :asset, :amount, :as_of) "
    "ON CONFLICT (account_id, asset) DO UPDATE SET amount = excluded.amount, as_of_position = excluded.as_of_position"
)


def balance_rows(state: LedgerState, accounts: Iterable[str], as_of: int) -> list[dict[str, Any]]:
    rows = []
    for account_id in sorted(accounts):
        account = state.accounts.get(account_id)
        if account is None:
            continue
        for asset, amount in sorted(account.balances.items()):
            rows.append({"account_id": account_id, "asset": asset, "amount": amount, "as_of": as_of})
    return rows


def position_rows(state: LedgerState, accounts: Iterable[str], as_of: int) -> list[dict[str, Any]]:
    rows = []
    specs = state.parameters.instruments_by_symbol
    for account_id in sorted(accounts):
        account = state.accounts.get(account_id)
        if account is None:
            continue
        for (instrument, mode), position in sorted(account.positions.items()):
            spec = specs.get(instrument)
            entry = position.entry_price(spec.contract_size) if spec is not None else None
            rows.append(
                {
                    "account_id": account_id,
                    "instrument": instrument,
                    "margin_mode": mode,
                    "quantity": position.quantity,
                    "cost": position.cost,
                    "entry_price": entry,
                    "realised_pnl": position.realised_pnl,
                    "isolated_margin": position.isolated_margin,
                    "funding_paid": position.funding_paid,
                    "as_of": as_of,
                }
            )
    return rows


def mark_rows(state: LedgerState, symbols: Iterable[str], as_of: int) -> list[dict[str, Any]]:
    rows = []
    for symbol in sorted(symbols):
        mark = state.marks.get(symbol)
        if mark is not None:
            rows.append(
                {"symbol": symbol, "price": mark.price, "iv": mark.iv, "occurred_at": mark.occurred_at, "as_of": as_of}
            )
    return rows


def write(
    conn: sa.Connection,
    state: LedgerState,
    accounts: Iterable[str],
    symbols: Iterable[str],
    as_of: int,
    *,
    suffix: str = "",
) -> None:
    """Upsert the rows of the given accounts and marks into the projection tables (``suffix``
    names the shadow tables of a rebuild)."""
    accounts = list(accounts)
    balances = balance_rows(state, accounts, as_of)
    if balances:
        conn.execute(sa.text(_UPSERT_BALANCE.text.format(table="balances" + suffix)), balances)
    positions = position_rows(state, accounts, as_of)
    if positions:
        conn.execute(
            sa.text(
                f"INSERT INTO positions{suffix} (account_id, instrument, margin_mode, quantity, cost, entry_price, "
                "realised_pnl, isolated_margin, funding_paid, as_of_position) VALUES (:account_id, :instrument, "
                ":margin_mode, :quantity, :cost, :entry_price, :realised_pnl, :isolated_margin, :funding_paid, :as_of) "
                "ON CONFLICT (account_id, instrument, margin_mode) DO UPDATE SET quantity = excluded.quantity, "
                "cost = excluded.cost, entry_price = excluded.entry_price, realised_pnl = excluded.realised_pnl, "
                "isolated_margin = excluded.isolated_margin, funding_paid = excluded.funding_paid, "
                "as_of_position = excluded.as_of_position"
            ),
            positions,
        )
    marks = mark_rows(state, symbols, as_of)
    if marks:
        conn.execute(
            sa.text(
                f"INSERT INTO marks{suffix} (symbol, price, iv, occurred_at, as_of_position) "
                "VALUES (:symbol, :price, :iv, :occurred_at, :as_of) ON CONFLICT (symbol) DO UPDATE SET "
                "price = excluded.price, iv = excluded.iv, occurred_at = excluded.occurred_at, "
                "as_of_position = excluded.as_of_position"
            ),
            marks,
        )
