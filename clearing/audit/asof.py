"""Time travel: an account as it stood at a log position, at a ledger time or at an event time.

Three questions, each named for what it answers:

* **position** (``--as-of POSITION``): the state after every event of the account's shard up to
  that log position.
* **ledger time** (``--as-of-ledger-time T``): the state as the ledger knew it at T, that is after
  every event it had recorded by then (``recorded_at`` <= T). One writer appends a shard's batches
  in order, so those events are a prefix of the shard's log: the answer is the state at a position,
  exact, from the nearest snapshot plus the tail.
* **event time** (``--as-of-event-time T``, and ``--as-of TIMESTAMP``, which CONTRACT.md calls "an
  event time"): the fold, in log order, of the shard's events that had happened by T
  (``occurred_at`` <= T). Events that arrive late (a liquidation execution stamped with its order's
  time) count when they happened, not when they were recorded; events recorded earlier that
  happened after T are left out. The view says how many were left out. A snapshot is used only
  when every event it contains happened by T.

The state is the account's shard folded: the shard's nearest usable snapshot, then the tail of the
log (``clearing/engine/snapshots.py``). The account's shard is the shard of its stream; system
accounts (fees, insurance fund, funding pool) live in every shard: each shard's is folded and
shown with their total.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa

from clearing.audit.replay import iter_log, stream_rows
from clearing.domain import adl, fold
from clearing.domain import events as ev
from clearing.domain.inputs import format_time
from clearing.domain.numbers import ledger_context, round_model_value, to_wire
from clearing.domain.state import SYSTEM_ACCOUNTS, LedgerState
from clearing.engine.snapshots import latest_snapshot
from clearing.store import projections, queries
from clearing.store.jsontext import load_json
from clearing.store.log import REPLAY_FETCH_ROWS
from clearing.store.queries import log_head

Question = Literal["position", "ledger_time", "event_time"]
QUESTIONS: tuple[Question, ...] = ("position", "ledger_time", "event_time")


class AsOfError(ValueError):
    pass


@dataclass(frozen=True)
class AsOf:
    """One time-travel question: a log position, a ledger time or an event time."""

    question: Question
    position: int | None = None
    moment: datetime | None = None

    def __post_init__(self) -> None:
        if (self.question == "position") != (self.position is not None) or (self.moment is None) == (
            self.question != "position"
        ):
            raise ValueError(f"{self.question} takes {'a position' if self.question == 'position' else 'a time'} only")

    def describe(self) -> str:
        if self.moment is None:
            return f"log position {self.position}"
        return f"{self.question.replace('_', ' ')} {format_time(self.moment)}"


def parse_time(text: str, option: str = "--as-of") -> datetime:
    """An RFC 3339 time with a zone, or AsOfError saying what is wrong."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise AsOfError(
            f"{option} {text!r} is neither a log position nor an RFC 3339 time such as 2026-11-23T00:16:50Z"
            if option == "--as-of"
            else f"{option} {text!r} is not an RFC 3339 time such as 2026-11-23T00:16:50Z"
        ) from None
    if moment.tzinfo is None:
        raise AsOfError(f"{option} {text!r} has no time zone: add Z or an offset such as +00:00")
    return moment


def parse_as_of(text: str, question: Question | None = None) -> AsOf:
    """``--as-of`` text: a log POSITION (digits) or a TIMESTAMP (an event time); with
    ``question`` given, the text must be what that question takes."""
    value = text.strip()
    if question is None:
        if value.isdigit():
            return AsOf("position", position=int(value))
        return AsOf("event_time", moment=parse_time(value))
    if question == "position":
        if not value.isdigit():
            raise AsOfError(f"a log position is a whole number, not {text!r}")
        return AsOf("position", position=int(value))
    return AsOf(question, moment=parse_time(value, "--as-of-" + question.replace("_", "-")))


def resolve_position(conn: sa.Connection, as_of: str) -> int:
    """The log position of ``--as-of POSITION``."""
    return parse_as_of(as_of, "position").position or 0


def position_at_ledger_time(conn: sa.Connection, shard: int, moment: datetime) -> int:
    """The last position of the shard's log that the ledger had recorded by ``moment`` (0: none)."""
    found = conn.execute(
        sa.text("SELECT coalesce(max(position), 0) FROM events WHERE shard = :s AND recorded_at <= :t"),
        {"s": shard, "t": moment},
    ).scalar_one()
    return int(found)


def shard_of(conn: sa.Connection, account_id: str) -> int:
    found = conn.execute(
        sa.text("SELECT shard FROM events WHERE stream = :s ORDER BY position LIMIT 1"),
        {"s": ev.account_stream(account_id)},
    ).scalar()
    return int(found) if found is not None else 0


def shards(conn: sa.Connection) -> list[int]:
    """The shards that have a log (0 alone when the log is empty)."""
    found = [int(s) for s in conn.execute(sa.text("SELECT DISTINCT shard FROM events ORDER BY shard")).scalars()]
    return found or [0]


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


@dataclass
class EventTimeFold:
    """The state of a shard built from the events that had happened by an event time."""

    state: LedgerState
    last_position: int  # the last position folded (0: none)
    left_out: int  # events recorded before ``last_position`` that happened after the time


def state_at_event_time(
    conn: sa.Connection, shard: int, moment: datetime, *, use_snapshots: bool = True
) -> EventTimeFold:
    """The fold, in log order, of the shard's events with ``occurred_at`` <= ``moment``.

    A snapshot at P is a usable start only if every event up to P happened by ``moment``: it is
    taken at or before the first position that happened later. Decisions carry their cause's
    ``occurred_at``, so a decision is folded exactly when its cause is."""
    first_later = conn.execute(
        sa.text("SELECT min(position) FROM events WHERE shard = :s AND occurred_at > :t"), {"s": shard, "t": moment}
    ).scalar()
    state = LedgerState()
    after = 0
    if use_snapshots:
        bound = None if first_later is None else int(first_later) - 1
        snapshot = latest_snapshot(conn, shard, at_or_before=bound)
        if snapshot is not None:
            state, after = snapshot.state, snapshot.position
    last = after
    rows = stream_rows(
        conn,
        "SELECT position, type, payload::text FROM events WHERE shard = %(s)s AND position > %(after)s "
        "AND occurred_at <= %(t)s ORDER BY position",
        {"s": shard, "after": after, "t": moment},
        REPLAY_FETCH_ROWS,
    )
    for position, event_type, payload in rows:
        fold.replay_event(state, event_type, load_json(payload))
        last = int(position)
    state.touched.clear()
    state.marks_touched.clear()
    left_out = 0
    if first_later is not None and last > int(first_later):
        left_out = int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM events WHERE shard = :s AND position BETWEEN :a AND :b AND occurred_at > :t"
                ),
                {"s": shard, "a": int(first_later), "b": last, "t": moment},
            ).scalar_one()
        )
    return EventTimeFold(state, last, left_out)


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
                **{
                    name: _wire(row[name])
                    for name in ("equity", "initial_margin", "maintenance_margin", "margin_ratio", "status")
                },
                **queries.margin_model_fields(row["margin_model"], row["underlyings"]),
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
    queries.add_margin_model_summary(view)
    return view


def adl_standing(state: LedgerState, account_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Each open position of the account: its auto-deleveraging rank (CONTRACT v2; null when
    infinite) and quantile (1 to 5; 5: first in line) among the positions of its side of the same
    instrument in the shard, by (instrument, margin mode)."""
    account = state.accounts.get(account_id)
    if account is None:
        return {}
    with ledger_context():
        standing = adl.standing(state, account)
        return {
            key: {
                "adl_rank": None if found.rank is None else to_wire(round_model_value(found.rank)),
                "adl_quantile": quantile,
            }
            for key, (found, quantile) in standing.items()
        }


def add_adl_standing(view: dict[str, Any], standing: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Put ``adl_rank`` and ``adl_quantile`` on each position of an account view (null for a
    position with no quantity)."""
    for row in view["positions"]:
        found = standing.get((row["instrument"], row["margin_mode"]), {})
        row["adl_rank"] = found.get("adl_rank")
        row["adl_quantile"] = found.get("adl_quantile")


def live_adl_standing(conn: sa.Connection, account_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``adl_standing`` at the head of the log. A rank moves with every mark and every other
    account's position, so it is not projected: the account's shard is folded from its latest
    snapshot (the cost of an as-of query at the head)."""
    state = state_at(conn, shard_of(conn, account_id), log_head(conn))
    return adl_standing(state, account_id)


def _issued(call_id: str | None) -> int | None:
    # Call ids are MC-<position of the cause>[-n]: the decision itself follows its cause.
    if call_id is None:
        return None
    part = call_id.split("-")[1] if call_id.count("-") >= 1 else ""
    return int(part) if part.isdigit() else None


def _shard_state(
    conn: sa.Connection, shard: int, question: AsOf, use_snapshots: bool
) -> tuple[LedgerState, int, dict[str, Any] | None]:
    """The shard's state for ``question``, the log position it is as of, and what the view says
    about the question (None for a plain position)."""
    if question.moment is None:  # a position (AsOf checks that exactly one is given)
        position = question.position or 0
        return state_at(conn, shard, position, use_snapshots=use_snapshots), position, None
    said: dict[str, Any] = {"question": question.question, "time": format_time(question.moment)}
    if question.question == "ledger_time":
        position = position_at_ledger_time(conn, shard, question.moment)
        return state_at(conn, shard, position, use_snapshots=use_snapshots), position, said
    folded = state_at_event_time(conn, shard, question.moment, use_snapshots=use_snapshots)
    said["events_left_out"] = folded.left_out  # recorded earlier, happened after the time
    return folded.state, folded.last_position, said


def account_as_of(
    engine: sa.Engine,
    account_id: str,
    as_of: str | AsOf,
    *,
    use_snapshots: bool = True,
    with_adl: bool = False,
) -> dict[str, Any] | None:
    """The account's view (the shape of ``queries.account_view``) for one time-travel question;
    None when the account had no state then. ``as_of`` as ``--as-of`` takes it, or an ``AsOf``.
    A system account lives in every shard: its view has each shard's balances and their total.
    ``with_adl``: each position with its ADL rank and quantile then (``adl_standing``), which the
    projections do not hold."""
    question = as_of if isinstance(as_of, AsOf) else parse_as_of(as_of)
    with engine.connect() as conn:
        head = log_head(conn)
        if question.question == "position" and (question.position or 0) > head:
            raise AsOfError(f"position {question.position} is past the end of the log ({head})")
        if account_id in SYSTEM_ACCOUNTS:
            per_shard: dict[int, tuple[int, dict[str, Decimal]]] = {}
            said = None
            for shard in shards(conn):
                state, position, said = _shard_state(conn, shard, question, use_snapshots)
                account = state.accounts.get(account_id)
                if account is not None:
                    per_shard[shard] = (position, dict(account.balances))
            view = queries.system_account_view(account_id, per_shard)
        else:
            state, position, said = _shard_state(conn, shard_of(conn, account_id), question, use_snapshots)
            view = account_view_of(state, account_id, position)
            if view is not None and with_adl:
                add_adl_standing(view, adl_standing(state, account_id))
    if view is not None and said is not None:
        view["as_of"] = said
    return view
