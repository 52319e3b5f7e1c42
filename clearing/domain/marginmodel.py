"""The margin-model interface: what every margin model answers, and the figures it answers with.

A margin model is a strategy beside the account (STYLE.md, after NautilusTrader's MarginModel):
the account state holds balances and positions; a model turns them, with the risk parameters in
force and the marks, into a scope's figures. The lifecycle, the trigger index, the risk
calculator, ``account show``, ``audit explain``, the projections and the API ask the model an
account is on (``models.model_of``) through this interface and never know which one answered.

Scopes. An account has one cross scope (``"cross"``: one equity against all its cross positions)
and one isolated scope per isolated position (``"isolated:<instrument>"``). The cross scope is
margined by the account's model; isolated positions always by ``standard`` (CONTRACT v2).

What a model answers, for a scope, given (account, parameters, marks):

* ``evaluate_scope`` / ``evaluate``: the figures (``ScopeRisk``: collateral, unrealised PnL,
  equity, initial and maintenance requirements, margin ratio, level, per-position figures). The
  level is ``levels.classify`` of the figures: one rule for every model.
* ``dependencies``: the symbols whose price moves the scope's figures.
* ``trigger_prices`` and ``index_bounds``: for a scope that moves with one price only, the nearest
  prices of that symbol at which its level (or its place against resolve_ratio) can change, and
  those prices pulled in by the model's rounding slack (what the trigger index stores).
* ``budget_bands``: for a scope that moves with several prices, bands around each price inside
  which no combination of moves changes its level (a budget shared by the symbols), and, when
  the model can follow its fills, the record ``triggers.absorbs_fill`` keeps.
* ``liquidation_plan``: the orders that bring a scope in liquidation back to target_ratio, each
  by the least quantity that does it (partial before full). The model is given the scope with
  what it was evaluated from (``EvaluatedScope``: account, parameters, marks), so it can measure
  a reduction against the book with every reduction planned before it applied: right for
  requirements that are not additive (a hedge leg closed changes what the rest needs). The plan
  is built from three answers a model may override: ``liquidation_order`` (which positions first),
  ``reduction`` (what reducing one more position leaves, the earlier reductions ``Planned``) and
  ``order_quantity`` (the search for the least quantity, ``quantity_step`` by ``quantity_step``).
* ``bankruptcy_price``: the price at which closing a position uses up the scope's equity
  (liquidation orders and their audit).

A model does no I/O and reads no clock; every figure is exact under the ledger context
(``numbers.exact``) and rounded only by the named rules of ``numbers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, Final, NamedTuple

from clearing.domain.dynamicmargin import epoch_seconds
from clearing.domain.levels import Level
from clearing.domain.numbers import ONE, ZERO, divide, exact, to_wire
from clearing.domain.optionmargin import ContractMargin
from clearing.domain.params import OptionMarginRates, RiskParameters
from clearing.domain.scenarios import UnderlyingRequirement
from clearing.domain.state import Account, FillBudget, LedgerState, MarkState

CROSS: Final = "cross"
ISOLATED: Final = "isolated"
ISOLATED_SCOPE_PREFIX: Final = "isolated:"


class MarginModelError(ValueError):
    """The account cannot be margined with these parameters (an instrument they do not list, a
    kind this model does not price, a scope that does not exist); the message says which."""


def isolated_scope(instrument: str) -> str:
    return ISOLATED_SCOPE_PREFIX + instrument


def scope_instrument(scope: str) -> str | None:
    """The instrument of an isolated scope; None for the cross scope."""
    if scope.startswith(ISOLATED_SCOPE_PREFIX):
        return scope[len(ISOLATED_SCOPE_PREFIX) :]
    return None


class CollateralValue(NamedTuple):
    """One balance valued in the valuation asset: ``value = price x (amount - haircut_units)``;
    ``haircut_units`` is 0 for a negative amount and ``value`` is 0 when ``price`` is None."""

    asset: str
    amount: Decimal
    price: Decimal | None
    haircut_units: Decimal
    value: Decimal

    @property
    def priced(self) -> bool:
        return self.price is not None


class OptionRisk(NamedTuple):
    """What an option position's figures were computed from (standard option margin, CONTRACT
    v2): the underlying's mark U (None: unmarked, the requirement then taken at U = strike and
    the underlying named among the scope's unpriced symbols), the per-contract margin with the
    terms of each max, and ``model_price`` (Black-76 at the mark's iv: the calculator's, None
    in the ledger, which margins at the mark)."""

    underlying: str
    underlying_mark: Decimal | None
    option_type: str
    strike: Decimal
    expiry: datetime
    per_contract: ContractMargin
    contracts: Decimal  # |quantity| x contract size
    rates: OptionMarginRates
    model_price: Decimal | None = None

    @property
    def underlying_used(self) -> Decimal:
        return self.underlying_mark if self.underlying_mark is not None else self.strike


class PositionRisk(NamedTuple):
    """Figures of one open position; the inputs used are kept beside the results.

    An option (``option`` not None) has no tiers (``tier`` 0, rates 0): its requirements are
    standard option margin, and its ``unrealised_pnl`` is its value at the mark in the valuation
    asset (s x quantity x contract size x price used, long positive, short negative): the premium
    of its fills already moved through the balance, so the mark value is what equity counts
    (CONTRACT v2). ``notional`` is then |quantity| x contract size x the option's price."""

    instrument: str
    margin_mode: str
    scope: str
    quantity: Decimal  # signed contracts
    contract_size: Decimal
    cost: Decimal  # settlement asset
    mark: Decimal | None  # None: unmarked, valued at the entry price
    price_used: Decimal  # the mark, or the entry price (cost / (q x cs)) when unmarked
    settlement_asset: str
    settlement_price: Decimal  # price of the settlement asset in the valuation asset
    notional: Decimal  # |q| x cs x price_used, settlement asset (the tier basis)
    tier: int  # 1-based index of the tier holding ``notional``
    initial_rate: Decimal
    maintenance_rate: Decimal
    unrealised_pnl: Decimal  # valuation asset; 0 when unmarked
    initial_margin: Decimal  # valuation asset, rounded up
    maintenance_margin: Decimal  # valuation asset, rounded up
    liquidation_price: Decimal | None  # see ``liquidation_price`` (None for an option)
    option: OptionRisk | None = None
    # Dynamic margin's multiplier of the instrument's underlying that the rates above (and an
    # option's ``option.rates``) were scaled by (CONTRACT v2): what a figure derived from this
    # position alone (a reduction, a liquidation price) scales by too.
    multiplier: Decimal = ONE

    @property
    def is_option(self) -> bool:
        return self.option is not None

    @property
    def pnl(self) -> Decimal:
        """Unrealised PnL in the valuation asset: an option's value less its premium paid (cost),
        a linear position's ``unrealised_pnl``."""
        if self.option is None:
            return self.unrealised_pnl
        return self.unrealised_pnl - self.settlement_price * self.cost if self.marked else ZERO

    @property
    def marked(self) -> bool:
        return self.mark is not None

    @property
    def is_long(self) -> bool:
        return self.quantity > ZERO


class ScopeRisk(NamedTuple):
    """One margin scope: the cross account (``"cross"``) or one isolated position
    (``"isolated:<instrument>"``). ``collateral`` is the collateral value (cross) or the isolated
    margin in the valuation asset (isolated); ``equity = collateral + unrealised_pnl``."""

    scope: str
    collateral: Decimal
    unrealised_pnl: Decimal
    equity: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    margin_ratio: Decimal | None
    status: Level  # levels.classify of these figures
    positions: tuple[PositionRisk, ...]
    unpriced_assets: tuple[str, ...] = ()
    # The portfolio model's requirement per underlying, each with its grid and worst cell (what
    # explain and the decisions name); empty for a scope the standard model margins.
    underlyings: tuple[UnderlyingRequirement, ...] = ()

    @property
    def has_open_positions(self) -> bool:
        return any(p.quantity != ZERO for p in self.positions)

    def position(self, instrument: str) -> PositionRisk | None:
        for found in self.positions:
            if found.instrument == instrument:
                return found
        return None


@dataclass(frozen=True, slots=True)
class AccountRisk:
    account_id: str
    parameters_version: str
    collateral: tuple[CollateralValue, ...]
    cross: ScopeRisk
    isolated: tuple[ScopeRisk, ...]

    @property
    def scopes(self) -> tuple[ScopeRisk, ...]:
        return (self.cross, *self.isolated)

    @property
    def positions(self) -> tuple[PositionRisk, ...]:
        return tuple(p for scope in self.scopes for p in scope.positions)

    def scope(self, name: str) -> ScopeRisk:
        for found in self.scopes:
            if found.scope == name:
                return found
        raise MarginModelError(f"account {self.account_id} has no margin scope {name!r}")


@dataclass(frozen=True, slots=True)
class TriggerPrices:
    """Marks of ``instrument`` at which ``scope`` crosses a threshold, every other mark fixed.

    ``lower`` is the highest crossing at or below ``reference_price``, ``upper`` the lowest at or
    above it (None: no crossing on that side). A crossing exactly at the reference (the scope sits
    on a threshold) is both bounds: some move from there changes the status, and a spurious
    re-margin costs less than a missed one. Re-margin the scope when a new mark is ``<= lower`` or
    ``>= upper``: lower rounds up and upper rounds down, so a crossing is seen no later than it
    happens (the rounding of ``round_liquidation_price``, for the same reason)."""

    scope: str
    instrument: str
    reference_price: Decimal | None
    lower: Decimal | None
    lower_threshold: str | None
    upper: Decimal | None
    upper_threshold: str | None


class Marks(Mapping[str, Decimal]):
    """What a model reads of the market: ``symbol -> price`` (as every model reads prices) and
    beside the prices what the models need of the marks too:

    * ``ivs``: symbol -> implied volatility of an option's last mark;
    * ``mark_times``: symbol -> the time of its last mark;
    * ``multipliers``: underlying -> dynamic margin's multiplier in force (1 when absent);
    * ``valuation_at``: the valuation time of every option when given (the calculator's ``at``);
      None in the ledger, where an option's risk array is valued at the later of its own mark's
      time and its underlying's (``valuation_time``): so it is priced once per mark of the
      option or of its underlying, and shared by every account that holds it (DESIGN.md v2).

    A plain mapping of prices given where ``Marks`` is expected reads as no ivs, no times and
    multipliers of 1 (``ivs_of``, ``multiplier_of``, ``valuation_time``)."""

    __slots__ = ()

    ivs: Mapping[str, Decimal]
    mark_times: Mapping[str, datetime]
    multipliers: Mapping[str, Decimal]
    valuation_at: datetime | None


class _MarkField(Mapping[str, Any]):
    """One field of the state's marks (iv, time) seen as ``symbol -> value``, without copying;
    a mark without that field (a mark with no iv) is absent."""

    __slots__ = ("_field", "_marks")

    def __init__(self, marks: Mapping[str, MarkState], field_name: str) -> None:
        self._marks = marks
        self._field = field_name

    def __getitem__(self, symbol: str) -> Any:
        value = getattr(self._marks[symbol], self._field)
        if value is None:
            raise KeyError(symbol)
        return value

    def get(self, symbol: str, default: Any = None) -> Any:
        mark = self._marks.get(symbol)
        value = None if mark is None else getattr(mark, self._field)
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return (symbol for symbol, mark in self._marks.items() if getattr(mark, self._field) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class StateMarks(Marks):
    """The ledger state's last marks seen as ``Marks``, without copying them: prices, ivs and
    times of the marks, and the multipliers of dynamic margin (``LedgerState.volatility``)."""

    __slots__ = ("_marks", "ivs", "mark_times", "multipliers", "valuation_at")

    def __init__(self, state: LedgerState) -> None:
        self._marks = state.marks
        self.ivs = _MarkField(state.marks, "iv")
        self.mark_times = _MarkField(state.marks, "occurred_at")
        self.multipliers = _Multipliers(state)
        self.valuation_at = None

    def __getitem__(self, symbol: str) -> Decimal:
        return self._marks[symbol].price

    def get(self, symbol: str, default: Any = None) -> Any:
        # Mapping.get would go through __getitem__ and a KeyError for every unmarked symbol.
        mark = self._marks.get(symbol)
        return default if mark is None else mark.price

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._marks

    def __iter__(self) -> Iterator[str]:
        return iter(self._marks)

    def __len__(self) -> int:
        return len(self._marks)


class _Multipliers(Mapping[str, Decimal]):
    """``LedgerState.volatility`` seen as underlying -> multiplier in force (only the underlyings
    whose dynamic margin has started: before its first sample an underlying's multiplier is 1)."""

    __slots__ = ("_volatility",)

    def __init__(self, state: LedgerState) -> None:
        self._volatility = state.volatility

    def __getitem__(self, underlying: str) -> Decimal:
        found = self._volatility[underlying]
        if not found.started:
            raise KeyError(underlying)
        return found.multiplier

    def get(self, underlying: str, default: Any = None) -> Any:
        found = self._volatility.get(underlying)
        return default if found is None or not found.started else found.multiplier

    def __iter__(self) -> Iterator[str]:
        return (underlying for underlying, found in self._volatility.items() if found.started)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def multiplier_of(marks: Mapping[str, Decimal], underlying: str) -> Decimal:
    """Dynamic margin's multiplier of ``underlying`` in ``marks`` (1 for a plain price mapping,
    or an underlying whose dynamic margin has not started)."""
    if isinstance(marks, Marks):
        found: Decimal = marks.multipliers.get(underlying, ONE)
        return found
    return ONE


def iv_of(marks: Mapping[str, Decimal], symbol: str) -> Decimal | None:
    """The implied volatility of ``symbol``'s mark in ``marks`` (None: not given)."""
    if isinstance(marks, Marks):
        found: Decimal | None = marks.ivs.get(symbol)
        return found
    return None


def valuation_time(marks: Mapping[str, Decimal], option: str, underlying: str) -> datetime | None:
    """When ``option`` is valued (``Marks``): ``valuation_at`` when given, else the later of the
    times of the option's mark and its underlying's (either alone when the other has none; None
    when neither, or for a plain price mapping)."""
    if not isinstance(marks, Marks):
        return None
    if marks.valuation_at is not None:
        return marks.valuation_at
    times = [t for t in (marks.mark_times.get(option), marks.mark_times.get(underlying)) if t is not None]
    return max(times) if times else None


def meets_target(equity: Decimal, maintenance: Decimal, target_ratio: Decimal) -> bool:
    """Whether a scope with these figures is back at ``target_ratio`` (what a liquidation order
    reduces to): positive equity and maintenance / equity <= target, without the division."""
    return equity > ZERO and maintenance <= target_ratio * equity


class Reduction(NamedTuple):
    """A scope after reducing one position by ``reduce`` at the price it is valued at, the
    liquidation fee charged, the reductions planned before it applied (``MarginModel.reduction``)."""

    left: Decimal  # contracts left
    notional: Decimal  # of what is left, settlement asset
    tier: int  # 1-based tier of that notional (0 where a model has no tiers)
    requirement: Decimal  # maintenance of what is left, valuation asset, rounded up
    fee: Decimal  # liquidation fee, rounded up
    equity: Decimal  # scope equity after the fee
    maintenance: Decimal  # scope maintenance after the reduction

    def meets(self, target_ratio: Decimal) -> bool:
        return meets_target(self.equity, self.maintenance, target_ratio)


class EvaluatedScope(NamedTuple):
    """A scope as its model evaluated it (``risk``) and what it was evaluated from: what a
    liquidation plan measures its reductions against."""

    account: Account
    parameters: RiskParameters
    marks: Mapping[str, Decimal]
    risk: ScopeRisk


class Planned(NamedTuple):
    """The reductions a liquidation plan holds so far, instrument -> contracts to reduce by, and
    the scope's equity and maintenance with all of them applied (at the prices in use, the
    liquidation fees charged)."""

    reduced: Mapping[str, Decimal]
    equity: Decimal
    maintenance: Decimal

    def meets(self, target_ratio: Decimal) -> bool:
        return meets_target(self.equity, self.maintenance, target_ratio)

    def then(self, instrument: str, quantity: Decimal, after: Reduction) -> Planned:
        """This plan with ``instrument`` reduced by ``quantity`` more, leaving ``after``."""
        reduced = dict(self.reduced)
        reduced[instrument] = reduced.get(instrument, ZERO) + quantity
        return Planned(reduced, after.equity, after.maintenance)


class PlannedOrder(NamedTuple):
    """One liquidation order of a plan: reduce ``position`` (as the scope was evaluated) by
    ``quantity``; ``before`` is the plan before it (its equity and maintenance are what the order
    decision shows), ``after`` what it leaves."""

    position: PositionRisk
    quantity: Decimal
    before: Planned
    after: Reduction

    @property
    def full(self) -> bool:
        return self.quantity == abs(self.position.quantity)


# The most halvings (and thirdings) a quantity search takes: far more than the digits of any
# quantity the ledger admits need.
LIQUIDATION_SEARCH_STEPS_MAX: Final = 200


def quantity_step(quantity: Decimal) -> Decimal:
    """The smallest quantity a liquidation order reduces by: one unit of the last decimal place
    of the position's wire form (at most 1).

    Read from the wire form, not the exponent: 166.100 and 166.1 are the same quantity, but a
    fill decoded from "166.100" keeps the trailing zeros while the log, snapshots and every
    replay hold "166.1", so a step taken from the exponent made a restarted ledger or ``audit
    verify`` order a different quantity than the ledger that decided it."""
    _, _, fraction = to_wire(quantity).partition(".")
    return Decimal(1).scaleb(-len(fraction))


def steps_in(quantity: Decimal, step: Decimal) -> int:
    """How many ``step`` make up ``quantity`` (rounded up)."""
    return int(divide(quantity, step).to_integral_value(rounding=ROUND_CEILING))


def least_steps(enough: Callable[[int], bool], high: int) -> int:
    """The least n in (0, high] with ``enough(n)``, by halving, given ``enough(high)`` and that
    ``enough`` holds from some n on up to ``high`` (and not at 0)."""
    low = 0
    for _ in range(LIQUIDATION_SEARCH_STEPS_MAX):
        if high - low <= 1:
            break
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle
    return high


# Bands of a scope that moves with several prices: symbol -> (lowest, highest) price inside the band.
# A key ``clock_key(symbol)`` holds a clock band instead: the times (``clock_seconds``) of marks of
# ``symbol`` inside which the scope's figures stay in band (options are valued at the time of
# their underlying's mark: the portfolio model); a mark at or beyond either end re-margins it.
Bands = dict[str, tuple[Decimal, Decimal]]
CLOCK_PREFIX: Final = "clock:"


def clock_key(symbol: str) -> str:
    """The key of ``symbol``'s clock band in ``Bands`` (and in the trigger index's heaps)."""
    return CLOCK_PREFIX + symbol


def clock_seconds(at: datetime) -> Decimal:
    """``at`` as seconds since 1970-01-01T00:00:00Z, exact to the microsecond."""
    seconds, microseconds = epoch_seconds(at)
    return Decimal(seconds * 1_000_000 + microseconds).scaleb(-6)


class MarginModel:
    """The interface (see the module docstring). ``name`` is what an account's ``margin_model``
    request and the calculator's ``margin_model`` field spell (``models.model_named``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def evaluate(
        self, account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], *, liquidation_prices: bool
    ) -> AccountRisk:
        """Every scope of ``account``: cross, then each isolated position with open quantity or
        allocated margin. ``marks`` maps instruments to mark prices and collateral assets to
        prices in the valuation asset."""
        raise NotImplementedError

    def evaluate_scope(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        scope: str,
        *,
        liquidation_prices: bool,
    ) -> ScopeRisk:
        """One scope. ``liquidation_prices=False`` may leave the positions' liquidation prices None
        (the lifecycle and the index do not read them)."""
        raise NotImplementedError

    def dependencies(self, account: Account, parameters: RiskParameters, scope: str) -> tuple[str, ...]:
        """The symbols whose price moves the scope's figures, sorted."""
        raise NotImplementedError

    def trigger_prices(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbol: str,
    ) -> TriggerPrices:
        """The nearest prices of ``symbol``, every other mark fixed, at which the scope ``risk``
        (evaluated at ``marks``) crosses equity = 0, ratio = resolve_ratio, warning_ratio or 1."""
        raise NotImplementedError

    def index_bounds(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbol: str,
    ) -> tuple[Decimal | None, Decimal | None] | None:
        """(lower, upper) re-margin triggers of a scope that moves with ``symbol`` alone: its
        ``trigger_prices`` pulled towards the price in use by the model's rounding slack, so a
        crossing is never missed. (None, None): no price to move from yet. None: the index cannot
        bound the scope (it is then re-margined on every mark of the symbol)."""
        raise NotImplementedError

    def budget_bands(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbols: tuple[str, ...],
        band_share: Decimal,
    ) -> tuple[Bands, FillBudget | None] | None:
        """Bands for a scope that moves with several prices (inside them, no combination of moves
        changes its level), spending ``band_share`` of the budget; and the record of the rest
        for ``triggers.absorbs_fill`` (None when the model cannot follow the scope's fills).
        None when the index cannot bound the scope."""
        raise NotImplementedError

    def liquidation_order(self, scope: EvaluatedScope) -> tuple[PositionRisk, ...]:
        """The open positions of ``scope`` in the order a liquidation reduces them."""
        raise NotImplementedError

    def reduction(self, scope: EvaluatedScope, planned: Planned, position: PositionRisk, reduce: Decimal) -> Reduction:
        """What reducing ``position`` by ``reduce`` at the price it is valued at, the liquidation
        fee charged, leaves of ``scope`` with the reductions ``planned`` before it applied."""
        raise NotImplementedError

    def order_quantity(self, scope: EvaluatedScope, planned: Planned, position: PositionRisk) -> Decimal:
        """The least multiple of ``quantity_step`` that, reducing ``position`` after ``planned``,
        brings the scope to target_ratio (``reduction``); the whole position when none does, or
        when the equity planned is not positive. The search halves: it assumes that a reduction
        that is enough stays enough when larger (so for a model whose requirement can rise as a
        position shrinks, a model overrides it)."""
        target = scope.parameters.liquidation.target_ratio
        held = abs(position.quantity)

        def enough(reduce: Decimal) -> bool:
            return self.reduction(scope, planned, position, reduce).meets(target)

        if planned.equity <= ZERO or not enough(held):
            return held
        step = quantity_step(position.quantity)
        found = least_steps(lambda n: enough(step * n), steps_in(held, step))
        return min(held, step * found)

    @exact
    def liquidation_plan(self, scope: EvaluatedScope) -> tuple[PlannedOrder, ...]:
        """The orders that bring ``scope`` (in liquidation) back to target_ratio, assuming each is
        executed at the price its position is valued at and the liquidation fee charged: the
        positions in ``liquidation_order``, each reduced by ``order_quantity`` after the orders
        before it, until the plan meets the target. A position is closed in full only when a
        part is not enough; an equity at or below zero closes everything. So once every order
        is executed at those prices the scope is at or below target_ratio, or closed."""
        target = scope.parameters.liquidation.target_ratio
        planned = Planned({}, scope.risk.equity, scope.risk.maintenance_margin)
        orders: list[PlannedOrder] = []
        for position in self.liquidation_order(scope):
            if planned.meets(target):
                break
            quantity = self.order_quantity(scope, planned, position)
            after = self.reduction(scope, planned, position, quantity)
            orders.append(PlannedOrder(position, quantity, planned, after))
            planned = planned.then(position.instrument, quantity, after)
        return tuple(orders)

    def bankruptcy_price(self, position: PositionRisk, equity: Decimal, quantity: Decimal) -> tuple[Decimal, Decimal]:
        """(unrounded, rounded) price at which closing ``quantity`` of ``position`` uses up the
        scope's whole ``equity``; rounded towards the side that protects the insurance fund."""
        raise NotImplementedError
