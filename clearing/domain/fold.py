"""The pure fold: ``admit`` checks an input against the state, ``apply`` folds an event into the
state (``booking``), ``decide`` says what the ledger decides because of it (``lifecycle``),
``step`` does all three.

No I/O, no clock, no randomness: time is the event's ``occurred_at`` and decision ids derive from
log positions, so replaying the log reproduces every decision exactly.

Money moves only by the rules of ``booking``, and every move has its opposite entry, so the
conservation invariant holds at every position of the log (see ``conservation``):

    sum(balances) + sum(isolated margin) + sum(unrealised PnL at any common mark)
        + sum(option values at any common mark) == deposits - withdrawals        (per asset)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from clearing.domain import booking, dynamicmargin, lifecycle, models
from clearing.domain import events as ev
from clearing.domain.decisions import Decision, MarginRatesChanged, decision_of
from clearing.domain.inputs import (
    Deposit,
    Fill,
    FillBust,
    Funding,
    InputMessage,
    IsolatedMarginTransfer,
    LiquidationFill,
    MarginModelRequest,
    Mark,
    RiskParametersMessage,
    Settlement,
    Withdrawal,
)
from clearing.domain.messages import InputError
from clearing.domain.numbers import ZERO, exact, to_wire
from clearing.domain.params import BOOKED_KINDS, InstrumentSpec, load_parameters
from clearing.domain.state import LedgerState


class UnknownSymbol(InputError):
    pass


class StaleMark(InputError):
    pass


# --------------------------------------------------------------------------------------------
# admit: checks that need the state (the message itself was validated when decoded)


@exact
def admit(state: LedgerState, message: InputMessage) -> None:
    """Raise ``InputError`` when the message cannot enter the log in this state."""
    params = state.parameters
    if params.dynamic_margin:
        _check_boundaries(state, message)
    match message:
        case Fill() | LiquidationFill():
            spec = _instrument(state, message.instrument)
            if isinstance(message, LiquidationFill):
                _check_liquidation_fill(state, message)
            if isinstance(message, Fill) and message.fee_asset is not None:
                _asset(state, message.fee_asset, "fee_asset")
            if spec.kind not in BOOKED_KINDS:
                raise InputError(
                    f"{message.instrument} is a {spec.kind}; this ledger version books perpetuals, futures "
                    "and options only"
                )
            if spec.kind == "option":
                _check_option_fill(spec, message)
            if isinstance(message, Fill):
                check_counterpart(state, message)
        case FillBust():
            check_bust(state, message)
        case Deposit() | Withdrawal():
            _asset(state, message.asset, "asset")
        case IsolatedMarginTransfer():
            spec = _instrument(state, message.instrument)
            if spec.kind not in BOOKED_KINDS or spec.kind == "option":  # options: cross only (CONTRACT v2)
                held = "an option, held in cross margin only" if spec.kind == "option" else f"a {spec.kind}"
                raise InputError(f"isolated margin applies to linear positions; {message.instrument} is {held}")
        case Mark():
            if not params.knows_symbol(message.symbol):
                raise UnknownSymbol(
                    f"mark for unknown symbol {message.symbol!r}: the risk parameters in force "
                    f"({params.version}) list no instrument or asset of that name"
                )
            last = state.marks.get(message.symbol)
            if last is not None and message.occurred_at < last.occurred_at:
                raise StaleMark(
                    f"stale mark for {message.symbol}: occurred_at {message.occurred_at.isoformat()} is older "
                    f"than the last applied mark at {last.occurred_at.isoformat()}; it was not applied"
                )
        case Funding():
            spec = _instrument(state, message.symbol)
            if spec.kind != "perpetual":
                raise InputError(f"funding applies to perpetuals; {message.symbol} is a {spec.kind}")
            if state.mark_price(message.symbol) is None:
                raise InputError(
                    f"funding for {message.symbol} arrived before any mark of it: publish a mark first, "
                    "then replay this funding message"
                )
        case Settlement():
            spec = _instrument(state, message.symbol)
            if spec.kind not in ("future", "option"):
                raise InputError(f"settlement applies to dated futures and options; {message.symbol} is a {spec.kind}")
            if spec.kind == "option" and spec.expiry is not None and message.occurred_at < spec.expiry:
                raise InputError(
                    f"settlement of {message.symbol} at {message.occurred_at.isoformat()} is before its expiry "
                    f"{spec.expiry.isoformat()}: an option settles at its expiry or after it"
                )
        case RiskParametersMessage():
            try:
                load_parameters(message.parameters)
            except ValueError as error:
                raise InputError(f"risk_parameters document rejected: {_first_line(error)}") from None
        case MarginModelRequest():
            if message.model not in models.MODELS:  # decoding checks it too; the log must never hold another
                known = ", ".join(sorted(models.MODELS))
                raise InputError(f"margin_model {message.model!r} is not a margin model of this ledger ({known})")


def _check_boundaries(state: LedgerState, message: InputMessage) -> None:
    """An event may cross at most ``dynamicmargin.BOUNDARIES_PER_EVENT_MAX`` sample boundaries of
    each dynamic margin block: each is a decision of its own, and a step never samples part of
    the boundaries an event crosses (a replay would have to stop at the same part)."""
    for spec in state.parameters.dynamic_margin:
        try:
            dynamicmargin.boundaries_crossed(state.last_occurred_at, message.occurred_at, spec.sample_seconds)
        except dynamicmargin.DynamicMarginError as error:
            raise InputError(f"dynamic margin {spec.underlying}: {error}") from None


def _instrument(state: LedgerState, symbol: str) -> InstrumentSpec:
    spec = state.parameters.instrument(symbol)
    if spec is None:
        raise UnknownSymbol(
            f"unknown instrument {symbol!r}: the risk parameters in force ({state.parameters.version}) "
            "do not list it; apply parameters that list it before sending its messages"
        )
    return spec


def _asset(state: LedgerState, asset: str, field: str) -> None:
    if state.parameters.asset(asset) is None:
        raise UnknownSymbol(
            f"{field} {asset!r} is not a collateral asset in the risk parameters in force ({state.parameters.version})"
        )


def check_counterpart(state: LedgerState, fill: Fill) -> None:
    """A trade's second fill must be its first's other side (CONTRACT.md): the same instrument,
    the opposite side, equal quantity and price. Booked otherwise, the books would not balance
    and ``audit verify`` would fail for ever; dead-lettered, the exchange can send the right one.
    Only a first fill this shard still keeps can be checked (``state.OPEN_FILLS_MAX``)."""
    first = state.open_fills.get(fill.trade_id)
    if first is None:
        return
    wrong = []
    if fill.instrument != first.instrument:
        wrong.append(f"instrument {fill.instrument} is not {first.instrument}")
    if fill.side == first.side:
        wrong.append(f"side {fill.side} is the first fill's side too (the two sides are a buy and a sell)")
    if fill.quantity != first.quantity:
        wrong.append(f"quantity {to_wire(fill.quantity)} is not {to_wire(first.quantity)}")
    if fill.price != first.price:
        wrong.append(f"price {to_wire(fill.price)} is not {to_wire(first.price)}")
    if wrong:
        terms = f"{first.side} {to_wire(first.quantity)} {first.instrument} @ {to_wire(first.price)}"
        booked = (
            f"first fill {first.fill_id} ({first.account_id} {terms})"
            if first.fill_id
            else f"standing fill ({terms}, the other side of a busted fill)"
        )
        raise InputError(
            f"fill {fill.fill_id} is not the other side of trade {fill.trade_id}, whose {booked} is booked: "
            + "; ".join(wrong)
            + ". Send the trade's true second fill, or bust the first one (fill_bust) if it was wrong"
        )


def check_bust(state: LedgerState, bust: FillBust) -> None:
    """A bust reverses a fill booked on this shard, of the account it names, once; an option's
    fill only before the option's expiry."""
    fill = bust.fill
    if fill is None:
        raise InputError(
            f"fill_bust {bust.bust_id}: no fill {bust.fill_id!r} is booked for account {bust.account_id} "
            "(an unknown fill id, or a liquidation fill, which a bust cannot reverse)"
        )
    if fill.account_id != bust.account_id:
        raise InputError(
            f"fill_bust {bust.bust_id}: fill {fill.fill_id} was booked for account {fill.account_id}, "
            f"not {bust.account_id}; send the bust with the fill's account"
        )
    earlier = state.busted_fills.get(fill.fill_id)
    if earlier is not None:
        raise InputError(f"fill_bust {bust.bust_id}: fill {fill.fill_id} was already busted by {earlier}")
    spec = _instrument(state, fill.instrument)  # the parameters in force must still list it to book it
    if spec.kind == "option" and spec.expiry is not None and bust.occurred_at >= spec.expiry:
        # Settled (or settling) at its expiry, the option no longer trades: a reversal would
        # book a position in it that nothing would ever close (as a late fill would).
        raise InputError(
            f"fill_bust {bust.bust_id}: {fill.instrument} expired at {spec.expiry.isoformat()}; a bust at "
            f"{bust.occurred_at.isoformat()} cannot reverse fill {fill.fill_id} (the option settles at its "
            "expiry and no longer trades)"
        )


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())[:500]


def _check_option_fill(spec: InstrumentSpec, fill: Fill | LiquidationFill) -> None:
    """Options are held in cross margin only, and trade until their expiry (CONTRACT v2)."""
    if isinstance(fill, Fill) and fill.margin_mode != "cross":
        raise InputError(
            f"{fill.instrument} is an option: options are held in cross margin only, not {fill.margin_mode}"
        )
    if spec.expiry is not None and fill.occurred_at >= spec.expiry:
        raise InputError(
            f"{fill.instrument} expired at {spec.expiry.isoformat()}; a fill at {fill.occurred_at.isoformat()} "
            "is after its expiry (it settles, it no longer trades)"
        )


def _check_liquidation_fill(state: LedgerState, fill: LiquidationFill) -> None:
    """A liquidation fill must execute an order the ledger issued (open, or cancelled since: the
    exchange may execute it before it learns the call resolved, and an execution is a fact whose
    counterpart fill is booked too), of the same account, instrument and side, for no more than
    what is left of it."""
    order = state.liquidations.get(fill.liquidation_id)
    if order is None:
        raise InputError(
            f"liquidation_fill for {fill.liquidation_id}: no liquidation order with quantity left has that id"
        )
    if (order.account_id, order.instrument, order.side) != (fill.account_id, fill.instrument, fill.side):
        raise InputError(
            f"liquidation_fill for {fill.liquidation_id} does not match its order "
            f"({order.account_id} {order.side} {order.instrument})"
        )
    if fill.quantity > order.remaining:
        raise InputError(
            f"liquidation_fill for {fill.liquidation_id} fills {to_wire(fill.quantity)}, more than the "
            f"{to_wire(order.remaining)} left of the order"
        )


# --------------------------------------------------------------------------------------------
# apply: fold one event (input or decision) into the state


@exact
def apply(state: LedgerState, event_type: str, message: InputMessage | None, payload: dict[str, Any]) -> None:
    """Fold one event. Input events come with their typed ``message``; decisions with ``None``
    and act on their ``payload``."""
    _apply(state, event_type, message, payload)


def _apply(state: LedgerState, event_type: str, message: InputMessage | None, payload: dict[str, Any]) -> None:
    """``apply`` for callers already under the ledger context."""
    if message is not None:
        booking.apply_input(state, message)
        return
    decision = decision_of(event_type, payload)
    if decision is not None:
        booking.apply_decision(state, decision)


# --------------------------------------------------------------------------------------------
# decide and step


@exact
def step(state: LedgerState, message: InputMessage, position: int, shard: int = 0) -> list[ev.Event]:
    """Apply an admitted input event at ``position``, decide, and apply each decision as it is
    taken. Returns the decisions, in order, keyed and caused by ``position``."""
    return step_in_context(state, message, position, shard)


def step_in_context(state: LedgerState, message: InputMessage, position: int, shard: int) -> list[ev.Event]:
    """``step`` for a loop already under the ledger context (``numbers.require_ledger_context``
    says so): the replay of ``audit verify`` calls it for every input of the log."""
    event_type = ev.INPUT_EVENT_TYPES[message.type][0]
    # Dynamic margin's samples of the boundaries this event crosses, taken before it is applied
    # (with the marks applied before it, under the blocks in force before it: CONTRACT v2) and
    # decided after it, first of its decisions.
    rates = _rate_samples(state, message) if state.parameters.dynamic_margin else None
    # The accounts this step touches are gathered apart from those ``state.touched`` already
    # holds (and added to them at the end): the lifecycle re-margins every account the input
    # changed and re-indexes them. The replay empties ``state.touched`` after every event: the
    # step then gathers into it directly, with no set of its own to make and merge back.
    outer = state.touched
    own = bool(outer)
    if own:
        state.touched = set()
    try:
        _apply(state, event_type, message, {})
        # Not a copy: ``lifecycle.decide`` reads ``changed`` before its first decision, which is
        # when the decisions' own accounts start to be added to this set.
        return _decide(state, message, position, shard, state.touched, rates)
    finally:
        if own:
            outer |= state.touched
            state.touched = outer


def _rate_samples(state: LedgerState, message: InputMessage) -> list[MarginRatesChanged] | None:
    """The ``MarginRatesChanged`` decisions of the boundaries ``message`` crosses (CONTRACT v2
    "Dynamic margin"), taken before it is applied: event time is ``state.last_occurred_at`` (the
    largest occurred_at applied so far) and each underlying is sampled with its last applied
    mark. In boundary order; at one boundary, in the document's order of the blocks. None when
    the event crosses no boundary (or every boundary it crosses is before the underlying's first
    mark). ``admit`` refused an event that crosses too many."""
    event_time = state.last_occurred_at
    if event_time is None or message.occurred_at <= event_time:
        return None
    version = state.parameters.version
    found: list[tuple[datetime, int, MarginRatesChanged]] = []
    for place, spec in enumerate(state.parameters.dynamic_margin):
        underlying = spec.underlying
        current = state.volatility.get(underlying) or dynamicmargin.VolatilityState(underlying)
        mark = state.mark_price(underlying)
        for _after, change in dynamicmargin.samples_for_event(spec, current, event_time, message.occurred_at, mark):
            decision = MarginRatesChanged(
                ev.MARGIN_RATES_ACCOUNT,
                change.underlying,
                change.sample_at,
                change.sample_price,
                change.log_return,
                change.volatility,
                change.raw_multiplier,
                change.multiplier,
                change.previous_multiplier,
                change.index,
                version,
            )
            found.append((change.sample_at, place, decision))
    if not found:
        return None
    found.sort(key=lambda item: (item[0], item[1]))
    return [decision for _at, _place, decision in found]


def _decide(
    state: LedgerState,
    message: InputMessage,
    position: int,
    shard: int,
    changed: set[str],
    rates: list[MarginRatesChanged] | None = None,
) -> list[ev.Event]:
    keyed: list[ev.Event] = []

    def emit(decision: Decision) -> None:
        payload = decision.payload()
        keyed_decision = ev.Event(
            type=decision.TYPE,
            stream=ev.account_stream(decision.account_id),
            payload=payload,
            occurred_at=message.occurred_at,
            idempotency_key=ev.decision_key(shard, position, len(keyed)),
            cause_position=position,
        )
        # Booked from the payload the log keeps, as a replay books it: the same digits and
        # exponents live and replayed.
        booking.apply_decision(state, type(decision).from_payload(payload))
        keyed.append(keyed_decision)

    if rates is not None:
        # Booked before the lifecycle looks: a multiplier that moved touches every holder on its
        # underlying (``booking``), which ``changed`` (``state.touched``) then holds, so they are
        # re-margined under the new rates in this step.
        for sample in rates:
            emit(sample)
    lifecycle.decide(state, message, position, emit, changed)
    return keyed


def replay_event(state: LedgerState, event_type: str, payload: dict[str, Any]) -> None:
    """Fold a logged event (input or decision) without deciding: how state is rebuilt from the log."""
    state.triggers.stale = True  # derived state: the next step rebuilds it (triggers.py)
    if event_type in ev.MODEL_BY_EVENT_TYPE:
        apply(state, event_type, ev.trusted_message(event_type, payload), payload)
    else:
        apply(state, event_type, None, payload)


# --------------------------------------------------------------------------------------------
# invariants


@exact
def conservation(state: LedgerState) -> dict[str, Decimal]:
    """Per asset: sum of balances + isolated margin + cost-basis PnL at a common price, minus
    (deposits - withdrawals). Zero for every asset when the books balance.

    Unrealised PnL sums to -sum(cost) at any common mark because quantities sum to zero over both
    sides of every trade; so the check needs no marks: it adds -cost per position (and the
    insurance fund and fee account are ordinary accounts in ``state.accounts``). Deficits of
    bankrupt accounts are carried in their negative balances until the waterfall covers them.

    Options: the premium moves through the balances at every fill and the settlement moves the
    intrinsic value the same way (``booking.trade_option``), so the balances already hold every
    move of money; the option values (quantity x contract size x a common mark) sum to zero for
    the same reason as the PnL, and an option's cost (premium paid or received, already in the
    balance) is not a term.
    """
    # The terms gathered by asset and each list summed by ``sum``, not a running total per asset
    # read and written back for every term (cheaper: docs/performance.md). Exact sums: the order
    # does not change a digit.
    settled_in = {symbol: spec.settlement_asset for symbol, spec in state.parameters.instruments_by_symbol.items()}
    # An option's premium moved through the balances at its fills: its cost is not owed to anyone.
    options = {symbol for symbol, spec in state.parameters.instruments_by_symbol.items() if spec.kind == "option"}
    added: dict[str, list[Decimal]] = {}  # balances and isolated margin
    costs: dict[str, list[Decimal]] = {}
    for account in state.accounts.values():
        for asset, amount in account.balances.items():
            _terms(added, asset).append(amount)
        for position in account.positions.values():
            asset = settled_in.get(position.instrument, "?")
            if position.isolated_margin:  # not a cross position's zero: no sum with it to build
                _terms(added, asset).append(position.isolated_margin)
            if position.instrument not in options:
                _terms(costs, asset).append(position.cost)
    totals: dict[str, Decimal] = {}
    for asset in [*added, *costs, *state.deposits, *state.withdrawals]:
        if asset not in totals:
            totals[asset] = (
                sum(added.get(asset, ()), ZERO)
                - sum(costs.get(asset, ()), ZERO)
                - state.deposits.get(asset, ZERO)
                + state.withdrawals.get(asset, ZERO)
            )
    return {asset: amount for asset, amount in totals.items() if amount != ZERO}


def _terms(by_asset: dict[str, list[Decimal]], asset: str) -> list[Decimal]:
    found = by_asset.get(asset)
    if found is None:
        found = by_asset[asset] = []
    return found
