"""Decisions: withdrawals, isolated-margin transfers, the margin-call lifecycle, liquidation
orders and the default waterfall.

Every decision is an event with the numbers it was computed from, the parameter version in force
and the position of its cause. ``decide`` reads the state after the cause was applied and hands
each decision to ``emit``, which applies it at once: a later decision of the same cause (an
insurance-fund draw after a liquidation fill, say) sees the state the earlier ones left.

The lifecycle of a margin scope (the cross account, or one isolated position), DESIGN.md:

    healthy -> warning      ratio >= warning_ratio                           MarginCallIssued
    * -> maintenance        ratio >= 1, deadline = occurred_at + grace       MarginCallIssued/Escalated
    maintenance -> liquidation  deadline reached (at once when grace is 0)   MarginCallEscalated
                                + orders that bring the ratio to target       LiquidationOrderIssued
    liquidation -> liquidation  orders filled, ratio still >= resolve         LiquidationOrderIssued
    liquidation -> bankrupt     no position left and equity < 0:              InsuranceFundDrawn,
                                the fund covers what it can                   AccountBankrupted
    * -> healthy            ratio < resolve_ratio (hysteresis: no flapping)  MarginCallResolved

ratio = maintenance margin / equity; with positions open and equity <= 0 the ratio is infinite.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any, Final, NamedTuple

from clearing.domain import events as ev
from clearing.domain import margin, triggers
from clearing.domain.inputs import (
    Deposit,
    Fill,
    Funding,
    InputMessage,
    IsolatedMarginTransfer,
    LiquidationFill,
    Mark,
    RiskParametersMessage,
    Settlement,
    Withdrawal,
    format_time,
)
from clearing.domain.messages import InputError
from clearing.domain.numbers import (
    ONE,
    ZERO,
    divide,
    parse_decimal,
    round_bankruptcy_price,
    round_display_price,
    round_requirement,
    to_wire,
)
from clearing.domain.state import (
    INSURANCE_FUND_ACCOUNT,
    SYSTEM_ACCOUNTS,
    Account,
    LedgerState,
    LiquidationOrder,
    MarginStatus,
)

Emit = Callable[[ev.Event], None]
SYSTEM_ACCOUNTS_SET: Final = frozenset(SYSTEM_ACCOUNTS)

HEALTHY: Final = "healthy"
WARNING: Final = "warning"
MAINTENANCE: Final = "maintenance"
LIQUIDATION: Final = "liquidation"
BANKRUPT: Final = "bankrupt"
_RANK = {HEALTHY: 0, WARNING: 1, MAINTENANCE: 2, LIQUIDATION: 3, BANKRUPT: 4}
LIQUIDATION_SEARCH_STEPS_MAX: Final = 200


def decide(
    state: LedgerState, message: InputMessage, position: int, emit: Emit, changed: set[str] | None = None
) -> None:
    """Decide on the input ``message`` just applied. ``changed``: the accounts its application
    touched (``fold.step`` passes them, and keeps ``state.touched`` to what this step touches:
    the same set, to which the decisions add their accounts, so it is read before the first);
    each is re-margined in full, unless the trigger index proves the change moves nothing it
    watches (an ordinary fill or a funding payment: ``triggers.absorbs_fill`` and
    ``absorbs_balance``). On a mark, the index names the scopes to look at, or every dependent of
    the symbol when ``state.triggers.brute_force`` is set."""
    index = state.triggers
    indexed = not index.brute_force and not index.stale
    if changed is None:
        changed = _changed_by(message)
    # An ordinary fill the index can prove changes nothing it watches (triggers.absorbs_fill)
    # needs neither a re-margin nor a refresh of its account: with no deadline due, the step
    # has nothing else to look at. Most inputs are such fills: this is asked before the accounts
    # to look at are gathered (a copy of ``changed`` and two more sets: 700 instructions a fill).
    absorbed: set[str]
    if (
        indexed
        and type(message) is Fill
        and _only_account(changed, message.account_id)
        and triggers.absorbs_fill(state, message)
    ):
        if not _deadline_due(state, message.occurred_at):
            return
        absorbed = {message.account_id}
    else:
        absorbed = set()
    # The fee account, the insurance fund and the funding pool are the clearing house's own
    # books, never margined (a fund below zero is a loss to recapitalise, not a margin call).
    full = changed - SYSTEM_ACCOUNTS_SET
    match message:
        case Withdrawal():
            emit(decide_withdrawal(state, message))
        case IsolatedMarginTransfer():
            emit(decide_isolated_transfer(state, message))
    ids = _Ids(position)
    hits: set[tuple[str, str]] = set()
    match message:
        case Mark():
            if indexed:
                hits, always = triggers.crossed(state, message.symbol, message.price)
                full |= always
            else:
                full |= triggers.dependents(state, message.symbol)
        case Funding():
            full.update(state.holders.get(message.symbol, ()))
            if indexed:
                # A payment moves each holder's balance only: the index absorbs it like a fill's.
                absorbed.update(account_id for account_id in full if triggers.absorbs_balance(state, account_id))
        case Settlement():
            full.update(state.holders.get(message.symbol, ()))
        case RiskParametersMessage():
            full.update(state.holders_all())
            full.update(account_id for account_id, account in state.accounts.items() if account.margin)
    full -= absorbed
    # Scopes with a running deadline are looked at on every event: time moves with event time.
    for (account_id, _scope), deadline in state.deadlines.items():
        if deadline <= message.occurred_at:
            full.add(account_id)
    # Scopes in liquidation need no such sweep: only their own events and the prices they depend
    # on move them, and they are in ``triggers.always`` for those prices.

    # Accounts that a decision about another account changes (the insurance fund on a draw):
    # re-margined after the others, so that every account ends the step at a fixpoint.
    others: set[str] = set()
    current = ""
    # The figures each re-margin was taken on, for the index to reuse: valid while no decision
    # moves money (only a draw does; status changes leave the figures as they were).
    figures: dict[tuple[str, str], margin.ScopeRisk] = {}

    def emit_tracked(decision: ev.Event) -> None:
        ids.take(decision.payload)
        before = state.touched
        state.touched = set()
        try:
            emit(decision)
        finally:
            others.update(a for a in state.touched if a != current)
            if decision.type not in _STATUS_ONLY:
                for key in [key for key in figures if key[0] in state.touched]:
                    del figures[key]
                invalid.update(state.touched)
            before |= state.touched
            state.touched = before

    invalid: set[str] = set()

    remargined: set[str] = set()
    selected = full | {account_id for account_id, _scope in hits}
    for _round in range(8):
        for account_id in sorted(selected):
            account = state.accounts.get(account_id)
            if account is None:
                continue
            current = account_id
            names = triggers.scopes(account)
            if account_id not in full:
                names = [scope for scope in names if (account_id, scope) in hits]
            for scope in names:
                risk = _remargin(state, account, scope, message.occurred_at, ids, emit_tracked)
                if account_id not in invalid:
                    figures[(account_id, scope)] = risk
            remargined.add(account_id)
        selected = full = set(others) - SYSTEM_ACCOUNTS_SET
        others.clear()
        if not selected:
            break

    if index.brute_force:
        index.stale = True
    elif not indexed or isinstance(message, RiskParametersMessage):
        triggers.rebuild(state)
    else:
        # Absorbed accounts are left out before the sort: a funding touches every holder of its
        # symbol and the index absorbs most of them (a sort of 5,000 names, 5 million instructions).
        stale = [
            account_id
            for account_id in (remargined | state.touched) - SYSTEM_ACCOUNTS_SET
            if account_id not in absorbed or account_id in remargined
        ]
        for account_id in sorted(stale):
            triggers.refresh(state, account_id, figures)


_STATUS_ONLY = frozenset(
    (
        ev.MARGIN_CALL_ISSUED,
        ev.MARGIN_CALL_ESCALATED,
        ev.MARGIN_CALL_RESOLVED,
        ev.LIQUIDATION_ORDER_ISSUED,
        ev.ACCOUNT_BANKRUPTED,
    )
)


def _deadline_due(state: LedgerState, at: datetime) -> bool:
    if not state.deadlines:
        return False
    return any(deadline <= at for deadline in state.deadlines.values())


def _only_account(changed: set[str], account_id: str) -> bool:
    """Whether the accounts an input changed, less the system accounts, are ``account_id`` alone."""
    if account_id in SYSTEM_ACCOUNTS_SET or account_id not in changed:
        return False
    return all(other == account_id or other in SYSTEM_ACCOUNTS_SET for other in changed)


def _changed_by(message: InputMessage) -> set[str]:
    match message:
        case Fill() | LiquidationFill() | Deposit() | Withdrawal() | IsolatedMarginTransfer():
            return {message.account_id}
    return set()


class _Ids:
    """Ids of the decisions of one cause: derived from its log position, so a replay gives the
    same ids. ``next`` offers the next id of a kind; it is taken only when a decision carrying it
    is emitted (``take``). A re-margin that offers an id and then emits nothing leaves the
    numbering as it was, so the ids do not depend on how many scopes a step looked at (brute
    force looks at more than the trigger index, and a restarted ledger at more than a running
    one)."""

    _KEYS = (("margin_call_id", "MC"), ("liquidation_id", "L"))

    def __init__(self, position: int) -> None:
        self.position = position
        self.count: dict[str, int] = {}

    def next(self, prefix: str) -> str:
        n = self.count.get(prefix, 0) + 1
        return f"{prefix}-{self.position}" if n == 1 else f"{prefix}-{self.position}-{n}"

    def take(self, payload: dict[str, Any]) -> None:
        for key, prefix in self._KEYS:
            value = payload.get(key)
            if value is not None and value == self.next(prefix):
                self.count[prefix] = self.count.get(prefix, 0) + 1


# ---------------------------------------------------------------------------------------------
# requests


def _decision(
    state: LedgerState, event_type: str, account_id: str, occurred_at: datetime, payload: dict[str, Any]
) -> ev.Event:
    body = {"account_id": account_id, **payload, "parameters_version": state.parameters.version}
    return ev.Event(
        type=event_type,
        stream=ev.account_stream(account_id),
        payload=body,
        occurred_at=occurred_at,
        idempotency_key="",
    )


def _liquidating(account: Account) -> str | None:
    for scope, status in sorted(account.margin.items()):
        if status.status in (LIQUIDATION, BANKRUPT):
            return f"the account is in {status.status} ({scope}) and cannot withdraw or add risk"
    return None


def decide_withdrawal(state: LedgerState, request: Withdrawal) -> ev.Event:
    """Approve when the account has the asset, is not being liquidated, and its cross equity
    after the withdrawal stays at or above its initial margin."""
    account = state.accounts.get(request.account_id) or Account(request.account_id)
    held = account.balance(request.asset)
    base = {"transfer_id": request.transfer_id, "asset": request.asset, "amount": to_wire(request.amount)}
    reason = _liquidating(account)
    if reason is None and held < request.amount:
        reason = f"insufficient {request.asset}: balance {to_wire(held)}, requested {to_wire(request.amount)}"
    if reason is None:
        reason = _cross_reason_after(state, account, request.asset, -request.amount)
    if reason is not None:
        return _decision(
            state, ev.WITHDRAWAL_REJECTED, request.account_id, request.occurred_at, {**base, "reason": reason}
        )
    return _decision(state, ev.WITHDRAWAL_APPROVED, request.account_id, request.occurred_at, base)


def decide_isolated_transfer(state: LedgerState, request: IsolatedMarginTransfer) -> ev.Event:
    """Into an isolated position: the wallet must hold the amount and stay at or above its
    initial margin. Out of it: the isolated position must stay at or above its own initial margin."""
    spec = state.parameters.instruments_by_symbol[request.instrument]
    account = state.accounts.get(request.account_id) or Account(request.account_id)
    base = {
        "transfer_id": request.transfer_id,
        "instrument": request.instrument,
        "asset": spec.settlement_asset,
        "amount": to_wire(request.amount),
    }
    reason = _liquidating(account)
    if reason is None and request.amount > ZERO:
        held = account.balance(spec.settlement_asset)
        if held < request.amount:
            reason = (
                f"insufficient {spec.settlement_asset}: balance {to_wire(held)}, requested {to_wire(request.amount)}"
            )
        else:
            reason = _cross_reason_after(state, account, spec.settlement_asset, -request.amount)
    elif reason is None:
        isolated = account.positions.get((request.instrument, margin.ISOLATED))
        allocated = isolated.isolated_margin if isolated is not None else ZERO
        if allocated < -request.amount:
            reason = (
                f"the isolated {request.instrument} position holds {to_wire(allocated)}, "
                f"less than {to_wire(-request.amount)}"
            )
        elif isolated is not None and isolated.quantity != ZERO:
            isolated.isolated_margin += request.amount
            try:
                risk = margin.scope_risk(state, account, margin.isolated_scope(request.instrument))
            finally:
                isolated.isolated_margin -= request.amount
            if risk.equity < risk.initial_margin:
                reason = (
                    f"the isolated {request.instrument} position would hold equity {to_wire(risk.equity)}, "
                    f"below its initial margin {to_wire(risk.initial_margin)}"
                )
    if reason is not None:
        return _decision(
            state,
            ev.ISOLATED_MARGIN_TRANSFER_REJECTED,
            request.account_id,
            request.occurred_at,
            {**base, "reason": reason},
        )
    return _decision(state, ev.ISOLATED_MARGIN_TRANSFERRED, request.account_id, request.occurred_at, base)


def _cross_reason_after(state: LedgerState, account: Account, asset: str, change: Decimal) -> str | None:
    """Why the cross account could not afford a balance change (None when it can): equity after
    the change must stay at or above the initial margin."""
    before = account.balances.get(asset)
    account.credit(asset, change)
    try:
        risk = margin.scope_risk(state, account, margin.CROSS)
    finally:
        if before is None:
            del account.balances[asset]
        else:
            account.balances[asset] = before
    if risk.equity < risk.initial_margin:
        return (
            f"equity after the transfer would be {to_wire(risk.equity)}, below the initial margin "
            f"{to_wire(risk.initial_margin)}"
        )
    return None


# ---------------------------------------------------------------------------------------------
# the margin-call lifecycle


def _level(risk: margin.ScopeRisk, state: LedgerState) -> tuple[str, Decimal | None]:
    """The level the numbers call for, and the ratio (None = infinite or no requirement)."""
    policy = state.parameters.margin_call
    if risk.maintenance_margin <= ZERO:
        return HEALTHY, None
    if risk.equity <= ZERO:
        return MAINTENANCE, None
    ratio = risk.margin_ratio  # None only when equity or maintenance is not positive: handled above
    if ratio is not None and ratio >= ONE:
        return MAINTENANCE, ratio
    if ratio is not None and ratio >= policy.warning_ratio:
        return WARNING, ratio
    return HEALTHY, ratio


def _below_resolve(risk: margin.ScopeRisk, state: LedgerState) -> bool:
    if risk.maintenance_margin <= ZERO:
        return risk.equity >= ZERO
    if risk.equity <= ZERO or risk.margin_ratio is None:
        return False
    return risk.margin_ratio < state.parameters.margin_call.resolve_ratio


def _call_payload(
    state: LedgerState, scope: str, call_id: str, level: str, risk: margin.ScopeRisk, deadline: datetime | None
) -> dict[str, Any]:
    return {
        "margin_call_id": call_id,
        "scope": scope,
        "level": level,
        "equity": to_wire(risk.equity),
        "initial_margin": to_wire(risk.initial_margin),
        "maintenance_margin": to_wire(risk.maintenance_margin),
        "margin_ratio": to_wire(risk.margin_ratio) if risk.margin_ratio is not None else None,
        "shortfall": to_wire(shortfall(risk, state.parameters.margin_call.resolve_ratio)),
        "deadline": format_time(deadline) if deadline is not None else None,
        "marks": {p.instrument: to_wire(shown_price(p)) for p in risk.positions},
    }


def shortfall(risk: margin.ScopeRisk, resolve_ratio: Decimal) -> Decimal:
    """The collateral that would bring the scope's ratio below ``resolve_ratio`` (0 when none is
    needed); an amount owed, so it rounds up."""
    if risk.maintenance_margin <= ZERO:
        return ZERO
    return max(ZERO, round_requirement(divide(risk.maintenance_margin, resolve_ratio) - risk.equity))


# The status of a scope without a margin call: read, never written (a call's decision creates the
# scope's own status when it is applied).
_NO_CALL = MarginStatus()


def _remargin(
    state: LedgerState, account: Account, scope: str, at: datetime, ids: _Ids, emit: Emit
) -> margin.ScopeRisk:
    """Take the scope's lifecycle step; returns the figures it was taken on."""
    status = account.margin.get(scope) or _NO_CALL
    risk = margin.scope_risk(state, account, scope, liquidation_prices=False)
    level, _ratio = _level(risk, state)
    current = status.status

    def call(event_type: str, call_id: str, new_level: str, deadline: datetime | None, **extra: Any) -> None:
        payload = {**_call_payload(state, scope, call_id, new_level, risk, deadline), **extra}
        emit(_decision(state, event_type, account.account_id, at, payload))

    if not risk.has_open_positions and risk.equity < ZERO and current not in (LIQUIDATION, BANKRUPT):
        # A loss beyond the collateral with nothing left to liquidate (closed by ordinary fills,
        # or funding): straight to the waterfall.
        _waterfall(state, account, scope, status.margin_call_id, risk, at, emit)
        return risk
    if current in (HEALTHY, WARNING, MAINTENANCE) and _below_resolve(risk, state):
        if current != HEALTHY and status.margin_call_id is not None:
            call(ev.MARGIN_CALL_RESOLVED, status.margin_call_id, current, None, resolution="ratio below resolve_ratio")
        return risk
    if current == BANKRUPT:
        if risk.equity >= ZERO and status.margin_call_id is not None:
            call(ev.MARGIN_CALL_RESOLVED, status.margin_call_id, BANKRUPT, None, resolution="deficit covered")
        elif risk.has_open_positions and not status.pending_orders:
            # A bankrupt account should not trade, but fills are facts: whatever it holds again
            # is liquidated at once (its equity is below zero, so every position closes).
            _issue_orders(state, account, scope, status.margin_call_id or ids.next("MC"), risk, at, ids, emit)
        return risk
    if current == LIQUIDATION:
        _continue_liquidation(state, account, scope, status, risk, at, ids, emit, call)
        return risk
    # healthy, warning or maintenance, and not below resolve
    if _RANK[level] > _RANK[current] and level in (WARNING, MAINTENANCE):
        grace = timedelta(seconds=state.parameters.margin_call.grace_period_seconds)
        deadline = at + grace if level == MAINTENANCE else None
        if current == HEALTHY:
            call_id = ids.next("MC")
            call(ev.MARGIN_CALL_ISSUED, call_id, level, deadline)
        else:
            call_id = status.margin_call_id or ids.next("MC")
            call(ev.MARGIN_CALL_ESCALATED, call_id, level, deadline)
        status = account.margin[scope]
        current = level
    if current == MAINTENANCE and level == MAINTENANCE and status.deadline is not None and at >= status.deadline:
        call_id = status.margin_call_id or ids.next("MC")
        call(ev.MARGIN_CALL_ESCALATED, call_id, LIQUIDATION, status.deadline)
        _issue_orders(state, account, scope, call_id, risk, at, ids, emit)
    return risk


def _continue_liquidation(
    state: LedgerState,
    account: Account,
    scope: str,
    status: MarginStatus,
    risk: margin.ScopeRisk,
    at: datetime,
    ids: _Ids,
    emit: Emit,
    call: Callable[..., None],
) -> None:
    call_id = status.margin_call_id or ids.next("MC")
    if not risk.has_open_positions:
        if risk.equity < ZERO:
            _waterfall(state, account, scope, call_id, risk, at, emit)
            return
        call(ev.MARGIN_CALL_RESOLVED, call_id, LIQUIDATION, None, resolution="positions closed")
        return
    if _below_resolve(risk, state):
        call(
            ev.MARGIN_CALL_RESOLVED,
            call_id,
            LIQUIDATION,
            None,
            resolution="ratio below resolve_ratio",
            cancelled_orders=sorted(status.pending_orders),
        )
        return
    if not status.pending_orders:
        _issue_orders(state, account, scope, call_id, risk, at, ids, emit)


def _waterfall(
    state: LedgerState,
    account: Account,
    scope: str,
    call_id: str | None,
    risk: margin.ScopeRisk,
    at: datetime,
    emit: Emit,
) -> None:
    """The loss beyond the scope's equity, once nothing is left to liquidate.

    Cross: the insurance fund covers what it holds; what it cannot stays recorded as the account's
    deficit (AccountBankrupted: the account owes it). Isolated: the loss is capped at the
    position's collateral, so the fund takes the whole deficit, even beyond what it holds (it then
    shows a negative balance, a loss of the clearing house to recapitalise, named in
    ``beyond_fund``), and isolated collateral never stays negative.

    ``call_id`` is None when no margin call was open (a loss realised by ordinary fills)."""
    asset = state.parameters.valuation_asset
    deficit = -risk.equity
    fund = state.accounts.get(INSURANCE_FUND_ACCOUNT)
    available = fund.balance(asset) if fund is not None else ZERO
    isolated = scope.startswith(margin.ISOLATED_SCOPE_PREFIX)
    drawn = deficit if isolated else min(deficit, max(available, ZERO))
    if drawn > ZERO:
        payload = {
            "margin_call_id": call_id,
            "scope": scope,
            "asset": asset,
            "amount": to_wire(drawn),
            "deficit": to_wire(deficit),
            "fund_before": to_wire(available),
            "beyond_fund": to_wire(max(ZERO, drawn - max(available, ZERO))),
        }
        emit(_decision(state, ev.INSURANCE_FUND_DRAWN, account.account_id, at, payload))
    remaining = deficit - drawn
    if remaining > ZERO:
        payload = {
            "margin_call_id": call_id,
            "scope": scope,
            "asset": asset,
            "deficit": to_wire(remaining),
            "equity": to_wire(risk.equity),
            "insurance_fund_drawn": to_wire(drawn),
        }
        emit(_decision(state, ev.ACCOUNT_BANKRUPTED, account.account_id, at, payload))
    elif call_id is not None:
        payload = {
            **_call_payload(state, scope, call_id, LIQUIDATION, risk, None),
            "resolution": "loss covered by the insurance fund",
        }
        emit(_decision(state, ev.MARGIN_CALL_RESOLVED, account.account_id, at, payload))


def shown_price(position: margin.PositionRisk) -> Decimal:
    """The price a decision shows: the mark, or for an unmarked instrument the entry price it is
    valued at (cost / quantity, which may not terminate: rounded like every displayed price)."""
    return position.price_used if position.marked else round_display_price(position.price_used)


def quantity_step(quantity: Decimal) -> Decimal:
    """The smallest quantity a liquidation order reduces by: one unit of the last decimal place
    of the position's wire form (at most 1).

    Read from the wire form, not the exponent: 166.100 and 166.1 are the same quantity, but a
    fill decoded from "166.100" keeps the trailing zeros while the log, snapshots and every
    replay hold "166.1", so a step taken from the exponent made a restarted ledger or ``audit
    verify`` order a different quantity than the ledger that decided it."""
    _, _, fraction = to_wire(quantity).partition(".")
    return Decimal(1).scaleb(-len(fraction))


class Reduction(NamedTuple):
    """A scope after reducing one position by ``reduce`` at the price it is valued at, the
    liquidation fee charged (``reduction``)."""

    left: Decimal  # contracts left
    notional: Decimal  # of what is left, settlement asset
    tier: int  # 1-based tier of that notional
    requirement: Decimal  # maintenance of what is left, valuation asset, rounded up
    fee: Decimal  # liquidation fee, rounded up
    equity: Decimal  # scope equity after the fee
    maintenance: Decimal  # scope maintenance after the reduction

    def meets(self, target_ratio: Decimal) -> bool:
        return self.equity > ZERO and self.maintenance <= target_ratio * self.equity


def reduction(
    state: LedgerState, position: margin.PositionRisk, equity: Decimal, maintenance: Decimal, reduce: Decimal
) -> Reduction:
    """What reducing ``position`` by ``reduce`` leaves of the scope (equity and maintenance before
    it given): the arithmetic of ``_issue_orders``, and of ``audit explain`` checking it."""
    spec = state.parameters.instruments_by_symbol[position.instrument]
    fee_rate = state.parameters.liquidation.fee_rate
    left = abs(position.quantity) - reduce
    notional = left * position.contract_size * position.price_used
    tier = spec.tier_for(notional)
    requirement = round_requirement(tier.maintenance(notional) * position.settlement_price) if left else ZERO
    unit_value = position.contract_size * position.price_used * position.settlement_price
    fee = round_requirement(reduce * unit_value * fee_rate)
    after_maintenance = maintenance - position.maintenance_margin + requirement
    return Reduction(left, notional, tier.index, requirement, fee, equity - fee, after_maintenance)


def bankruptcy_price(position: margin.PositionRisk, equity: Decimal, quantity: Decimal) -> tuple[Decimal, Decimal]:
    """(unrounded, rounded) price at which closing ``quantity`` of ``position`` would use up the
    scope's whole ``equity``; rounded towards the side that protects the insurance fund."""
    long = position.quantity > ZERO
    unit = quantity * position.contract_size * position.settlement_price
    raw = position.price_used - divide(equity, unit) if long else position.price_used + divide(equity, unit)
    return raw, max(round_bankruptcy_price(raw, long=long), ZERO)


def _issue_orders(
    state: LedgerState,
    account: Account,
    scope: str,
    call_id: str,
    risk: margin.ScopeRisk,
    at: datetime,
    ids: _Ids,
    emit: Emit,
) -> None:
    """Orders that reduce the riskiest positions (largest maintenance requirement first) by the
    least quantity that brings the scope's ratio to target_ratio, assuming execution at the mark
    and the liquidation fee charged; a position is closed in full only when a part is not enough.
    An equity at or below zero closes everything."""
    policy = state.parameters.liquidation
    equity = risk.equity
    maintenance = risk.maintenance_margin
    ordered = sorted(
        (p for p in risk.positions if p.quantity != ZERO),
        key=lambda p: (-p.maintenance_margin, p.instrument),
    )
    for position in ordered:
        if equity > ZERO and maintenance <= policy.target_ratio * equity:
            break
        held = abs(position.quantity)
        step = quantity_step(position.quantity)

        def enough(reduce: Decimal, p: margin.PositionRisk = position, e: Decimal = equity,
                   m: Decimal = maintenance) -> bool:
            return reduction(state, p, e, m, reduce).meets(policy.target_ratio)

        quantity = held
        if equity > ZERO and enough(held):
            low, high = 0, int(divide(held, step).to_integral_value(rounding=ROUND_CEILING))
            for _ in range(LIQUIDATION_SEARCH_STEPS_MAX):
                if high - low <= 1:
                    break
                middle = (low + high) // 2
                if enough(step * middle):
                    high = middle
                else:
                    low = middle
            quantity = min(held, step * high)
        after = reduction(state, position, equity, maintenance, quantity)
        long = position.quantity > ZERO
        _raw, bankruptcy = bankruptcy_price(position, equity, quantity)
        liquidation_id = ids.next("L")
        emit(
            _decision(
                state,
                ev.LIQUIDATION_ORDER_ISSUED,
                account.account_id,
                at,
                {
                    "liquidation_id": liquidation_id,
                    "margin_call_id": call_id,
                    "scope": scope,
                    "instrument": position.instrument,
                    "margin_mode": position.margin_mode,
                    "side": "sell" if long else "buy",
                    "quantity": to_wire(quantity),
                    "position_quantity": to_wire(position.quantity),
                    "bankruptcy_price": to_wire(bankruptcy),
                    "mark": to_wire(shown_price(position)),
                    "equity": to_wire(equity),
                    "maintenance_margin": to_wire(maintenance),
                    "target_ratio": to_wire(policy.target_ratio),
                    "full": quantity == held,
                },
            )
        )
        equity, maintenance = after.equity, after.maintenance


# ---------------------------------------------------------------------------------------------
# applying decisions and liquidation fills


def _status(state: LedgerState, payload: dict[str, Any]) -> tuple[Account, MarginStatus]:
    account = state.account(payload["account_id"])
    scope = payload["scope"]
    found = account.margin.get(scope)
    if found is None:
        found = account.margin[scope] = MarginStatus()
    state.touched.add(account.account_id)
    return account, found


def _apply_call(state: LedgerState, payload: dict[str, Any]) -> None:
    account, status = _status(state, payload)
    status.status = payload["level"]
    status.margin_call_id = payload["margin_call_id"]
    deadline = payload.get("deadline")
    key = (account.account_id, payload["scope"])
    if payload["level"] == MAINTENANCE and deadline is not None:
        status.deadline = datetime.fromisoformat(deadline)
        state.deadlines[key] = status.deadline
    else:
        state.deadlines.pop(key, None)


def _apply_resolved(state: LedgerState, payload: dict[str, Any]) -> None:
    account, status = _status(state, payload)
    if status.status == BANKRUPT:
        account.deficit = ZERO
    for liquidation_id in status.pending_orders:
        order = state.liquidations.get(liquidation_id)
        if order is not None:
            order.cancelled = True
    del account.margin[payload["scope"]]
    state.deadlines.pop((account.account_id, payload["scope"]), None)


def _apply_order(state: LedgerState, payload: dict[str, Any]) -> None:
    _account, status = _status(state, payload)
    quantity = parse_decimal(payload["quantity"], "quantity")
    order = LiquidationOrder(
        payload["liquidation_id"],
        payload["account_id"],
        payload["scope"],
        payload["instrument"],
        payload["margin_mode"],
        payload["side"],
        quantity,
        quantity,
    )
    state.liquidations[order.liquidation_id] = order
    status.pending_orders.append(order.liquidation_id)
    status.status = LIQUIDATION
    state.deadlines.pop((payload["account_id"], payload["scope"]), None)


def _apply_insurance_draw(state: LedgerState, payload: dict[str, Any]) -> None:
    account = state.account(payload["account_id"])
    amount = parse_decimal(payload["amount"], "amount")
    asset = payload["asset"]
    state.account(INSURANCE_FUND_ACCOUNT).debit(asset, amount)
    scope = payload["scope"]
    if scope.startswith(margin.ISOLATED_SCOPE_PREFIX):
        account.position(scope[len(margin.ISOLATED_SCOPE_PREFIX) :], margin.ISOLATED).isolated_margin += amount
    else:
        account.credit(asset, amount)
    state.touched.update((account.account_id, INSURANCE_FUND_ACCOUNT))


def _apply_bankrupt(state: LedgerState, payload: dict[str, Any]) -> None:
    account, status = _status(state, payload)
    status.status = BANKRUPT
    account.deficit = parse_decimal(payload["deficit"], "deficit")


def check_liquidation_fill(state: LedgerState, fill: LiquidationFill) -> None:
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


def apply_liquidation_fill(state: LedgerState, fill: LiquidationFill) -> None:
    """Book the execution on the order's position and charge the liquidation fee (fee_rate x
    notional executed, an amount owed: rounded up) to the insurance fund: from the wallet for a
    cross position, from the collateral of an isolated one."""
    from clearing.domain.fold import trade

    order = state.liquidations[fill.liquidation_id]
    spec = state.terms().instruments[fill.instrument]
    account = state.account(fill.account_id)
    position = account.position(fill.instrument, order.margin_mode)
    quantity = fill.quantity if fill.side == "buy" else -fill.quantity
    fee = round_requirement(fill.quantity * fill.price * spec.contract_size * state.parameters.liquidation.fee_rate)
    if order.margin_mode == margin.ISOLATED:
        position.isolated_margin -= fee
    else:
        account.debit(spec.settlement_asset, fee)
    state.account(INSURANCE_FUND_ACCOUNT).credit(spec.settlement_asset, fee)
    trade(state, account, position, spec, quantity, fill.price)
    order.remaining -= fill.quantity
    if order.remaining == ZERO:
        del state.liquidations[order.liquidation_id]
        status = account.margin.get(order.scope)
        if status is not None and order.liquidation_id in status.pending_orders:
            status.pending_orders.remove(order.liquidation_id)
    state.touched.update((account.account_id, INSURANCE_FUND_ACCOUNT))


DECISION_APPLIERS: dict[str, Callable[[LedgerState, dict[str, Any]], None]] = {
    ev.MARGIN_CALL_ISSUED: _apply_call,
    ev.MARGIN_CALL_ESCALATED: _apply_call,
    ev.MARGIN_CALL_RESOLVED: _apply_resolved,
    ev.LIQUIDATION_ORDER_ISSUED: _apply_order,
    ev.INSURANCE_FUND_DRAWN: _apply_insurance_draw,
    ev.ACCOUNT_BANKRUPTED: _apply_bankrupt,
}
