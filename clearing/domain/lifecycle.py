"""Decisions: withdrawals, isolated-margin transfers, the margin-call lifecycle, liquidation
orders and the default waterfall. This module decides and never books: each decision is a typed
value (``decisions``) handed to ``emit``, which books it at once (``booking``, through the fold):
a later decision of the same cause (an insurance-fund draw after a liquidation fill, say) sees
the state the earlier ones left.

Every decision carries the numbers it was computed from, the parameter version in force and the
position of its cause. The figures come from the scope's margin model (``models``), whichever it
is; the levels and the rule that reads them are ``levels``.

The lifecycle of a margin scope (the cross account, or one isolated position), DESIGN.md:

    healthy -> warning      ratio >= warning_ratio                           MarginCallIssued
    * -> maintenance        ratio >= 1, deadline = occurred_at + grace       MarginCallIssued/Escalated
    maintenance -> liquidation  deadline reached (at once when grace is 0)   MarginCallEscalated
                                + orders that bring the ratio to target       LiquidationOrderIssued
    liquidation -> liquidation  orders filled, ratio still >= resolve         LiquidationOrderIssued
    liquidation -> bankrupt     no position left and equity < 0:              InsuranceFundDrawn,
                                the fund covers what it can                   AccountBankrupted
    liquidation -> healthy      equity < 0, the fund cannot cover it, ADL     LiquidationOrderCancelled,
                                enabled: positions taken by opposite ones     PositionAutoDeleveraged,
                                at the bankruptcy price (``adl``)             MarginCallResolved
    liquidation -> bankrupt     the same, not enough opposite positions       AccountBankrupted
    bankrupt -> healthy         equity >= 0 again (the deficit is covered),   MarginCallResolved,
                                then on as a healthy scope in the same step   (MarginCallIssued ...)
    * -> healthy            ratio < resolve_ratio (hysteresis: no flapping)  MarginCallResolved

ratio = maintenance margin / equity; with positions open and equity <= 0 the ratio is infinite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from clearing.domain import adl, models, triggers
from clearing.domain.decisions import (
    AccountBankrupted,
    Decision,
    InsuranceFundDrawn,
    IsolatedMarginTransferred,
    IsolatedMarginTransferRejected,
    LiquidationOrderCancelled,
    LiquidationOrderIssued,
    MarginCallEscalated,
    MarginCallIssued,
    MarginCallResolved,
    MarginModelChanged,
    MarginModelRejected,
    PositionAutoDeleveraged,
    WithdrawalApproved,
    WithdrawalRejected,
    WorstCell,
)
from clearing.domain.inputs import (
    Fill,
    Funding,
    InputMessage,
    IsolatedMarginTransfer,
    MarginModelRequest,
    Mark,
    RiskParametersMessage,
    Settlement,
    Withdrawal,
)
from clearing.domain.levels import LIQUIDATING, Level, below_resolve, rank
from clearing.domain.marginmodel import (
    CROSS,
    ISOLATED,
    MarginModelError,
    PositionRisk,
    ScopeRisk,
    StateMarks,
    isolated_scope,
    scope_instrument,
)
from clearing.domain.numbers import (
    ZERO,
    divide,
    round_display_price,
    round_model_value,
    round_requirement,
    to_wire,
)
from clearing.domain.state import (
    INSURANCE_FUND_ACCOUNT,
    SYSTEM_ACCOUNTS,
    Account,
    LedgerState,
    MarginStatus,
)

Emit = Callable[[Decision], None]
SYSTEM_ACCOUNTS_SET: Final = frozenset(SYSTEM_ACCOUNTS)

# Rounds of re-margining within one step: the accounts a round's decisions changed (the insurance
# fund after a draw) are re-margined in the next. A draw changes the fund, which is never
# margined, so two rounds reach the fixpoint; more means decisions keep changing one another's
# accounts, a broken invariant that must stop the ledger rather than leave a scope off its
# fixpoint (triggers.py, 1).
REMARGIN_ROUNDS_MAX: Final = 8
# Rounds that auto-deleveraged positions do not count towards REMARGIN_ROUNDS_MAX: an ADL step
# books a loss against the mark on its counterparty, which may default in turn and be
# deleveraged in the next round (a cascade across accounts, legitimate, and it ends: every such
# round closes at least one open position in full, the bankrupt's or a counterparty's). This
# bounds them all the same, far above any cascade a shard's positions allow in practice.
ADL_CASCADE_ROUNDS_MAX: Final = 1_000_000

# Decisions that change a scope's status only, never its figures: the figures a re-margin was
# taken on stay valid for the trigger index after them.
_STATUS_ONLY: Final = (
    MarginCallIssued,
    MarginCallEscalated,
    MarginCallResolved,
    LiquidationOrderIssued,
    AccountBankrupted,
    LiquidationOrderCancelled,
)


def decide(state: LedgerState, message: InputMessage, position: int, emit: Emit, changed: set[str]) -> None:
    """Decide on the input ``message`` just applied. ``changed``: the accounts its application
    touched (``fold.step`` passes them, and keeps ``state.touched`` to what this step touches:
    the same set, to which the decisions add their accounts, so it is read before the first);
    each is re-margined in full, unless the trigger index proves the change moves nothing it
    watches (an ordinary fill or a funding payment: ``triggers.absorbs_fill`` and
    ``absorbs_balance``). On a mark, the index names the scopes to look at, or every dependent of
    the symbol when ``state.triggers.brute_force`` is set."""
    index = state.triggers
    indexed = not index.brute_force and not index.stale
    # An ordinary fill the index can prove changes nothing it watches (triggers.absorbs_fill)
    # needs neither a re-margin nor a refresh of its account: with no deadline due, the step has
    # nothing else to look at. Most inputs are such fills, so this is asked before the accounts
    # to look at are gathered (docs/performance.md).
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
    request = _REQUESTS.get(type(message))
    if request is not None:
        emit(request(state, message))
    hits: set[tuple[str, str]] = set()
    moved = _MOVES.get(type(message))
    if moved is not None:
        hits = moved(state, message, indexed, full, absorbed)
    full -= absorbed
    # Scopes with a running deadline are looked at on every event: time moves with event time.
    # Scopes in liquidation need no such sweep: only their own events and the prices they depend
    # on move them, and they are in ``triggers.always`` for those prices.
    for (account_id, _scope), deadline in state.deadlines.items():
        if deadline <= message.occurred_at:
            full.add(account_id)
    step = _Remargin(state, message.occurred_at, _Ids(position), emit)
    step.run(full, hits)
    _reindex(state, message, indexed, step, absorbed)


# What an input moves besides the accounts its booking changed, by message type: each adds the
# accounts to re-margin in full to ``full`` (and to ``absorbed`` those the index absorbs), and
# returns the scopes whose trigger a mark crossed.
_Moves = Callable[[LedgerState, Any, bool, set[str], set[str]], set[tuple[str, str]]]


def _marked(state: LedgerState, mark: Mark, indexed: bool, full: set[str], absorbed: set[str]) -> set[tuple[str, str]]:
    if not indexed:
        full |= triggers.dependents(state, mark.symbol)
        return set()
    hits, always = triggers.crossed(state, mark.symbol, mark.price)
    full |= always
    return hits


def _funded(
    state: LedgerState, funding: Funding, indexed: bool, full: set[str], absorbed: set[str]
) -> set[tuple[str, str]]:
    full.update(state.holders.get(funding.symbol, ()))
    if indexed:
        # A payment moves each holder's balance only: the index absorbs it like a fill's.
        absorbed.update(account_id for account_id in full if triggers.absorbs_balance(state, account_id))
    return set()


def _settled(
    state: LedgerState, settlement: Settlement, indexed: bool, full: set[str], absorbed: set[str]
) -> set[tuple[str, str]]:
    full.update(state.holders.get(settlement.symbol, ()))
    return set()


def _reparametrised(
    state: LedgerState, message: RiskParametersMessage, indexed: bool, full: set[str], absorbed: set[str]
) -> set[tuple[str, str]]:
    full.update(state.holders_all())
    full.update(account_id for account_id, account in state.accounts.items() if account.margin)
    return set()


def _reindex(state: LedgerState, message: InputMessage, indexed: bool, step: _Remargin, absorbed: set[str]) -> None:
    """Bring the trigger index up to date with the step: rebuilt when it was not kept (or the
    parameters changed), else refreshed for every account the step re-margined or touched."""
    index = state.triggers
    if index.brute_force:
        index.stale = True
    elif not indexed or type(message) is RiskParametersMessage:
        triggers.rebuild(state)
    else:
        # Absorbed accounts are left out before the sort: a funding touches every holder of its
        # symbol and the index absorbs most of them.
        stale = [
            account_id
            for account_id in (step.remargined | state.touched) - SYSTEM_ACCOUNTS_SET
            if account_id not in absorbed or account_id in step.remargined
        ]
        for account_id in sorted(stale):
            triggers.refresh(state, account_id, step.figures)


class _Remargin:
    """One step's re-margining: every selected account's scopes take their lifecycle step, in
    sorted order, and the accounts a decision about another account changed (the insurance fund
    on a draw) are re-margined in a further round, so that every account ends the step at a
    fixpoint. ``figures`` keeps the figures each re-margin was taken on, for the index to reuse:
    valid while no decision moves money (only a draw does; status changes leave them)."""

    def __init__(self, state: LedgerState, at: datetime, ids: _Ids, emit: Emit) -> None:
        self.state = state
        self.at = at
        self.ids = ids
        self.emit = emit
        self.current = ""
        self.others: set[str] = set()  # accounts changed by a decision about another account
        self.invalid: set[str] = set()  # accounts whose figures a decision moved
        self.remargined: set[str] = set()
        self.figures: dict[tuple[str, str], ScopeRisk] = {}
        self.deleveraged = 0  # ADL steps emitted so far

    def run(self, full: set[str], hits: set[tuple[str, str]]) -> None:
        """Re-margin ``full`` in full and the scopes of ``hits``, then the accounts their decisions
        changed, round after round until none is left."""
        selected = full | {account_id for account_id, _scope in hits}
        plain = 0  # rounds that deleveraged nothing
        for _round in range(ADL_CASCADE_ROUNDS_MAX):
            deleveraged = self.deleveraged
            for account_id in sorted(selected):
                self._account(account_id, full, hits)
            selected = full = set(self.others) - SYSTEM_ACCOUNTS_SET
            self.others.clear()
            if not selected:
                return
            if self.deleveraged == deleveraged:
                plain += 1
                if plain >= REMARGIN_ROUNDS_MAX:
                    break
        # A broken invariant, not an operating error: stop the ledger (STYLE.md).
        raise RuntimeError(
            f"re-margining did not reach a fixpoint in {REMARGIN_ROUNDS_MAX} rounds; still changing: {sorted(selected)}"
        )

    def _account(self, account_id: str, full: set[str], hits: set[tuple[str, str]]) -> None:
        account = self.state.accounts.get(account_id)
        if account is None:
            return
        self.current = account_id
        names = triggers.scopes(account)
        if account_id not in full:
            names = [scope for scope in names if (account_id, scope) in hits]
        for scope in names:
            risk = _remargin(self.state, account, scope, self.at, self.ids, self.emit_tracked)
            if account_id not in self.invalid:
                self.figures[(account_id, scope)] = risk
        self.remargined.add(account_id)

    def emit_tracked(self, decision: Decision) -> None:
        """``emit``, noting which accounts the decision changed."""
        state = self.state
        self.ids.take(_carried_ids(decision))
        if isinstance(decision, PositionAutoDeleveraged):
            self.deleveraged += 1
        before = state.touched
        state.touched = set()
        try:
            self.emit(decision)
        finally:
            self.others.update(a for a in state.touched if a != self.current)
            if not isinstance(decision, _STATUS_ONLY):
                for key in [key for key in self.figures if key[0] in state.touched]:
                    del self.figures[key]
                self.invalid.update(state.touched)
            before |= state.touched
            state.touched = before


def _deadline_due(state: LedgerState, at: datetime) -> bool:
    if not state.deadlines:
        return False
    return any(deadline <= at for deadline in state.deadlines.values())


def _only_account(changed: set[str], account_id: str) -> bool:
    """Whether the accounts an input changed, less the system accounts, are ``account_id`` alone."""
    if account_id in SYSTEM_ACCOUNTS_SET or account_id not in changed:
        return False
    return all(other == account_id or other in SYSTEM_ACCOUNTS_SET for other in changed)


# The id fields of decisions, and the prefix of the ids each carries (``_Ids``).
_ID_KEYS: Final = (("margin_call_id", "MC"), ("liquidation_id", "L"), ("adl_id", "ADL"))


def _carried_ids(decision: Decision) -> dict[str, Any]:
    return {key: getattr(decision, key, None) for key, _prefix in _ID_KEYS}


class _Ids:
    """Ids of the decisions of one cause: derived from its log position, so a replay gives the
    same ids. ``next`` offers the next id of a kind; it is taken only when a decision carrying it
    is emitted (``take``). A re-margin that offers an id and then emits nothing leaves the
    numbering as it was, so the ids do not depend on how many scopes a step looked at (brute
    force looks at more than the trigger index, and a restarted ledger at more than a running
    one)."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.count: dict[str, int] = {}

    def next(self, prefix: str) -> str:
        n = self.count.get(prefix, 0) + 1
        return f"{prefix}-{self.position}" if n == 1 else f"{prefix}-{self.position}-{n}"

    def take(self, carried: Mapping[str, Any]) -> None:
        """Take the ids a decision carries (its fields by name)."""
        for key, prefix in _ID_KEYS:
            value = carried.get(key)
            if value is not None and value == self.next(prefix):
                self.count[prefix] = self.count.get(prefix, 0) + 1


# ---------------------------------------------------------------------------------------------
# requests


def _liquidating(account: Account) -> str | None:
    for scope, status in sorted(account.margin.items()):
        if status.status in LIQUIDATING:
            return f"the account is in {status.status} ({scope}) and cannot withdraw or add risk"
    return None


def decide_withdrawal(state: LedgerState, request: Withdrawal) -> WithdrawalApproved | WithdrawalRejected:
    """Approve when the account has the asset, is not being liquidated, and its cross equity
    after the withdrawal stays at or above its initial margin."""
    account = state.accounts.get(request.account_id) or Account(request.account_id)
    held = account.balance(request.asset)
    reason = _liquidating(account)
    if reason is None and held < request.amount:
        reason = f"insufficient {request.asset}: balance {to_wire(held)}, requested {to_wire(request.amount)}"
    if reason is None:
        reason = _cross_reason_after(state, account, request.asset, -request.amount)
    version = state.parameters.version
    if reason is not None:
        return WithdrawalRejected(
            request.account_id, request.transfer_id, request.asset, request.amount, reason, version
        )
    return WithdrawalApproved(request.account_id, request.transfer_id, request.asset, request.amount, version)


def decide_isolated_transfer(
    state: LedgerState, request: IsolatedMarginTransfer
) -> IsolatedMarginTransferred | IsolatedMarginTransferRejected:
    """Into an isolated position: the wallet must hold the amount and stay at or above its
    initial margin. Out of it: the isolated position must stay at or above its own initial margin."""
    asset = state.parameters.instruments_by_symbol[request.instrument].settlement_asset
    account = state.accounts.get(request.account_id) or Account(request.account_id)
    reason = _liquidating(account)
    if reason is None and request.amount > ZERO:
        held = account.balance(asset)
        if held < request.amount:
            reason = f"insufficient {asset}: balance {to_wire(held)}, requested {to_wire(request.amount)}"
        else:
            reason = _cross_reason_after(state, account, asset, -request.amount)
    elif reason is None:
        reason = _isolated_reason_after(state, account, request.instrument, request.amount)
    version = state.parameters.version
    if reason is not None:
        return IsolatedMarginTransferRejected(
            request.account_id, request.transfer_id, request.instrument, asset, request.amount, reason, version
        )
    return IsolatedMarginTransferred(
        request.account_id, request.transfer_id, request.instrument, asset, request.amount, version
    )


def decide_margin_model(state: LedgerState, request: MarginModelRequest) -> MarginModelChanged | MarginModelRejected:
    """Approve a change of the account's model (CONTRACT v2 "Margin models") only when the
    account is not liquidating (no scope at liquidation or bankrupt level, no liquidation order
    pending) and its cross scope meets initial margin under the new model: equity >= initial
    margin, both as the new model computes them with the parameters and marks in force. A
    request for the model already in force is rejected as such: it changes nothing, and an
    answer that said "changed" would tell the account's owner something that did not happen.

    Once the decision is booked (``booking``: the account names its new model), the step's
    re-margin takes the account's scopes under it at once and re-indexes it, as for any account
    a request touched (``decide``)."""
    account = state.accounts.get(request.account_id) or Account(request.account_id)
    version = state.parameters.version
    current = account.margin_model
    reason: str | None = None
    if request.model == current:
        reason = f"the account is already on the {current} margin model"
    if reason is None:
        reason = _liquidating(account) or _pending_orders(account)
    risk: ScopeRisk | None = None
    if reason is None:
        try:
            risk = models.model_named(request.model).evaluate_scope(
                account, state.parameters, StateMarks(state), CROSS, liquidation_prices=False
            )
        except MarginModelError as error:
            reason = f"the {request.model} model cannot margin this account: {error}"
    if reason is None and risk is not None and risk.equity < risk.initial_margin:
        reason = (
            f"equity {to_wire(risk.equity)} is below the initial margin {to_wire(risk.initial_margin)} "
            f"that the {request.model} model requires"
        )
    if reason is not None or risk is None:
        return MarginModelRejected(
            request.account_id, request.request_id, request.model, reason or "not evaluated", version
        )
    return MarginModelChanged(
        request.account_id, request.request_id, request.model, current, risk.equity, risk.initial_margin, version
    )


def _pending_orders(account: Account) -> str | None:
    for scope, status in sorted(account.margin.items()):
        if status.pending_orders:
            return f"the account has liquidation orders pending ({scope}: {', '.join(status.pending_orders)})"
    return None


# The requests an input makes, answered by one decision each, by message type.
_REQUESTS: Final[dict[type, Callable[[LedgerState, Any], Decision]]] = {
    Withdrawal: decide_withdrawal,
    IsolatedMarginTransfer: decide_isolated_transfer,
    MarginModelRequest: decide_margin_model,
}
_MOVES: Final[dict[type, _Moves]] = {
    Mark: _marked,
    Funding: _funded,
    Settlement: _settled,
    RiskParametersMessage: _reparametrised,
}


def _isolated_reason_after(state: LedgerState, account: Account, instrument: str, change: Decimal) -> str | None:
    """Why the isolated position could not give ``-change`` back (None when it can): it must hold
    that much, and its equity after must stay at or above its initial margin."""
    isolated = account.positions.get((instrument, ISOLATED))
    allocated = isolated.isolated_margin if isolated is not None else ZERO
    if allocated < -change:
        return f"the isolated {instrument} position holds {to_wire(allocated)}, less than {to_wire(-change)}"
    if isolated is None or isolated.quantity == ZERO:
        return None
    isolated.isolated_margin += change
    try:
        risk = models.scope_risk(state, account, isolated_scope(instrument))
    finally:
        isolated.isolated_margin -= change
    if risk.equity < risk.initial_margin:
        return (
            f"the isolated {instrument} position would hold equity {to_wire(risk.equity)}, "
            f"below its initial margin {to_wire(risk.initial_margin)}"
        )
    return None


def _cross_reason_after(state: LedgerState, account: Account, asset: str, change: Decimal) -> str | None:
    """Why the cross account could not afford a balance change (None when it can): equity after
    the change must stay at or above the initial margin."""
    before = account.balances.get(asset)
    account.credit(asset, change)
    try:
        risk = models.scope_risk(state, account, CROSS)
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


def _below_resolve(risk: ScopeRisk, state: LedgerState) -> bool:
    return below_resolve(risk.equity, risk.maintenance_margin, risk.margin_ratio, state.parameters.margin_call)


def _call_payload(
    state: LedgerState, scope: str, call_id: str, level: str, risk: ScopeRisk, deadline: datetime | None
) -> dict[str, Any]:
    """The fields every margin-call decision carries (``decisions.MarginCallIssued``), by name."""
    return {
        "margin_call_id": call_id,
        "scope": scope,
        "level": Level(level),
        "equity": risk.equity,
        "initial_margin": risk.initial_margin,
        "maintenance_margin": risk.maintenance_margin,
        "margin_ratio": risk.margin_ratio,
        "shortfall": shortfall(risk, state.parameters.margin_call.resolve_ratio),
        "deadline": deadline,
        "marks": _marks_shown(risk),
        "worst_cells": _worst_cells(risk),
    }


def _worst_cells(risk: ScopeRisk) -> tuple[WorstCell, ...] | None:
    """The worst cell of each underlying of a scope the portfolio model margins on its grid
    (CONTRACT v2: every decision under it names the worst cell); None for the standard model's
    scopes, whose decisions leave the field out."""
    if not risk.underlyings:
        return None
    return tuple(
        WorstCell(u.underlying, u.worst_cell.move, u.worst_cell.volatility, u.worst_cell.extreme)
        for u in risk.underlyings
    )


def _marks_shown(risk: ScopeRisk) -> dict[str, Decimal]:
    """The price each position was valued at and, for an option, its underlying's mark too (its
    requirement is a function of both)."""
    marks = {p.instrument: shown_price(p) for p in risk.positions}
    for p in risk.positions:
        if p.option is not None and p.option.underlying_mark is not None:
            marks[p.option.underlying] = p.option.underlying_mark
    return marks


def shortfall(risk: ScopeRisk, resolve_ratio: Decimal) -> Decimal:
    """The collateral that would bring the scope's ratio below ``resolve_ratio`` (0 when none is
    needed); an amount owed, so it rounds up."""
    if risk.maintenance_margin <= ZERO:
        return ZERO
    return max(ZERO, round_requirement(divide(risk.maintenance_margin, resolve_ratio) - risk.equity))


# The status of a scope without a margin call: read, never written (a call's decision creates the
# scope's own status when it is booked).
_NO_CALL = MarginStatus()


class _Calls:
    """Margin-call decisions about one scope, taken on one set of figures."""

    def __init__(self, state: LedgerState, account: Account, scope: str, risk: ScopeRisk, emit: Emit) -> None:
        self.state = state
        self.account_id = account.account_id
        self.scope = scope
        self.risk = risk
        self.emit = emit

    def _fields(self, call_id: str, level: str, deadline: datetime | None) -> dict[str, Any]:
        return _call_payload(self.state, self.scope, call_id, level, self.risk, deadline)

    def issue(self, call_id: str, level: str, deadline: datetime | None) -> None:
        version = self.state.parameters.version
        fields = self._fields(call_id, level, deadline)
        self.emit(MarginCallIssued(account_id=self.account_id, **fields, parameters_version=version))

    def escalate(self, call_id: str, level: str, deadline: datetime | None) -> None:
        version = self.state.parameters.version
        fields = self._fields(call_id, level, deadline)
        self.emit(MarginCallEscalated(account_id=self.account_id, **fields, parameters_version=version))

    def resolve(self, call_id: str, level: str, resolution: str, cancelled: tuple[str, ...] | None = None) -> None:
        version = self.state.parameters.version
        fields = self._fields(call_id, level, None)
        self.emit(
            MarginCallResolved(
                account_id=self.account_id,
                **fields,
                resolution=resolution,
                cancelled_orders=cancelled,
                parameters_version=version,
            )
        )


def _remargin(state: LedgerState, account: Account, scope: str, at: datetime, ids: _Ids, emit: Emit) -> ScopeRisk:
    """Take the scope's lifecycle step; returns the figures it was taken on."""
    status = account.margin.get(scope) or _NO_CALL
    risk = models.scope_risk(state, account, scope, liquidation_prices=False)
    level = risk.status  # the level the numbers call for (levels.classify)
    current = status.status
    calls = _Calls(state, account, scope, risk, emit)
    if not risk.has_open_positions and risk.equity < ZERO and current not in LIQUIDATING:
        # A loss beyond the collateral with nothing left to liquidate (closed by ordinary fills,
        # or funding): straight to the waterfall.
        _waterfall(state, account, scope, status.margin_call_id, risk, at, emit)
        return risk
    if current == Level.BANKRUPT:
        if not _continue_bankrupt(state, account, scope, status, risk, at, ids, emit, calls):
            return risk
        # The deficit is covered (a fill's premium, say) but the scope may hold positions again:
        # it goes on as a healthy scope on the same figures (the resolution changes its status
        # only), so a position its equity does not carry is called in this step and the scope is
        # left at its fixpoint (triggers.py, 1), not called by whichever later event looks at it.
        status, current = _NO_CALL, Level.HEALTHY
    if current == Level.LIQUIDATION:
        _continue_liquidation(state, account, scope, status, risk, at, ids, emit, calls)
        return risk
    # healthy, warning or maintenance
    if _below_resolve(risk, state):
        if current != Level.HEALTHY and status.margin_call_id is not None:
            calls.resolve(status.margin_call_id, current, "ratio below resolve_ratio")
        return risk
    if rank(level) > rank(current) and (level == Level.WARNING or level == Level.MAINTENANCE):
        grace = timedelta(seconds=state.parameters.margin_call.grace_period_seconds)
        deadline = at + grace if level == Level.MAINTENANCE else None
        if current == Level.HEALTHY:
            calls.issue(ids.next("MC"), level, deadline)
        else:
            calls.escalate(status.margin_call_id or ids.next("MC"), level, deadline)
        status = account.margin[scope]
        current = level
    deadline_passed = status.deadline is not None and at >= status.deadline
    if current == Level.MAINTENANCE and level == Level.MAINTENANCE and deadline_passed:
        call_id = status.margin_call_id or ids.next("MC")
        calls.escalate(call_id, Level.LIQUIDATION, status.deadline)
        if adl.due(state, risk):
            _auto_deleverage(state, account, scope, call_id, at, ids, emit)
        else:
            _issue_orders(state, account, scope, call_id, risk, at, ids, emit)
    return risk


def _continue_bankrupt(
    state: LedgerState,
    account: Account,
    scope: str,
    status: MarginStatus,
    risk: ScopeRisk,
    at: datetime,
    ids: _Ids,
    emit: Emit,
    calls: _Calls,
) -> bool:
    """The bankrupt scope's step; True when it resolved the call (the deficit is covered)."""
    if risk.equity >= ZERO and status.margin_call_id is not None:
        calls.resolve(status.margin_call_id, Level.BANKRUPT, "deficit covered")
        return True
    if risk.has_open_positions and not status.pending_orders:
        # A bankrupt account should not trade, but fills are facts: whatever it holds again is
        # liquidated at once (its equity is below zero, so every position closes).
        _issue_orders(state, account, scope, status.margin_call_id or ids.next("MC"), risk, at, ids, emit)
    return False


def _continue_liquidation(
    state: LedgerState,
    account: Account,
    scope: str,
    status: MarginStatus,
    risk: ScopeRisk,
    at: datetime,
    ids: _Ids,
    emit: Emit,
    calls: _Calls,
) -> None:
    call_id = status.margin_call_id or ids.next("MC")
    if adl.due(state, risk):
        _auto_deleverage(state, account, scope, call_id, at, ids, emit)
        return
    if not risk.has_open_positions:
        if risk.equity < ZERO:
            _waterfall(state, account, scope, call_id, risk, at, emit)
            return
        calls.resolve(call_id, Level.LIQUIDATION, "positions closed")
        return
    if _below_resolve(risk, state):
        cancelled = tuple(sorted(status.pending_orders))
        calls.resolve(call_id, Level.LIQUIDATION, "ratio below resolve_ratio", cancelled)
        return
    if not status.pending_orders:
        _issue_orders(state, account, scope, call_id, risk, at, ids, emit)


def _waterfall(
    state: LedgerState,
    account: Account,
    scope: str,
    call_id: str | None,
    risk: ScopeRisk,
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
    version = state.parameters.version
    deficit = -risk.equity
    fund = state.accounts.get(INSURANCE_FUND_ACCOUNT)
    available = fund.balance(asset) if fund is not None else ZERO
    isolated = scope_instrument(scope) is not None
    drawn = deficit if isolated else min(deficit, max(available, ZERO))
    account_id = account.account_id
    if drawn > ZERO:
        beyond = max(ZERO, drawn - max(available, ZERO))
        emit(InsuranceFundDrawn(account_id, call_id, scope, asset, drawn, deficit, available, beyond, version))
    remaining = deficit - drawn
    if remaining > ZERO:
        emit(AccountBankrupted(account_id, call_id, scope, asset, remaining, risk.equity, drawn, version))
    elif call_id is not None:
        _Calls(state, account, scope, risk, emit).resolve(
            call_id, Level.LIQUIDATION, "loss covered by the insurance fund"
        )


def _auto_deleverage(
    state: LedgerState, account: Account, scope: str, call_id: str, at: datetime, ids: _Ids, emit: Emit
) -> None:
    """The waterfall's third step (``adl``): the scope's open liquidation orders are cancelled,
    then each of its positions (largest maintenance requirement first, as orders are issued) is
    closed at its bankruptcy price against the opposite positions of other accounts, highest rank
    first, each taken in full but the last, until the quantity is covered.

    The bankruptcy price of each position is taken on the scope's equity as the positions before
    it left it: the first closes at the price that brings the scope's equity to zero (rounded
    towards the fund: at or above zero), the next ones then at their marks. Each step is booked
    at once (``emit``), so the next sees its effect; the counterparties are re-margined in the
    next round of the step (``_Remargin``). Then: nothing left and equity covered, the call
    resolves; positions left for want of opposite ones, the deficit left is recorded
    (AccountBankrupted) and the bankrupt lifecycle sends what is left to the exchange; equity
    covered with positions left, the liquidation goes on as before."""
    version = state.parameters.version
    account_id = account.account_id
    status = account.margin.get(scope) or _NO_CALL
    for liquidation_id in sorted(status.pending_orders):
        order = state.liquidations.get(liquidation_id)
        if order is None:
            continue
        reason = "auto-deleveraging: the insurance fund cannot cover the scope's deficit"
        emit(
            LiquidationOrderCancelled(
                account_id, liquidation_id, call_id, scope, order.instrument, order.remaining, reason, version
            )
        )
    risk = models.scope_risk(state, account, scope, liquidation_prices=False)
    ordered = sorted(
        (p for p in risk.positions if p.quantity != ZERO), key=lambda p: (-p.maintenance_margin, p.instrument)
    )
    model = models.model_of(account, scope)
    for first in ordered:
        risk = models.scope_risk(state, account, scope, liquidation_prices=False)
        position = risk.position(first.instrument)
        if position is None or position.quantity == ZERO:
            continue
        _raw, price = model.bankruptcy_price(position, risk.equity, abs(position.quantity))
        long = position.quantity > ZERO
        left = abs(position.quantity)
        held = position.quantity
        fund = adl.fund_balance(state)
        for taken in adl.ranking(state, position.instrument, not long, exclude=account_id):
            quantity = min(left, abs(taken.quantity))
            emit(
                PositionAutoDeleveraged(
                    account_id=taken.account_id,
                    adl_id=ids.next("ADL"),
                    instrument=position.instrument,
                    margin_mode=taken.margin_mode,
                    side="buy" if long else "sell",
                    quantity=quantity,
                    price=price,
                    rank=None if taken.rank is None else round_model_value(taken.rank),
                    pnl=round_model_value(taken.pnl),
                    leverage=None if taken.leverage is None else round_model_value(taken.leverage),
                    position_quantity=taken.quantity,
                    entry_price=taken.entry_price,
                    mark=taken.mark,
                    bankrupt_account_id=account_id,
                    bankrupt_scope=scope,
                    bankrupt_margin_mode=position.margin_mode,
                    bankrupt_quantity=held,
                    bankrupt_equity=risk.equity,
                    insurance_fund=fund,
                    margin_call_id=call_id,
                    parameters_version=version,
                )
            )
            left -= quantity
            held = held - quantity if long else held + quantity
            if left == ZERO:
                break
    risk = models.scope_risk(state, account, scope, liquidation_prices=False)
    calls = _Calls(state, account, scope, risk, emit)
    if not risk.has_open_positions:
        if risk.equity < ZERO:
            _waterfall(state, account, scope, call_id, risk, at, emit)
        else:
            calls.resolve(call_id, Level.LIQUIDATION, "deficit covered by auto-deleveraging")
    elif risk.equity < ZERO:
        asset = state.parameters.valuation_asset
        emit(AccountBankrupted(account_id, call_id, scope, asset, -risk.equity, risk.equity, ZERO, version))
    else:
        status = account.margin.get(scope) or _NO_CALL
        _continue_liquidation(state, account, scope, status, risk, at, ids, emit, calls)


def shown_price(position: PositionRisk) -> Decimal:
    """The price a decision shows: the mark, or for an unmarked instrument the entry price it is
    valued at (cost / quantity, which may not terminate: rounded like every displayed price)."""
    return position.price_used if position.marked else round_display_price(position.price_used)


def _issue_orders(
    state: LedgerState,
    account: Account,
    scope: str,
    call_id: str,
    risk: ScopeRisk,
    at: datetime,
    ids: _Ids,
    emit: Emit,
) -> None:
    """The orders of the scope model's liquidation plan (``MarginModel.liquidation_plan``): the
    riskiest positions first, each reduced by the least quantity that brings the scope's ratio to
    target_ratio, assuming execution at the mark and the liquidation fee charged; a position is
    closed in full only when a part is not enough. An equity at or below zero closes everything.
    Each order shows the scope's equity and maintenance with the orders before it applied, and
    under the portfolio model the worst cells of the scope it was planned on."""
    model = models.model_of(account, scope)
    parameters = state.parameters
    worst_cells = _worst_cells(risk)
    for planned in models.liquidation_plan(state, account, risk):
        position, quantity = planned.position, planned.quantity
        equity = planned.before.equity
        _raw, bankruptcy = model.bankruptcy_price(position, equity, quantity)
        emit(
            LiquidationOrderIssued(
                account_id=account.account_id,
                liquidation_id=ids.next("L"),
                margin_call_id=call_id,
                scope=scope,
                instrument=position.instrument,
                margin_mode=position.margin_mode,
                side="sell" if position.quantity > ZERO else "buy",
                quantity=quantity,
                position_quantity=position.quantity,
                bankruptcy_price=bankruptcy,
                mark=shown_price(position),
                equity=equity,
                maintenance_margin=planned.before.maintenance,
                target_ratio=parameters.liquidation.target_ratio,
                full=planned.full,
                worst_cells=worst_cells,
                parameters_version=parameters.version,
            )
        )
