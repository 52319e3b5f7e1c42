"""The replay's fold of the whole log, shared by ``audit verify`` and ``projections rebuild``
(clearing/audit: the reader that streams the rows, the checks and the tables), and the ledger's
rotating margin refresh, which the replay re-enacts.

``LogReplay`` reads every event in position order (all shards; one ``LedgerState`` per shard) and
either re-runs the engine (``decide=True``: ``fold.step`` on each logged input at its logged
position, its decisions compared with the logged decision events byte for byte) or folds the
logged events as they are (``decide=False``: what ``Ledger.load`` does). Beside the state it keeps
what the projection tables should hold:

* batches: the writer stamps every row of one transaction with the same ``recorded_at``, and a
  transaction's positions are contiguous (the log lock), so a run of rows with the same
  (shard, recorded_at) is one batch and its last position is the ``as_of_position`` of the
  projection rows the batch wrote;
* per account and mark, the position of the last event that changed it, and the batch end of
  the last batch that wrote it (the accounts the batch touched, plus the margin refresh after
  marks, re-enacted with ``refresh_window``);
* margin calls and liquidations: the decisions and liquidation fills, for ``write_decisions``;
* fills by trade id, for the counterpart check; conservation at sampled balanced points.

Fast path. Logged input payloads were validated by ``messages.decode`` on their way in and are
stored in wire form, and the hash chain (checked by ``audit verify``) says they were not changed
since. So the replay builds messages from those trusted payloads without validation
(``events.trusted_message``: ``Decimal(text)`` for decimal fields, ``datetime.fromisoformat`` for
times). A unit test checks that this gives the same message as validation for every input type.
Fills, nearly all of a log's events, go further: their text is read straight into their values
(``decode_fill``, msgspec: no dict to build and look up, no walk for floats), and a
property test checks that this gives the fill the dict gives.

Compiled with the fold (clearing/native.py): it runs for every event of a replay. What each of
these saved is in docs/performance.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, getcontext
from typing import Any, Final

import msgspec
import msgspec.structs

from clearing.audit.fillwire import ACCOUNT_ID, FILL_READER, PRICE, QUANTITY, FillFields
from clearing.domain import events as ev
from clearing.domain import fold
from clearing.domain.fold import conservation
from clearing.domain.inputs import (
    Fill,
    FillBust,
    InputMessage,
    LiquidationFill,
    Mark,
    Settlement,
    format_time,
)
from clearing.domain.numbers import ZERO, exact, require_ledger_context
from clearing.domain.state import LedgerState
from clearing.engine.refresh import SortedHolders, refresh_window, refreshes_every_holder
from clearing.store.jsontext import canonical_json, load_json

CONSERVATION_EVERY_EVENTS = 10_000

MARGIN_DECISIONS = frozenset(
    {
        ev.MARGIN_CALL_ISSUED,
        ev.MARGIN_CALL_ESCALATED,
        ev.MARGIN_CALL_RESOLVED,
        ev.ACCOUNT_BANKRUPTED,
        ev.LIQUIDATION_ORDER_ISSUED,
    }
)


def decision_bytes(
    position: int,
    event_type: str,
    stream: str,
    payload: dict[str, Any],
    occurred_at: datetime,
    idempotency_key: str,
    cause_position: int | None,
) -> str:
    """What replay determinism compares: canonical JSON of a decision and its position."""
    return canonical_json(
        [position, event_type, stream, format_time(occurred_at), idempotency_key, cause_position, payload]
    )


@dataclass
class Finding:
    position: int | None
    problem: str


@dataclass
class ShardTrack:
    """What the projections of one shard should hold (see the module docstring)."""

    state: LedgerState = field(default_factory=LedgerState)
    last_change: dict[str, int] = field(default_factory=dict)  # account -> last event that touched it
    written_at: dict[str, int] = field(default_factory=dict)  # account -> end of the last batch writing it
    mark_change: dict[str, int] = field(default_factory=dict)  # symbol -> last event that moved its mark
    mark_written: dict[str, int] = field(default_factory=dict)  # symbol -> end of the last batch writing it
    rates_change: dict[str, int] = field(default_factory=dict)  # underlying -> its last MarginRatesChanged
    head: int = 0  # last position of the shard
    # The rotating refresh's cursor; None while unknown (a segment replayed from a snapshot, see
    # clearing/audit/parallel.py): windows that depend on it are then kept in ``refresh_deferred``
    # as (batch end, sorted holders) and resolved once the cursor at the segment's start is known.
    refresh_cursor: int | None = 0
    refresh_deferred: list[tuple[int, list[str]]] = field(default_factory=list)
    pending: deque[tuple[int, str]] = field(default_factory=deque)  # decisions the re-run expects next
    batch_accounts: set[str] = field(default_factory=set)
    batch_marks: set[str] = field(default_factory=set)
    holders: SortedHolders = field(default_factory=SortedHolders)


@dataclass
class OpenBreak:
    """A booked fill whose counterpart has not arrived (``LogReplay.open_breaks``): the books are
    out by its amount until the other side comes or the exchange busts it. ``account_id`` is ""
    when the fill is known by its position only (the other side of a busted fill)."""

    position: int
    kind: str  # "fill" or "liquidation_fill"
    trade_id: str | None
    account_id: str
    instrument: str
    side: str
    quantity: str
    price: str

    def describe(self) -> str:
        what = f"{self.side} {self.quantity} {self.instrument} @ {self.price}"
        who = f"{self.account_id} " if self.account_id else ""
        if self.kind == "fill":
            return f"trade {self.trade_id}: the fill at {self.position} ({who}{what}) has no counterpart fill"
        return f"the liquidation fill at {self.position} ({who}{what}) has no market-side fill"


def imbalance_finding(position: int, imbalance: dict[str, Decimal]) -> Finding:
    text = ", ".join(f"{asset} {amount}" for asset, amount in sorted(imbalance.items()))
    return Finding(position, f"the books do not balance after position {position}: {text}")


class LogReplay:
    def __init__(
        self,
        *,
        decide: bool,
        conservation_every: int = CONSERVATION_EVERY_EVENTS,
        check_fills: bool = True,
        snapshot_check: Callable[[int, int, LedgerState], None] | None = None,
        snapshot_positions: set[tuple[int, int]] | None = None,
    ) -> None:
        self.decide = decide
        self.shards: dict[int, ShardTrack] = {}
        self.events = 0
        self.head = 0
        self.determinism: list[Finding] = []
        self.determinism_mismatches = 0
        self.decisions_compared = 0
        self.conservation_every = conservation_every
        self.conservation_due = conservation_every
        self.conservation_checks: list[int] = []
        self.conservation_bad: list[Finding] = []
        self.check_fills = check_fills
        # Trades not settled (see ``_fill``): one fill so far, two that are not counterparts, more.
        self.fills: dict[str, list[tuple[int, str, str, str, str, str]]] = {}
        # Trades settled: two fills found counterparts, by the positions of the two (the buy's
        # first: a bust of one of them says which stands alone, ``_take_out``).
        self.trades_settled: dict[str, tuple[int, int]] = {}
        # Busts whose fill this replay had not seen, in log order: (position, trade id, and the
        # busted fill's account, instrument, side, quantity and price as logged). Matched with
        # their fills once the log is read (``resolve_busts``): in a parallel replay a bust and
        # its fill may be in two runs.
        self.busts: list[tuple[int, str, str, str, str, str, str]] = []
        self._busts_resolved = False
        # What unmatched fills put the books out by at the head, per asset (``open_fills_imbalance``).
        self.conservation_explained: dict[str, Decimal] = {}
        # Fills not yet matched by an opposite one: a signed count (buys +1, sells -1) per
        # (instrument, quantity, price) over ordinary and liquidation fills. The books must
        # balance where it is empty; half-booked trades and liquidation fills awaiting their
        # market side leave entries.
        self.unmatched: dict[tuple[str, str, str], int] = {}  # (instrument, quantity, price): wire form
        self.liquidation_fills: list[tuple[int, str, str, str, str, str]] = []
        self.margin_events: list[tuple[int, str, dict[str, Any], datetime]] = []
        # The batch being read: its shard and ``recorded_at`` (kept apart, not as a tuple to build
        # and compare for every row), and its last position so far.
        self._batch_open = False
        self._batch_shard = 0
        self._batch_recorded = ""
        self._batch_end = 0
        self._context: Context | None = None  # the ledger context ``feed`` found last
        self._snapshot_check = snapshot_check
        self._snapshot_positions = snapshot_positions or set()
        self._snapshot_at = {position for _shard, position in self._snapshot_positions}  # tested first: no tuple
        # When a list: every conservation sample is also recorded here as (position, imbalance,
        # fills unmatched so far), for a parallel segment's parent to judge.
        self.sample_log: list[tuple[int, dict[str, Decimal], dict[tuple[str, str, str], int]]] | None = None

    # ---------------------------------------------------------------------------------------

    def shard(self, shard: int) -> ShardTrack:
        found = self.shards.get(shard)
        if found is None:
            found = self.shards[shard] = ShardTrack()
        return found

    def feed(self, row: tuple[Any, ...]) -> None:
        """Fold one row of ``iter_log`` (its payload and times as text), under the ledger context
        (``numbers.ledger_context``). A tuple, which the compiled fold indexes directly (as
        ``Any``, a row's look-ups would go through the generic protocol)."""
        if self.decide and getcontext() is not self._context:
            # For ``fold.step_in_context``, before anything of the row is kept; the full check
            # (a thread-local lookup) only when the context is not the one it passed last.
            require_ledger_context()
            self._context = getcontext()
        position, shard_id, event_type = row[0], row[1], row[2]
        # A fill straight from its text into its values (``decode_fill``), else the payload as a dict.
        fill = decode_fill(row[3]) if event_type == ev.FILL_RECORDED else None
        payload: dict[str, Any] = _NO_PAYLOAD if fill is not None else load_json(row[3])
        track = self.shards.get(shard_id)
        if track is None:
            track = self.shard(shard_id)
        if row[5] != self._batch_recorded or shard_id != self._batch_shard or not self._batch_open:
            self.flush_batch()
            self._batch_open, self._batch_shard, self._batch_recorded = True, shard_id, row[5]
        self._batch_end = position
        self.events += 1
        self.head = position
        track.head = position
        if fill is not None or event_type in ev.MODEL_BY_EVENT_TYPE:  # a fill is an input: no look-up
            last = self._input(track, row, fill, payload)
        else:
            last = position
            if self.decide:
                self._compare(track, row, payload)
            else:
                fold.apply(track.state, event_type, None, payload)
                if event_type in MARGIN_DECISIONS:
                    self.margin_events.append((position, event_type, payload, datetime.fromisoformat(row[4])))
            if event_type == ev.MARGIN_RATES_CHANGED:
                # New rates move the margin figures of every holder of the underlying, as a mark does.
                track.rates_change[str(payload["underlying"])] = position
        self._after(track, shard_id, position, last)

    def _input(
        self, track: ShardTrack, row: tuple[Any, ...], fill: tuple[Any, ...] | None, payload: dict[str, Any]
    ) -> int:
        """Fold an input event: re-run the engine on it (``decide``) or apply it. Returns the
        position of the last event it accounts for (its decisions' when re-run)."""
        position, shard_id, event_type = row[0], row[1], row[2]
        state = track.state
        message = ev.trusted_message(event_type, payload) if fill is None else _fill_message(fill, state)
        if self.decide:
            if track.pending:
                self._missing(track)
            last = self._rerun(track, message, position, shard_id)
        else:
            state.triggers.stale = True  # derived state, rebuilt by the next step (as replay_event)
            fold.apply(state, event_type, message, payload)
            last = position
        if event_type == ev.LIQUIDATION_FILL_RECORDED:
            self.margin_events.append((position, event_type, payload, datetime.fromisoformat(row[4])))
        if isinstance(message, (Mark, Settlement)):
            track.mark_change[message.symbol] = position
        elif self.check_fills:
            # The names from the message (attributes of a compiled class), the figures in
            # their wire text: from the fill's decoded values, or from the payload of a text
            # ``decode_fill`` refused and the dict path read (a liquidation fill's always).
            if isinstance(message, Fill):
                if fill is None:
                    quantity, price = payload["quantity"], payload["price"]
                else:
                    quantity, price = fill[QUANTITY], fill[PRICE]
                self._fill(
                    position, message.account_id, message.instrument, message.side, quantity, price,
                    message.trade_id,
                )
            elif isinstance(message, LiquidationFill):
                self._fill(
                    position, message.account_id, message.instrument, message.side,
                    payload["quantity"], payload["price"], None,
                )
            elif isinstance(message, FillBust):
                self._bust(position, payload)
        return last

    def _rerun(self, track: ShardTrack, message: InputMessage, position: int, shard_id: int) -> int:
        """``fold.step`` on an input at its logged position: its decisions are what the log must
        hold next (``pending``, compared by ``_compare``). Returns the last decision's position."""
        decisions = fold.step_in_context(track.state, message, position, shard_id)
        # enumerate without a start: mypyc compiles it to an indexed loop (with one, it looked
        # enumerate up among the builtins for every input, most of which decide nothing).
        for offset, decision in enumerate(decisions):
            at = position + 1 + offset
            expected = decision_bytes(
                at,
                decision.type,
                decision.stream,
                decision.payload,
                decision.occurred_at,
                decision.idempotency_key,
                decision.cause_position,
            )
            track.pending.append((at, expected))
            if decision.type in MARGIN_DECISIONS:
                self.margin_events.append((at, decision.type, decision.payload, decision.occurred_at))
        return position + len(decisions)

    def _after(self, track: ShardTrack, shard_id: int, position: int, last: int) -> None:
        """What an event changed: the accounts and marks the batch writes, a conservation sample
        when one is due at a balanced point, the snapshot stored at this position."""
        state = track.state
        if state.touched:
            batch_accounts = track.batch_accounts
            for account_id in state.touched:
                track.last_change[account_id] = last
                batch_accounts.add(account_id)
            state.touched.clear()
        if state.marks_touched:
            track.batch_marks |= state.marks_touched
            state.marks_touched.clear()
        if self.events >= self.conservation_due and not self.unmatched and not track.pending:
            self._conservation(position)
            self.conservation_due = self.events + self.conservation_every
        if position in self._snapshot_at and (shard_id, position) in self._snapshot_positions and not track.pending:
            if self._snapshot_check is None:
                raise AssertionError("snapshot positions without a snapshot check")
            self._snapshot_check(shard_id, position, state)

    def finish(self) -> None:
        self.flush_batch()
        for track in self.shards.values():
            if track.pending:
                self._missing(track)
        if self.events and (not self.conservation_checks or self.conservation_checks[-1] != self.head):
            self._conservation(self.head)

    # ---------------------------------------------------------------------------------------

    def flush_batch(self) -> None:
        if not self._batch_open:
            return
        track = self.shards[self._batch_shard]
        end = self._batch_end
        accounts = track.batch_accounts
        if track.batch_marks:
            accounts = accounts | set(self._refresh_rotation(track, end))
            for symbol in track.batch_marks:
                track.mark_written[symbol] = end
        for account_id in accounts:
            if account_id in track.state.accounts:
                track.written_at[account_id] = end
        track.batch_accounts = set()
        track.batch_marks = set()
        self._batch_open = False

    @staticmethod
    def _refresh_rotation(track: ShardTrack, end: int) -> list[str]:
        # The ledger's rotating margin refresh, re-enacted with a cursor from 0: exact while the
        # ledger process ran without a restart, or while the shard had at most
        # refresh.MARGIN_REFRESH_ACCOUNTS_MAX holders.
        holders = track.holders.of(track.state)  # not changed by anyone: shared with the windows below
        if track.refresh_cursor is None:
            if refreshes_every_holder(holders):
                return holders  # every holder, whatever the cursor (which does not move)
            track.refresh_deferred.append((end, holders))
            return []
        window, track.refresh_cursor = refresh_window(holders, track.refresh_cursor)
        return window

    def _compare(self, track: ShardTrack, row: tuple[Any, ...], payload: dict[str, Any]) -> None:
        position = row[0]
        if not track.pending:
            self._bad(position, f"decision {row[2]} is in the log, but the engine re-run decides nothing here")
            return
        expected_position, expected = track.pending.popleft()
        self.decisions_compared += 1
        found = decision_bytes(position, row[2], row[8], payload, datetime.fromisoformat(row[4]), row[6], row[7])
        if found != expected or expected_position != position:
            self._bad(position, f"logged decision differs from the re-run: logged {found} / re-run {expected}")

    def _missing(self, track: ShardTrack) -> None:
        while track.pending:
            position, expected = track.pending.popleft()
            self._bad(position, f"the re-run decides {expected}, which is not in the log")

    def _bad(self, position: int, problem: str) -> None:
        self.determinism_mismatches += 1
        if len(self.determinism) < 10:
            self.determinism.append(Finding(position, problem[:2_000]))

    def _fill(
        self,
        position: int,
        account_id: str,
        instrument: str,
        side: str,
        quantity: str,
        price: str,
        trade_id: str | None,
    ) -> None:
        """Book a fill (``trade_id``) or liquidation fill (None) for the counterpart check. Its
        quantity and price are the logged payload's wire form, one spelling per value, so the
        text is the key (no decimal to hash) and the entry's figures read as they were sent."""
        # Matched by an opposite fill (``unmatched``), inline: once per fill.
        # Taken out and put back unless it nets to zero: the second fill of a trade, the usual
        # case, finds its key once (a look-up compares the three strings of the key).
        key = (instrument, quantity, price)
        count = self.unmatched.pop(key, 0) + (1 if side == "buy" else -1)
        if count:
            self.unmatched[key] = count
        entry = (position, account_id, instrument, side, quantity, price)
        if trade_id is not None:
            # A trade's second fill that is its first's counterpart settles it: nothing more can
            # be found of it but a third fill, which the positions kept suffice to name. Settled
            # at once, the fills of a long log are not all held to its end (they were most of the
            # objects the garbage collector went through).
            trade = self.fills.get(trade_id)
            if trade is None:
                settled = self.trades_settled.pop(trade_id, None)
                if settled is None:
                    self.fills[trade_id] = [entry]
                else:
                    earlier = sorted(settled)
                    self.fills[trade_id] = [_position_only(earlier[0]), _position_only(earlier[1]), entry]
            elif len(trade) == 1 and _counterparts(trade[0], entry):
                del self.fills[trade_id]
                first = trade[0][0]
                self.trades_settled[trade_id] = (first, position) if trade[0][3] == "buy" else (position, first)
            else:
                trade.append(entry)
        else:
            # Its market side arrives as an ordinary fill whose trade has one fill only: the books
            # balance when every such one-fill trade is paired with one liquidation fill.
            self.liquidation_fills.append(entry)

    def _bust(self, position: int, payload: dict[str, Any]) -> None:
        """Book a bust for the counterpart check: its reversal is the opposite of the busted fill,
        so it matches that fill in ``unmatched``, and the fill leaves its trade at once (so that a
        correction sent under the same trade id pairs with the fill that stands), or, when this
        replay has not seen the fill (a parallel run that starts after it), once the runs are
        merged (``resolve_busts``)."""
        fill = payload["fill"]
        side, quantity, price = fill["side"], fill["quantity"], fill["price"]
        key = (fill["instrument"], quantity, price)
        count = self.unmatched.pop(key, 0) + (-1 if side == "buy" else 1)
        if count:
            self.unmatched[key] = count
        bust = (position, fill["trade_id"], fill["account_id"], fill["instrument"], side, quantity, price)
        if not self._take_out(bust):
            self.busts.append(bust)

    def resolve_busts(self) -> None:
        """Take the busted fills that ``_bust`` could not find out of their trades (once, after the
        whole log is read)."""
        if self._busts_resolved:
            return
        self._busts_resolved = True
        for bust in sorted(self.busts):
            self._take_out(bust)

    def _take_out(self, bust: tuple[int, str, str, str, str, str, str]) -> bool:
        """Take a busted fill out of its trade; False when this replay has not seen it. A trade
        whose fills are all busted is gone; a settled trade with one fill busted has its other
        fill alone again (known by position: its account is not kept for settled trades)."""
        position, trade_id, account_id, instrument, side, quantity, price = bust
        flipped = (0, account_id, instrument, _OPPOSITE[side], quantity, price)
        trade = self.fills.get(trade_id)
        if trade is not None:
            for index, entry in enumerate(trade):
                # An account of "" is a fill known by its position only (``_position_only``).
                same_account = entry[1] in (account_id, "")
                if entry[0] < position and same_account and _counterparts(entry, flipped):
                    del trade[index]
                    if not trade:
                        del self.fills[trade_id]
                    return True
            return False
        settled = self.trades_settled.pop(trade_id, None)
        if settled is None:
            return False
        stands = settled[1] if side == "buy" else settled[0]
        self.fills[trade_id] = [(stands, "", instrument, _OPPOSITE[side], quantity, price)]
        return True

    def _conservation(self, position: int) -> None:
        totals: dict[str, Decimal] = {}
        for track in self.shards.values():
            for asset, amount in conservation(track.state).items():
                totals[asset] = totals.get(asset, ZERO) + amount
        imbalance = {asset: amount for asset, amount in totals.items() if amount != ZERO}
        self.conservation_checks.append(position)
        if self.sample_log is not None:
            self.sample_log.append((position, imbalance, dict(self.unmatched)))
        if imbalance and self.unmatched:
            # Only the check at the head meets unmatched fills (the samples wait for none):
            # open breaks, whose amounts the books are out by until they are settled or busted.
            self.conservation_explained = open_fills_imbalance(self.unmatched, self._any_state())
            imbalance = _less(imbalance, self.conservation_explained)
        if imbalance and len(self.conservation_bad) < 10:
            self.conservation_bad.append(imbalance_finding(position, imbalance))

    def _any_state(self) -> LedgerState:
        # Every shard's log carries the same risk parameters (they are copied into each).
        return next(iter(self.shards.values())).state if self.shards else LedgerState()

    @property
    def trades(self) -> int:
        return len(self.fills) + len(self.trades_settled)

    def counterpart_findings(self) -> list[Finding]:
        """Every trade: exactly two fills, opposite sides, same instrument, equal quantity and
        price. A trade with one fill is accepted when a liquidation fill of the same instrument,
        the opposite side, equal quantity and price is its other side (the market took a
        liquidation order: the liquidation fill carries the order id, not the trade id). Busted
        fills are no fills (``resolve_busts``). A fill still alone is not a finding but an open
        break (``open_breaks``): its other side may yet come, or the exchange may bust it."""
        return self._pairing()[0]

    def open_breaks(self) -> list[OpenBreak]:
        """Fills whose counterpart never arrived, in log order: ordinary fills alone in their
        trade, and liquidation fills with no market side (``counterpart_findings``)."""
        return self._pairing()[1]

    def _pairing(self) -> tuple[list[Finding], list[OpenBreak]]:
        self.resolve_busts()
        findings: list[Finding] = []
        breaks: list[OpenBreak] = []
        spare: dict[tuple[str, str, str, str], list[tuple[int, str]]] = {}
        for position, account, instrument, side, quantity, price in self.liquidation_fills:
            key = (instrument, side, str(Decimal(quantity)), str(Decimal(price)))
            spare.setdefault(key, []).append((position, account))
        for trade_id, fills in self.fills.items():
            first = fills[0][0]
            if len(fills) == 2:
                a, b = fills
                if not _counterparts(a, b):
                    findings.append(
                        Finding(
                            b[0],
                            f"trade {trade_id}: fills at {a[0]} and {b[0]} are not counterparts "
                            f"({a[1]} {a[3]} {a[4]} {a[2]} @ {a[5]} / {b[1]} {b[3]} {b[4]} "
                            f"{b[2]} @ {b[5]})",
                        )
                    )
            elif len(fills) == 1:
                _, account, instrument, side, quantity, price = fills[0]
                key = (instrument, _OPPOSITE[side], str(Decimal(quantity)), str(Decimal(price)))
                if spare.get(key):
                    spare[key].pop(0)
                    continue
                breaks.append(OpenBreak(first, "fill", trade_id, account, instrument, side, quantity, price))
            else:
                where = ", ".join(str(f[0]) for f in fills)
                findings.append(
                    Finding(first, f"trade {trade_id} has {len(fills)} fills (at {where}); a trade has exactly two")
                )
        for (instrument, side, quantity, price), left in spare.items():
            for position, account in left:
                breaks.append(OpenBreak(position, "liquidation_fill", None, account, instrument, side, quantity, price))
        findings.sort(key=lambda f: f.position or 0)
        breaks.sort(key=lambda b: b.position)
        return findings, breaks


_OPPOSITE = {"buy": "sell", "sell": "buy"}
_NO_PAYLOAD: Final[dict[str, Any]] = {}  # a fill read into its fields: input events fold their message only


_DECODE_FILL: Final = msgspec.json.Decoder(FillFields, float_hook=float).decode
_FILL_VALUES: Final = msgspec.structs.astuple


def decode_fill(text: str | bytes) -> tuple[Any, ...] | None:
    """The values of a fill's logged payload, in ``fillwire.FillFields`` order (a tuple: read by
    index, cheaper than by attribute), or None when the text is not a fill's (``fillwire``).
    Here, compiled, and not beside the struct: called from Python, it was a frame of the
    interpreter for every fill."""
    try:
        return _FILL_VALUES(_DECODE_FILL(text))
    except (msgspec.DecodeError, RecursionError):
        # A ValidationError is a DecodeError: a field missing, the root not an object. msgspec
        # raises RecursionError for nesting deeper than it reads, where orjson's own limit gives
        # the general reader's error.
        return None


def _fill_message(values: tuple[Any, ...], state: LedgerState) -> Fill:
    """The fill of ``decode_fill``'s values, its account id the very string the state
    keys the account by (when it has the account): the fold then finds the account, its budget,
    its holder entries and its touched marks by identity, without reading the keys' strings
    (a fresh string per fill, compared character by character in each of those look-ups)."""
    fields = list(values)
    account = state.accounts.get(fields[ACCOUNT_ID])
    if account is not None:
        fields[ACCOUNT_ID] = account.account_id
    fill: Fill = FILL_READER.from_list(fields)  # type: ignore[assignment]
    return fill


@exact
def open_fills_imbalance(unmatched: dict[tuple[str, str, str], int], state: LedgerState) -> dict[str, Decimal]:
    """What fills without a counterpart put ``fold.conservation`` out by, per settlement asset:
    a fill of signed quantity q at price p moves an account's balance less its cost by
    -q x p x contract size, which its counterpart's booking cancels. ``unmatched``:
    ``LogReplay.unmatched`` (a signed count per instrument, quantity and price). An instrument
    the parameters in force no longer list is left out, and a dated future settled since an
    unmatched fill closed that side at the settlement price, not at the fill's: either imbalance
    stays unexplained, and the conservation check fails on it."""
    out: dict[str, Decimal] = {}
    for (instrument, quantity, price), count in unmatched.items():
        spec = state.parameters.instruments_by_symbol.get(instrument)
        if spec is None:
            continue
        amount = -count * Decimal(quantity) * Decimal(price) * spec.contract_size
        out[spec.settlement_asset] = out.get(spec.settlement_asset, ZERO) + amount
    return {asset: amount for asset, amount in out.items() if amount != ZERO}


@exact
def _less(first: dict[str, Decimal], second: dict[str, Decimal]) -> dict[str, Decimal]:
    """``first`` - ``second`` per asset, the zeros left out."""
    out = {asset: first.get(asset, ZERO) - second.get(asset, ZERO) for asset in sorted({*first, *second})}
    return {asset: amount for asset, amount in out.items() if amount != ZERO}


def _position_only(position: int) -> tuple[int, str, str, str, str, str]:
    """A settled fill in ``fills`` again, when a third fill of its trade turns up: a trade of more
    than two fills is named by the positions of its fills only (``counterpart_findings``)."""
    return (position, "", "", "", "", "")


def _counterparts(a: tuple[int, str, str, str, str, str], b: tuple[int, str, str, str, str, str]) -> bool:
    """Whether two fills of a trade are its two sides: one instrument, opposite sides, equal
    quantity and price (the same text, or two spellings of one number)."""
    return (
        a[2] == b[2]
        and a[3] == _OPPOSITE[b[3]]
        and (a[4] == b[4] or Decimal(a[4]) == Decimal(b[4]))
        and (a[5] == b[5] or Decimal(a[5]) == Decimal(b[5]))
    )
