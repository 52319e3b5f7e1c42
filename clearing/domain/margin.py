"""The margin model: collateral, positions and parameters in; equity, requirements, ratios,
statuses, liquidation prices and re-margin trigger prices out.

A strategy beside the account (STYLE.md): it reads an ``Account``, the ``RiskParameters`` in force
and a mapping of marks, and returns frozen values. It does no I/O and reads no clock. Every sum and
product is exact under the ledger context (``numbers.exact``); the only roundings are the named
rules of ``numbers``: requirements up (``round_requirement``), ratios up (``round_ratio``),
liquidation and trigger prices towards "reached no later" (``round_liquidation_price``).

Units. Every money figure of a scope or a position is in the valuation asset of the parameters
(USDT in the bundled document), except ``PositionRisk.notional``, which is in the instrument's
settlement asset because that is what the tier tables are written in (CONTRACT.md). A settlement
asset other than the valuation asset converts at its price ``s`` (``marks[asset]``).

Formulas (q = signed quantity in contracts, cs = contract size, P = mark of the instrument,
cost = q x entry price x cs of the open lots, s = price of the settlement asset):

    notional N            = |q| x cs x P                                   (settlement asset)
    unrealised PnL        = s x (q x cs x P - cost)                         (valuation asset)
    requirement           = s x (N x rate_k - amount_k), k = tier holding N (CONTRACT.md)
    collateral value      = price x (amount - sum over bands of haircut_b x amount inside band b)
                            for a positive balance; price x amount for a negative one
    cross equity          = sum of collateral values + sum of cross positions' unrealised PnL
    isolated equity       = s x isolated_margin + that position's unrealised PnL
    margin ratio          = maintenance / equity, None unless both are positive

Choices a reader should know about:

* **Unmarked instruments.** A position whose instrument has no mark is reported with
  ``marked=False``; its unrealised PnL counts 0 and its requirements are computed at the entry
  price (notional = |cost|). That is exactly the valuation "mark = entry price", so the solver below
  stays consistent with it. We do not invent a mark: the first real mark re-margins the account.
* **Unpriced collateral.** A balance of an asset with no price, or of an asset the parameters do
  not list, counts 0 and is named in ``ScopeRisk.unpriced_assets``. For a positive balance that is
  conservative; for a negative one (a debt in an unpriced asset) it is not, and the name in
  ``unpriced_assets`` is the signal for the caller to treat the figures as incomplete.
* **Unpriced settlement asset.** If a position's settlement asset is neither the valuation asset
  nor priced, its figures convert at 1 (par) and the asset is named in ``unpriced_assets``.
* **Negative balances** (USDT owed after losses) count at full value: a haircut on a debt would
  make the account look richer than it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, NamedTuple

from clearing.domain.numbers import (
    MINUS_ONE,
    ONE,
    ZERO,
    divide,
    exact,
    round_liquidation_price,
    round_ratio,
    round_requirement,
)
from clearing.domain.params import AssetSpec, CompiledTier, InstrumentSpec, MarginCallPolicy, RiskParameters
from clearing.domain.state import Account, LedgerState, MarkState, Position

CROSS: Final = "cross"
ISOLATED: Final = "isolated"
ISOLATED_SCOPE_PREFIX: Final = "isolated:"
LINEAR_KINDS: Final = ("perpetual", "future")
# An instrument kind as a sentence names it ("BTC-27DEC26-70000-C is an option").
KIND_NAMES: Final = {
    "perpetual": "a perpetual",
    "future": "a future",
    "option": "an option",
    "spot": "a spot instrument",
}

HEALTHY: Final = "healthy"
WARNING: Final = "warning"
MAINTENANCE: Final = "maintenance"
BANKRUPT: Final = "bankrupt"

# Names of the thresholds a trigger price crosses (see ``trigger_prices``).
THRESHOLD_BANKRUPT: Final = "bankrupt"  # equity = 0
THRESHOLD_RESOLVE: Final = "resolve"  # ratio = margin_call.resolve_ratio
THRESHOLD_WARNING: Final = "warning"  # ratio = margin_call.warning_ratio
THRESHOLD_MAINTENANCE: Final = "maintenance"  # ratio = 1, i.e. equity = maintenance margin


class MarginModelError(ValueError):
    """The account cannot be margined with these parameters (an instrument they do not list, a
    kind this model does not price, a scope that does not exist); the message says which."""


def isolated_scope(instrument: str) -> str:
    return ISOLATED_SCOPE_PREFIX + instrument


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


class PositionRisk(NamedTuple):
    """Figures of one open linear position; the inputs used are kept beside the results."""

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
    liquidation_price: Decimal | None  # see ``liquidation_price``

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
    status: str
    positions: tuple[PositionRisk, ...]
    unpriced_assets: tuple[str, ...] = ()

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


# ---------------------------------------------------------------------------------------------
# Collateral


def haircut_units(spec: AssetSpec, amount: Decimal) -> Decimal:
    """Units of ``amount`` discounted by the haircut, applied marginally: each band's haircut to
    the part of the amount inside the band (12 BTC with 10 at 2% and the rest at 5% lose
    10 x 0.02 + 2 x 0.05 = 0.3 BTC). A non-positive amount loses nothing."""
    if amount <= ZERO:
        return ZERO
    lost = ZERO
    for floor, cap, haircut in spec.haircut_band_table:
        if amount <= floor:
            break
        inside = (amount if cap is None else min(amount, cap)) - floor
        lost += inside * haircut
    return lost


def units_after_haircut(spec: AssetSpec, amount: Decimal) -> Decimal:
    """The units of ``amount`` that count as collateral: after the haircut for a positive
    amount, all of a debt. A unit of price moves the balance's value by this much."""
    return amount - haircut_units(spec, amount)


def _collateral_value(
    parameters: RiskParameters, asset: str, amount: Decimal, price: Decimal | None
) -> CollateralValue:
    spec = parameters.assets_by_name.get(asset)
    if price is None or spec is None:
        return CollateralValue(asset, amount, None, ZERO, ZERO)
    lost = haircut_units(spec, amount)
    return CollateralValue(asset, amount, price, lost, price * (amount - lost))


@exact
def collateral_value(parameters: RiskParameters, asset: str, amount: Decimal, price: Decimal | None) -> CollateralValue:
    """Value of ``amount`` of ``asset`` in the valuation asset (see the module docstring)."""
    return _collateral_value(parameters, asset, amount, price)


# ---------------------------------------------------------------------------------------------
# Classification


def classify(
    equity: Decimal, maintenance: Decimal, open_positions: bool, policy: MarginCallPolicy
) -> tuple[Decimal | None, str]:
    """(margin ratio, status) of a scope at one instant.

    ratio = round_ratio(maintenance / equity) when both are positive, else None. Status:
    ``bankrupt`` when equity < 0 with open positions; ``maintenance`` when ratio >= 1 or when
    equity = 0 against a positive requirement (an infinite ratio); ``warning`` when ratio >=
    warning_ratio; else ``healthy`` (also without open positions, whatever the equity: a debt
    with nothing to liquidate is the default waterfall's business, not a margin call's). The
    lifecycle (deadlines, hysteresis with resolve_ratio) is built on this elsewhere."""
    ratio: Decimal | None = round_ratio(divide(maintenance, equity)) if equity > ZERO and maintenance > ZERO else None
    if not open_positions:
        return ratio, HEALTHY
    if equity < ZERO:
        return ratio, BANKRUPT
    if equity == ZERO:
        return ratio, MAINTENANCE if maintenance > ZERO else HEALTHY
    if ratio is None:
        return ratio, HEALTHY
    if ratio >= ONE:
        return ratio, MAINTENANCE
    if ratio >= policy.warning_ratio:
        return ratio, WARNING
    return ratio, HEALTHY


# ---------------------------------------------------------------------------------------------
# Positions


def _instrument(parameters: RiskParameters, symbol: str) -> InstrumentSpec:
    spec = parameters.instruments_by_symbol.get(symbol)
    if spec is None:
        raise MarginModelError(f"instrument {symbol} is not listed in risk parameters {parameters.version}")
    if spec.kind not in LINEAR_KINDS:
        raise MarginModelError(
            f"instrument {symbol} is {KIND_NAMES.get(spec.kind, spec.kind)}; this margin model prices linear "
            "perpetuals and futures only"
        )
    return spec


def _settlement_price(parameters: RiskParameters, marks: Mapping[str, Decimal], asset: str) -> Decimal | None:
    if asset == parameters.valuation_asset:
        return ONE
    return marks.get(asset)


def _position_risk(
    parameters: RiskParameters, marks: Mapping[str, Decimal], position: Position, scope: str
) -> tuple[PositionRisk, str | None]:
    """Figures of one position without its liquidation price (that needs the scope's totals);
    the second value names an unpriced settlement asset, if any."""
    instrument = position.instrument
    spec = _instrument(parameters, instrument)
    size = spec.contract_size
    quantity = position.quantity
    cost = position.cost
    mark = marks.get(instrument)
    settlement_asset = spec.settlement_asset
    settlement_price = ONE if settlement_asset == parameters.valuation_asset else marks.get(settlement_asset)
    unpriced = None if settlement_price is not None else settlement_asset
    s = settlement_price if settlement_price is not None else ONE
    if mark is not None:
        price_used = mark
        notional = abs(quantity) * size * mark
        pnl_settlement = quantity * size * mark - cost
    else:
        # Valued at the entry price: |q| x cs x (cost / (q x cs)) = |cost|, and PnL exactly 0.
        price_used = divide(cost, quantity * size) if quantity != ZERO else ZERO
        notional = abs(cost)
        pnl_settlement = ZERO
    tier = spec.tier_for(notional)
    figures = PositionRisk(
        instrument,
        position.margin_mode,
        scope,
        quantity,
        size,
        cost,
        mark,
        price_used,
        settlement_asset,
        s,
        notional,
        tier.index,
        tier.initial_rate,
        tier.maintenance_rate,
        s * pnl_settlement,
        round_requirement(s * (notional * tier.initial_rate - tier.initial_amount)),  # tier.initial(notional)
        round_requirement(s * (notional * tier.maintenance_rate - tier.maintenance_amount)),  # tier.maintenance
        None,
    )
    return figures, unpriced


# ---------------------------------------------------------------------------------------------
# The one solver: where a piecewise-linear function of the mark crosses zero


def _roots(
    constant: Decimal, slope: Decimal, weight: Decimal, tiers: tuple[CompiledTier, ...], size: Decimal
) -> list[Decimal]:
    """Positive prices P at which g(N) = constant + slope x N - weight x m(N) is zero, where
    N = size x P is the notional and m(N) = N x maintenance_rate_k - maintenance_amount_k is the
    maintenance requirement of the tier k holding N.

    m is continuous (the amounts are the continuity amounts of CONTRACT.md), so g is continuous and
    linear inside each tier band [floor_k, cap_k]: g_k(N) = (constant + weight x amount_k) +
    (slope - weight x rate_k) x N. In each band we evaluate g_k at both ends, exactly; a sign
    change puts one root strictly inside, found with the single division
    P = -(constant + weight x amount_k) / ((slope - weight x rate_k) x size); a zero at an end is
    a root at that end (a cap shared by two bands is reported once). A band where g is identically
    zero reports its ends. N = 0 is not a positive price and is never reported. The last band is
    unbounded: its far end has the sign of its slope.
    """
    found: dict[Decimal, Decimal] = {}  # notional or marker -> price, so shared ends count once
    interior: list[Decimal] = []
    for tier in tiers:
        base = constant + weight * tier.maintenance_amount
        rate = slope - weight * tier.maintenance_rate
        floor = tier.notional_floor
        at_floor = base + rate * floor
        cap = tier.notional_cap
        # Signs as -1, 0, 1 (``not x`` is ``x == 0``; ``is_signed`` is ``x < 0`` for x != 0).
        if cap is not None:
            at_cap = base + rate * cap
            cap_sign = 0 if not at_cap else (-1 if at_cap.is_signed() else 1)
        elif rate:
            cap_sign = -1 if rate.is_signed() else 1
        else:
            cap_sign = 0 if not base else (-1 if base.is_signed() else 1)
        floor_sign = 0 if not at_floor else (-1 if at_floor.is_signed() else 1)
        if floor_sign == 0 and floor > ZERO:
            found[floor] = divide(floor, size)
        if cap is not None and cap_sign == 0:
            found[cap] = divide(cap, size)
        if floor_sign * cap_sign < 0:
            interior.append(divide(-base, rate * size))
    if not found:
        interior.sort()
        return interior
    return sorted([*found.values(), *interior])


@dataclass(frozen=True, slots=True)
class _ScopeLine:
    """A scope as a function of one instrument's notional N = |q| x cs x P, every other mark fixed:

        equity(N)      = equity_rest + s x sign(q) x N
        maintenance(N) = maintenance_rest + s x m(N)

    where equity_rest = equity - PnL - s x cost is the part of equity that does not move with the
    mark (since PnL = s x (q x cs x P - cost) and q x cs x P = sign(q) x N), and maintenance_rest
    is the other positions' (rounded) requirements."""

    equity_rest: Decimal
    maintenance_rest: Decimal
    direction: Decimal  # s x sign(q): d equity / d N
    weight: Decimal  # s
    size: Decimal  # |q| x cs
    tiers: tuple[CompiledTier, ...]

    def ratio_roots(self, threshold: Decimal) -> list[Decimal]:
        """Prices where maintenance = threshold x equity (with equity >= 0: since m >= 0 a root
        needs threshold x equity = maintenance >= 0)."""
        return _roots(
            threshold * self.equity_rest - self.maintenance_rest,
            threshold * self.direction,
            self.weight,
            self.tiers,
            self.size,
        )

    def equity_roots(self) -> list[Decimal]:
        """Prices where equity = 0."""
        return _roots(self.equity_rest, self.direction, ZERO, self.tiers, self.size)


def _scope_line(parameters: RiskParameters, scope: ScopeRisk, position: PositionRisk) -> _ScopeLine:
    s = position.settlement_price
    sign = ONE if position.quantity > ZERO else MINUS_ONE
    return _ScopeLine(
        # equity = rest + s x (q x cs x P - cost) = (rest - s x cost) + s x sign(q) x N
        equity_rest=scope.equity - position.unrealised_pnl - s * position.cost,
        maintenance_rest=scope.maintenance_margin - position.maintenance_margin,
        direction=s * sign,
        weight=s,
        size=abs(position.quantity) * position.contract_size,
        tiers=_instrument(parameters, position.instrument).tier_table,
    )


def _nearest(roots: list[Decimal], reference: Decimal) -> Decimal | None:
    if not roots:
        return None
    return min(roots, key=lambda root: (abs(root - reference), root))


def liquidation_price(parameters: RiskParameters, scope: ScopeRisk, position: PositionRisk) -> Decimal | None:
    """The mark of ``position``'s instrument at which ``scope`` (the cross account or the isolated
    position) has equity = maintenance margin, every other mark unchanged; None when no positive
    price does.

    Why the root is unique: as a function of the mark, f(P) = equity - maintenance is continuous
    and piecewise linear, with slope s x cs x |q| x (1 - rate_k) for a long and
    -s x cs x |q| x (1 + rate_k) for a short in tier k. Rates are at most 1 (params.py checks), so
    f never decreases for a long and strictly decreases for a short: there is at most one
    crossing, and tiers only bend the line. A long's liquidation price is below the mark while
    equity > maintenance and above it (the price it must recover to) when the account is already
    under maintenance; mirrored for a short. None for a long that stays above maintenance at any
    positive price (fully collateralised), and for a short already under maintenance at every
    price. Only a tier rate of exactly 1 can make f flat on a whole band; then the crossing
    nearest to the price in use is returned.

    Rounded with ``round_liquidation_price``: a long's up, a short's down."""
    if position.quantity == ZERO:
        return None
    line = _scope_line(parameters, scope, position)
    root = _nearest(line.ratio_roots(ONE), position.price_used)
    if root is None:
        return None
    return round_liquidation_price(root, long=position.quantity > ZERO)


# ---------------------------------------------------------------------------------------------
# Scopes and accounts


def _scope_from(
    parameters: RiskParameters,
    scope: str,
    collateral: Decimal,
    positions: list[PositionRisk],
    unpriced: set[str],
    liquidation_prices: bool = True,
) -> ScopeRisk:
    # The sums add in the order of ``positions``, from ZERO, as ``sum(..., ZERO)`` would.
    pnl = initial = maintenance = ZERO
    open_positions = False
    for p in positions:
        pnl += p.unrealised_pnl
        initial += p.initial_margin
        maintenance += p.maintenance_margin
        if p.quantity != ZERO:
            open_positions = True
    equity = collateral + pnl
    ratio, status = classify(equity, maintenance, open_positions, parameters.margin_call)
    draft = ScopeRisk(
        scope,
        collateral,
        pnl,
        equity,
        initial,
        maintenance,
        ratio,
        status,
        tuple(positions),
        tuple(sorted(unpriced)) if unpriced else (),
    )
    if not liquidation_prices:
        return draft
    priced = tuple(p._replace(liquidation_price=liquidation_price(parameters, draft, p)) for p in positions)
    return draft._replace(positions=priced)


def _collateral(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal]
) -> tuple[tuple[CollateralValue, ...], set[str]]:
    valuation = parameters.valuation_asset
    values: list[CollateralValue] = []
    unpriced: set[str] = set()
    for asset, amount in sorted(account.balances.items()):
        if amount != ZERO:
            value = _collateral_value(parameters, asset, amount, ONE if asset == valuation else marks.get(asset))
            values.append(value)
            if value.price is None:
                unpriced.add(asset)
    return tuple(values), unpriced


def _cross_scope(
    account: Account,
    parameters: RiskParameters,
    marks: Mapping[str, Decimal],
    collateral: tuple[CollateralValue, ...],
    collateral_unpriced: set[str],
    liquidation_prices: bool = True,
) -> ScopeRisk:
    unpriced = set(collateral_unpriced)
    positions: list[PositionRisk] = []
    for key in sorted(account.positions):
        position = account.positions[key]
        if position.margin_mode != CROSS or position.quantity == ZERO:
            continue
        figures, missing = _position_risk(parameters, marks, position, CROSS)
        positions.append(figures)
        if missing is not None:
            unpriced.add(missing)
    value = ZERO
    for c in collateral:
        value += c.value
    return _scope_from(parameters, CROSS, value, positions, unpriced, liquidation_prices)


def _isolated_scope(
    parameters: RiskParameters, marks: Mapping[str, Decimal], position: Position, liquidation_prices: bool = True
) -> ScopeRisk:
    scope = isolated_scope(position.instrument)
    spec = _instrument(parameters, position.instrument)
    s = _settlement_price(parameters, marks, spec.settlement_asset)
    unpriced = {spec.settlement_asset} if s is None else set()
    positions: list[PositionRisk] = []
    if position.quantity != ZERO:
        figures, _ = _position_risk(parameters, marks, position, scope)
        positions.append(figures)
    collateral = (s if s is not None else ONE) * position.isolated_margin
    return _scope_from(parameters, scope, collateral, positions, unpriced, liquidation_prices)


def _isolated_positions(account: Account) -> list[Position]:
    return [
        account.positions[key]
        for key in sorted(account.positions)
        if key[1] == ISOLATED and (account.positions[key].quantity != 0 or account.positions[key].isolated_margin != 0)
    ]


@exact
def evaluate(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], *, liquidation_prices: bool = True
) -> AccountRisk:
    """Every scope of ``account``: the cross account and each isolated position (one with open
    quantity or allocated margin). ``marks`` maps instrument symbols to mark prices and collateral
    assets to prices in the valuation asset (the valuation asset itself is 1 whatever it says).
    Raises ``MarginModelError`` for a position in an instrument the parameters do not list or do
    not price linearly."""
    collateral, unpriced = _collateral(account, parameters, marks)
    cross = _cross_scope(account, parameters, marks, collateral, unpriced, liquidation_prices)
    isolated = tuple(_isolated_scope(parameters, marks, p, liquidation_prices) for p in _isolated_positions(account))
    return AccountRisk(account.account_id, parameters.version, collateral, cross, isolated)


@exact
def evaluate_scope(
    account: Account,
    parameters: RiskParameters,
    marks: Mapping[str, Decimal],
    scope: str,
    *,
    liquidation_prices: bool = True,
) -> ScopeRisk:
    """One scope only: ``"cross"`` or ``"isolated:<instrument>"`` (cheaper than ``evaluate`` when
    a mark moved one instrument). An isolated scope without a position reads as empty.
    ``liquidation_prices=False`` leaves the positions' liquidation prices None (the lifecycle
    and the trigger index do not need them; they cost a solve per position)."""
    if scope == CROSS:
        collateral, unpriced = _collateral(account, parameters, marks)
        return _cross_scope(account, parameters, marks, collateral, unpriced, liquidation_prices)
    if scope.startswith(ISOLATED_SCOPE_PREFIX):
        instrument = scope[len(ISOLATED_SCOPE_PREFIX) :]
        position = account.positions.get((instrument, ISOLATED)) or Position(instrument, ISOLATED)
        return _isolated_scope(parameters, marks, position, liquidation_prices)
    raise MarginModelError(f"a margin scope is 'cross' or 'isolated:<instrument>', not {scope!r}")


class StateMarks(Mapping[str, Decimal]):
    """The ledger state's last marks seen as ``symbol -> price``, without copying them."""

    __slots__ = ("_marks",)

    def __init__(self, marks: Mapping[str, MarkState]) -> None:
        self._marks = marks

    def __getitem__(self, symbol: str) -> Decimal:
        return self._marks[symbol].price

    def get(self, symbol: str, default: Any = None) -> Any:
        # Mapping.get would go through __getitem__ and a KeyError for every unmarked symbol.
        mark = self._marks.get(symbol)
        return default if mark is None else mark.price

    def __iter__(self) -> Iterator[str]:
        return iter(self._marks)

    def __len__(self) -> int:
        return len(self._marks)


def scope_risk(state: LedgerState, account: Account, scope: str, *, liquidation_prices: bool = True) -> ScopeRisk:
    """``evaluate_scope`` with the parameters in force and the last marks of ``state``."""
    return evaluate_scope(
        account, state.parameters, StateMarks(state.marks), scope, liquidation_prices=liquidation_prices
    )


def account_risk(state: LedgerState, account: Account, *, liquidation_prices: bool = True) -> AccountRisk:
    """``evaluate`` with the parameters in force and the last marks of ``state``."""
    return evaluate(account, state.parameters, StateMarks(state.marks), liquidation_prices=liquidation_prices)


# ---------------------------------------------------------------------------------------------
# Trigger prices


# A price that scales a scope's figures linearly (a collateral asset's) as a one-band "tier table"
# with m(N) = N, so the same solver handles it: weight x m(N) is then just weight x price.
_LINEAR_BAND = (CompiledTier(1, ZERO, None, ONE, ONE, ZERO, ZERO),)


def _asset_scope_line(
    account: Account, parameters: RiskParameters, risk: ScopeRisk, asset: str, price: Decimal | None
) -> _ScopeLine:
    """A scope as a function of the price p of a collateral asset, every other mark fixed.

    The asset's balance (cross only: units after haircut, a debt in full) and every position
    settled in it scale with p: equity(p) = equity_rest + p x units, with units = balance units +
    the positions' PnL in the asset, and maintenance(p) = maintenance_rest + p x requirement, with
    requirement = the positions' maintenance in the asset. ``_LINEAR_BAND`` makes this the solver's
    line with size 1 and weight = requirement."""
    units = moving_equity = moving_maintenance = requirement = ZERO
    spec = parameters.asset(asset)
    if risk.scope == CROSS and spec is not None:
        amount = account.balance(asset)
        held = units_after_haircut(spec, amount)
        units += held
        moving_equity += ZERO if price is None else price * held
    for position in risk.positions:
        if position.settlement_asset != asset:
            continue
        if position.marked:
            units += position.quantity * position.contract_size * position.price_used - position.cost
        moving_equity += position.unrealised_pnl
        moving_maintenance += position.maintenance_margin
        requirement += (
            _instrument(parameters, position.instrument).tier_for(position.notional).maintenance(position.notional)
        )
    return _ScopeLine(
        equity_rest=risk.equity - moving_equity,
        maintenance_rest=risk.maintenance_margin - moving_maintenance,
        direction=units,
        weight=requirement,
        size=ONE,
        tiers=_LINEAR_BAND,
    )


def _bounds(
    parameters: RiskParameters, scope: str, symbol: str, line: _ScopeLine | None, reference: Decimal | None
) -> TriggerPrices:
    if line is None or reference is None:
        return TriggerPrices(scope, symbol, reference, None, None, None, None)
    policy = parameters.margin_call
    # The nearest crossing at or below and at or above the reference; on a tie the first found
    # (in the order bankrupt, resolve, warning, maintenance) wins.
    lower: tuple[Decimal, str] | None = None
    upper: tuple[Decimal, str] | None = None
    for name, roots in (
        (THRESHOLD_BANKRUPT, line.equity_roots()),
        (THRESHOLD_RESOLVE, line.ratio_roots(policy.resolve_ratio)),
        (THRESHOLD_WARNING, line.ratio_roots(policy.warning_ratio)),
        (THRESHOLD_MAINTENANCE, line.ratio_roots(ONE)),
    ):
        for root in roots:
            if root <= reference and (lower is None or root > lower[0]):
                lower = (root, name)
            if root >= reference and (upper is None or root < upper[0]):
                upper = (root, name)
    return TriggerPrices(
        scope=scope,
        instrument=symbol,
        reference_price=reference,
        lower=None if lower is None else round_liquidation_price(lower[0], long=True),
        lower_threshold=None if lower is None else lower[1],
        upper=None if upper is None else round_liquidation_price(upper[0], long=False),
        upper_threshold=None if upper is None else upper[1],
    )


@exact
def trigger_prices(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], scope: str, instrument: str
) -> TriggerPrices:
    """The nearest prices of ``instrument``, at or below and at or above the price in use, at which
    ``scope`` crosses one of: equity = 0 (bankrupt), ratio = resolve_ratio, ratio = warning_ratio,
    ratio = 1 (maintenance); every other mark fixed. Same solver as ``liquidation_price`` (the
    ratio threshold t becomes the line t x equity - maintenance; t = 1 is the liquidation price).

    ``instrument`` may also be a collateral asset: its price scales the asset's balance (after
    haircut) and every position settled in it, a straight line in the price (see
    ``_asset_scope_line``). The valuation asset never moves: no bounds.

    The price in use is the mark, or the entry price when the instrument is unmarked (the price at
    which an unmarked position is valued). A scope without an open position in ``instrument``
    does not move with its mark, and an unpriced asset has no price to move from: both bounds are
    None then (the engine re-margins on an asset's first price anyway)."""
    return trigger_prices_of(account, parameters, marks, evaluate_scope(account, parameters, marks, scope), instrument)


@exact
def trigger_prices_of(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], risk: ScopeRisk, instrument: str
) -> TriggerPrices:
    """``trigger_prices`` of a scope already evaluated (``risk``, at ``marks``)."""
    return _trigger_prices_of(account, parameters, marks, risk, instrument)


def _trigger_prices_of(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], risk: ScopeRisk, instrument: str
) -> TriggerPrices:
    """``trigger_prices_of`` for callers already under the ledger context (``numbers.exact``)."""
    scope = risk.scope
    if parameters.instrument(instrument) is not None:
        position = risk.position(instrument)
        if position is None or position.quantity == ZERO:
            return _bounds(parameters, scope, instrument, None, None)
        return _bounds(parameters, scope, instrument, _scope_line(parameters, risk, position), position.price_used)
    if parameters.asset(instrument) is None:
        raise MarginModelError(f"{instrument} is neither an instrument nor an asset of parameters {parameters.version}")
    if instrument == parameters.valuation_asset:
        return _bounds(parameters, scope, instrument, None, ONE)
    price = marks.get(instrument)
    return _bounds(
        parameters, scope, instrument, _asset_scope_line(account, parameters, risk, instrument, price), price
    )


def state_trigger_prices(state: LedgerState, account: Account, scope: str, instrument: str) -> TriggerPrices:
    """``trigger_prices`` with the parameters in force and the last marks of ``state``."""
    return trigger_prices(account, state.parameters, StateMarks(state.marks), scope, instrument)
