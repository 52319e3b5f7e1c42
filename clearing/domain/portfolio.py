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

The trigger index: bands (``bands``, used by ``budget_bands`` and ``index_bounds``). A cross
scope without a grid (every requirement the standard model's) is banded by the standard model.
A scope on a grid gets, per symbol it depends on, an interval of that symbol's price, and per
underlying with options a window of that underlying's mark times, inside which no combination of
moves can change its status; a mark outside re-margins it. The derivation:

* **What must not flip.** The status is ``levels.classify`` of E (equity) and MM, i.e. the signs
  of g_0 = E and g_t = t x E - MM for t in (resolve, warning, 1), all t <= 1; with E <= 0 also
  the sign of MM (at MM = 0 the level is healthy whatever E): ``levels.status_distance``.
  With G the smallest of those |g| (and MM when E <= 0) less the roundings below, moves with
  |dE| + |dMM| < G flip nothing, since |dg_t| <= t |dE| + |dMM|.
* **dMM.** MM = sum over underlyings of round_up(f x IM), IM = max(W, S), W = max(0, -min over
  cells c of w_c P_c), P_c = sum_i q_i V_ic, S = rate x U x short contracts; f the
  maintenance_factor <= 1, w_c <= 1 the cells' weights (extreme_weight <= 1). max, min and
  max(0, .) move by no more than their arguments, so |dIM| <= |dW| + |dS| and
  |dW| <= sum_i |q_i| max_c |dV_ic|: |dMM| <= f (sum_i |q_i| max_c |dV_ic| + |dS|) + roundings.
* **A linear position's own mark P** moves E by |q| cs per unit (settled in the valuation asset,
  required) and its array V_c = P m_c cs by |m_c| cs: k_P = |q| cs (1 + f max|m|), extremes
  included. The underlying's mark does not enter a linear array (it is priced at its own mark).
* **A collateral asset's price** moves E by |amount - haircut units| per unit, as in margin.py.
* **The underlying's mark F** moves each option's array V_c = cs (C(F (1 + m_c), sigma_c, t) -
  C(F, iv, t)) (Black-76; a put's by parity is the Black-76 put exactly), where dC/dF of a
  call is e^(-rt) (1 + m) N(d1), in [0, (1 + m) e^(-rt)], and of a put in [-(1 + m) e^(-rt), 0],
  whatever sigma and t (the intrinsic value at sigma = 0 or t <= 0 alike). The two terms share
  their sign, so |dV_c/dF| <= cs max(1 + m_c, 1) e^(-rt) <= cs (1 + max(m, 0)) with r >= 0
  (required: a negative interest_rate is not banded). With S:
  k_F = f (sum over options |q| cs (1 + max(m, 0)) + rate x short contracts) (+ a balance of it).
* **An option's own mark** moves E by |q| cs per unit, but arrives with a new iv, which moves
  its array without bound: its band is empty (its price, its price), so every mark of it
  re-margins the scope (and re-bands it). Its budget share is then not needed.
* **Time.** In the ledger an option is valued at the later of its own mark's time and its
  underlying's, so a mark of F at time T moves each option's valuation time within T - T_0 of
  where it was (T_0: the reference mark's time): t and the volatility cells move with it. For a
  window of h seconds either way, F held at the reference: C = e^(-rt) B(s), s = sigma sqrt(t)
  the total deviation, and dB/ds = F phi(d1) <= 0.4 F (phi <= 1/sqrt(2 pi)); each volatility
  cell is monotone in the days to expiry (k_o is, vol_power in [0, 1]), so over the window s
  lies between (smaller sigma of the two ends) x sqrt(t - h) and (larger) x sqrt(t + h)
  (sqrt of 0 past the expiry); e^(-rt) moves by at most r h, B <= max(F (1 + m), K). So
  |dV_c| <= cs (0.4 (F (1 + max m) ds_cells + F ds_base) + r h (max(F (1 + max m), K) +
  max(F, K))) (``drift``; padded beyond the 30-digit arithmetic). The path (F_0, T_0) ->
  (F_0, T) -> (F, T) adds the two bounds, the second uniform in t and sigma.
* **Shares.** G x ``share`` is split equally among the n banded symbols and clock windows: a
  symbol with k gets the band (G x share / n) / k (rounded down, then PRICE_QUANTUM inward), an
  underlying the widest of ``CLOCK_STEPS`` whose drift f x sum |q| x ``drift`` fits its part
  (none: the empty window, so every mark of it re-margins). Together the moves stay below G.
* **Roundings** taken off G: a requirement rounding (1e-8) per position, per underlying and one
  more, four times, the ratio's rounding (1e-10 x (|E| + G), four times), and ``CELL_SLACK`` per
  contract of each option (the arrays' figures are rounded to 1e-12, at both evaluations).

Not banded (re-margined on every mark of each dependency, as before): a scope on a grid holding
also a position on an underlying without a grid (standard requirements beside the grid's), an
unmarked position, one settled outside the valuation asset, an unpriced asset, a negative
interest rate. The multiplier of dynamic margin is part of the grid: the bands hold for the
multiplier they were computed with, so a change of it must re-margin (and so re-band) the
portfolio scopes on that underlying, as the fold does on a rates decision. No
record for ``triggers.absorbs_fill``: every fill of a banded portfolio scope re-margins it.
``trigger_prices`` (not used by the index) puts both bounds at the price in use.
``dependencies`` are the scope's instruments, their underlyings and settlement assets, and its
collateral assets.

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
from typing import Any, Final, NamedTuple

from clearing.domain import black76, margin
from clearing.domain.decimalmath import contexts
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
    clock_key,
    clock_seconds,
    iv_of,
    least_steps,
    multiplier_of,
    quantity_step,
    steps_in,
    valuation_time,
)
from clearing.domain.numbers import (
    ONE,
    ZERO,
    divide,
    divide_down,
    exact,
    round_bound_up,
)
from clearing.domain.params import InstrumentSpec, RiskParameters
from clearing.domain.scenarios import (
    RiskArray,
    ScenarioError,
    ScenarioGrid,
    UnderlyingRequirement,
    days_to_expiry,
    linear_array,
    option_array,
    scenario_grid,
    underlying_requirement,
    volatility_cells,
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
        if risk.scope != CROSS or not risk.underlyings:
            # An isolated scope, or a cross scope without a grid: the standard model's figures.
            return margin.index_bounds(account, parameters, marks, risk, symbol)
        found = bands(account, parameters, marks, risk, (symbol,), ONE)
        if found is None or any(key != symbol for key in found):
            return None  # not reached: a scope on a grid with options moves with two prices
        return found.get(symbol, (None, None))

    def budget_bands(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbols: tuple[str, ...],
        band_share: Decimal,
    ) -> tuple[Bands, FillBudget | None] | None:
        if risk.scope != CROSS or not risk.underlyings:
            return margin.budget_bands(account, parameters, marks, risk, symbols, band_share)
        found = bands(account, parameters, marks, risk, symbols, band_share)
        # No record for ``triggers.absorbs_fill``: a fill moves the grid's arrays, which it does not model.
        return None if found is None else (found, None)

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


# ---------------------------------------------------------------------------------------------
# Bands for the trigger index (module docstring, "The trigger index")

# Above the largest value of the standard normal density, 1 / sqrt(2 pi) = 0.39894...: how fast
# Black-76 moves with its total deviation sigma sqrt(t), per unit of the forward.
DENSITY_BOUND: Final = Decimal("0.4")
# What the rounding of a risk array's figures (half a unit of 1e-12 each, at each of two
# evaluations) and its pricing error (far below that) can add to a cell's change, per contract
# held of an option.
CELL_SLACK: Final = Decimal("2e-12")
# The clock bands a scope can get, in seconds either side of its underlying's last mark, widest
# first: a scope takes the widest whose drift fits its share of the budget (none: 0).
CLOCK_STEPS: Final = (604_800, 86_400, 14_400, 3_600, 900, 300, 60, 10, 1)
# Drift bounds kept per parameters document (one per option, inputs and clock step, shared by
# every holder as the arrays are).
DRIFTS_MAX: Final = 100_000
# Added to each bound on a total deviation and, relative to the option's scale, to each drift:
# more than the rounding of the 30-digit arithmetic they are computed with can take away.
_DRIFT_PAD: Final = Decimal("1e-15")
_BOUND_DIGITS: Final = 30
_SECONDS_PER_YEAR: Final = Decimal(31_536_000)
_SECONDS_PER_DAY: Final = Decimal(86_400)

_DRIFTS: tuple[RiskParameters | None, dict[tuple[Any, ...], Decimal]] = (None, {})


def _largest_move(grid: ScenarioGrid) -> tuple[Decimal, Decimal]:
    """(the largest |m|, 1 + the largest m above 0) over the grid's cells, extreme ones included."""
    moves = grid.moves
    return max(abs(move) for move in moves), ONE + max(ZERO, max(moves))


@exact
def drift(
    parameters: RiskParameters,
    grid: ScenarioGrid,
    spec: InstrumentSpec,
    underlying_mark: Decimal,
    iv: Decimal,
    valuation_at: datetime,
    seconds: int,
) -> Decimal:
    """An upper bound on how far any cell of the option's risk array (per contract, contract
    size included) can move when its valuation time moves by at most ``seconds`` either way,
    the underlying's mark held (module docstring, "Time")."""
    global _DRIFTS
    if _DRIFTS[0] is not parameters:
        _DRIFTS = (parameters, {})
    cache = _DRIFTS[1]
    key = (spec.symbol, grid.multiplier, underlying_mark, iv, valuation_at, seconds)
    found = cache.get(key)
    if found is not None:
        return found
    assert spec.strike is not None and spec.expiry is not None  # an option (params validates it)
    context = contexts(_BOUND_DIGITS)[0].copy()
    step = Decimal(seconds)
    years = black76.year_fraction(spec.expiry, valuation_at)
    days = days_to_expiry(spec.expiry, valuation_at)
    year_step = context.divide(step, _SECONDS_PER_YEAR)
    day_step = context.divide(step, _SECONDS_PER_DAY)
    near = context.subtract(years, year_step)
    far = context.add(years, year_step)
    root_near = context.sqrt(near) if near > ZERO else ZERO
    root_far = context.sqrt(far) if far > ZERO else ZERO
    # Each volatility cell is monotone in the days to expiry, so over the window it lies between
    # its values at the two ends; the total deviation sigma sqrt(t) between the products of the
    # extremes.
    earlier = volatility_cells(grid.spec, iv, context.subtract(days, day_step))
    later = volatility_cells(grid.spec, iv, context.add(days, day_step))
    cells = max(
        context.subtract(context.multiply(max(a, b), root_far), context.multiply(min(a, b), root_near))
        for a, b in zip(earlier, later, strict=True)
    )
    base = context.multiply(iv, context.subtract(root_far, root_near))
    _, lifted = _largest_move(grid)
    top = context.multiply(underlying_mark, lifted)
    moved = context.add(
        context.multiply(top, context.add(cells, _DRIFT_PAD)),
        context.multiply(underlying_mark, context.add(base, _DRIFT_PAD)),
    )
    value = context.multiply(DENSITY_BOUND, moved)
    rate = parameters.interest_rate
    if rate:
        scale = context.add(max(top, spec.strike), max(underlying_mark, spec.strike))
        value = context.add(value, context.multiply(context.multiply(rate, year_step), scale))
    value = context.multiply(spec.contract_size, context.add(value, _DRIFT_PAD * (top + underlying_mark)))
    found = round_bound_up(value)
    if len(cache) >= DRIFTS_MAX:
        del cache[next(iter(cache))]
    cache[key] = found
    return found


class _Options(NamedTuple):
    """The options a scope holds on one underlying with a grid (``bands``)."""

    grid: ScenarioGrid
    mark: Decimal  # the underlying's
    held: list[tuple[InstrumentSpec, Decimal, Decimal, datetime | None]]  # spec, |q|, iv, valuation time


class Sensitivities(NamedTuple):
    """What ``bands`` reads of a scope on a grid (module docstring, "The trigger index")."""

    # k of each symbol: how far E and MM together can move per unit of its price (its options
    # held, their underlying's time held); 0 for an underlying that moves nothing of the scope.
    slopes: dict[str, Decimal]
    pinned: list[str]  # the options: any mark of one re-margins the scope
    options: dict[str, _Options]  # by underlying
    option_quantity: Decimal  # sum over options of |q| (``CELL_SLACK``)


@exact
def sensitivities(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], risk: ScopeRisk
) -> Sensitivities | None:
    """The slopes of a portfolio cross scope ``risk`` evaluated at ``marks``; None when the scope
    cannot be banded (module docstring)."""
    if risk.unpriced_assets or parameters.interest_rate < ZERO:
        return None
    valuation = parameters.valuation_asset
    instruments = parameters.instruments_by_symbol
    grids = {found.underlying: _grid(parameters, found.underlying, found.multiplier) for found in risk.underlyings}
    slopes: dict[str, Decimal] = dict.fromkeys(grids, ZERO)  # an underlying moves only options and S
    pinned: list[str] = []
    options: dict[str, _Options] = {}
    shorts: dict[str, Decimal] = {}  # contracts of short options, by underlying
    option_quantity = ZERO
    for position in risk.positions:
        if position.quantity == ZERO:
            continue
        if position.mark is None or position.settlement_asset != valuation:
            return None
        spec = instruments[position.instrument]
        underlying = spec.underlying_symbol
        grid = grids.get(underlying)
        contracts = abs(position.quantity) * position.contract_size
        if grid is None:
            return None  # standard requirements beside the grid's: not banded (module docstring)
        if position.option is None:  # equity, and the array's mark x m x contract size in every cell
            slope = contracts * (ONE + grid.spec.maintenance_factor * _largest_move(grid)[0])
            slopes[position.instrument] = slopes.get(position.instrument, ZERO) + slope
            continue
        pinned.append(position.instrument)
        option_quantity += abs(position.quantity)
        if position.quantity < ZERO:
            shorts[underlying] = shorts.get(underlying, ZERO) + contracts
        held = options.get(underlying)
        if held is None:
            mark = _underlying_mark(parameters, marks, underlying)
            if mark is None:
                return None
            held = options[underlying] = _Options(grid, mark, [])
        iv = iv_of(marks, spec.symbol)
        if iv is None:
            return None
        held.held.append((spec, abs(position.quantity), iv, valuation_time(marks, spec.symbol, underlying)))
    for underlying, held in options.items():
        grid_spec = held.grid.spec
        _, lifted = _largest_move(held.grid)
        arrays = sum((quantity * spec.contract_size for spec, quantity, _, _ in held.held), ZERO)
        minimum = grid_spec.short_option_minimum_rate * shorts.get(underlying, ZERO)
        slope = grid_spec.maintenance_factor * (arrays * lifted + minimum)
        slopes[underlying] = slopes.get(underlying, ZERO) + slope
    for asset, amount in account.balances.items():
        spec_of_asset = parameters.asset(asset)
        if amount != ZERO and asset != valuation and spec_of_asset is not None:
            slopes[asset] = slopes.get(asset, ZERO) + abs(margin.units_after_haircut(spec_of_asset, amount))
    return Sensitivities(slopes, pinned, options, option_quantity)


@exact
def bands(
    account: Account,
    parameters: RiskParameters,
    marks: Mapping[str, Decimal],
    risk: ScopeRisk,
    symbols: tuple[str, ...],
    share: Decimal,
) -> Bands | None:
    """Bands around the current prices (and clock bands around the underlyings' mark times) of
    a portfolio cross scope ``risk`` evaluated at ``marks``, inside which no combination of
    moves changes its status, spending ``share`` of its budget; an option's own symbol gets the
    empty band (its price, its price): any mark of it re-margins the scope. None when the scope
    cannot be banded. The derivation is the module docstring's ("The trigger index")."""
    found_slopes = sensitivities(account, parameters, marks, risk)
    if found_slopes is None:
        return None
    slopes, pinned, options, option_quantity = found_slopes
    if any(symbol not in slopes and symbol not in pinned for symbol in symbols):
        return None
    # How far the status's signs are from flipping, less the roundings: a requirement rounding
    # per position, per underlying and one more, and the arrays' own per option contract.
    requirements = len(risk.positions) + len(risk.underlyings) + 1
    budget = margin.status_budget(risk, parameters, requirements, CELL_SLACK * option_quantity)
    if budget <= ZERO:
        return None
    watched = [symbol for symbol in symbols if slopes.get(symbol, ZERO) > ZERO]
    clocked = [underlying for underlying in sorted(options) if underlying in symbols]
    if isinstance(marks, Marks) and marks.valuation_at is not None:
        clocked = []  # every option is valued at the one time given: no clock
    found: Bands = {}
    for symbol in pinned:
        price = marks[symbol]
        found[symbol] = (price, price)
    parts = len(watched) + len(clocked)
    if parts == 0:
        return found
    spent = budget * share
    for symbol in watched:
        price = marks[symbol]
        found[symbol] = margin.band_around(price, divide_down(spent, parts * slopes[symbol]))
    allowance = divide(spent, Decimal(parts))
    for underlying in clocked:
        held = options[underlying]
        at = marks.mark_times.get(underlying) if isinstance(marks, Marks) else None
        if at is None:
            return None
        reference = clock_seconds(at)
        window = _clock_window(parameters, underlying, held, allowance)
        found[clock_key(underlying)] = (reference - window, reference + window)
    return found


def _clock_window(parameters: RiskParameters, underlying: str, held: _Options, allowance: Decimal) -> Decimal:
    """The widest of ``CLOCK_STEPS`` (seconds) whose drift over the options on ``underlying``
    stays within ``allowance``; 0 when none does. A drift grows with the window (its bracket
    holds the narrower one's), so the widest that fits is found by bisection."""
    factor = held.grid.spec.maintenance_factor
    if any(at is None for _, _, _, at in held.held):
        return ZERO

    def fits(seconds: int) -> bool:
        moved = ZERO
        for spec, quantity, iv, at in held.held:
            assert at is not None
            moved += quantity * drift(parameters, held.grid, spec, held.mark, iv, at, seconds)
        return factor * moved <= allowance

    low, high = 0, len(CLOCK_STEPS)  # the answer's index is in [low, high]; high: none fits
    while low < high:
        middle = (low + high) // 2
        if fits(CLOCK_STEPS[middle]):
            high = middle
        else:
            low = middle + 1
    return Decimal(CLOCK_STEPS[low]) if low < len(CLOCK_STEPS) else ZERO
