"""The pure fold: ``admit`` checks an input against the state, ``apply`` folds an event into the
state, ``decide`` says what the ledger decides because of it, ``step`` does all three.

No I/O, no clock, no randomness: time is the event's ``occurred_at`` and decision ids derive from
log positions, so replaying the log reproduces every decision exactly.

Money moves only by the rules below, and every move has its opposite entry, so the conservation
invariant holds at every position of the log (see ``conservation``):

    sum(balances) + sum(isolated margin) + sum(unrealised PnL at any common mark)
        == deposits - withdrawals        (per asset)
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from clearing.domain import events as ev
from clearing.domain import lifecycle  # decisions, and what a liquidation fill does
from clearing.domain.inputs import (
    Deposit,
    Fill,
    FillBust,
    Funding,
    InputMessage,
    IsolatedMarginTransfer,
    LiquidationFill,
    Mark,
    RiskParametersMessage,
    Settlement,
    Withdrawal,
)
from clearing.domain.messages import InputError
from clearing.domain.numbers import ZERO, divide, exact, parse_decimal, round_credit, to_wire
from clearing.domain.params import BOOKED_KINDS, InstrumentSpec, load_parameters
from clearing.domain.state import (
    FEE_ACCOUNT,
    FUNDING_POOL_ACCOUNT,
    OPEN_FILLS_MAX,
    Account,
    InstrumentTerms,
    LedgerState,
    MarkState,
    OpenFill,
    Position,
)


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
    match message:
        case Fill() | LiquidationFill():
            spec = _instrument(state, message.instrument)
            if isinstance(message, LiquidationFill):
                lifecycle.check_liquidation_fill(state, message)
            if isinstance(message, Fill) and message.fee_asset is not None:
                _asset(state, message.fee_asset, "fee_asset")
            if spec.kind not in BOOKED_KINDS:
                raise InputError(
                    f"{message.instrument} is a {spec.kind}; this ledger version books linear perpetuals "
                    "and futures only"
                )
            if isinstance(message, Fill):
                check_counterpart(state, message)
        case FillBust():
            check_bust(state, message)
        case Deposit() | Withdrawal():
            _asset(state, message.asset, "asset")
        case IsolatedMarginTransfer():
            spec = _instrument(state, message.instrument)
            if spec.kind not in BOOKED_KINDS:  # options are held in cross margin only (CONTRACT v2)
                raise InputError(
                    f"isolated margin applies to positions this ledger version books; {message.instrument} is a "
                    f"{spec.kind}"
                )
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
            if spec.kind != "future":
                raise InputError(f"settlement applies to dated futures; {message.symbol} is a {spec.kind}")
        case RiskParametersMessage():
            try:
                load_parameters(message.parameters)
            except ValueError as error:
                raise InputError(f"risk_parameters document rejected: {_first_line(error)}") from None


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
    """A bust reverses a fill booked on this shard, of the account it names, once."""
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
    _instrument(state, fill.instrument)  # the parameters in force must still list it to book it


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())[:500]


# --------------------------------------------------------------------------------------------
# apply: fold one event (input or decision) into the state


@exact
def apply(state: LedgerState, event_type: str, message: InputMessage | None, payload: dict[str, Any]) -> None:
    """Fold one event. Input events come with their typed ``message``; decisions with ``None``
    and act on their ``payload``."""
    _apply(state, event_type, message, payload)


def _apply(state: LedgerState, event_type: str, message: InputMessage | None, payload: dict[str, Any]) -> None:
    """``apply`` for callers already under the ledger context (``step``, a decision's ``emit``)."""
    if message is not None:
        _APPLY_INPUT[type(message)](state, message)
    else:
        handler = _APPLY_DECISION.get(event_type)
        if handler is not None:
            handler(state, payload)
    if message is not None and (state.last_occurred_at is None or message.occurred_at > state.last_occurred_at):
        state.last_occurred_at = message.occurred_at


def _apply_fill(state: LedgerState, fill: Fill) -> None:
    _pair(state, fill)
    spec = state.terms().instruments[fill.instrument]
    account = state.account(fill.account_id)
    quantity = fill.quantity if fill.side == "buy" else -fill.quantity
    trade(state, account, account.position(fill.instrument, fill.margin_mode), spec, quantity, fill.price)
    if fill.fee != ZERO:
        # The fee moves from the account to the fee account: a negative fee (maker rebate) moves
        # the other way. Fees are charged to the wallet, never to isolated collateral.
        asset = fill.fee_asset or spec.settlement_asset
        account.debit(asset, fill.fee)
        state.account(FEE_ACCOUNT).credit(asset, fill.fee)
        state.touched.add(FEE_ACCOUNT)


def _pair(state: LedgerState, fill: Fill) -> None:
    """Keep a trade's first fill until its second comes (``check_counterpart``), then forget it."""
    open_fills = state.open_fills
    if open_fills.pop(fill.trade_id, None) is None:
        open_fills[fill.trade_id] = OpenFill(
            fill.fill_id, fill.account_id, fill.instrument, fill.side, fill.quantity, fill.price
        )
        if len(open_fills) > OPEN_FILLS_MAX:
            open_fills.popitem(last=False)


def _apply_fill_bust(state: LedgerState, bust: FillBust) -> None:
    """Reverse the busted fill: the opposite quantity booked at the same price on the same
    position, and its fee handed back from the fee account. A fill and its bust move (balance -
    cost) by q x p and then -q x p, so conservation holds through the pair. A trade whose two
    fills are both busted leaves each account's equity at any mark as it was without the trade,
    and its books exactly as before when the trade's fills were all its positions held (on a
    larger position the opposite booking realises against the average cost)."""
    fill = bust.fill
    if fill is None:  # admitted busts carry their fill (``check_bust``)
        raise InputError(f"fill_bust {bust.bust_id} carries no booked fill")
    spec = state.terms().instruments[fill.instrument]
    account = state.account(fill.account_id)
    quantity = -fill.quantity if fill.side == "buy" else fill.quantity
    trade(state, account, account.position(fill.instrument, fill.margin_mode), spec, quantity, fill.price)
    if fill.fee != ZERO:
        asset = fill.fee_asset or spec.settlement_asset
        account.credit(asset, fill.fee)
        state.account(FEE_ACCOUNT).debit(asset, fill.fee)
        state.touched.add(FEE_ACCOUNT)
    _unpair(state, fill)
    state.busted_fills[fill.fill_id] = bust.bust_id


def _unpair(state: LedgerState, fill: Fill) -> None:
    """A busted fill leaves its trade. Waiting for its other side, it is forgotten. Otherwise its
    trade was paired here (or its first fill pushed out): the other side stands, and waits again,
    known by the busted fill's terms flipped, so that a correction sent under the same trade id
    is checked as a second fill. (Of a fill pushed out, this shard cannot tell: then a correction
    with other terms is checked against the busted fill's, the rare case of a shard past
    OPEN_FILLS_MAX open trades.)"""
    open_fills = state.open_fills
    first = open_fills.get(fill.trade_id)
    if first is not None:
        # The busted fill itself, or the standing side that an earlier bust of the trade left.
        standing = first.fill_id == "" and first[2:] == (fill.instrument, fill.side, fill.quantity, fill.price)
        if first.fill_id == fill.fill_id or standing:
            del open_fills[fill.trade_id]
        return
    other = "sell" if fill.side == "buy" else "buy"
    open_fills[fill.trade_id] = OpenFill("", "", fill.instrument, other, fill.quantity, fill.price)
    if len(open_fills) > OPEN_FILLS_MAX:
        open_fills.popitem(last=False)


def trade(
    state: LedgerState, account: Account, position: Position, spec: InstrumentTerms, quantity: Decimal, price: Decimal
) -> Decimal:
    """Book a signed quantity at a price into a position; returns the realised PnL.

    Closing part: the cost removed is the closed share of the open cost. When the whole position
    closes it is exactly the cost; otherwise it is a division, rounded up, so the PnL credited
    (proceeds - removed cost) rounds down: a credit never exceeds what the fills back. The
    remaining cost keeps the rounding, so (balance + quantity x mark - cost) moves by exactly
    quantity x (mark - price) and both sides of a trade stay in balance to the last digit.
    """
    realised = ZERO
    held = position.quantity
    long = held > ZERO
    closes = held != ZERO and long != (quantity > ZERO)
    if not closes:
        position.cost += spec.times_size(quantity * price)
        position.quantity = held + quantity
    else:
        # Each figure once: a decimal operation costs about 500 instructions, and a fill that
        # closes took three absolute values of the position and two of its signs.
        held_size = abs(held)
        traded = abs(quantity)
        closing = min(traded, held_size)
        signed = closing if long else -closing  # the closed quantity, signed as the position
        removed = position.cost if closing == held_size else -round_credit(-divide(position.cost * closing, held_size))
        realised = spec.times_size(signed * price) - removed
        position.cost -= removed
        position.quantity = held - signed
        opening = traded - closing
        if opening > ZERO:
            reopened = -opening if long else opening
            position.quantity = reopened
            position.cost = spec.times_size(reopened * price)
    if closes:
        position.realised_pnl += realised
        if position.margin_mode == "isolated":
            position.isolated_margin += realised
            if position.quantity == ZERO and position.isolated_margin > ZERO:
                # A closed isolated position hands its collateral back to the wallet. A negative
                # remainder stays on the position: its loss is capped at its collateral, and the
                # default waterfall (insurance fund) covers it, never the wallet.
                account.credit(spec.settlement_asset, position.isolated_margin)
                position.isolated_margin = ZERO
        else:
            account.credit(spec.settlement_asset, realised)
    elif position.margin_mode != "isolated" and spec.settlement_asset not in account.balances:
        # A fill that only opens realises nothing. Adding its zero to the realised PnL, the
        # isolated margin or the balance would leave each as it is, digit for digit: each is a
        # sum that started at ZERO, so its exponent is at most 0, and an exact sum is never -0.
        # So the zero is credited only where it makes the balance's entry (1,500 instructions
        # an opening fill).
        account.credit(spec.settlement_asset, ZERO)
    _track_holder(state, account.account_id, position)
    state.touched.add(account.account_id)
    return realised


def _track_holder(state: LedgerState, account_id: str, position: Position) -> None:
    holders = state.holders.get(position.instrument)
    if holders is None:  # not ``setdefault``, which makes an empty set on every call
        holders = state.holders[position.instrument] = set()
    if position.quantity != ZERO:
        holders.add(account_id)
    elif not any(
        p.quantity != ZERO for key, p in state.accounts[account_id].positions.items() if key[0] == position.instrument
    ):
        holders.discard(account_id)


def _apply_deposit(state: LedgerState, deposit: Deposit) -> None:
    state.account(deposit.account_id).credit(deposit.asset, deposit.amount)
    state.deposits[deposit.asset] = state.deposits.get(deposit.asset, ZERO) + deposit.amount
    state.touched.add(deposit.account_id)


def _apply_mark(state: LedgerState, mark: Mark) -> None:
    state.marks[mark.symbol] = MarkState(mark.price, mark.occurred_at, mark.iv)
    state.marks_touched.add(mark.symbol)


def _apply_funding(state: LedgerState, funding: Funding) -> None:
    """Funding payment of a position = quantity x contract size x mark x rate, exact (no
    rounding, so payments over all positions sum to zero): a positive rate takes from longs and
    gives to shorts, through the funding pool account. Isolated positions pay from their
    collateral."""
    spec = state.parameters.instruments_by_symbol[funding.symbol]
    mark = state.mark_price(funding.symbol)
    if mark is None or funding.rate == ZERO:
        return
    pool = state.account(FUNDING_POOL_ACCOUNT)
    state.touched.add(FUNDING_POOL_ACCOUNT)
    symbol, asset = funding.symbol, spec.settlement_asset
    # Exact products and sums, so the order does not matter: one unit payment for every position
    # (q x (size x mark x rate) is q x size x mark x rate to the last digit and exponent), and the
    # pool credited their sum once. A funding of bench/replay.py's 5,000 holders: 35.6 -> 28.3 million
    # instructions here, 73 -> 65 million for the whole event in a verify replay (callgrind; the
    # log's 117 fundings were 9% of its instructions). Exact, the payments need no order either:
    # the holders are not sorted (5 million instructions a funding of 5,000 holders).
    unit = spec.contract_size * mark * funding.rate
    paid: Decimal | None = None
    for account_id in state.holders.get(symbol, ()):
        account = state.accounts[account_id]
        for position in account.positions.values():
            if position.instrument != symbol or position.quantity == ZERO:
                continue
            payment = position.quantity * unit
            position.funding_paid += payment
            paid = payment if paid is None else paid + payment
            if position.margin_mode == "isolated":
                position.isolated_margin -= payment
            else:
                account.debit(asset, payment)
        state.touched.add(account_id)
    if paid is not None:
        pool.credit(asset, paid)


def _apply_settlement(state: LedgerState, settlement: Settlement) -> None:
    """A dated future settles: every open position closes at the settlement price."""
    spec = state.terms().instruments[settlement.symbol]
    state.marks[settlement.symbol] = MarkState(settlement.price, settlement.occurred_at)
    state.marks_touched.add(settlement.symbol)
    for account_id in sorted(state.holders.get(settlement.symbol, ())):
        account = state.accounts[account_id]
        for position in list(account.positions.values()):
            if position.instrument == settlement.symbol and position.quantity != ZERO:
                trade(state, account, position, spec, -position.quantity, settlement.price)


def _apply_liquidation_fill(state: LedgerState, fill: LiquidationFill) -> None:
    lifecycle.apply_liquidation_fill(state, fill)


def _apply_withdrawal_request(state: LedgerState, withdrawal: Withdrawal) -> None:
    # A request moves nothing: the decision (approved or rejected) does.
    state.touched.add(withdrawal.account_id)


def _apply_isolated_request(state: LedgerState, transfer: IsolatedMarginTransfer) -> None:
    state.touched.add(transfer.account_id)


def _apply_parameters(state: LedgerState, message: RiskParametersMessage) -> None:
    state.parameters = load_parameters(message.parameters)
    state.touched.update(state.holders_all())


_APPLY_INPUT: dict[type, Callable[[LedgerState, Any], None]] = {
    Fill: _apply_fill,
    Deposit: _apply_deposit,
    Withdrawal: _apply_withdrawal_request,
    IsolatedMarginTransfer: _apply_isolated_request,
    Mark: _apply_mark,
    Funding: _apply_funding,
    Settlement: _apply_settlement,
    LiquidationFill: _apply_liquidation_fill,
    RiskParametersMessage: _apply_parameters,
    FillBust: _apply_fill_bust,
}


def _apply_withdrawal_approved(state: LedgerState, payload: dict[str, Any]) -> None:
    asset = payload["asset"]
    amount = parse_decimal(payload["amount"], "amount")
    state.account(payload["account_id"]).debit(asset, amount)
    state.withdrawals[asset] = state.withdrawals.get(asset, ZERO) + amount
    state.touched.add(payload["account_id"])


def _apply_isolated_transferred(state: LedgerState, payload: dict[str, Any]) -> None:
    spec = state.parameters.instruments_by_symbol[payload["instrument"]]
    account = state.account(payload["account_id"])
    amount = parse_decimal(payload["amount"], "amount")
    position = account.position(payload["instrument"], "isolated")
    position.isolated_margin += amount
    account.debit(spec.settlement_asset, amount)
    state.touched.add(account.account_id)


_APPLY_DECISION: dict[str, Callable[[LedgerState, dict[str, Any]], None]] = {
    ev.WITHDRAWAL_APPROVED: _apply_withdrawal_approved,
    ev.ISOLATED_MARGIN_TRANSFERRED: _apply_isolated_transferred,
    **lifecycle.DECISION_APPLIERS,
}


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
        return _decide(state, message, position, shard, state.touched)
    finally:
        if own:
            outer |= state.touched
            state.touched = outer


def _decide(state: LedgerState, message: InputMessage, position: int, shard: int, changed: set[str]) -> list[ev.Event]:
    keyed: list[ev.Event] = []

    def emit(decision: ev.Event) -> None:
        keyed_decision = ev.Event(
            type=decision.type,
            stream=decision.stream,
            payload=decision.payload,
            occurred_at=decision.occurred_at,
            idempotency_key=ev.decision_key(shard, position, len(keyed)),
            cause_position=position,
        )
        _apply(state, decision.type, None, decision.payload)
        keyed.append(keyed_decision)

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
    """
    # The terms gathered by asset and each list summed by ``sum``, not a running total per asset
    # read and written back for every term: 32 -> 27 million instructions a sample of the state of
    # bench/replay.py's 5,000 accounts. Exact sums: the order does not change a digit.
    settled_in = {symbol: spec.settlement_asset for symbol, spec in state.parameters.instruments_by_symbol.items()}
    added: dict[str, list[Decimal]] = {}  # balances and isolated margin
    costs: dict[str, list[Decimal]] = {}
    for account in state.accounts.values():
        for asset, amount in account.balances.items():
            _terms(added, asset).append(amount)
        for position in account.positions.values():
            asset = settled_in.get(position.instrument, "?")
            if position.isolated_margin:  # not a cross position's zero: no sum with it to build
                _terms(added, asset).append(position.isolated_margin)
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
