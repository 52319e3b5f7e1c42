"""Time travel: an account as it stood at a log position or at an event time.

``as_of`` is a log POSITION (an integer) or an RFC 3339 TIMESTAMP with a zone. A timestamp means
the state after the last event, in log order, whose ``occurred_at`` is at or before it: position
= max(position) over events with occurred_at <= T (events are in log order, not strictly in event
time order: a late-arriving event with an earlier time counts only if it is before that position).

The state is the account's shard folded up to that position: the shard's nearest snapshot at or
before it, then the tail of the log (``clearing/engine/snapshots.py``). The account's shard is the
shard of its stream; system accounts (fees, insurance fund) live in every shard: shard 0 is shown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from clearing.audit.replay import iter_log
from clearing.domain import events as ev
from clearing.domain import fold
from clearing.domain.numbers import to_wire
from clearing.domain.state import LedgerState
from clearing.engine.snapshots import latest_snapshot
from clearing.store import projections
from clearing.store.jsontext import load_json
from clearing.store.queries import log_head


class AsOfError(ValueError):
    pass


def resolve_position(conn: sa.Connection, as_of: str) -> int:
    text = as_of.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise AsOfError(f"--as-of {as_of!r} is neither a log position nor an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise AsOfError(f"--as-of {as_of!r} has no time zone: add Z or an offset such as +00:00")
    found = conn.execute(
        sa.text("SELECT coalesce(max(position), 0) FROM events WHERE occurred_at <= :t"), {"t": moment}
    ).scalar_one()
    return int(found)


def shard_of(conn: sa.Connection, account_id: str) -> int:
    found = conn.execute(
        sa.text("SELECT shard FROM events WHERE stream = :s ORDER BY position LIMIT 1"),
        {"s": ev.account_stream(account_id)},
    ).scalar()
    return int(found) if found is not None else 0


def state_at(conn: sa.Connection, shard: int, position: int, *, use_snapshots: bool = True) -> LedgerState:
    """The shard's state after every one of its events up to ``position``."""
    state = LedgerState()
    after = 0
    if use_snapshots:
        snapshot = latest_snapshot(conn, shard, at_or_before=position)
        if snapshot is not None:
            state, after = snapshot.state, snapshot.position
    for row in iter_log(conn, shard=shard, after=after, upto=position):
        fold.replay_event(state, row[2], load_json(row[3]))  # marks the derived trigger index stale
    state.touched.clear()
    state.marks_touched.clear()
    return state


def _wire(value: Any) -> Any:
    return to_wire(value) if value is not None and not isinstance(value, str) else value


def account_view_of(state: LedgerState, account_id: str, position: int) -> dict[str, Any] | None:
    """The shape of ``queries.account_view``, computed from a state."""
    account = state.accounts.get(account_id)
    if account is None:
        return None
    positions = projections.position_rows(state, [account_id], position)
    margin_rows = projections.margin_rows(state, [account_id], position)
    view: dict[str, Any] = {
        "account_id": account_id,
        "as_of_position": position,
        "balances": {asset: to_wire(amount) for asset, amount in sorted(account.balances.items())},
        "positions": [
            {
                name: _wire(row[name])
                for name in (
                    "instrument",
                    "margin_mode",
                    "quantity",
                    "entry_price",
                    "cost",
                    "realised_pnl",
                    "isolated_margin",
                    "funding_paid",
                )
            }
            for row in positions
        ],
        "margin": {
            row["scope"]: {
                name: _wire(row[name])
                for name in ("equity", "initial_margin", "maintenance_margin", "margin_ratio", "status")
            }
            for row in margin_rows
        },
        "open_margin_calls": [
            {
                "margin_call_id": status.margin_call_id,
                "scope": scope,
                "level": status.status,
                "deadline": status.deadline.isoformat() if status.deadline is not None else None,
                "issued_position": None,  # not in the state; the call id names its cause:
                "cause_position": _issued(status.margin_call_id),
            }
            for scope, status in sorted(account.margin.items())
            if status.margin_call_id is not None
        ],
    }
    cross = view["margin"].get("cross")
    if cross is not None:
        view.update({name: cross[name] for name in ("equity", "initial_margin", "maintenance_margin", "margin_ratio")})
        view["status"] = cross["status"]
    return view


def _issued(call_id: str | None) -> int | None:
    # Call ids are MC-<position of the cause>[-n]: the decision itself follows its cause.
    if call_id is None:
        return None
    part = call_id.split("-")[1] if call_id.count("-") >= 1 else ""
    return int(part) if part.isdigit() else None


def account_as_of(
    engine: sa.Engine, account_id: str, as_of: str, *, use_snapshots: bool = True
) -> dict[str, Any] | None:
    with engine.connect() as conn:
        position = resolve_position(conn, as_of)
        head = log_head(conn)
        if position > head:
            raise AsOfError(f"position {position} is past the end of the log ({head})")
        state = state_at(conn, shard_of(conn, account_id), position, use_snapshots=use_snapshots)
    return account_view_of(state, account_id, position)
