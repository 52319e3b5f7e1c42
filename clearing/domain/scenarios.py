"""Portfolio margin on a scenario grid (CONTRACT v2 "Portfolio margin"), as pure functions.

Three steps, each a value the next one reads (DESIGN.md v2 "Options and scenario grids": SPAN's
risk arrays, not pricing per account):

1. ``scenario_grid``: the cells of one underlying's grid, in grid order. Price moves
   m = price_range x multiplier x k / price_steps for k = -price_steps .. price_steps, each with
   the volatility cells up, unchanged, down; then each extreme move with volatility unchanged,
   counted at ``extreme_weight``. ``multiplier`` is dynamic margin's (``dynamicmargin``); 1 without.
2. ``linear_array`` / ``option_array``: an instrument's risk array, its P&L per contract (x
   contract_size) in every cell. It depends on the instrument, the underlying's mark (and, for an
   option, its iv and the valuation time), never on an account: computed once per mark of the
   underlying or of the instrument and shared by every account that holds it.
   - linear: mark x m x contract_size, exact;
   - option: contract_size x (Black-76 at F (1 + m) and the cell's volatility - Black-76 at F and
     iv), no time decay, rounded half-even to 1e-12 (``numbers.round_model_value``): the figure a
     position's P&L is a multiple of. A put is priced through its call by put-call parity, so a
     call and a put of one strike, expiry and iv share one pricing (``option_pair_arrays``).
     The cell's volatility, with DTE = (expiry - valuation time)
     in days, unrounded, and k_o = (vol_reference_days / max(DTE, 1)) ^ vol_power:
     up = max(iv (1 + vol_up k_o), vol_up_floor), unchanged = iv, down = max(iv (1 - vol_down k_o), 0).
3. ``underlying_requirement``: an account's requirement on one underlying from its quantities:
   P&L per cell = sum of quantity x array (exact); an extreme cell's loss is weighted;
   W = max(0, the largest loss); S = short_option_minimum_rate x U x the sum over short options of
   |quantity| x contract_size; IM = max(W, S); MM = maintenance_factor x IM; IM and MM rounded up
   (``numbers.round_requirement``: against the account). The worst cell is the one with the
   largest (weighted) loss, the first in grid order among equals. An account's requirement is the
   sum over its underlyings (``account_requirement``): no offsets between underlyings.
   ``requirement_figures`` is the same without the cell objects (the hot path), and
   ``packed_requirement_figures`` the same sums on packed integers (the end of this module).

Digits. Every function of the pricing runs under a fixed context (``decimalmath``), so the digits
are the same on every machine. An option's cells are priced with the fewest digits that keep the
error of its per-contract P&L far below the 1e-12 it is rounded to (``grid_pricing_digits``):
Black-76 is a difference of two products of the size of max(F, K) x contract_size, each carrying
a relative error of a few units of the last digit, and an error in ln(F / K) reaches d1 divided by
sigma sqrt(t). So: 12 places + ``GRID_GUARD_DIGITS`` + the integer digits of max(F (1 + m), K) x
contract_size + the leading zeros of the smallest sigma sqrt(t), and never more than
``decimalmath.PRICING_PRECISION_DIGITS``.
"""

from __future__ import annotations

import array as arrays_of_words
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded, localcontext
from itertools import repeat
from operator import add, mul
from typing import Any, Final, Literal

from clearing.domain import black76
from clearing.domain.decimalmath import PRICING_DIGITS_MIN, PRICING_PRECISION_DIGITS, contexts, exp, ln, power, sqrt
from clearing.domain.numbers import ONE, ZERO, exact, round_model_value, round_requirement, to_wire
from clearing.domain.params import InstrumentSpec, PortfolioMarginSpec

VolatilityCell = Literal["up", "unchanged", "down"]
UP: Final = "up"
UNCHANGED: Final = "unchanged"
DOWN: Final = "down"
VOLATILITY_CELLS: Final[tuple[VolatilityCell, ...]] = (UP, UNCHANGED, DOWN)

# Digits beyond the 12 decimal places of a cell and the size terms of ``grid_pricing_digits``: a
# Black-76 value is a dozen correctly rounded operations, each adding at most half a unit of its
# last digit times a factor below 10, so 6 digits leave the error under 1e-17 of the figure's
# scale, five orders below the 1e-12 it is rounded to.
GRID_GUARD_DIGITS: Final = 6
CELL_DECIMAL_PLACES: Final = 12
# Scaling a figure or a quantity to an integer must be exact: a context that traps any rounding.
_PACKING_CONTEXT: Final = Context(prec=200, traps=[InvalidOperation, Overflow, Inexact, Rounded])
_MICROSECONDS_PER_DAY: Final = Decimal(86_400_000_000)


class ScenarioError(ValueError):
    """A grid or risk array cannot be built from these inputs (a multiplier that moves the price
    to zero or below, an option without its iv, an instrument of another underlying); the message
    says which."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell of the grid: the price move, the volatility cell, and whether it is an extreme
    cell (volatility unchanged, its loss counted at ``weight``)."""

    move: Decimal
    volatility: VolatilityCell
    extreme: bool
    weight: Decimal


@dataclass(frozen=True, slots=True)
class ScenarioGrid:
    """The cells of one underlying's grid in grid order (moves ascending; up, unchanged, down;
    then the extreme cells), with the parameters they came from."""

    spec: PortfolioMarginSpec
    multiplier: Decimal
    price_range: Decimal  # spec.price_range x multiplier
    cells: tuple[Cell, ...]

    @property
    def underlying(self) -> str:
        return self.spec.underlying

    @property
    def moves(self) -> tuple[Decimal, ...]:
        """The distinct price moves of the grid, extreme ones last (each once)."""
        seen: dict[Decimal, None] = {}
        for cell in self.cells:
            seen.setdefault(cell.move, None)
        return tuple(seen)


def scenario_grid(spec: PortfolioMarginSpec, multiplier: Decimal = ONE) -> ScenarioGrid:
    """The grid of ``spec`` with its price range scaled by dynamic margin's ``multiplier``.

    A move is price_range x multiplier x k / price_steps rounded half-even to 12 places (exact
    whenever the quotient has no more places, as in every document we have seen: 0.16 x 1 / 4).
    The extreme moves are not scaled (the contract scales the price range). A scaled range of 1 or
    more would take the underlying to zero or below, where nothing has a price: refused."""
    if not multiplier > ZERO:
        raise ScenarioError(f"portfolio_margin {spec.underlying}: the multiplier must be positive, got {multiplier}")
    price_range = spec.price_range * multiplier
    if price_range >= ONE:
        raise ScenarioError(
            f"portfolio_margin {spec.underlying}: price_range {spec.price_range} x multiplier {multiplier} = "
            f"{price_range} moves the underlying to zero or below; lower price_range or multiplier_cap"
        )
    steps = spec.price_steps
    cells: list[Cell] = []
    for k in range(-steps, steps + 1):
        move = round_model_value(price_range * k / steps)
        cells.extend(Cell(move, volatility, False, ONE) for volatility in VOLATILITY_CELLS)
    cells.extend(Cell(move, UNCHANGED, True, spec.extreme_weight) for move in spec.extreme_moves)
    return ScenarioGrid(spec=spec, multiplier=multiplier, price_range=price_range, cells=tuple(cells))


@dataclass(frozen=True, slots=True)
class RiskArray:
    """P&L per contract (contract_size included) of one instrument in every cell of ``grid``, in
    grid order, and the inputs it was computed from. An option's ``volatilities`` are its (up,
    unchanged, down) cells; a linear instrument has none."""

    instrument: str
    grid: ScenarioGrid
    mark: Decimal  # the instrument's own mark (linear) or the underlying's (option)
    pnl: tuple[Decimal, ...]
    volatilities: tuple[Decimal, Decimal, Decimal] | None = None
    digits: int | None = None  # an option's pricing digits (``grid_pricing_digits``)


def _check_underlying(grid: ScenarioGrid, spec: InstrumentSpec) -> None:
    if spec.underlying_symbol != grid.underlying:
        raise ScenarioError(
            f"{spec.symbol} moves with {spec.underlying_symbol}, not with the grid's underlying {grid.underlying}"
        )


@exact
def linear_array(grid: ScenarioGrid, spec: InstrumentSpec, mark: Decimal) -> RiskArray:
    """A linear instrument's array: mark x m x contract_size in each cell, exact (the instrument's
    own mark moves by m with its underlying)."""
    _check_underlying(grid, spec)
    if spec.kind == "option":
        raise ScenarioError(f"{spec.symbol} is an option: its risk array is option_array's")
    size = mark * spec.contract_size
    return RiskArray(spec.symbol, grid, mark, tuple(size * cell.move for cell in grid.cells))


def days_to_expiry(expiry: datetime, valuation_at: datetime) -> Decimal:
    """DTE = (expiry - valuation time) in seconds / 86,400, unrounded (to the pricing digits),
    exact to the microsecond before the one division; negative after the expiry."""
    if expiry.tzinfo is None or valuation_at.tzinfo is None:
        raise ScenarioError("days to expiry need times with a zone: the expiry and the valuation time")
    elapsed: timedelta = expiry - valuation_at
    microseconds = (elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds
    return contexts(PRICING_PRECISION_DIGITS)[0].copy().divide(Decimal(microseconds), _MICROSECONDS_PER_DAY)


def volatility_cells(spec: PortfolioMarginSpec, iv: Decimal, days: Decimal) -> tuple[Decimal, Decimal, Decimal]:
    """(up, unchanged, down) volatilities of an option with implied volatility ``iv`` and ``days``
    to expiry (module docstring). k_o is a non-integral power, taken as exp(vol_power x ln(x)) under
    the fixed context (``decimalmath.power``), never with ``**``."""
    context = contexts(PRICING_PRECISION_DIGITS)[0].copy()
    base = context.divide(spec.vol_reference_days, max(days, ONE))
    scale = power(base, spec.vol_power)
    up = max(context.multiply(iv, context.add(ONE, context.multiply(spec.vol_up, scale))), spec.vol_up_floor)
    down = max(context.multiply(iv, context.subtract(ONE, context.multiply(spec.vol_down, scale))), ZERO)
    return up, iv, down


def _integer_digits(value: Decimal) -> int:
    return max(value.adjusted() + 1, 1) if value > ZERO else 1


def grid_pricing_digits(
    forward_max: Decimal, strike: Decimal, contract_size: Decimal, smallest_deviation: Decimal | None
) -> int:
    """The digits an option's cells are priced with (module docstring): 12 places, the guard, the
    integer digits of max(F (1 + m), K) x contract_size and the leading zeros of the smallest
    positive sigma sqrt(t) (None: every cell is at its intrinsic value), within
    [``PRICING_DIGITS_MIN``, ``PRICING_PRECISION_DIGITS``]."""
    digits = CELL_DECIMAL_PLACES + GRID_GUARD_DIGITS + _integer_digits(max(forward_max, strike) * contract_size)
    if smallest_deviation is not None and smallest_deviation < ONE:
        digits += -smallest_deviation.adjusted()
    return min(max(digits, PRICING_DIGITS_MIN), PRICING_PRECISION_DIGITS)


# ln(1 + m) of each move, shared by every option of every grid with that move: computed at the
# full digits once (then rounded to the narrower context where it is added).
_LOG_GROWTH: dict[Decimal, Decimal] = {}


def _log_growth(move: Decimal) -> Decimal:
    found = _LOG_GROWTH.get(move)
    if found is None:
        found = ln(ONE + move)
        if len(_LOG_GROWTH) < LOG_GROWTH_CACHE_MAX:
            _LOG_GROWTH[move] = found
    return found


# Distinct moves whose logarithm is kept: a grid has at most 2 x 50 + 1 + 10, and dynamic margin's
# multiplier makes new ones at each sample; beyond this many they are computed each time.
LOG_GROWTH_CACHE_MAX: Final = 100_000


def option_array(
    grid: ScenarioGrid,
    spec: InstrumentSpec,
    underlying_mark: Decimal,
    iv: Decimal,
    valuation_at: datetime,
    rate: Decimal = ZERO,
) -> RiskArray:
    """An option's array (module docstring): contract_size x (Black-76 at F (1 + m) and the cell's
    volatility - Black-76 at F and iv), rounded half-even to 1e-12. t and DTE are taken at
    ``valuation_at`` in every cell (no time decay). sqrt(t) and ln(F / K) are taken once per
    option, ln(1 + m) once per move.

    A put's cells come from the call's of the same strike, expiry and iv by put-call parity,
    P = C - e^(-r t) (F - K) in every cell (Black-76's two formulas are that identity, since
    N(-x) = 1 - N(x)): P(F (1 + m), sigma) - P(F, iv) = C(F (1 + m), sigma) - C(F, iv) - e^(-r t) F m.
    So a put is priced as its call, and a call and a put that share strike, expiry and iv share
    one pricing (``option_pair_arrays``) with the same figures as priced alone."""
    changes, volatilities, digits, discount = _call_changes(grid, spec, underlying_mark, iv, valuation_at, rate)
    return _array_of_type(grid, spec, underlying_mark, changes, volatilities, digits, discount)


def option_pair_arrays(
    grid: ScenarioGrid,
    call: InstrumentSpec,
    put: InstrumentSpec,
    underlying_mark: Decimal,
    iv: Decimal,
    valuation_at: datetime,
    rate: Decimal = ZERO,
) -> tuple[RiskArray, RiskArray]:
    """The arrays of a call and a put with the same strike, expiry, contract size and iv, from one
    pricing: each the same as ``option_array`` gives it."""
    if (call.option_type, put.option_type) != ("call", "put") or (call.strike, call.expiry, call.contract_size) != (
        put.strike, put.expiry, put.contract_size
    ):
        raise ScenarioError(
            f"{call.symbol} and {put.symbol} are not a call and a put of one strike, expiry and contract size"
        )
    changes, volatilities, digits, discount = _call_changes(grid, call, underlying_mark, iv, valuation_at, rate)
    return (
        _array_of_type(grid, call, underlying_mark, changes, volatilities, digits, discount),
        _array_of_type(grid, put, underlying_mark, changes, volatilities, digits, discount),
    )


def _call_changes(
    grid: ScenarioGrid, spec: InstrumentSpec, underlying_mark: Decimal, iv: Decimal, valuation_at: datetime,
    rate: Decimal,
) -> tuple[list[Decimal], tuple[Decimal, Decimal, Decimal], int, Decimal]:
    """C(F (1 + m), cell volatility) - C(F, iv) of the call with ``spec``'s strike and expiry, per
    cell (unrounded, at the pricing digits), and the volatilities, digits and e^(-r t) used."""
    _check_underlying(grid, spec)
    if spec.option_type is None or spec.strike is None or spec.expiry is None:
        raise ScenarioError(f"{spec.symbol} is a {spec.kind}, not an option: its risk array is linear_array's")
    if iv < ZERO:
        raise ScenarioError(f"{spec.symbol}: implied volatility must not be negative, got {iv}")
    strike = spec.strike
    black76.check_inputs(spec.option_type, underlying_mark, strike, iv)
    years = black76.year_fraction(spec.expiry, valuation_at)
    volatilities = volatility_cells(grid.spec, iv, days_to_expiry(spec.expiry, valuation_at))
    largest_move = max(cell.move for cell in grid.cells)
    live = years > ZERO
    root_years = sqrt(years) if live else ZERO
    positive = [vol for vol in volatilities if vol > ZERO]
    smallest_deviation = min(positive) * root_years if live and positive else None
    digits = grid_pricing_digits(
        underlying_mark * (ONE + largest_move), strike, spec.contract_size, smallest_deviation
    )
    with localcontext(contexts(digits)[0]):
        discount = exp(-rate * years, digits) if live else ONE
        log_moneyness = ln(underlying_mark / strike, digits) if live else ZERO
        by_volatility = dict(zip(VOLATILITY_CELLS, volatilities, strict=True))

        def value(move: Decimal, volatility: Decimal) -> Decimal:
            forward = underlying_mark * (ONE + move) if move else underlying_mark
            if not live or volatility.is_zero():
                return discount * black76.intrinsic_value("call", forward, strike)
            shifted = log_moneyness + _log_growth(move) if move else log_moneyness
            return black76.priced("call", forward, strike, shifted, years, root_years, volatility, discount, digits)

        base = value(ZERO, iv)
        changes: list[Decimal] = []
        for cell in grid.cells:
            if cell.move.is_zero() and cell.volatility == UNCHANGED:
                changes.append(ZERO)  # the base itself: no decay, so exactly no P&L
            else:
                changes.append(value(cell.move, by_volatility[cell.volatility]) - base)
    return changes, volatilities, digits, discount


def _array_of_type(
    grid: ScenarioGrid,
    spec: InstrumentSpec,
    underlying_mark: Decimal,
    changes: list[Decimal],
    volatilities: tuple[Decimal, Decimal, Decimal],
    digits: int,
    discount: Decimal,
) -> RiskArray:
    with localcontext(contexts(digits)[0]) as here:
        if spec.option_type == "put":
            forward_discounted = discount * underlying_mark
            changes = [
                change - forward_discounted * cell.move if cell.move else change
                for change, cell in zip(changes, grid.cells, strict=True)
            ]
        pnl = tuple(round_model_value(here.multiply(change, spec.contract_size)) for change in changes)
    return RiskArray(spec.symbol, grid, underlying_mark, pnl, volatilities=volatilities, digits=digits)


@dataclass(frozen=True, slots=True)
class Scenario:
    """An account's summed P&L in one cell; ``weighted_pnl`` = pnl x the cell's weight (the same
    as pnl outside the extreme cells). Exact: round with ``numbers.round_model_value`` to show."""

    cell: Cell
    pnl: Decimal
    weighted_pnl: Decimal


@dataclass(frozen=True, slots=True)
class UnderlyingRequirement:
    """Portfolio margin of one account on one underlying (module docstring): every cell, the
    worst, the terms and the requirements (IM and MM rounded up)."""

    underlying: str
    initial_margin: Decimal
    maintenance_margin: Decimal
    worst_loss: Decimal  # W, exact
    short_option_minimum: Decimal  # S, exact
    worst_cell: Cell
    worst_index: int
    scenarios: tuple[Scenario, ...]
    multiplier: Decimal

    @property
    def worst(self) -> Scenario:
        return self.scenarios[self.worst_index]


@exact
def summed_pnl(arrays: Iterable[tuple[Decimal, Sequence[Decimal]]]) -> list[Decimal]:
    """sum of quantity x array per cell, exact, for (quantity, array) pairs of one grid."""
    totals: list[Decimal] | None = None
    for quantity, array in arrays:
        products = map(mul, array, repeat(quantity))
        totals = list(products) if totals is None else list(map(add, totals, products))
    if totals is None:
        raise ScenarioError("a requirement needs at least one position on the underlying")
    return totals


@dataclass(frozen=True, slots=True)
class RequirementFigures:
    """What a decision needs of an account's requirement on one underlying, without the cells:
    IM and MM rounded up, W and S exact, and the worst cell's index in grid order."""

    initial_margin: Decimal
    maintenance_margin: Decimal
    worst_loss: Decimal
    short_option_minimum: Decimal
    worst_index: int


def worst_of(grid: ScenarioGrid, totals: Sequence[Decimal]) -> tuple[int, Decimal]:
    """(index, weighted P&L) of the worst cell of summed P&L ``totals``: the lowest weighted P&L,
    the first in grid order among equals. The grid's cells outside the extreme ones weigh 1, so
    their lowest is found by ``min`` and the first ``index`` of it; each extreme cell then takes
    over only when strictly worse (it comes later in grid order)."""
    plain = len(grid.cells) - len(grid.spec.extreme_moves)
    worst_pnl = min(totals[:plain])
    worst_index = totals.index(worst_pnl)
    for index in range(plain, len(grid.cells)):
        weighted = totals[index] * grid.cells[index].weight
        if weighted < worst_pnl:
            worst_pnl, worst_index = weighted, index
    return worst_index, worst_pnl


@exact
def requirement_figures(
    grid: ScenarioGrid,
    pairs: Iterable[tuple[Decimal, Sequence[Decimal]]],
    short_contracts: Decimal,
    underlying_mark: Decimal,
) -> tuple[RequirementFigures, list[Decimal]]:
    """The requirement on the grid's underlying of (quantity, risk array P&L) ``pairs`` holding
    ``short_contracts`` = the sum over short options of |quantity| x contract_size (module
    docstring), and the summed P&L per cell it came from. The hot path: no cell objects."""
    totals = summed_pnl(pairs)
    worst_index, worst_pnl = worst_of(grid, totals)
    return _figures(grid, worst_index, worst_pnl, short_contracts, underlying_mark), totals


def _figures(
    grid: ScenarioGrid, worst_index: int, worst_pnl: Decimal, short_contracts: Decimal, underlying_mark: Decimal
) -> RequirementFigures:
    worst_loss = max(ZERO, -worst_pnl)
    short_option_minimum = grid.spec.short_option_minimum_rate * underlying_mark * short_contracts
    initial = max(worst_loss, short_option_minimum)
    return RequirementFigures(
        # Requirements round up (against the account); MM is the factor of the exact IM, so that
        # rounding happens once for each figure.
        initial_margin=round_requirement(initial),
        maintenance_margin=round_requirement(grid.spec.maintenance_factor * initial),
        worst_loss=worst_loss,
        short_option_minimum=short_option_minimum,
        worst_index=worst_index,
    )


def short_option_contracts(positions: Iterable[tuple[InstrumentSpec, Decimal]]) -> Decimal:
    """The sum over short options of |quantity| x contract_size (the short-option minimum's)."""
    return sum(
        (-quantity * spec.contract_size for spec, quantity in positions if spec.kind == "option" and quantity < ZERO),
        ZERO,
    )


@exact
def underlying_requirement(
    grid: ScenarioGrid,
    positions: Sequence[tuple[InstrumentSpec, Decimal]],
    arrays: Mapping[str, RiskArray],
    underlying_mark: Decimal,
) -> UnderlyingRequirement:
    """The requirement of the ``positions`` (instrument, signed quantity) an account holds on the
    grid's underlying, from the instruments' shared ``arrays`` (module docstring), with every cell.

    Every array must be of this grid (the same cells): an array of another grid (another
    multiplier, another document) would sum P&L of different scenarios."""
    pairs: list[tuple[Decimal, Sequence[Decimal]]] = []
    for spec, quantity in positions:
        _check_underlying(grid, spec)
        array = arrays.get(spec.symbol)
        if array is None:
            raise ScenarioError(f"no risk array for {spec.symbol} on {grid.underlying}'s grid")
        if array.grid is not grid and array.grid != grid:
            raise ScenarioError(f"the risk array of {spec.symbol} was computed on another grid of {grid.underlying}")
        pairs.append((quantity, array.pnl))
    figures, totals = requirement_figures(grid, pairs, short_option_contracts(positions), underlying_mark)
    scenarios = tuple(
        Scenario(cell, pnl, pnl * cell.weight if cell.extreme else pnl)
        for cell, pnl in zip(grid.cells, totals, strict=True)
    )
    return UnderlyingRequirement(
        underlying=grid.underlying,
        initial_margin=figures.initial_margin,
        maintenance_margin=figures.maintenance_margin,
        worst_loss=figures.worst_loss,
        short_option_minimum=figures.short_option_minimum,
        worst_cell=grid.cells[figures.worst_index],
        worst_index=figures.worst_index,
        scenarios=scenarios,
        multiplier=grid.multiplier,
    )


def cell_wire(cell: Cell) -> dict[str, Any]:
    """A cell as the calculator and the decisions name it (CONTRACT v2): move and volatility, and
    ``"extreme": true`` for an extreme cell."""
    named: dict[str, Any] = {"move": to_wire(cell.move), "volatility": cell.volatility}
    if cell.extreme:
        named["extreme"] = True
    return named


def requirement_wire(requirement: UnderlyingRequirement) -> dict[str, Any]:
    """One entry of the calculator's ``underlyings`` (CONTRACT v2): the requirements as money, the
    worst cell, and every cell in grid order with its P&L (an extreme cell with its unweighted
    ``pnl`` and its ``weighted_pnl``), the P&L half-even to 12 places (``round_model_value``)."""
    scenarios: list[dict[str, Any]] = []
    for scenario in requirement.scenarios:
        entry = cell_wire(scenario.cell)
        entry["pnl"] = to_wire(round_model_value(scenario.pnl))
        if scenario.cell.extreme:
            entry["weighted_pnl"] = to_wire(round_model_value(scenario.weighted_pnl))
        scenarios.append(entry)
    return {
        "underlying": requirement.underlying,
        "initial_margin": to_wire(requirement.initial_margin),
        "maintenance_margin": to_wire(requirement.maintenance_margin),
        "worst_cell": cell_wire(requirement.worst_cell),
        "scenarios": scenarios,
    }


@dataclass(frozen=True, slots=True)
class PortfolioRequirement:
    """An account's portfolio requirement: the sum over its underlyings, no offsets between them."""

    initial_margin: Decimal
    maintenance_margin: Decimal
    underlyings: tuple[UnderlyingRequirement, ...]


def account_requirement(underlyings: Iterable[UnderlyingRequirement]) -> PortfolioRequirement:
    """The sum of the (already rounded) requirements of each underlying, in the order given."""
    parts = tuple(underlyings)
    return PortfolioRequirement(
        initial_margin=sum((part.initial_margin for part in parts), ZERO),
        maintenance_margin=sum((part.maintenance_margin for part in parts), ZERO),
        underlyings=parts,
    )


# ------------------------------------------------------------------------------------------------
# The same sums on packed integers: a re-margin of every account on a mark of the underlying adds
# (positions x cells) products per account, and Decimal does each one as a Python operation. An
# array whose figures have at most PACKED_PLACES decimal places is, times 10^PACKED_PLACES, a row
# of integers V_c; packed as one integer sum_c V_c 2^(PACKED_FIELD_BITS c), an account's
# sum_i Q_i x packed_i is every cell's sum S_c = sum_i Q_i V_ic at once, in one multiplication and
# addition per position, exact (integers do not round), as long as no S_c leaves its field.
#
# Reading the cells back: adding the bias 2^(PACKED_FIELD_BITS - 1) to every field makes each one
# non-negative, so no field borrows from the next and the integer's bytes hold the fields side by
# side. With |S_c| < 2^L for every cell (L from the bound sum_i |Q_i| max_c |V_ic|, checked per
# account), the 64-bit word j of every field, j the least with L - 64 j <= 62, read as a signed
# integer, is floor(S_c / 2^(64 j)) exactly (the bias lies above that word): a key that orders the
# cells. Only the cells that share the lowest key are compared in full. Beyond
# ``PACKED_SUM_BITS_MAX`` the caller sums in Decimal; the figures are the same either way.

PACKED_FIELD_BITS: Final = 256
# Places an array's figure may have to be packed: an option's have 12; a linear instrument's
# mark x m x contract_size has the mark's and the contract size's places beside m's 12.
PACKED_PLACES: Final = 24
_WORD_BITS: Final = 64
_WORDS_PER_FIELD: Final = PACKED_FIELD_BITS // _WORD_BITS
_FIELD_MASK: Final = (1 << PACKED_FIELD_BITS) - 1
_FIELD_BIAS: Final = 1 << (PACKED_FIELD_BITS - 1)
# The key word j must lie under the bias (64 (j + 1) <= PACKED_FIELD_BITS - 1, so j <= 3) and hold
# floor(S / 2^(64 j)) as a signed word (L - 64 j <= 62): |S| < 2^254.
PACKED_SUM_BITS_MAX: Final = 62 + _WORD_BITS * ((PACKED_FIELD_BITS - 1) // _WORD_BITS - 1)
# The words are read back as 8-byte signed integers in the platform's byte order: where an array
# of "q" is not 8 bytes, nothing is packed (the Decimal sums give the same figures).
PACKING_AVAILABLE: Final = arrays_of_words.array("q").itemsize * 8 == _WORD_BITS
_BIASES: dict[int, int] = {}


@dataclass(frozen=True, slots=True)
class PackedArray:
    """A risk array as one integer (above): ``packed`` = sum_c V_c 2^(PACKED_FIELD_BITS c) with
    V_c = figure_c x 10^PACKED_PLACES, and ``magnitude`` = max |V_c|."""

    instrument: str
    packed: int
    magnitude: int


def pack(array: RiskArray) -> PackedArray | None:
    """``array`` packed; None when a figure has more than ``PACKED_PLACES`` places or packing is
    not available here."""
    if not PACKING_AVAILABLE:
        return None
    packed = 0
    magnitude = 0
    for cell, figure in enumerate(array.pnl):
        scaled = figure.scaleb(PACKED_PLACES, _PACKING_CONTEXT)
        if scaled != scaled.to_integral_value():  # more places than PACKED_PLACES (trailing zeros do not count)
            return None
        value = int(scaled)
        packed += value << (PACKED_FIELD_BITS * cell)
        magnitude = max(magnitude, abs(value))
    return PackedArray(array.instrument, packed, magnitude)


def scaled_quantities(quantities: Sequence[Decimal]) -> tuple[list[int], int]:
    """(Q_i, places): each quantity x 10^places as an exact integer, places the most any has."""
    places = 0
    for quantity in quantities:
        exponent = quantity.normalize(_PACKING_CONTEXT).as_tuple().exponent
        if isinstance(exponent, int):
            places = max(places, -exponent)
    return [int(quantity.scaleb(places, _PACKING_CONTEXT)) for quantity in quantities], places


def _bias(cells: int) -> int:
    found = _BIASES.get(cells)
    if found is None:
        found = _BIASES[cells] = sum(_FIELD_BIAS << (PACKED_FIELD_BITS * cell) for cell in range(cells))
    return found


def _field(total: int, cell: int) -> int:
    return ((total >> (PACKED_FIELD_BITS * cell)) & _FIELD_MASK) - _FIELD_BIAS


@exact
def packed_requirement_figures(
    grid: ScenarioGrid,
    pairs: Iterable[tuple[int, PackedArray]],
    quantity_places: int,
    short_contracts: Decimal,
    underlying_mark: Decimal,
) -> RequirementFigures | None:
    """``requirement_figures`` on packed arrays: (Q_i, packed array) pairs with Q_i = quantity x
    10^quantity_places (``scaled_quantities``). The same figures, exactly; None when a cell's
    sum could pass ``PACKED_SUM_BITS_MAX`` bits (sum in Decimal then)."""
    cells = len(grid.cells)
    total = _bias(cells)
    bound = 0
    for quantity, packed in pairs:
        total += quantity * packed.packed
        bound += abs(quantity) * packed.magnitude
    sum_bits = bound.bit_length()
    if sum_bits > PACKED_SUM_BITS_MAX:
        return None
    key_word = max(0, -(-(sum_bits - 62) // _WORD_BITS))
    words = arrays_of_words.array("q", total.to_bytes(cells * PACKED_FIELD_BITS // 8, "little"))
    if sys.byteorder != "little":
        words.byteswap()
    keys = words[key_word::_WORDS_PER_FIELD].tolist()
    plain = cells - len(grid.spec.extreme_moves)
    lowest_key = min(keys[:plain])
    worst_index = keys.index(lowest_key)
    worst = _field(total, worst_index)
    candidate = worst_index
    while True:  # the other cells with the same key, in grid order: the first lowest stays
        try:
            candidate = keys.index(lowest_key, candidate + 1, plain)
        except ValueError:
            break
        value = _field(total, candidate)
        if value < worst:
            worst, worst_index = value, candidate
    scale = -(PACKED_PLACES + quantity_places)
    worst_pnl = Decimal(worst).scaleb(scale)
    for index in range(plain, cells):
        weighted = Decimal(_field(total, index)).scaleb(scale) * grid.cells[index].weight
        if weighted < worst_pnl:
            worst_pnl, worst_index = weighted, index
    return _figures(grid, worst_index, worst_pnl, short_contracts, underlying_mark)
