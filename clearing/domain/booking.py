"""Booking: how an event moves the state. Input events (fills and their busts, transfers,
marks, funding, settlements, liquidation fills, parameters) and the ledger's own decisions
(``decisions``) are applied here; nothing here decides. The lifecycle (which decides) sits
above this module and the fold (``fold.step``) calls both: the lifecycle never books, and
booking never decides.

Money moves only by the rules below, and every move has its opposite entry, so the conservation
invariant of ``fold.conservation`` holds at every position of the log.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from clearing.domain import dynamicmargin
from clearing.domain.black76 import intrinsic_value
from clearing.domain.decisions import (
    AccountBankrupted,
    Decision,
    InsuranceFundDrawn,
    IsolatedMarginTransferred,
    LiquidationOrderCancelled,
    LiquidationOrderIssued,
    MarginCallEscalated,
    MarginCallIssued,
    MarginCallResolved,
    MarginModelChanged,
    MarginRatesChanged,
    PositionAutoDeleveraged,
    WithdrawalApproved,
)
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
from clearing.domain.levels import Level
from clearing.domain.marginmodel import ISOLATED, scope_instrument
from clearing.domain.messages import InputError
from clearing.domain.numbers import ZERO, divide, round_credit, round_requirement
from clearing.domain.params import load_parameters
from clearing.domain.state import (
    FEE_ACCOUNT,
    FUNDING_POOL_ACCOUNT,
    INSURANCE_FUND_ACCOUNT,
    OPEN_FILLS_MAX,
    Account,
    InstrumentTerms,
    LedgerState,
    LiquidationOrder,
    MarginStatus,
    MarkState,
    OpenFill,
    Position,
)


def apply_input(state: LedgerState, message: InputMessage) -> None:
    """Book an input event (under the ledger context: ``fold.apply`` and ``fold.step``)."""
    _APPLY_INPUT[type(message)](state, message)
    if state.last_occurred_at is None or message.occurred_at > state.last_occurred_at:
        state.last_occurred_at = message.occurred_at


def apply_decision(state: LedgerState, decision: Decision) -> None:
    """Book a decision (a rejection books nothing)."""
    applier = _APPLY_DECISION.get(type(decision))
    if applier is not None:
        applier(state, decision)


# --------------------------------------------------------------------------------------------
# input events


def _apply_fill(state: LedgerState, fill: Fill) -> None:
    _pair(state, fill)
    spec = state.terms().instruments[fill.instrument]
    account = state.account(fill.account_id)
    quantity = fill.quantity if fill.side == "buy" else -fill.quantity
    book = trade_option if spec.is_option else trade
    book(state, account, account.position(fill.instrument, fill.margin_mode), spec, quantity, fill.price)
    if fill.fee != ZERO:
        # The fee moves from the account to the fee account: a negative fee (maker rebate) moves
        # the other way. Fees are charged to the wallet, never to isolated collateral.
        asset = fill.fee_asset or spec.settlement_asset
        account.debit(asset, fill.fee)
        state.account(FEE_ACCOUNT).credit(asset, fill.fee)
        state.touched.add(FEE_ACCOUNT)


def _pair(state: LedgerState, fill: Fill) -> None:
    """Keep a trade's first fill until its second comes (``fold.check_counterpart``), then forget it."""
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
    larger position the opposite booking realises against the average cost). An option's bust
    hands its premium back (``trade_option``)."""
    fill = bust.fill
    if fill is None:  # admitted busts carry their fill (``fold.check_bust``)
        raise InputError(f"fill_bust {bust.bust_id} carries no booked fill")
    spec = state.terms().instruments[fill.instrument]
    account = state.account(fill.account_id)
    quantity = -fill.quantity if fill.side == "buy" else fill.quantity
    book = trade_option if spec.is_option else trade  # an option's premium goes back as it came
    book(state, account, account.position(fill.instrument, fill.margin_mode), spec, quantity, fill.price)
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
        # Each figure once (docs/performance.md: a decimal operation is the unit of cost here).
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
        # So the zero is credited only where it makes the balance's entry (docs/performance.md).
        account.credit(spec.settlement_asset, ZERO)
    _track_holder(state, account.account_id, position)
    state.touched.add(account.account_id)
    return realised


def trade_option(
    state: LedgerState, account: Account, position: Position, spec: InstrumentTerms, quantity: Decimal, price: Decimal
) -> Decimal:
    """Book a signed quantity of an option at a price (CONTRACT v2): the premium
    (quantity x price x contract size) moves at the fill, out of the balance for a buy and into it
    for a sale, so equity counts the position at its mark (``q x cs x mark``, long positive,
    short negative) and nothing more moves when it closes. Options are held in cross margin only
    (``fold.admit``).

    Cost and realised PnL are kept as ``trade`` keeps them (the same lot arithmetic: the closed
    share of the cost, rounded so that a reported gain never exceeds what the fills back), for
    reporting only: the cash of a close already moved with its premium. Returns the realised PnL.
    """
    premium = spec.times_size(quantity * price)
    account.debit(spec.settlement_asset, premium)
    realised = ZERO
    held = position.quantity
    long = held > ZERO
    if held == ZERO or long == (quantity > ZERO):
        position.cost += premium
        position.quantity = held + quantity
    else:
        held_size = abs(held)
        traded = abs(quantity)
        closing = min(traded, held_size)
        signed = closing if long else -closing
        removed = position.cost if closing == held_size else -round_credit(-divide(position.cost * closing, held_size))
        realised = spec.times_size(signed * price) - removed
        position.cost -= removed
        position.quantity = held - signed
        opening = traded - closing
        if opening > ZERO:
            reopened = -opening if long else opening
            position.quantity = reopened
            position.cost = spec.times_size(reopened * price)
        position.realised_pnl += realised
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
    # pool credited their sum once. Exact, the payments need no order either: the holders are not
    # sorted (docs/performance.md has what both save).
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
    """A dated future settles: every open position closes at the settlement price. An option
    settles at its intrinsic value at the underlying's settlement price (``settlement.price``):
    every position closes at it, so each long is paid quantity x contract size x intrinsic by
    the shorts (through their premiums of the close, ``trade_option``), and the option's mark
    becomes that value."""
    spec = state.terms().instruments[settlement.symbol]
    price = settlement.price
    book = trade
    if spec.is_option:
        option = state.parameters.instruments_by_symbol[settlement.symbol]
        assert option.option_type is not None and option.strike is not None  # params validates options
        price = intrinsic_value(option.option_type, settlement.price, option.strike)
        book = trade_option
    state.marks[settlement.symbol] = MarkState(price, settlement.occurred_at)
    state.marks_touched.add(settlement.symbol)
    if spec.is_option:
        _withdraw_orders(state, settlement.symbol)
    for account_id in sorted(state.holders.get(settlement.symbol, ())):
        account = state.accounts[account_id]
        for position in list(account.positions.values()):
            if position.instrument == settlement.symbol and position.quantity != ZERO:
                book(state, account, position, spec, -position.quantity, price)


def _withdraw_orders(state: LedgerState, symbol: str) -> None:
    """An expired option's liquidation orders can no longer execute (nothing trades after the
    expiry) and the settlement closes what they were to close: they leave the open orders and
    their scopes' pending lists, so a late execution is refused at admission and the lifecycle
    does not wait for it."""
    for liquidation_id, order in sorted(state.liquidations.items()):
        if order.instrument != symbol:
            continue
        del state.liquidations[liquidation_id]
        status = state.accounts[order.account_id].margin.get(order.scope)
        if status is not None and liquidation_id in status.pending_orders:
            status.pending_orders.remove(liquidation_id)
        state.touched.add(order.account_id)


def _apply_withdrawal_request(state: LedgerState, withdrawal: Withdrawal) -> None:
    # A request moves nothing: the decision (approved or rejected) does.
    state.touched.add(withdrawal.account_id)


def _apply_isolated_request(state: LedgerState, transfer: IsolatedMarginTransfer) -> None:
    state.touched.add(transfer.account_id)


def _apply_model_request(state: LedgerState, request: MarginModelRequest) -> None:
    # A request moves nothing: the decision (changed or rejected) does.
    state.touched.add(request.account_id)


def _apply_parameters(state: LedgerState, message: RiskParametersMessage) -> None:
    """The new document is in force. Dynamic margin (CONTRACT v2) across documents: an underlying
    whose ``dynamic_margin`` block the new document drops is no longer scaled, its multiplier back
    to 1 and its samples forgotten (a block added again later starts afresh, at its first
    boundary with a mark, as a new block does); a block the new document keeps, changed or not,
    keeps its state: the volatility measured so far goes on, and the new figures (lambda,
    reference, floor, cap, buffer, sample_seconds) apply from its next sample, the multiplier in
    force staying until then. Every holder is re-margined under the new document
    (``lifecycle``), so a multiplier back to 1 takes effect at once."""
    parameters = state.parameters = load_parameters(message.parameters)
    for underlying in [u for u in state.volatility if parameters.dynamic_margin_spec(u) is None]:
        del state.volatility[underlying]
    state.touched.update(state.holders_all())


def _apply_liquidation_fill(state: LedgerState, fill: LiquidationFill) -> None:
    """Book the execution on the order's position and charge the liquidation fee (fee_rate x
    notional executed, an amount owed: rounded up) to the insurance fund: from the wallet for a
    cross position, from the collateral of an isolated one."""
    order = state.liquidations[fill.liquidation_id]
    spec = state.terms().instruments[fill.instrument]
    account = state.account(fill.account_id)
    position = account.position(fill.instrument, order.margin_mode)
    quantity = fill.quantity if fill.side == "buy" else -fill.quantity
    fee = round_requirement(fill.quantity * fill.price * spec.contract_size * state.parameters.liquidation.fee_rate)
    if order.margin_mode == ISOLATED:
        position.isolated_margin -= fee
    else:
        account.debit(spec.settlement_asset, fee)
    state.account(INSURANCE_FUND_ACCOUNT).credit(spec.settlement_asset, fee)
    book = trade_option if spec.is_option else trade
    book(state, account, position, spec, quantity, fill.price)
    order.remaining -= fill.quantity
    if order.remaining == ZERO:
        del state.liquidations[order.liquidation_id]
        status = account.margin.get(order.scope)
        if status is not None and order.liquidation_id in status.pending_orders:
            status.pending_orders.remove(order.liquidation_id)
    state.touched.update((account.account_id, INSURANCE_FUND_ACCOUNT))


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
    MarginModelRequest: _apply_model_request,
}


# --------------------------------------------------------------------------------------------
# decisions


def _apply_withdrawal_approved(state: LedgerState, decision: WithdrawalApproved) -> None:
    asset, amount = decision.asset, decision.amount
    state.account(decision.account_id).debit(asset, amount)
    state.withdrawals[asset] = state.withdrawals.get(asset, ZERO) + amount
    state.touched.add(decision.account_id)


def _apply_isolated_transferred(state: LedgerState, decision: IsolatedMarginTransferred) -> None:
    spec = state.parameters.instruments_by_symbol[decision.instrument]
    account = state.account(decision.account_id)
    position = account.position(decision.instrument, ISOLATED)
    position.isolated_margin += decision.amount
    account.debit(spec.settlement_asset, decision.amount)
    state.touched.add(account.account_id)


def _status(state: LedgerState, account_id: str, scope: str) -> tuple[Account, MarginStatus]:
    account = state.account(account_id)
    found = account.margin.get(scope)
    if found is None:
        found = account.margin[scope] = MarginStatus()
    state.touched.add(account.account_id)
    return account, found


def _apply_call(state: LedgerState, decision: MarginCallIssued | MarginCallEscalated) -> None:
    account, status = _status(state, decision.account_id, decision.scope)
    status.status = decision.level.value
    status.margin_call_id = decision.margin_call_id
    key = (account.account_id, decision.scope)
    if decision.level == Level.MAINTENANCE and decision.deadline is not None:
        status.deadline = decision.deadline
        state.deadlines[key] = decision.deadline
    else:
        state.deadlines.pop(key, None)


def _apply_resolved(state: LedgerState, decision: MarginCallResolved) -> None:
    account, status = _status(state, decision.account_id, decision.scope)
    if status.status == Level.BANKRUPT:
        account.deficit = ZERO
    for liquidation_id in status.pending_orders:
        order = state.liquidations.get(liquidation_id)
        if order is not None:
            order.cancelled = True
    del account.margin[decision.scope]
    state.deadlines.pop((account.account_id, decision.scope), None)


def _apply_order(state: LedgerState, decision: LiquidationOrderIssued) -> None:
    _account, status = _status(state, decision.account_id, decision.scope)
    order = LiquidationOrder(
        decision.liquidation_id,
        decision.account_id,
        decision.scope,
        decision.instrument,
        decision.margin_mode,
        decision.side,
        decision.quantity,
        decision.quantity,
    )
    state.liquidations[order.liquidation_id] = order
    status.pending_orders.append(order.liquidation_id)
    status.status = Level.LIQUIDATION.value
    state.deadlines.pop((decision.account_id, decision.scope), None)


def _apply_insurance_draw(state: LedgerState, decision: InsuranceFundDrawn) -> None:
    account = state.account(decision.account_id)
    state.account(INSURANCE_FUND_ACCOUNT).debit(decision.asset, decision.amount)
    instrument = scope_instrument(decision.scope)
    if instrument is not None:
        account.position(instrument, ISOLATED).isolated_margin += decision.amount
    else:
        account.credit(decision.asset, decision.amount)
    state.touched.update((account.account_id, INSURANCE_FUND_ACCOUNT))


def _apply_bankrupt(state: LedgerState, decision: AccountBankrupted) -> None:
    account, status = _status(state, decision.account_id, decision.scope)
    status.status = Level.BANKRUPT.value
    account.deficit = decision.deficit


def _apply_order_cancelled(state: LedgerState, decision: LiquidationOrderCancelled) -> None:
    """The order leaves the scope's pending orders; it stays known (``cancelled``) so that an
    execution the exchange sends before it learns of the cancel is still admitted and booked."""
    _account, status = _status(state, decision.account_id, decision.scope)
    order = state.liquidations.get(decision.liquidation_id)
    if order is not None:
        order.cancelled = True
    if decision.liquidation_id in status.pending_orders:
        status.pending_orders.remove(decision.liquidation_id)


def _apply_deleveraged(state: LedgerState, decision: PositionAutoDeleveraged) -> None:
    """Both sides of one auto-deleveraging step, booked by the ledger itself at the bankruptcy
    price with no fee: the counterparty ``side`` ``quantity``, the bankrupt scope the opposite.
    Two ``trade`` bookings of opposite quantities at one price: double entry holds as for a fill
    and its counterpart (an option's: two premium bookings, ``trade_option``)."""
    spec = state.terms().instruments[decision.instrument]
    book = trade_option if spec.is_option else trade
    quantity = decision.quantity if decision.side == "buy" else -decision.quantity
    counterparty = state.account(decision.account_id)
    book(
        state,
        counterparty,
        counterparty.position(decision.instrument, decision.margin_mode),
        spec,
        quantity,
        decision.price,
    )
    bankrupt = state.account(decision.bankrupt_account_id)
    position = bankrupt.position(decision.instrument, decision.bankrupt_margin_mode)
    book(state, bankrupt, position, spec, -quantity, decision.price)


def _apply_rates_changed(state: LedgerState, decision: MarginRatesChanged) -> None:
    """A dynamic-margin sample: the underlying's volatility state goes on from it. When the
    multiplier in force moves, every holder of an instrument on the underlying is touched, so the
    step re-margins it under the new rates at once (an account the new rates push across a
    threshold gets its call in this step) and re-indexes it (its triggers move with the rates)."""
    underlying = decision.underlying
    if state.parameters.dynamic_margin_spec(underlying) is None:
        # Sampled under the block in force before its cause, a document that drops the block
        # (applied first: samples are decided after their event): the drop wins, the
        # multiplier stays 1 (``_apply_parameters``).
        return
    before = state.multiplier(underlying)
    current = state.volatility.get(underlying) or dynamicmargin.VolatilityState(underlying)
    change = dynamicmargin.RatesChange(
        underlying=underlying,
        sample_at=decision.sample_at,
        sample_price=decision.sample_price,
        log_return=decision.log_return,
        volatility=decision.volatility,
        raw_multiplier=decision.raw_multiplier,
        multiplier=decision.multiplier,
        previous_multiplier=decision.previous_multiplier,
        index=decision.index,
    )
    state.volatility[underlying] = dynamicmargin.apply(current, change)
    if decision.multiplier != before:
        for spec in state.parameters.instruments_on(underlying):
            holders = state.holders.get(spec.symbol)
            if holders:
                state.touched.update(holders)


def _apply_model_changed(state: LedgerState, decision: MarginModelChanged) -> None:
    """The account's cross scope is margined by ``decision.model`` from here on; touched, so the
    step re-margins and re-indexes it under that model (``lifecycle.decide``)."""
    state.account(decision.account_id).margin_model = decision.model
    state.touched.add(decision.account_id)


# Rejections (withdrawal, isolated transfer, margin model) move nothing: they have no applier.
_APPLY_DECISION: dict[type, Callable[[LedgerState, Any], None]] = {
    WithdrawalApproved: _apply_withdrawal_approved,
    IsolatedMarginTransferred: _apply_isolated_transferred,
    MarginCallIssued: _apply_call,
    MarginCallEscalated: _apply_call,
    MarginCallResolved: _apply_resolved,
    LiquidationOrderIssued: _apply_order,
    InsuranceFundDrawn: _apply_insurance_draw,
    AccountBankrupted: _apply_bankrupt,
    LiquidationOrderCancelled: _apply_order_cancelled,
    PositionAutoDeleveraged: _apply_deleveraged,
    MarginModelChanged: _apply_model_changed,
    MarginRatesChanged: _apply_rates_changed,
}
