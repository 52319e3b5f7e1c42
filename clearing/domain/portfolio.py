"""The ``portfolio`` margin model (CONTRACT v2 "Portfolio margin"): an account's cross scope
margined on the scenario grid of each underlying (``scenarios``), isolated positions on
``standard``.

What it answers, for the cross scope:

* **Equity** exactly as the standard model values it (collateral after haircuts, linear P&L,
  options at their marks): the standard model's cross scope is evaluated and its collateral,
  unrealised P&L and equity are kept; only the requirements change. One owner of valuation.
* **IM and MM**: the sum over the scope's underlyings of ``scenarios.underlying_requirement``
  (no offsets between underlyings), each on its grid (the ``portfolio_margin`` block scaled by
  dynamic margin's multiplier). An underlying the parameters give no ``portfolio_margin`` block
  keeps the standard requirements of its positions: an account on this model can still hold an
  instrument listed without a grid, and is margined for it as everyone else is.
* **The level**: ``levels.classify`` of those figures (one rule for every model).
* **Per-position figures**: notional and value as the standard model has them; the requirements
  of the position held alone on its grid (what it would need by itself: not additive, the scope's
  requirement is the grid's of the whole book, hedges offsetting); no liquidation price (the grid
  requirement is not a piecewise-linear function of one mark: later work).
* **The worst cell** of each underlying is kept on ``ScopeRisk.underlyings`` with every cell.

Inputs beyond prices. An option's cells need its implied volatility and the valuation time, and
the grid needs dynamic margin's multiplier: ``marginmodel.Marks`` carries them beside the prices
(``StateMarks`` in the ledger, where an option is valued at the later of its own mark's time and
its underlying's; ``PortfolioMarks`` in the calculator, at its ``at``). With a plain mapping of
prices, a book without options is margined (multiplier 1) and an option is a
``MarginModelError`` naming what is missing.

The trigger index. ``index_bounds`` and ``budget_bands`` answer None and ``trigger_prices`` puts
both bounds at the price in use: a portfolio scope is re-margined on every mark of each of its
dependencies (correct, slower; bands for portfolio scopes are later work). ``dependencies`` are
the scope's instruments, their underlyings and settlement assets, and its collateral assets.

Liquidation (``liquidation_plan`` of the interface, for the cross scope; an isolated scope is
the standard model's). The grid requirement is not additive: closing a hedge leg can raise what
the rest needs. So every reduction is measured on the book re-evaluated on the grid with all the
reductions planned before it applied (``reduction``: the account given in the
``EvaluatedScope``, copied, each planned position reduced at the price it is valued at, the
cross scope evaluated again; its maintenance is the plan's, its equity the plan's less the
liquidation fee, which is the standard model's). A plan, for a scope in liquidation:

1. **Order** (``liquidation_order``): by each position's contribution to the loss of its
   underlying's worst cell, quantity x the instrument's risk array in that cell (x the cell's
   weight for an extreme cell), the most loss-making first; ties by instrument name. The hedge
   legs that gain in the worst cell come last. A position on an underlying with no grid counts
   minus its standard maintenance requirement as its contribution.
2. **Quantity** (``order_quantity``): the least multiple of ``quantity_step`` that brings the
   re-evaluated scope to target_ratio. The maintenance of the book as one position is reduced by
   q is convex in q (the worst loss is a max of cell P&Ls linear in q, the short-option minimum
   linear in q) and the fee linear, so the quantities that are enough form one interval: when
   the whole position is enough, the least is found by halving as for the standard model; when
   it is not (a leg closed in full would leave the book worse hedged the other way), the
   quantity that leaves the least shortfall is found by thirds, and the least quantity up to it
   that is enough by halving. When no quantity is enough the position is closed in full and the
   next one is reduced. (Requirements and fees round up, which can bend that convexity by a
   unit of their last place; whatever the rounding, a partial order's quantity is enough and
   one step less is not.)
3. The plan stops once it meets target_ratio; an equity at or below zero closes everything.
   So after the orders are all executed at the prices in use, the scope is at or below
   target_ratio, or closed.

``bankruptcy_price`` is the standard model's (equity is valued the same way, so the price that
uses it up is the same).

Risk arrays are kept per parameters document, keyed by everything they depend on (instrument,
grid multiplier, mark, iv, valuation time), up to ``ARRAYS_MAX``: every account holding an
instrument shares one pricing of it per mark (DESIGN.md v2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from clearing.domain import margin
from clearing.domain.levels import classify, margin_ratio
from clearing.domain.marginmodel import (
    CROSS,
    LIQUIDATION_SEARCH_STEPS_MAX,
    AccountRisk,
    Bands,
    EvaluatedScope,
    MarginModel,
    MarginModelError,
    Marks,
    Planned,
    PositionRisk,
    Reduction,
    ScopeRisk,
    TriggerPrices,
    iv_of,
    least_steps,
    multiplier_of,
    quantity_step,
    steps_in,
    valuation_time,
)
from clearing.domain.numbers import ONE, ZERO, divide, exact
from clearing.domain.params import InstrumentSpec, RiskParameters
from clearing.domain.scenarios import (
    RiskArray,
    ScenarioError,
    ScenarioGrid,
    UnderlyingRequirement,
    linear_array,
    option_array,
    scenario_grid,
    underlying_requirement,
)
from clearing.domain.state import Account, FillBudget

PORTFOLIO: Final = "portfolio"
OPTION: Final = "option"
# Risk arrays kept per parameters document (each is 2 x price_steps + 1 moves x 3 cells plus the
# extreme ones): beyond this many, the oldest are dropped and priced again when asked for.
ARRAYS_MAX: Final = 100_000


class PortfolioMarks(Marks):
    """``Marks`` from plain mappings (the calculator's): prices, the options' implied
    volatilities, the valuation time of every option, dynamic margin's multiplier per underlying
    (1 when not given)."""

    __slots__ = ("_prices", "ivs", "mark_times", "multipliers", "valuation_at")

    def __init__(
        self,
        prices: Mapping[str, Decimal],
        ivs: Mapping[str, Decimal] | None = None,
        valuation_at: datetime | None = None,
        multipliers: Mapping[str, Decimal] | None = None,
    ) -> None:
        self._prices = prices
        self.ivs = ivs if ivs is not None else {}
        self.mark_times = {}
        self.valuation_at = valuation_at
        self.multipliers = multipliers if multipliers is not None else {}

    def __getitem__(self, symbol: str) -> Decimal:
        return self._prices[symbol]

    def get(self, symbol: str, default: Any = None) -> Any:
        return self._prices.get(symbol, default)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._prices

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)


# Per parameters document (immutable): grids by (underlying, multiplier), arrays by their inputs.
_CACHE: tuple[RiskParameters | None, dict[tuple[str, Decimal], ScenarioGrid], dict[tuple[Any, ...], RiskArray]] = (
    None,
    {},
    {},
)


def _caches(
    parameters: RiskParameters,
) -> tuple[dict[tuple[str, Decimal], ScenarioGrid], dict[tuple[Any, ...], RiskArray]]:
    global _CACHE
    if _CACHE[0] is not parameters:
        _CACHE = (parameters, {}, {})
    return _CACHE[1], _CACHE[2]


def _grid(parameters: RiskParameters, underlying: str, multiplier: Decimal) -> ScenarioGrid | None:
    spec = parameters.portfolio_margin_spec(underlying)
    if spec is None:
        return None
    grids, _ = _caches(parameters)
    key = (underlying, multiplier)
    grid = grids.get(key)
    if grid is None:
        try:
            grid = grids[key] = scenario_grid(spec, multiplier)
        except ScenarioError as error:
            raise MarginModelError(str(error)) from error
    return grid


def _array(
    parameters: RiskParameters,
    grid: ScenarioGrid,
    spec: InstrumentSpec,
    position: PositionRisk,
    underlying_mark: Decimal | None,
    marks: Mapping[str, Decimal],
) -> RiskArray:
    """The instrument's risk array on ``grid``, priced once per set of inputs (module docstring)."""
    _, arrays = _caches(parameters)
    if spec.kind != OPTION:
        key: tuple[Any, ...] = (spec.symbol, grid.multiplier, position.price_used)
        found = arrays.get(key)
        if found is None:
            found = linear_array(grid, spec, position.price_used)
    else:
        iv = iv_of(marks, spec.symbol)
        at = valuation_time(marks, spec.symbol, spec.underlying_symbol)
        missing = [
            name
            for name, value in (
                (f"the mark of its underlying {spec.underlying_symbol}", underlying_mark),
                ("its implied volatility (the mark's iv)", iv),
                ("the valuation time", at),
            )
            if value is None
        ]
        if missing or underlying_mark is None or iv is None or at is None:
            raise MarginModelError(
                f"portfolio margin prices option {spec.symbol} on its grid and needs {', '.join(missing)}"
            )
        key = (spec.symbol, grid.multiplier, underlying_mark, iv, at, parameters.interest_rate)
        found = arrays.get(key)
        if found is None:
            try:
                found = option_array(grid, spec, underlying_mark, iv, at, parameters.interest_rate)
            except ScenarioError as error:
                raise MarginModelError(str(error)) from error
    if key not in arrays:
        if len(arrays) >= ARRAYS_MAX:
            del arrays[next(iter(arrays))]
        arrays[key] = found
    return found


def _underlying_mark(parameters: RiskParameters, marks: Mapping[str, Decimal], underlying: str) -> Decimal | None:
    if underlying == parameters.valuation_asset:
        return ONE
    found: Decimal | None = marks.get(underlying)
    return found


def _portfolio_cross(parameters: RiskParameters, marks: Mapping[str, Decimal], base: ScopeRisk) -> ScopeRisk:
    """The cross scope ``base`` (the standard model's: its valuation) with the requirements of the
    grid (module docstring)."""
    instruments = parameters.instruments_by_symbol
    by_underlying: dict[str, list[PositionRisk]] = {}
    for position in base.positions:
        by_underlying.setdefault(instruments[position.instrument].underlying_symbol, []).append(position)
    initial = maintenance = ZERO
    alone: dict[str, tuple[Decimal, Decimal]] = {}
    requirements: list[UnderlyingRequirement] = []
    for underlying in sorted(by_underlying):
        held = by_underlying[underlying]
        grid = _grid(parameters, underlying, multiplier_of(marks, underlying))
        if grid is None:  # no portfolio_margin block: the standard requirements stand
            for position in held:
                initial += position.initial_margin
                maintenance += position.maintenance_margin
            continue
        underlying_mark = _underlying_mark(parameters, marks, underlying)
        arrays = {
            p.instrument: _array(parameters, grid, instruments[p.instrument], p, underlying_mark, marks) for p in held
        }
        book = [(instruments[p.instrument], p.quantity) for p in held]
        has_short_option = any(spec.kind == OPTION and quantity < ZERO for spec, quantity in book)
        if underlying_mark is None and has_short_option:
            raise MarginModelError(f"portfolio margin on {underlying} needs its mark for the short-option minimum")
        used = underlying_mark if underlying_mark is not None else ZERO  # S is 0 without short options
        requirement = underlying_requirement(grid, book, arrays, used)
        requirements.append(requirement)
        initial += requirement.initial_margin
        maintenance += requirement.maintenance_margin
        for spec, quantity in book:
            own = underlying_requirement(grid, [(spec, quantity)], arrays, used)
            alone[spec.symbol] = (own.initial_margin, own.maintenance_margin)
    positions = tuple(
        p._replace(
            initial_margin=alone[p.instrument][0],
            maintenance_margin=alone[p.instrument][1],
            liquidation_price=None,
        )
        if p.instrument in alone
        else p._replace(liquidation_price=None)
        for p in base.positions
    )
    ratio = margin_ratio(base.equity, maintenance)
    return base._replace(
        initial_margin=initial,
        maintenance_margin=maintenance,
        margin_ratio=ratio,
        status=classify(base.equity, maintenance, ratio, parameters.margin_call),
        positions=positions,
        underlyings=tuple(requirements),
    )


def _cross(account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal]) -> ScopeRisk:
    base = margin.evaluate_scope(account, parameters, marks, CROSS, liquidation_prices=False)
    return _portfolio_cross(parameters, marks, base)


@exact
def evaluate_cross(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], *, liquidation_prices: bool = False
) -> ScopeRisk:
    """The cross scope of ``account`` under the portfolio model (no liquidation prices, whatever
    ``liquidation_prices`` asks: module docstring)."""
    del liquidation_prices
    return _cross(account, parameters, marks)


@exact
def evaluate(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], *, liquidation_prices: bool = True
) -> AccountRisk:
    """Every scope: the cross one on the grid, each isolated one as the standard model margins it."""
    standard = margin.evaluate(account, parameters, marks, liquidation_prices=liquidation_prices)
    cross = _portfolio_cross(parameters, marks, standard.cross)
    return AccountRisk(standard.account_id, standard.parameters_version, standard.collateral, cross, standard.isolated)


def dependencies(account: Account, parameters: RiskParameters, scope: str) -> tuple[str, ...]:
    """The standard model's dependencies and, for the cross scope, the underlyings of its
    positions (the grid of every instrument moves with its underlying's mark)."""
    found = set(margin.dependencies(account, parameters, scope))
    if scope == CROSS:
        instruments = parameters.instruments_by_symbol
        for (instrument, mode), position in account.positions.items():
            spec = instruments.get(instrument)
            live = mode == CROSS and position.quantity != ZERO and spec is not None
            if live and spec is not None and spec.underlying_symbol != parameters.valuation_asset:
                found.add(spec.underlying_symbol)
    return tuple(sorted(found))


def _reduce(account: Account, instrument: str, reduce: Decimal) -> None:
    """Reduce ``account``'s cross position in ``instrument`` by ``reduce`` contracts (a copy's)."""
    held = account.positions[(instrument, CROSS)]
    left = abs(held.quantity) - reduce
    if left == ZERO:
        held.quantity, held.cost = ZERO, ZERO
    else:
        # The cost of what is left moves only an unmarked position's price in use (its entry price).
        held.cost = divide(held.cost * left, abs(held.quantity))
        held.quantity = left if held.quantity > ZERO else -left


@exact
def reduction(scope: EvaluatedScope, planned: Planned, position: PositionRisk, reduce: Decimal) -> Reduction:
    """``position`` reduced by ``reduce`` after the reductions ``planned``, the cross scope
    re-evaluated on the grid with all of them applied (module docstring): its maintenance is the
    scope's after them all, its equity the plan's less the fee (the standard model's: a close at
    the price in use moves equity by the fee alone)."""
    reduced = scope.account.copy()
    for instrument, quantity in planned.reduced.items():
        if instrument != position.instrument:
            _reduce(reduced, instrument, quantity)
    total = planned.reduced.get(position.instrument, ZERO) + reduce
    _reduce(reduced, position.instrument, total)
    after = _cross(reduced, scope.parameters, scope.marks)
    fee = margin.reduction(scope.parameters, position, planned.equity, planned.maintenance, reduce).fee
    remaining = after.position(position.instrument)
    requirement = remaining.maintenance_margin if remaining is not None and remaining.quantity != ZERO else ZERO
    left = abs(position.quantity) - total
    notional = left * position.contract_size * position.price_used
    return Reduction(left, notional, 0, requirement, fee, planned.equity - fee, after.maintenance_margin)


@exact
def contributions(scope: EvaluatedScope) -> dict[str, Decimal]:
    """Each open position's contribution to the loss of its underlying's worst cell (module
    docstring): quantity x its risk array in that cell x the cell's weight (negative: a loss);
    minus its standard maintenance for a position on an underlying without a grid."""
    parameters, marks, risk = scope.parameters, scope.marks, scope.risk
    instruments = parameters.instruments_by_symbol
    worst = {requirement.underlying: requirement for requirement in risk.underlyings}
    found: dict[str, Decimal] = {}
    for position in risk.positions:
        if position.quantity == ZERO:
            continue
        spec = instruments[position.instrument]
        underlying = spec.underlying_symbol
        requirement = worst.get(underlying)
        grid = _grid(parameters, underlying, multiplier_of(marks, underlying)) if requirement is not None else None
        if requirement is None or grid is None:
            found[position.instrument] = -position.maintenance_margin
            continue
        array = _array(parameters, grid, spec, position, _underlying_mark(parameters, marks, underlying), marks)
        cell = grid.cells[requirement.worst_index]
        found[position.instrument] = position.quantity * array.pnl[requirement.worst_index] * cell.weight
    return found


def liquidation_order(scope: EvaluatedScope) -> tuple[PositionRisk, ...]:
    """The open positions by contribution to the worst cell's loss, most loss-making first, then
    by instrument (module docstring)."""
    found = contributions(scope)
    return tuple(
        sorted(
            (p for p in scope.risk.positions if p.quantity != ZERO), key=lambda p: (found[p.instrument], p.instrument)
        )
    )


@exact
def order_quantity(scope: EvaluatedScope, planned: Planned, position: PositionRisk) -> Decimal:
    """The least multiple of ``quantity_step`` reducing ``position`` by which, after ``planned``,
    brings the re-evaluated scope to target_ratio; the whole position when none does, or when the
    equity planned is not positive (module docstring: the search for a convex requirement)."""
    target = scope.parameters.liquidation.target_ratio
    held = abs(position.quantity)
    step = quantity_step(position.quantity)
    high = steps_in(held, step)

    def after(n: int) -> Reduction:
        return reduction(scope, planned, position, min(held, step * n))

    def enough(n: int) -> bool:
        return after(n).meets(target)

    if planned.equity <= ZERO:
        return held
    if not enough(high):
        best = _least_shortfall(after, target, high)
        if best == 0 or not enough(best):
            return held
        high = best
    return min(held, step * least_steps(enough, high))


def _least_shortfall(after: Callable[[int], Reduction], target: Decimal, high: int) -> int:
    """The n in [0, high] at which ``after(n)`` leaves the least maintenance - target x equity,
    the least such n among equals, by thirds (that shortfall is convex in n: module docstring)."""

    def shortfall(n: int) -> Decimal:
        left = after(n)
        return left.maintenance - target * left.equity

    low = 0
    for _ in range(LIQUIDATION_SEARCH_STEPS_MAX):
        if high - low <= 2:
            break
        first = low + (high - low) // 3
        second = high - (high - low) // 3
        if shortfall(first) <= shortfall(second):
            high = second
        else:
            low = first
    return min(range(low, high + 1), key=lambda n: (shortfall(n), n))


class PortfolioModel(MarginModel):
    """The ``portfolio`` model (this module)."""

    def __init__(self) -> None:
        super().__init__(PORTFOLIO)

    def evaluate(
        self, account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], *, liquidation_prices: bool
    ) -> AccountRisk:
        return evaluate(account, parameters, marks, liquidation_prices=liquidation_prices)

    def evaluate_scope(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        scope: str,
        *,
        liquidation_prices: bool,
    ) -> ScopeRisk:
        if scope == CROSS:
            return evaluate_cross(account, parameters, marks, liquidation_prices=liquidation_prices)
        return margin.evaluate_scope(account, parameters, marks, scope, liquidation_prices=liquidation_prices)

    def dependencies(self, account: Account, parameters: RiskParameters, scope: str) -> tuple[str, ...]:
        return dependencies(account, parameters, scope)

    def trigger_prices(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbol: str,
    ) -> TriggerPrices:
        if risk.scope != CROSS:
            return margin.trigger_prices_of(account, parameters, marks, risk, symbol)
        # Both bounds at the price in use: any move re-margins the scope (module docstring).
        reference: Decimal | None = marks.get(symbol)
        return TriggerPrices(risk.scope, symbol, reference, reference, None, reference, None)

    def index_bounds(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbol: str,
    ) -> tuple[Decimal | None, Decimal | None] | None:
        if risk.scope != CROSS:
            return margin.index_bounds(account, parameters, marks, risk, symbol)
        return None

    def budget_bands(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbols: tuple[str, ...],
        band_share: Decimal,
    ) -> tuple[Bands, FillBudget | None] | None:
        if risk.scope != CROSS:
            return margin.budget_bands(account, parameters, marks, risk, symbols, band_share)
        return None

    def liquidation_order(self, scope: EvaluatedScope) -> tuple[PositionRisk, ...]:
        if scope.risk.scope != CROSS:
            return margin.liquidation_order(scope.risk)
        return liquidation_order(scope)

    def reduction(self, scope: EvaluatedScope, planned: Planned, position: PositionRisk, reduce: Decimal) -> Reduction:
        if scope.risk.scope != CROSS:
            return margin.reduction(scope.parameters, position, planned.equity, planned.maintenance, reduce)
        return reduction(scope, planned, position, reduce)

    def order_quantity(self, scope: EvaluatedScope, planned: Planned, position: PositionRisk) -> Decimal:
        if scope.risk.scope != CROSS:
            return super().order_quantity(scope, planned, position)
        return order_quantity(scope, planned, position)

    def bankruptcy_price(self, position: PositionRisk, equity: Decimal, quantity: Decimal) -> tuple[Decimal, Decimal]:
        return margin.bankruptcy_price(position, equity, quantity)
