"""Read-side queries over the projections, shared by the CLI and the back-office API (one owner
of each query). Every list has a LIMIT; decimals come back as ``Decimal``."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from clearing.domain.models import DEFAULT_MODEL
from clearing.domain.numbers import to_wire
from clearing.store.log import REPLAY_FETCH_ROWS

LIST_ROWS_MAX = 1_000


def _wire(value: Any) -> Any:
    if isinstance(value, Decimal):
        return to_wire(value)
    return value


def log_head(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT coalesce(max(position), 0) FROM events")).scalar_one())


SYSTEM_ACCOUNT_PREFIX = "system:"


def is_system_account(account_id: str) -> bool:
    """Fees, insurance fund, funding pool: accounts that every shard keeps its own of."""
    return account_id.startswith(SYSTEM_ACCOUNT_PREFIX)


def system_account_view(
    account_id: str, per_shard: dict[int, tuple[int, dict[str, Decimal]]]
) -> dict[str, Any] | None:
    """A system account's view from each shard's (as-of position, balances): every shard keeps its
    own, so the view shows each shard's and, as ``balances``, their total per asset. None when no
    shard has it."""
    if not per_shard:
        return None
    totals: dict[str, Decimal] = {}
    for _position, balances in per_shard.values():
        for asset, amount in balances.items():
            totals[asset] = totals.get(asset, Decimal(0)) + amount
    return {
        "account_id": account_id,
        "as_of_position": max(position for position, _ in per_shard.values()),
        "balances": {asset: to_wire(amount) for asset, amount in sorted(totals.items())},
        "shards": {
            str(shard): {
                "as_of_position": position,
                "balances": {asset: to_wire(amount) for asset, amount in sorted(balances.items())},
            }
            for shard, (position, balances) in sorted(per_shard.items())
        },
        "positions": [],
        "margin": {},
        "open_margin_calls": [],
    }


def system_account_balances(conn: sa.Connection, account_id: str) -> dict[int, tuple[int, dict[str, Decimal]]]:
    """Each shard's (as-of position, balances) of a system account, as the projections hold them."""
    per_shard: dict[int, tuple[int, dict[str, Decimal]]] = {}
    rows = conn.execute(
        sa.text(
            "SELECT shard, asset, amount, as_of_position FROM balances WHERE account_id = :a ORDER BY shard, asset"
        ),
        {"a": account_id},
    ).all()
    for row in rows:
        position, balances = per_shard.get(int(row.shard), (0, {}))
        balances[row.asset] = Decimal(row.amount)
        per_shard[int(row.shard)] = (max(position, int(row.as_of_position)), balances)
    return per_shard


def account_view(conn: sa.Connection, account_id: str) -> dict[str, Any] | None:
    """Balances, positions, margin state and open margin calls of one account as the projections
    hold them, with the log position they are as of. None when the ledger never saw the account.
    A system account's view has each shard's balances and their total (``system_account_view``)."""
    if is_system_account(account_id):
        return system_account_view(account_id, system_account_balances(conn, account_id))
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
            "SELECT scope, equity, initial_margin, maintenance_margin, margin_ratio, status, margin_model, "
            "underlyings, as_of_position FROM margin_state WHERE account_id = :a ORDER BY scope"
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
                **margin_model_fields(row.margin_model, row.underlyings),
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
    add_margin_model_summary(view)
    return view


def margin_model_fields(margin_model: str | None, underlyings: Any) -> dict[str, Any]:
    """A scope's ``margin_model`` and ``underlyings`` as a view shows them, from its margin_state
    columns (``projections.margin_rows``): a row written before margin models has NULL in both and
    is of the standard model; ``underlyings`` is JSON (text as written, values as read back)."""
    if isinstance(underlyings, str):
        underlyings = json.loads(underlyings)
    return {"margin_model": margin_model or DEFAULT_MODEL, "underlyings": list(underlyings or [])}


def add_margin_model_summary(view: dict[str, Any]) -> None:
    """The account-level fields of CONTRACT v2 (issue 24) from its scopes: ``margin_model`` (its
    cross scope's), ``multipliers`` (dynamic margin's multiplier in force per underlying the
    account holds, in any scope) and ``worst_cells`` (per underlying of a portfolio cross scope,
    as the decisions name them)."""
    margin = view["margin"]
    cross = margin.get("cross")
    view["margin_model"] = cross["margin_model"] if cross is not None else DEFAULT_MODEL
    multipliers: dict[str, str] = {}
    for scope in margin.values():
        for entry in scope["underlyings"]:
            multipliers[entry["underlying"]] = entry["multiplier"]
    view["multipliers"] = dict(sorted(multipliers.items()))
    view["worst_cells"] = [
        {"underlying": entry["underlying"], **entry["worst_cell"]}
        for entry in (cross["underlyings"] if cross is not None else [])
        if "worst_cell" in entry
    ]


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


# ------------------------------------------------------------------------------------------------
# Back-office lists (the HTTP API and the HTML report). Every list is keyset-paginated on a unique,
# stable order (the caller passes the last row's key as ``after``) and takes at most
# ``LIST_ROWS_MAX`` rows per call, so no request can make the database read an unbounded result.

# Event types that change an account's balances or positions (the account's own stream).
BALANCE_EVENT_TYPES = (
    "FillRecorded",
    "FillBusted",
    "CollateralDeposited",
    "WithdrawalApproved",
    "IsolatedMarginTransferred",
    "LiquidationFillRecorded",
    "InsuranceFundDrawn",
    "PositionAutoDeleveraged",
    "AccountBankrupted",
)
INSURANCE_FUND_ACCOUNT_ID = "system:insurance-fund"
INSURANCE_FUND_EVENT_TYPES = ("InsuranceFundDrawn",)


def _limit(limit: int) -> int:
    if not 1 <= limit <= LIST_ROWS_MAX:
        raise ValueError(f"limit must be between 1 and {LIST_ROWS_MAX}, not {limit}")
    return limit


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _event_row(row: Any) -> dict[str, Any]:
    return {
        "position": int(row.position),
        "shard": int(row.shard),
        "stream": row.stream,
        "stream_version": int(row.stream_version),
        "type": row.type,
        "schema_version": int(row.schema_version),
        "payload": row.payload,
        "occurred_at": _time(row.occurred_at),
        "recorded_at": _time(row.recorded_at),
        "cause_position": None if row.cause_position is None else int(row.cause_position),
        "hash": bytes(row.hash).hex(),
    }


_EVENT_COLUMNS = (
    "position, shard, stream, stream_version, type, schema_version, payload, occurred_at, recorded_at, "
    "cause_position, hash"
)


def list_accounts(conn: sa.Connection, *, after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Accounts the projections know (by id), each with its cross margin state when it has one."""
    rows = conn.execute(
        sa.text(
            "WITH ids AS (SELECT account_id FROM balances UNION SELECT account_id FROM margin_state "
            "UNION SELECT account_id FROM positions) "
            "SELECT ids.account_id, m.equity, m.initial_margin, m.maintenance_margin, m.margin_ratio, m.status, "
            "m.margin_model, m.as_of_position FROM ids "
            "LEFT JOIN margin_state m ON m.account_id = ids.account_id AND m.scope = 'cross' "
            "WHERE (CAST(:after AS text) IS NULL OR ids.account_id > :after) ORDER BY ids.account_id LIMIT :limit"
        ),
        {"after": after, "limit": _limit(limit)},
    ).all()
    return [
        {
            "account_id": row.account_id,
            "equity": _wire(row.equity),
            "initial_margin": _wire(row.initial_margin),
            "maintenance_margin": _wire(row.maintenance_margin),
            "margin_ratio": _wire(row.margin_ratio),
            "status": row.status,
            # NULL: no cross scope yet, or a row written before margin models (the standard model).
            "margin_model": None if row.status is None else row.margin_model or DEFAULT_MODEL,
            "as_of_position": row.as_of_position,
        }
        for row in rows
    ]


def stream_events(
    conn: sa.Connection,
    stream: str,
    *,
    after: int = 0,
    limit: int = 100,
    types: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    """One stream's events in log order after position ``after`` (optionally only ``types``)."""
    query = f"SELECT {_EVENT_COLUMNS} FROM events WHERE stream = :stream AND position > :after"
    params: dict[str, Any] = {"stream": stream, "after": after, "limit": _limit(limit)}
    if types is not None:
        query += " AND type = ANY(:types)"
        params["types"] = list(types)
    rows = conn.execute(sa.text(query + " ORDER BY position LIMIT :limit"), params).all()
    return [_event_row(row) for row in rows]


def insurance_fund_movements(conn: sa.Connection, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Events that move the insurance fund: its own stream and every ``InsuranceFundDrawn``."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > :after AND "
            "(stream = :stream OR type = ANY(:types)) ORDER BY position LIMIT :limit"
        ),
        {
            "after": after,
            "stream": f"account:{INSURANCE_FUND_ACCOUNT_ID}",
            "types": list(INSURANCE_FUND_EVENT_TYPES),
            "limit": _limit(limit),
        },
    ).all()
    return [_event_row(row) for row in rows]


def account_balances(conn: sa.Connection, account_id: str, *, shard: int | None = None) -> dict[str, Any]:
    """An account's balances and the position they are as of. A system account's are the total
    over the shards, with each shard's under ``shards`` (only ``shard``'s when given)."""
    per_shard = system_account_balances(conn, account_id)
    if shard is not None:
        per_shard = {key: value for key, value in per_shard.items() if key == shard}
    view = system_account_view(account_id, per_shard)
    if view is None:
        return {"balances": {}, "as_of_position": None, "shards": {}}
    return {key: view[key] for key in ("balances", "as_of_position", "shards")}


def list_margin_calls(
    conn: sa.Connection,
    *,
    status: str | None = None,
    level: str | None = None,
    account_id: str | None = None,
    issued_from: Any = None,
    issued_to: Any = None,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Margin calls by ``issued_position`` (the position of the decision that issued them:
    unique), filtered by status, level, account and issue time (``issued_to`` exclusive)."""
    rows = conn.execute(
        sa.text(
            "SELECT margin_call_id, account_id, scope, level, status, issued_position, issued_at, deadline, "
            "last_position, payload, as_of_position FROM margin_calls WHERE issued_position > :after "
            "AND (CAST(:status AS text) IS NULL OR status = :status) "
            "AND (CAST(:level AS text) IS NULL OR level = :level) "
            "AND (CAST(:account AS text) IS NULL OR account_id = :account) "
            "AND (CAST(:t0 AS timestamptz) IS NULL OR issued_at >= :t0) "
            "AND (CAST(:t1 AS timestamptz) IS NULL OR issued_at < :t1) "
            "ORDER BY issued_position LIMIT :limit"
        ),
        {
            "after": after,
            "status": status,
            "level": level,
            "account": account_id,
            "t0": issued_from,
            "t1": issued_to,
            "limit": _limit(limit),
        },
    ).all()
    return [
        {
            "margin_call_id": row.margin_call_id,
            "account_id": row.account_id,
            "scope": row.scope,
            "level": row.level,
            "status": row.status,
            "issued_position": int(row.issued_position),
            "issued_at": _time(row.issued_at),
            "deadline": _time(row.deadline),
            "last_position": int(row.last_position),
            "payload": row.payload,
            "as_of_position": int(row.as_of_position),
        }
        for row in rows
    ]


def list_liquidations(
    conn: sa.Connection,
    *,
    account_id: str | None = None,
    status: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Liquidation orders by ``issued_position`` (the position of the order's decision: unique)."""
    rows = conn.execute(
        sa.text(
            "SELECT liquidation_id, account_id, scope, instrument, side, quantity, filled_quantity, "
            "bankruptcy_price, status, issued_position, as_of_position FROM liquidations "
            "WHERE issued_position > :after AND (CAST(:account AS text) IS NULL OR account_id = :account) "
            "AND (CAST(:status AS text) IS NULL OR status = :status) ORDER BY issued_position LIMIT :limit"
        ),
        {"after": after, "account": account_id, "status": status, "limit": _limit(limit)},
    ).all()
    return [
        {
            "liquidation_id": row.liquidation_id,
            "account_id": row.account_id,
            "scope": row.scope,
            "instrument": row.instrument,
            "side": row.side,
            "quantity": _wire(row.quantity),
            "filled_quantity": _wire(row.filled_quantity),
            "bankruptcy_price": _wire(row.bankruptcy_price),
            "status": row.status,
            "issued_position": int(row.issued_position),
            "as_of_position": int(row.as_of_position),
        }
        for row in rows
    ]


def list_dead_letters(conn: sa.Connection, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Dead letters by id; ``key`` and ``raw`` are the original bytes (the caller encodes them)."""
    rows = conn.execute(
        sa.text(
            'SELECT id, shard, topic, "partition", "offset", key, raw, error, idempotency_key, existing_payload, '
            "received_at FROM dead_letters WHERE id > :after ORDER BY id LIMIT :limit"
        ),
        {"after": after, "limit": _limit(limit)},
    ).all()
    return [
        {
            "id": int(row.id),
            "shard": int(row.shard),
            "topic": row.topic,
            "partition": int(row.partition),
            "offset": int(row.offset),
            "key": None if row.key is None else bytes(row.key),
            "raw": bytes(row.raw),
            "error": row.error,
            "idempotency_key": row.idempotency_key,
            "existing_payload": row.existing_payload,
            "received_at": _time(row.received_at),
        }
        for row in rows
    ]


def log_status(conn: sa.Connection) -> dict[str, Any]:
    """Head of the log overall and per shard, event and dead-letter counts, outbox backlog and the
    ledger time of the last batch."""
    shards = conn.execute(
        sa.text("SELECT shard, max(position) AS head, count(*) AS n FROM events GROUP BY shard ORDER BY shard")
    ).all()
    last = conn.execute(sa.text("SELECT max(recorded_at) FROM events")).scalar_one()
    return {
        "log_position": log_head(conn),
        "events_total": sum(int(row.n) for row in shards),
        "shards": {str(row.shard): {"head_position": int(row.head), "events": int(row.n)} for row in shards},
        "dead_letters_total": int(conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one()),
        "outbox_unpublished": int(
            conn.execute(sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar_one()
        ),
        "last_recorded_at": _time(last),
    }


def metrics_snapshot(conn: sa.Connection) -> dict[str, Any]:
    """What the Prometheus collector exports, read in one go at scrape time."""
    status = log_status(conn)
    by_type = conn.execute(sa.text("SELECT type, count(*) FROM events GROUP BY type ORDER BY type")).all()
    offsets = conn.execute(
        sa.text(
            'SELECT shard, topic, "partition", next_offset FROM consumer_offsets '
            'ORDER BY shard, topic, "partition"'
        )
    ).all()
    last = conn.execute(sa.text("SELECT max(recorded_at) FROM events")).scalar_one()
    return {
        **status,
        "events_by_type": {row[0]: int(row[1]) for row in by_type},
        "consumer_offsets": [
            {"shard": int(row.shard), "topic": row.topic, "partition": int(row.partition),
             "next_offset": int(row.next_offset)}
            for row in offsets
        ],
        "last_recorded_timestamp": None if last is None else last.timestamp(),
    }


def account_shard(conn: sa.Connection, account_id: str) -> int | None:
    """The shard whose log holds the account's stream, None when it has no events."""
    shard = conn.execute(
        sa.text("SELECT shard FROM events WHERE stream = :s ORDER BY position LIMIT 1"),
        {"s": f"account:{account_id}"},
    ).scalar_one_or_none()
    return None if shard is None else int(shard)



def iter_shard_events(conn: sa.Connection, shard: int, *, upto: int | None = None) -> Any:
    """(position, stream, type, occurred_at, payload) of a shard's events in log order, streamed
    with a server-side cursor (for replays that need to know where each event sits)."""
    query = "SELECT position, stream, type, occurred_at, payload FROM events WHERE shard = :shard"
    params: dict[str, Any] = {"shard": shard}
    if upto is not None:
        query += " AND position <= :upto"
        params["upto"] = upto
    result = conn.execution_options(stream_results=True, yield_per=REPLAY_FETCH_ROWS).execute(
        sa.text(query + " ORDER BY position"), params
    )
    for row in result:
        yield int(row.position), row.stream, row.type, row.occurred_at, row.payload
