"""Snapshots of a shard's in-memory ``LedgerState``: written every ``SNAPSHOT_EVERY_EVENTS`` events
of the shard, read by ``Ledger.load`` (start from the latest, replay the tail) and by the as-of
queries (the nearest snapshot at or before the position asked for, then the tail).

Encoding: JSON (UTF-8, canonical key order), decimals as their exact strings, times as RFC 3339,
the risk parameters as their document. Not pickle: a snapshot row is data, and decoding it runs
no code, so a person who can write the ``snapshots`` table can at worst make a *state* wrong,
never run something in the ledger process. A wrong state is what ``audit verify`` looks for: it
re-folds the log and compares every snapshot with the state at its position, byte for byte.

A snapshot at ``position`` is the state after every event of the shard up to and including
``position`` (a batch's end: the decisions of its last input are applied).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from clearing.domain.jsontext import canonical_json_bytes
from clearing.domain.numbers import to_wire
from clearing.domain.params import RiskParameters, load_parameters
from clearing.domain.state import Account, LedgerState, LiquidationOrder, MarginStatus, MarkState, Position

logger = logging.getLogger(__name__)

SNAPSHOT_EVERY_EVENTS = 50_000  # shard events between two snapshots
SNAPSHOT_FORMAT = 1

_PARAMETERS_CACHE: dict[str, RiskParameters] = {}


_d = to_wire  # a decimal as its wire text


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def encode_state(state: LedgerState) -> dict[str, Any]:
    """The state as plain JSON values. ``touched`` and ``marks_touched`` (what the next batch must
    write) are not part of it: a snapshot is taken between batches, when both are empty."""
    return {
        "format": SNAPSHOT_FORMAT,
        "parameters": state.parameters.document(),
        "accounts": {
            account_id: {
                "balances": {asset: _d(amount) for asset, amount in account.balances.items()},
                "positions": [
                    [
                        p.instrument,
                        p.margin_mode,
                        _d(p.quantity),
                        _d(p.cost),
                        _d(p.realised_pnl),
                        _d(p.isolated_margin),
                        _d(p.funding_paid),
                    ]
                    for p in account.positions.values()
                ],
                "margin": {
                    scope: [s.status, s.margin_call_id, _t(s.deadline), list(s.pending_orders)]
                    for scope, s in account.margin.items()
                },
                "deficit": _d(account.deficit),
            }
            for account_id, account in state.accounts.items()
        },
        "marks": {
            symbol: [_d(m.price), _t(m.occurred_at), None if m.iv is None else _d(m.iv)]
            for symbol, m in state.marks.items()
        },
        "deposits": {asset: _d(v) for asset, v in state.deposits.items()},
        "withdrawals": {asset: _d(v) for asset, v in state.withdrawals.items()},
        "last_occurred_at": _t(state.last_occurred_at),
        "holders": {symbol: sorted(ids) for symbol, ids in state.holders.items()},
        "liquidations": {
            lid: [
                o.account_id,
                o.scope,
                o.instrument,
                o.margin_mode,
                o.side,
                _d(o.quantity),
                _d(o.remaining),
                o.cancelled,
            ]
            for lid, o in state.liquidations.items()
        },
        "deadlines": [[account_id, scope, _t(at)] for (account_id, scope), at in state.deadlines.items()],
    }


def decode_state(data: dict[str, Any]) -> LedgerState:
    if data.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"snapshot format {data.get('format')!r} is not {SNAPSHOT_FORMAT}")
    document = data["parameters"]
    key = json.dumps(document, sort_keys=True)
    parameters = _PARAMETERS_CACHE.get(key)
    if parameters is None:
        parameters = _PARAMETERS_CACHE[key] = load_parameters(document)
    state = LedgerState(parameters=parameters)
    for account_id, a in data["accounts"].items():
        account = Account(account_id, deficit=Decimal(a["deficit"]))
        account.balances = {asset: Decimal(v) for asset, v in a["balances"].items()}
        for instrument, mode, quantity, cost, realised, isolated, funding in a["positions"]:
            account.positions[(instrument, mode)] = Position(
                instrument,
                mode,
                Decimal(quantity),
                Decimal(cost),
                Decimal(realised),
                Decimal(isolated),
                Decimal(funding),
            )
        for scope, (status, call_id, deadline, pending) in a["margin"].items():
            account.margin[scope] = MarginStatus(status, call_id, _dt(deadline), list(pending))
        state.accounts[account_id] = account
    state.marks = {
        symbol: MarkState(Decimal(price), _dt(at) or datetime.min, None if iv is None else Decimal(iv))
        for symbol, (price, at, iv) in data["marks"].items()
    }
    state.deposits = {asset: Decimal(v) for asset, v in data["deposits"].items()}
    state.withdrawals = {asset: Decimal(v) for asset, v in data["withdrawals"].items()}
    state.last_occurred_at = _dt(data["last_occurred_at"])
    state.holders = {symbol: set(ids) for symbol, ids in data["holders"].items()}
    state.liquidations = {
        lid: LiquidationOrder(lid, acc, scope, instrument, mode, side, Decimal(q), Decimal(r), cancelled)
        for lid, (acc, scope, instrument, mode, side, q, r, cancelled) in data["liquidations"].items()
    }
    state.deadlines = {(acc, scope): _dt(at) or datetime.min for acc, scope, at in data["deadlines"]}
    return state


def state_bytes(state: LedgerState) -> bytes:
    """The snapshot's bytes: ``json.dumps(encode_state(state), sort_keys=True, separators=(",",
    ":"))``, the spelling of every snapshot stored so far (non-ASCII escaped). The log's canonical
    JSON (``canonical_json_bytes``: the same, with non-ASCII written as UTF-8, by orjson) gives
    the same bytes where it writes only ASCII and no DEL (the characters ``json.dumps`` escapes
    here and orjson does not), in a fifth of the time: 0.012 s against 0.05 s for the state of 5,000
    accounts, which ``audit verify`` spells once for every snapshot it compares."""
    document = encode_state(state)
    fast = canonical_json_bytes(document)
    if fast.isascii() and b"\x7f" not in fast:
        return fast
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def state_from_bytes(data: bytes | memoryview) -> LedgerState:
    """The state a snapshot's bytes (``state_bytes``) hold, its trigger index to be rebuilt."""
    return decode_state(json.loads(bytes(data)))


@dataclass(frozen=True)
class Snapshot:
    shard: int
    position: int
    state: LedgerState


def write_snapshot(conn: sa.Connection, shard: int, position: int, state: LedgerState) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO snapshots (shard, position, created_at, state) VALUES (:shard, :position, :at, :state) "
            "ON CONFLICT (shard, position) DO NOTHING"
        ),
        {"shard": shard, "position": position, "at": datetime.now(UTC), "state": state_bytes(state)},
    )


def latest_snapshot(conn: sa.Connection, shard: int, *, at_or_before: int | None = None) -> Snapshot | None:
    """The shard's latest snapshot (at or before a position when given), or None."""
    query = "SELECT position, state FROM snapshots WHERE shard = :shard"
    params: dict[str, Any] = {"shard": shard}
    if at_or_before is not None:
        query += " AND position <= :upto"
        params["upto"] = at_or_before
    row = conn.execute(sa.text(query + " ORDER BY position DESC LIMIT 1"), params).first()
    if row is None:
        return None
    return Snapshot(shard, int(row[0]), state_from_bytes(row[1]))


class SnapshotPolicy:
    """Counts a shard's events and says when the next snapshot is due (every
    ``every`` events of the shard since the last one)."""

    def __init__(self, every: int = SNAPSHOT_EVERY_EVENTS) -> None:
        self.every = every
        self.since_last = 0

    def after_batch(self, engine: sa.Engine, shard: int, position: int, state: LedgerState, appended: int) -> bool:
        """Called after a batch committed with ``appended`` new events of the shard ending at
        ``position``. Writes a snapshot in its own transaction when one is due; a failure is
        logged, never raised: a missing snapshot costs replay time, not correctness."""
        self.since_last += appended
        if self.every <= 0 or self.since_last < self.every or position <= 0:
            return False
        try:
            with engine.begin() as conn:
                write_snapshot(conn, shard, position, state)
        except Exception:
            logger.warning("shard %d: snapshot at position %d not written", shard, position, exc_info=True)
            return False
        self.since_last = 0
        return True
