"""Projection rows written in the batch's transaction: the state of every account and mark the
batch touched, each row stamped with the log position it is as of.

The rows come from the in-memory state, so they equal a fold of the log up to ``as_of`` by
construction; ``audit verify`` and ``projections rebuild`` check exactly that.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from clearing.domain import events as ev
from clearing.domain import models
from clearing.domain.marginmodel import ScopeRisk
from clearing.domain.numbers import to_wire
from clearing.domain.scenarios import cell_wire
from clearing.domain.state import LedgerState
from clearing.store import copytext
from clearing.store.jsontext import canonical_json

BALANCE_KEY = ("account_id", "asset", "shard")  # system accounts have a row per shard
BALANCE_COLUMNS = ("amount",)
POSITION_KEY = ("account_id", "instrument", "margin_mode")
POSITION_COLUMNS = ("quantity", "cost", "entry_price", "realised_pnl", "isolated_margin", "funding_paid")
MARGIN_KEY = ("account_id", "scope")
MARGIN_COLUMNS = (
    "equity", "initial_margin", "maintenance_margin", "margin_ratio", "status", "margin_model", "underlyings",
)  # fmt: skip


def upsert(
    conn: sa.Connection,
    table: str,
    key: tuple[str, ...],
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
    *,
    deferred: dict[str, str] | None = None,
) -> None:
    """Insert or update ``rows`` (dicts with the key, the columns and ``as_of``) in ``table``.

    Why COPY into a staging table and one INSERT ... SELECT ... ON CONFLICT, rather than an
    upsert statement per row: a batch rewrites the rows of every account it touched, thousands of
    them, and this is several times faster. The staging table is temporary, per connection, and
    emptied at every commit. Table and column names are this module's constants, never input.

    ``deferred``: the rows are staged now, and the INSERT ... SELECT that applies them is left in
    ``deferred[table]`` for the caller to run later in the same transaction (the ledger runs it
    with the commit, off its main thread); the commit then empties the staging table. A table is
    deferred at most once per transaction: a second staging would apply the first rows twice."""
    if not rows:
        return
    staging = f"staging_{table}"
    names = (*key, *columns, "as_of_position")
    listed = ", ".join(names)
    updates = ", ".join(f"{name} = excluded.{name}" for name in (*columns, "as_of_position"))
    driver: Any = conn.connection.driver_connection
    cursor = driver.cursor()
    if deferred is not None and table in deferred:
        raise RuntimeError(f"{table}: staged twice in one transaction")
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    fields = (*key, *columns, "as_of")
    with cursor.copy(f"COPY {staging} ({listed}) FROM STDIN") as copy:
        copy.write("".join([copytext.line([row[name] for name in fields]) for row in rows]))
    apply = (
        f"INSERT INTO {table} ({listed}) SELECT {listed} FROM {staging} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )
    if deferred is not None:
        deferred[table] = apply
        return
    cursor.execute(apply)
    cursor.execute(f"DELETE FROM {staging}")


def balance_rows(state: LedgerState, accounts: Iterable[str], as_of: int, *, shard: int) -> list[dict[str, Any]]:
    """The balances of ``accounts`` in the state of ``shard``: every shard keeps its own system
    accounts (fees, insurance fund, funding pool), so the shard is part of the key."""
    rows = []
    for account_id in sorted(accounts):
        account = state.accounts.get(account_id)
        if account is None:
            continue
        for asset, amount in sorted(account.balances.items()):
            rows.append({"account_id": account_id, "asset": asset, "amount": amount, "as_of": as_of, "shard": shard})
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
    shard: int,
    decisions: Iterable[tuple[int, str, dict[str, Any], Any]] = (),
    suffix: str = "",
    deferred: dict[str, str] | None = None,
) -> None:
    """Upsert the rows of the given accounts and marks of ``shard``'s state into the projection
    tables, and record the batch's margin calls and liquidations (``suffix`` names the shadow
    tables of a rebuild; ``deferred``: see ``upsert``)."""
    accounts = list(accounts)
    write_margin(conn, state, accounts, as_of, suffix=suffix, deferred=deferred)
    write_decisions(conn, decisions, suffix=suffix)
    balances = balance_rows(state, accounts, as_of, shard=shard)
    upsert(conn, "balances" + suffix, BALANCE_KEY, BALANCE_COLUMNS, balances, deferred=deferred)
    positions = position_rows(state, accounts, as_of)
    upsert(conn, "positions" + suffix, POSITION_KEY, POSITION_COLUMNS, positions, deferred=deferred)
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


# -----------------------------------------------------------------------------------------------
# margin state, margin calls and liquidations


def margin_rows(state: LedgerState, accounts: Iterable[str], as_of: int) -> list[dict[str, Any]]:
    """One row per margin scope of each account: the cross account and every isolated position,
    with the lifecycle status (which may be ahead of the instantaneous classification: an account
    stays in ``liquidation`` until its call is resolved), the scope's margin model and its
    underlyings (``underlying_entries``, as JSON text: the writers COPY it into a JSONB column)."""
    rows = []
    for account_id in sorted(accounts):
        account = state.accounts.get(account_id)
        if account is None or account_id.startswith("system:"):
            continue
        risk = models.account_risk(state, account, liquidation_prices=False)  # not stored: skip the solver
        for scope in risk.scopes:
            lifecycle = account.margin.get(scope.scope)
            underlyings = underlying_entries(state, scope)
            rows.append(
                {
                    "account_id": account_id,
                    "scope": scope.scope,
                    "equity": scope.equity,
                    "initial_margin": scope.initial_margin,
                    "maintenance_margin": scope.maintenance_margin,
                    "margin_ratio": scope.margin_ratio,
                    "status": lifecycle.status if lifecycle is not None else scope.status.value,
                    "margin_model": models.model_of(account, scope.scope).name,
                    "underlyings": canonical_json(underlyings) if underlyings else None,
                    "as_of": as_of,
                }
            )
    return rows


def underlying_entries(state: LedgerState, scope: ScopeRisk) -> list[dict[str, Any]]:
    """Per underlying of the scope's open positions (sorted): dynamic margin's multiplier in force
    and, where the portfolio model margins it on its grid, the requirement and the worst cell (as
    ``scenarios.cell_wire`` names it). Every figure a wire string."""
    instruments = state.parameters.instruments_by_symbol
    held = {
        spec.underlying_symbol
        for spec in (instruments.get(p.instrument) for p in scope.positions if p.quantity != 0)
        if spec is not None
    }
    grids = {requirement.underlying: requirement for requirement in scope.underlyings}
    entries = []
    for underlying in sorted(held | grids.keys()):
        entry: dict[str, Any] = {"underlying": underlying, "multiplier": to_wire(state.multiplier(underlying))}
        requirement = grids.get(underlying)
        if requirement is not None:
            entry["initial_margin"] = to_wire(requirement.initial_margin)
            entry["maintenance_margin"] = to_wire(requirement.maintenance_margin)
            entry["worst_cell"] = cell_wire(requirement.worst_cell)
        entries.append(entry)
    return entries


def write_margin(
    conn: sa.Connection,
    state: LedgerState,
    accounts: Iterable[str],
    as_of: int,
    *,
    suffix: str = "",
    deferred: dict[str, str] | None = None,
) -> None:
    rows = margin_rows(state, accounts, as_of)
    upsert(conn, "margin_state" + suffix, MARGIN_KEY, MARGIN_COLUMNS, rows, deferred=deferred)


def write_decisions(
    conn: sa.Connection, decisions: Iterable[tuple[int, str, dict[str, Any], Any]], *, suffix: str = ""
) -> None:
    """Margin calls and liquidations from the batch's decision events and liquidation fills,
    given as (position, event type, payload, occurred_at), in log order."""
    for position, event_type, payload, occurred_at in decisions:
        writer = _DECISION_WRITERS.get(event_type)
        if writer is not None:
            writer(conn, suffix, position, event_type, payload, occurred_at)


def _call_issued(
    conn: sa.Connection, suffix: str, position: int, event_type: str, payload: dict[str, Any], occurred_at: Any
) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO margin_calls{suffix} (margin_call_id, account_id, scope, level, status, "
            "issued_position, issued_at, deadline, last_position, payload, as_of_position) VALUES (:id, "
            ":account_id, :scope, :level, 'open', :position, :at, :deadline, :position, "
            "CAST(:payload AS jsonb), :position)"
        ),
        {
            **_row_of(position, payload),
            "id": payload["margin_call_id"],
            "level": payload["level"],
            "at": occurred_at,
            "deadline": payload.get("deadline"),
            "payload": json.dumps(payload),
        },
    )


# The status a margin call's row takes on each later decision about it.
_CALL_STATUS_AFTER = {
    ev.MARGIN_CALL_ESCALATED: "open",
    ev.MARGIN_CALL_RESOLVED: "resolved",
    ev.ACCOUNT_BANKRUPTED: "bankrupt",
}


def _call_changed(
    conn: sa.Connection, suffix: str, position: int, event_type: str, payload: dict[str, Any], occurred_at: Any
) -> None:
    conn.execute(
        sa.text(
            f"UPDATE margin_calls{suffix} SET status = :status, level = coalesce(:level, level), "
            "deadline = CASE WHEN :escalated THEN CAST(:deadline AS timestamptz) ELSE deadline END, "
            "last_position = :position, payload = CAST(:payload AS jsonb), as_of_position = :position "
            "WHERE margin_call_id = :id"
        ),
        {
            **_row_of(position, payload),
            "id": payload["margin_call_id"],
            "status": _CALL_STATUS_AFTER[event_type],
            "level": payload.get("level"),
            "escalated": event_type == ev.MARGIN_CALL_ESCALATED,
            "deadline": payload.get("deadline"),
            "payload": json.dumps(payload),
        },
    )
    cancelled = payload.get("cancelled_orders") or []
    if cancelled:
        conn.execute(
            sa.text(
                f"UPDATE liquidations{suffix} SET status = 'cancelled', as_of_position = :position "
                "WHERE liquidation_id = ANY(:ids) AND status = 'open'"
            ),
            {"position": position, "ids": list(cancelled)},
        )


def _order_issued(
    conn: sa.Connection, suffix: str, position: int, event_type: str, payload: dict[str, Any], occurred_at: Any
) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO liquidations{suffix} (liquidation_id, account_id, scope, instrument, side, quantity, "
            "filled_quantity, bankruptcy_price, status, issued_position, as_of_position) VALUES (:id, "
            ":account_id, :scope, :instrument, :side, :quantity, 0, :bankruptcy_price, 'open', :position, "
            ":position)"
        ),
        {
            **_row_of(position, payload),
            "id": payload["liquidation_id"],
            "instrument": payload["instrument"],
            "side": payload["side"],
            "quantity": payload["quantity"],
            "bankruptcy_price": payload["bankruptcy_price"],
        },
    )


def _order_filled(
    conn: sa.Connection, suffix: str, position: int, event_type: str, payload: dict[str, Any], occurred_at: Any
) -> None:
    conn.execute(
        sa.text(
            f"UPDATE liquidations{suffix} SET filled_quantity = filled_quantity + CAST(:quantity AS numeric), "
            "status = CASE WHEN filled_quantity + CAST(:quantity AS numeric) >= quantity THEN 'filled' "
            "ELSE status END, as_of_position = :position WHERE liquidation_id = :id"
        ),
        {"id": payload["liquidation_id"], "quantity": payload["quantity"], "position": position},
    )


def _order_cancelled(
    conn: sa.Connection, suffix: str, position: int, event_type: str, payload: dict[str, Any], occurred_at: Any
) -> None:
    conn.execute(
        sa.text(
            f"UPDATE liquidations{suffix} SET status = 'cancelled', as_of_position = :position "
            "WHERE liquidation_id = :id AND status = 'open'"
        ),
        {"id": payload["liquidation_id"], "position": position},
    )


def _row_of(position: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {"position": position, "account_id": payload.get("account_id"), "scope": payload.get("scope")}


_DecisionWriter = Callable[[sa.Connection, str, int, str, dict[str, Any], Any], None]
# The events that change the margin-call and liquidation tables, by type.
_DECISION_WRITERS: dict[str, _DecisionWriter] = {
    ev.MARGIN_CALL_ISSUED: _call_issued,
    ev.MARGIN_CALL_ESCALATED: _call_changed,
    ev.MARGIN_CALL_RESOLVED: _call_changed,
    ev.ACCOUNT_BANKRUPTED: _call_changed,
    ev.LIQUIDATION_ORDER_ISSUED: _order_issued,
    ev.LIQUIDATION_FILL_RECORDED: _order_filled,
    ev.LIQUIDATION_ORDER_CANCELLED: _order_cancelled,
}
