"""Re-margin on marks by trigger prices: a mark looks again only at the scopes it can change.

Brute force re-evaluates every dependent of a marked symbol (every holder of an instrument): exact,
but O(holders) evaluations per mark. The index (``LedgerState.triggers``, a ``TriggerIndex``)
keeps, per symbol, each scope's nearest trigger prices below and above the price it was last
evaluated at (``MarginModel.trigger_prices``: the marks at which equity = 0 or the ratio crosses
resolve, warning or 1). A mark of X pops the entries it crossed (lower >= price or upper <= price)
from two heaps and re-margins exactly those scopes, plus the accounts in ``always[X]`` and, as
before, the scopes with a deadline due and the accounts with pending liquidation orders.

Why this gives exactly the decisions of brute force (the property test in
tests/domain/test_triggers.py checks it on random markets):

1. Fixpoint. After every step each scope is at a fixpoint: re-margining it again with the same
   state and time would emit nothing. Every account an input event changes is re-margined in full
   in that step (``fold.step`` hands ``decide`` the accounts the input touched: fills, transfers,
   funding, settlement, parameters), and an account that a decision of another account changes
   (the insurance fund on a draw) is re-margined after the others. A re-margin leaves its scope
   at a fixpoint: every transition moves the status to the level the numbers call for (or further,
   to liquidation with orders pending), and a decision changes only its own scope's numbers.
2. So between two changes of an account, only the prices of the symbols its scopes depend on and
   time can make a re-margin emit. Time: scopes with a deadline due are re-margined on every
   event, in both modes (a scope in liquidation moves only with its own events and its prices).
3. A scope that depends on one price X only (the cross account with one position and collateral
   in the valuation asset, an isolated position settled in the valuation asset, a cross account
   holding one non-valuation asset and no position) is a function of X alone. Its status
   (level, below resolve) is the sign pattern of equity and of t x equity - maintenance for
   t in (resolve, warning, 1): continuous piecewise-linear functions of X whose zeros are the
   roots ``trigger_prices`` solves for. Between the nearest root below and the nearest above, the
   pattern is constant, so a re-margin there would emit nothing (fixpoint, 1). The ledger's
   roundings (requirements up to 1e-8, ratios up to 1e-10, trigger prices to 1e-10) can move a
   crossing by (1e-8 + 1e-10 x |equity|) / |slope| in price, where the slope of
   t x equity - maintenance is s x |q| x cs x |t x sign(q) - rate| for a tier rate; each trigger is
   pulled towards the reference price by four times that plus 1e-9 relative (the model's
   ``index_bounds``): a spurious re-margin costs one evaluation, a missed one a wrong ledger. A
   slope that can vanish (a tier rate equal to a threshold) makes the scope ``always``.
4. A scope that depends on several prices (positions in two instruments, or collateral in a
   non-valuation asset beside a position) cannot use one-dimensional triggers: they are slices
   through the point they were computed at, and two symbols each moving within their own
   bounds can still cross a threshold (cross equity E0 + a dX + b dY reaches 0 at dX = -E0/a
   with dY = 0, but at half of each). Such a scope gets bands from a budget shared by its
   symbols (the model's ``budget_bands``): conservative, so it is re-margined more often than
   needed, never less. Accounts with a scope in liquidation or bankrupt (whose lifecycle steps
   on numbers the triggers do not watch: target ratio, positions closed), and scopes the budget
   cannot bound, are in ``always[symbol]`` of every symbol they depend on: brute force for them.
5. The first mark of a symbol since the index was built re-margins every dependent (an unpriced
   asset has no trigger; an unmarked instrument was valued at its entry price).
6. Order: accounts are re-margined in sorted order and scopes in ``scopes`` order, in both modes;
   the extra scopes brute force looks at emit nothing (1-5), so the decisions, their ids and keys
   are the same (an id is taken only by a decision that carries it, lifecycle ``_Ids``).
7. Absorbed changes, the one exception to "re-margined in full" in 1. A healthy cross account
   indexed by a budget gives its bands only ``BAND_SHARE`` of the budget and keeps a record of
   its reference (``FillBudget``). An ordinary fill that keeps its set of open positions, or a
   funding payment, moves its g's at the reference prices by at most the record's running terms
   (``absorbs_fill``); while those terms plus what in-band prices can add stay below the budget,
   no sign flips, so a re-margin would emit nothing and the bands still promise what they did:
   the step skips both (the property tests compare with brute force on busy books).

The index is derived state: ``fold.replay_event`` marks it stale, and the next step re-margins a
marked symbol's dependents by brute force and then rebuilds it from the state (at a fixpoint by 1).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from decimal import Decimal
from typing import Final

from clearing.domain import models
from clearing.domain.inputs import Fill
from clearing.domain.levels import LIQUIDATING, Level
from clearing.domain.marginmodel import (
    CROSS,
    ISOLATED,
    Bands,
    MarginModel,
    MarginModelError,
    ScopeRisk,
    StateMarks,
    isolated_scope,
)
from clearing.domain.numbers import ZERO, exact
from clearing.domain.state import Account, FillBudget, LedgerState, TriggerIndex

COMPACT_SLACK: Final = 1024  # dead heap entries tolerated beyond the live ones before a heap is rebuilt
# The share of a budgeted scope's budget its price bands spend; the rest absorbs its own fills.
# Any share in (0, 1) gives the same decisions; it sets how often a scope is re-margined and
# re-indexed, by a mark crossing its band or by its fills spending the rest (docs/performance.md
# has the measurements behind 0.35).
BAND_SHARE: Final = Decimal("0.35")


def scopes(account: Account) -> list[str]:
    """The account's margin scopes in a fixed order: cross, isolated positions, then any other
    scope with a margin call running."""
    found = [CROSS]
    isolated = [
        key
        for key, position in account.positions.items()
        if key[1] == ISOLATED and (position.quantity != ZERO or position.isolated_margin != ZERO)
    ]
    if isolated:
        isolated.sort()
        found.extend(isolated_scope(instrument) for instrument, _mode in isolated)
    if account.margin:
        for scope in sorted(account.margin):
            if scope not in found and account.margin[scope].status != Level.HEALTHY:
                found.append(scope)
    return found


def scope_dependencies(state: LedgerState, account: Account, scope: str) -> tuple[str, ...]:
    """The symbols whose price moves the scope's figures, sorted (the scope's model says)."""
    return models.model_of(account, scope).dependencies(account, state.parameters, scope)


def dependents(state: LedgerState, symbol: str) -> set[str]:
    """Accounts with a scope whose figures move with ``symbol``'s price (brute force's set)."""
    instruments = state.parameters.instruments_by_symbol
    if symbol in instruments:
        found = set(state.holders.get(symbol, ()))
        for option in instruments.values():  # the holders of options on it (standard option margin)
            if option.kind == "option" and option.underlying == symbol:
                found.update(state.holders.get(option.symbol, ()))
        return found
    return {
        account_id
        for account_id, account in state.accounts.items()
        if any(symbol in scope_dependencies(state, account, scope) for scope in scopes(account))
    }


# ---------------------------------------------------------------------------------------------
# keeping the index


def rebuild(state: LedgerState) -> None:
    """Index every account from the state as it is (which must be at a fixpoint, see above)."""
    index = state.triggers = TriggerIndex(brute_force=state.triggers.brute_force)
    for account_id in sorted(state.accounts):
        refresh(state, account_id)
    index.seen = set(state.marks)
    index.stale = False


@exact
def refresh(
    state: LedgerState, account_id: str, figures: Mapping[tuple[str, str], ScopeRisk] | None = None
) -> None:
    """Replace the account's entries by ones computed from its current figures (``figures``:
    scopes already evaluated on the current state, by (account, scope))."""
    index = state.triggers
    version = index.version.get(account_id, 0) + 1
    index.version[account_id] = version
    _forget(index, account_id)
    account = state.accounts.get(account_id)
    if account is None:
        return
    always: set[str] = set()
    # (symbol, lower, upper, scope) of every band or pair of bounds, pushed together below.
    entries: list[tuple[str, Decimal | None, Decimal | None, str]] = []
    names = scopes(account)
    for scope in names:
        model = models.model_of(account, scope)
        symbols = model.dependencies(account, state.parameters, scope)
        if not symbols:
            continue
        status = account.margin.get(scope)
        if status is not None and status.status in LIQUIDATING:
            always.update(symbols)
            continue
        known = None if figures is None else figures.get((account_id, scope))
        try:
            risk = known if known is not None else _evaluate(state, model, account, scope)
            if len(symbols) > 1:
                budgeted = _budget_bounds(state, model, account, risk, symbols)
                bounds = None
            else:
                budgeted = None
                bounds = _bounds(state, model, account, risk, symbols[0])
        except MarginModelError:
            always.update(symbols)
            continue
        if budgeted is not None:
            bands, record = budgeted
            entries.extend((symbol, low, high, scope) for symbol, (low, high) in bands.items())
            if record is not None and len(names) == 1 and (status is None or status.status == Level.HEALTHY):
                index.budgets[account_id] = record
        elif bounds is None:
            always.update(symbols)
        elif bounds[0] is not None or bounds[1] is not None:
            entries.append((symbols[0], bounds[0], bounds[1], scope))
    if entries:
        _push_entries(index, account_id, version, entries)
    if always:
        index.always_symbols[account_id] = tuple(sorted(always))
        for symbol in always:
            index.always.setdefault(symbol, set()).add(account_id)


def _forget(index: TriggerIndex, account_id: str) -> None:
    """Take the account's entries out of the index: its heap entries die with its old version
    (counted out of ``live``), its ``always`` memberships and its fill budget go."""
    index.budgets.pop(account_id, None)
    live = index.live
    old_heap = index.heap_symbols.pop(account_id, None)
    if old_heap:
        for symbol in old_heap:
            live[symbol] -= 1
    old_always = index.always_symbols.pop(account_id, None)
    if old_always:
        for symbol in old_always:
            index.always[symbol].discard(account_id)


def _evaluate(state: LedgerState, model: MarginModel, account: Account, scope: str) -> ScopeRisk:
    return model.evaluate_scope(account, state.parameters, StateMarks(state), scope, liquidation_prices=False)


def _push_entries(
    index: TriggerIndex,
    account_id: str,
    version: int,
    entries: list[tuple[str, Decimal | None, Decimal | None, str]],
) -> None:
    """Push the account's new entries (lower bounds negated into the max-heaps), count them live
    and compact a symbol's heaps when dead entries outnumber the live ones."""
    lowers = index.lowers
    uppers = index.uppers
    live = index.live
    pushed: list[str] = []
    for symbol, lower, upper, scope in entries:
        if lower is not None:
            heap = lowers.get(symbol)
            if heap is None:
                heap = lowers[symbol] = []
            heapq.heappush(heap, (-lower, account_id, scope, version))
            pushed.append(symbol)
        if upper is not None:
            heap = uppers.get(symbol)
            if heap is None:
                heap = uppers[symbol] = []
            heapq.heappush(heap, (upper, account_id, scope, version))
            pushed.append(symbol)
    for symbol in pushed:
        live[symbol] = live.get(symbol, 0) + 1
    index.heap_symbols[account_id] = tuple(pushed)
    for symbol in set(pushed):
        budget = 2 * live[symbol] + COMPACT_SLACK
        if len(lowers.get(symbol, ())) > budget or len(uppers.get(symbol, ())) > budget:
            _compact(index, symbol)


def _compact(index: TriggerIndex, symbol: str) -> None:
    version = index.version
    for heaps in (index.lowers, index.uppers):
        heap = heaps.get(symbol)
        if heap is not None:
            heap[:] = [entry for entry in heap if version.get(entry[1]) == entry[3]]
            heapq.heapify(heap)


def _bounds(
    state: LedgerState, model: MarginModel, account: Account, risk: ScopeRisk, symbol: str
) -> tuple[Decimal | None, Decimal | None] | None:
    """The model's re-margin triggers of a scope that depends on ``symbol`` alone (item 3 of the
    module docstring); None when the scope cannot be indexed."""
    return model.index_bounds(account, state.parameters, StateMarks(state), risk, symbol)


def _budget_bounds(
    state: LedgerState, model: MarginModel, account: Account, risk: ScopeRisk, symbols: tuple[str, ...]
) -> tuple[Bands, FillBudget | None] | None:
    """The model's bands of a scope that depends on several prices (item 4), spending
    ``BAND_SHARE`` of its budget."""
    return model.budget_bands(account, state.parameters, StateMarks(state), risk, symbols, BAND_SHARE)


def absorbs_fill(state: LedgerState, fill: Fill) -> bool:
    """Whether an ordinary cross fill, already applied, provably changes neither the account's
    status nor what its index entries promise, so that neither a re-margin nor a refresh is due.

    It holds for an account indexed by a budget (``FillBudget``, kept by ``refresh``: a healthy
    cross account, its only scope, every price it depends on banded) when the fill keeps its set
    of open positions (a flip through zero keeps it; the bounds below hold for either side),
    settles and charges its fee in the valuation asset, and all the fills absorbed since the
    reference leave the budget unspent:

        |d equity| + haircut x |d balance| + sum |d maintenance| + rounding
            + sum over positions of k_X(now) x band_X + the collateral bands' share  <  S

    The first terms bound how far the fills moved each g at the reference prices (equity moves
    by d balance + sum (d q x cs x P_ref - d cost); haircut units by at most the haircut rate per
    unit of balance; a maintenance requirement by at most its largest rate per unit of notional,
    plus a rounding step each); the rest bounds what in-band price moves can add from there, with
    the positions' sizes as they are now (each k_X x band_X rounded up). Anything else that
    changes the account (a deposit, a transfer, a decision, funding unless ``absorbs_balance``
    takes it) re-margins and refreshes it, which replaces the record, so between two refreshes
    only absorbed fills and payments move it, each fill one position and each payment the
    balance: the record keeps each position's terms and their sums, and a fill replaces its
    position's terms (exact sums, so the totals are the sums over the positions). A fill that is
    not absorbed is re-margined and refreshed, which replaces the record it updated."""
    record = state.triggers.budgets.get(fill.account_id)
    if record is None or fill.margin_mode != CROSS:
        return False
    budgeted = record.positions.get(fill.instrument)
    if budgeted is None:
        return False  # a new instrument: the scope's dependencies change
    if fill.fee != ZERO and fill.fee_asset is not None and fill.fee_asset != state.terms().valuation_asset:
        return False
    account = state.accounts[fill.account_id]
    position = account.positions[(fill.instrument, CROSS)]
    quantity = position.quantity
    if quantity == ZERO:
        return False  # closed: the scope's dependencies change
    # Only this position moved since the last absorbed fill: update its share of the totals.
    # Kept as the position's value and as one sum of the terms the test adds, not as a move from
    # the reference each, and the totals as ``FillBudget`` keeps them: fewer decimal operations
    # a fill (docs/performance.md).
    value = quantity * budgeted.unit - position.cost
    size = abs(quantity)
    fixed = abs(size - budgeted.size) * budgeted.unit_rate + size * budgeted.unit_spread
    record.offset += value - budgeted.value
    record.slack -= fixed - budgeted.fixed
    budgeted.value, budgeted.fixed = value, fixed
    return _unspent(state, record, account)


def absorbs_balance(state: LedgerState, account_id: str) -> bool:
    """Whether a change of the account's valuation-asset balance alone (a funding payment of a
    cross position settled in it), already applied, leaves its budget unspent: the same test as
    ``absorbs_fill``, whose terms already count the balance's move from the reference."""
    record = state.triggers.budgets.get(account_id)
    if record is None:
        return False
    return _unspent(state, record, state.accounts[account_id])


def _unspent(state: LedgerState, record: FillBudget, account: Account) -> bool:
    # |d balance + d equity| + fixed terms (+ haircut x |d balance|) < budget, as ``FillBudget``
    # keeps it: exact sums, so the same test to the last digit.
    balance = account.balance(state.terms().valuation_asset)
    spent = abs(balance + record.offset)
    if record.haircut:
        spent += record.haircut * abs(balance - record.balance)
    if spent < record.slack:
        state.triggers.absorbed += 1
        return True
    return False


# ---------------------------------------------------------------------------------------------
# on a mark


def crossed(state: LedgerState, symbol: str, price: Decimal) -> tuple[set[tuple[str, str]], set[str]]:
    """Scopes whose trigger the new ``price`` of ``symbol`` crossed (their entries are popped),
    and accounts to re-margin in full (``always``, or every dependent on a first mark)."""
    index = state.triggers
    full = set(index.always.get(symbol, ()))
    if symbol not in index.seen:
        full |= dependents(state, symbol)
        index.seen.add(symbol)
    hits: set[tuple[str, str]] = set()
    version = index.version
    lowers = index.lowers.get(symbol)
    while lowers and -lowers[0][0] >= price:
        _, account_id, scope, entry_version = heapq.heappop(lowers)
        if version.get(account_id) == entry_version:
            hits.add((account_id, scope))
    uppers = index.uppers.get(symbol)
    while uppers and uppers[0][0] <= price:
        _, account_id, scope, entry_version = heapq.heappop(uppers)
        if version.get(account_id) == entry_version:
            hits.add((account_id, scope))
    return hits, full
