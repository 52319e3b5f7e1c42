"""The ``standard`` margin model (CONTRACT.md's tiers): collateral, linear positions and parameters
in; equity, requirements, ratios, levels, liquidation prices and re-margin trigger prices out.

One implementation of the interface of ``marginmodel`` (``StandardModel``, registered in
``models``), and the model of every isolated position. A strategy beside the account
(STYLE.md): it reads an ``Account``, the ``RiskParameters`` in force and a mapping of marks,
and returns frozen values. It does no I/O and reads no clock. Every sum and product is exact
under the ledger context (``numbers.exact``); the only roundings are the named rules of
``numbers``: requirements up (``round_requirement``), ratios up (``round_ratio``), liquidation
and trigger prices towards "reached no later" (``round_liquidation_price``).

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
* **Dynamic margin** (CONTRACT v2). The multiplier in force for an instrument's underlying
  (``marginmodel.multiplier_of`` the marks: 1 for a plain mapping of prices) scales its tier rates,
  and so its tiers' amounts (``dynamicmargin.scaled_tier_table``), and the option margin rates of
  the underlying (``dynamicmargin.scaled_option_margin``). Every figure below reads the scaled
  tables: requirements, liquidation and trigger prices, the index's bounds and bands, and the
  liquidation arithmetic (``PositionRisk.multiplier`` carries the multiplier to the functions
  that are given a position and not the marks). A scaled rate may pass 1; a liquidation price is
  then the crossing nearest to the price in use (``liquidation_price``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from clearing.domain.dynamicmargin import scaled_option_margin, scaled_tier_table
from clearing.domain.levels import classify, margin_ratio, status_distance
from clearing.domain.marginmodel import (
    CROSS,
    ISOLATED,
    ISOLATED_SCOPE_PREFIX,
    AccountRisk,
    Bands,
    CollateralValue,
    EvaluatedScope,
    MarginModel,
    MarginModelError,
    OptionRisk,
    Planned,
    PositionRisk,
    Reduction,
    ScopeRisk,
    TriggerPrices,
    isolated_scope,
    multiplier_of,
)
from clearing.domain.numbers import (
    MINUS_ONE,
    MONEY_QUANTUM,
    ONE,
    PRICE_QUANTUM,
    RATIO_QUANTUM,
    ZERO,
    divide,
    divide_down,
    exact,
    round_bankruptcy_price,
    round_bound_down,
    round_bound_up,
    round_liquidation_price,
    round_requirement,
)
from clearing.domain.optionmargin import position_margin
from clearing.domain.params import AssetSpec, CompiledTier, InstrumentSpec, OptionMarginRates, RiskParameters
from clearing.domain.state import Account, BudgetedPosition, FillBudget, Position

STANDARD: Final = "standard"
LINEAR_KINDS: Final = ("perpetual", "future")
OPTION: Final = "option"

# Names of the thresholds a trigger price crosses (see ``trigger_prices``).
THRESHOLD_BANKRUPT: Final = "bankrupt"  # equity = 0
THRESHOLD_RESOLVE: Final = "resolve"  # ratio = margin_call.resolve_ratio
THRESHOLD_WARNING: Final = "warning"  # ratio = margin_call.warning_ratio
THRESHOLD_MAINTENANCE: Final = "maintenance"  # ratio = 1, i.e. equity = maintenance margin


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
# Positions


def _instrument(parameters: RiskParameters, symbol: str) -> InstrumentSpec:
    spec = parameters.instruments_by_symbol.get(symbol)
    if spec is None:
        raise MarginModelError(f"instrument {symbol} is not listed in risk parameters {parameters.version}")
    if spec.kind not in LINEAR_KINDS:
        raise MarginModelError(
            f"instrument {symbol} is a {spec.kind}; this margin model prices linear perpetuals and futures only"
        )
    return spec


def _listed(parameters: RiskParameters, symbol: str) -> InstrumentSpec:
    """A listed instrument this model prices: linear (tiers) or an option (standard option margin)."""
    spec = parameters.instruments_by_symbol.get(symbol)
    if spec is not None and spec.kind == OPTION:
        return spec
    return _instrument(parameters, symbol)


# Scaled tier tables and option margin rates, by (symbol or underlying, multiplier), for the
# parameters in force: a multiplier changes once per sample, and every evaluation in between
# reads the same tables (keyed by the document's identity, as ``_constants``).
_SCALED: tuple[RiskParameters | None, dict[tuple[str, Decimal], tuple[CompiledTier, ...]]] = (None, {})
_SCALED_RATES: tuple[RiskParameters | None, dict[tuple[str, Decimal], OptionMarginRates]] = (None, {})
SCALED_CACHE_ENTRIES_MAX: Final = 4_096  # then the cache starts again, empty


def tiers_of(parameters: RiskParameters, spec: InstrumentSpec, multiplier: Decimal) -> tuple[CompiledTier, ...]:
    """The instrument's tier table under dynamic margin's ``multiplier`` (its own at 1)."""
    if multiplier == ONE:
        return spec.tier_table
    global _SCALED
    cached = _SCALED
    if cached[0] is not parameters or len(cached[1]) >= SCALED_CACHE_ENTRIES_MAX:
        cached = _SCALED = (parameters, {})
    key = (spec.symbol, multiplier)
    found = cached[1].get(key)
    if found is None:
        found = cached[1][key] = scaled_tier_table(spec, multiplier)
    return found


def tier_in(tiers: tuple[CompiledTier, ...], notional: Decimal) -> CompiledTier:
    """The tier of ``tiers`` whose band holds this absolute notional (``InstrumentSpec.tier_for``
    of a scaled table: scaling moves no cap)."""
    for tier in tiers:
        if tier.notional_cap is None or notional <= tier.notional_cap:
            return tier
    raise AssertionError("the last tier is unbounded")  # pragma: no cover - validated by params


def option_rates_of(parameters: RiskParameters, underlying: str, multiplier: Decimal) -> OptionMarginRates | None:
    """The underlying's standard option margin rates under dynamic margin's ``multiplier``."""
    rates = parameters.option_margin_rates(underlying)
    if rates is None or multiplier == ONE:
        return rates
    global _SCALED_RATES
    cached = _SCALED_RATES
    if cached[0] is not parameters or len(cached[1]) >= SCALED_CACHE_ENTRIES_MAX:
        cached = _SCALED_RATES = (parameters, {})
    key = (underlying, multiplier)
    found = cached[1].get(key)
    if found is None:
        found = cached[1][key] = scaled_option_margin(rates, multiplier)
    return found


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
    spec = _listed(parameters, instrument)
    if spec.kind == OPTION:
        return _option_position_risk(parameters, marks, position, scope, spec)
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
    multiplier = multiplier_of(marks, spec.underlying_symbol)
    tier = tier_in(tiers_of(parameters, spec, multiplier), notional)
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
        None,
        multiplier,
    )
    return figures, unpriced


def _in_valuation(requirement: Decimal, s: Decimal) -> Decimal:
    """A requirement in the settlement asset (rounded up) in the valuation asset, rounded up again
    unless the settlement asset is the valuation asset."""
    return requirement if s == ONE else round_requirement(s * requirement)


def _option_position_risk(
    parameters: RiskParameters, marks: Mapping[str, Decimal], position: Position, scope: str, spec: InstrumentSpec
) -> tuple[PositionRisk, str | None]:
    """An option position under standard option margin (``optionmargin.position_margin``, CONTRACT
    v2) at the option's mark and its underlying's. Unmarked, the option is valued at its entry
    price (as a linear position is: its value is then its cost, so equity is as the fill left
    it); an unmarked underlying is taken at the strike and named as unpriced."""
    assert spec.option_type is not None and spec.strike is not None and spec.expiry is not None  # params validates
    size = spec.contract_size
    quantity = position.quantity
    mark = marks.get(position.instrument)
    settlement_asset = spec.settlement_asset
    settlement_price = ONE if settlement_asset == parameters.valuation_asset else marks.get(settlement_asset)
    unpriced = None if settlement_price is not None else settlement_asset
    s = settlement_price if settlement_price is not None else ONE
    price_used = mark if mark is not None else (divide(position.cost, quantity * size) if quantity != ZERO else ZERO)
    underlying = spec.underlying_symbol
    underlying_mark = ONE if underlying == parameters.valuation_asset else marks.get(underlying)
    if underlying_mark is None and unpriced is None:
        unpriced = underlying
    multiplier = multiplier_of(marks, underlying)
    rates = option_rates_of(parameters, underlying, multiplier)
    if rates is None:
        raise MarginModelError(f"option {spec.symbol}: parameters {parameters.version} have no option_margin rates")
    margin = position_margin(
        spec, quantity, underlying_mark if underlying_mark is not None else spec.strike, price_used, rates
    )
    value = s * (quantity * size * price_used) if mark is not None else s * position.cost
    figures = PositionRisk(
        position.instrument,
        position.margin_mode,
        scope,
        quantity,
        size,
        position.cost,
        mark,
        price_used,
        settlement_asset,
        s,
        abs(quantity) * size * price_used,
        0,
        ZERO,
        ZERO,
        value,
        _in_valuation(margin.initial, s),
        _in_valuation(margin.maintenance, s),
        None,
        OptionRisk(
            underlying,
            underlying_mark,
            spec.option_type,
            spec.strike,
            spec.expiry,
            margin.per_contract,
            margin.contracts,
            rates,
        ),
        multiplier,
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
        tiers=tiers_of(parameters, _instrument(parameters, position.instrument), position.multiplier),
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
    if position.quantity == ZERO or position.option is not None:
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
    for p in positions:
        pnl += p.unrealised_pnl
        initial += p.initial_margin
        maintenance += p.maintenance_margin
    equity = collateral + pnl
    ratio = margin_ratio(equity, maintenance)
    status = classify(equity, maintenance, ratio, parameters.margin_call)
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
        tiers = tiers_of(parameters, _instrument(parameters, position.instrument), position.multiplier)
        requirement += tier_in(tiers, position.notional).maintenance(position.notional)
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
    if any(p.option is not None and instrument in (p.option.underlying, p.settlement_asset) for p in risk.positions):
        # The options' requirements bend with their underlying's price: not one of the lines
        # solved here. Such a scope moves with several prices (its options' marks too) and is
        # indexed by ``budget_bands``.
        return _bounds(parameters, scope, instrument, None, None)
    if parameters.instrument(instrument) is not None:
        position = risk.position(instrument)
        if position is None or position.quantity == ZERO or position.option is not None:
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


# ---------------------------------------------------------------------------------------------
# What the trigger index needs (triggers.py says how it uses them and why they are safe)


def dependencies(account: Account, parameters: RiskParameters, scope: str) -> tuple[str, ...]:
    """The symbols whose price moves the scope's figures, sorted: the instruments of its open
    positions, their settlement assets other than the valuation asset, and (cross) the collateral
    assets other than the valuation asset."""
    valuation = parameters.valuation_asset
    found: set[str] = set()

    def settled_in(instrument: str) -> None:
        spec = parameters.instruments_by_symbol.get(instrument)
        if spec is not None and spec.settlement_asset != valuation:
            found.add(spec.settlement_asset)
        if spec is not None and spec.kind == OPTION and spec.underlying_symbol != valuation:
            found.add(spec.underlying_symbol)  # standard option margin moves with U

    if scope == CROSS:
        for (instrument, mode), position in account.positions.items():
            if mode == CROSS and position.quantity != ZERO:
                found.add(instrument)
                settled_in(instrument)
        for asset, amount in account.balances.items():
            if amount != ZERO and asset != valuation and parameters.asset(asset) is not None:
                found.add(asset)
    elif scope.startswith(ISOLATED_SCOPE_PREFIX):
        instrument = scope[len(ISOLATED_SCOPE_PREFIX) :]
        isolated = account.positions.get((instrument, ISOLATED))
        if isolated is not None and (isolated.quantity != ZERO or isolated.isolated_margin != ZERO):
            if isolated.quantity != ZERO:
                found.add(instrument)
            settled_in(instrument)
    return tuple(sorted(found))


# The relative part of the slack that pulls a trigger towards the price in use (``index_bounds``).
RELATIVE_SLACK: Final = Decimal("1e-9")

# Per-parameters constants of the bounds below, computed once per parameters document (which is
# immutable): keyed by the document's identity, so the cache follows the parameters in force.
_CONSTANTS: tuple[RiskParameters | None, dict[tuple[str, int, Decimal], Decimal]] = (None, {})


def _constants(parameters: RiskParameters) -> dict[tuple[str, int, Decimal], Decimal]:
    global _CONSTANTS
    cached = _CONSTANTS
    if cached[0] is not parameters or len(cached[1]) >= SCALED_CACHE_ENTRIES_MAX:
        cached = _CONSTANTS = (parameters, {})
    return cached[1]


def _gamma(parameters: RiskParameters, spec: InstrumentSpec, direction: Decimal, multiplier: Decimal) -> Decimal:
    """The smallest |t x sign(q) - rate| over the thresholds t and the tier rates (scaled by
    dynamic margin's ``multiplier``) and 1: how flat ``t x equity - maintenance`` can get in the
    mark (see ``index_bounds``)."""
    constants = _constants(parameters)
    key = (spec.symbol, 1 if direction > ZERO else -1, multiplier)
    gamma = constants.get(key)
    if gamma is None:
        policy = parameters.margin_call
        gamma = constants[key] = min(
            [ONE]
            + [
                abs(threshold * direction - tier.maintenance_rate)
                for threshold in (policy.resolve_ratio, policy.warning_ratio, ONE)
                for tier in tiers_of(parameters, spec, multiplier)
            ]
        )
    return gamma


def _widest(parameters: RiskParameters, spec: InstrumentSpec, multiplier: Decimal) -> Decimal:
    """1 + the largest maintenance rate of the instrument's tiers, scaled by dynamic margin's
    ``multiplier`` (see ``budget_bands``)."""
    constants = _constants(parameters)
    key = (spec.symbol, 0, multiplier)
    widest = constants.get(key)
    if widest is None:
        widest = constants[key] = ONE + max(tier.maintenance_rate for tier in tiers_of(parameters, spec, multiplier))
    return widest


def index_bounds(
    account: Account, parameters: RiskParameters, marks: Mapping[str, Decimal], risk: ScopeRisk, symbol: str
) -> tuple[Decimal | None, Decimal | None] | None:
    """(lower, upper) re-margin triggers of a scope that depends on ``symbol`` alone, pulled
    towards the reference by the rounding slack; None when the scope cannot be indexed. Runs
    under the ledger context.

    The ledger's roundings (requirements up to 1e-8, ratios up to 1e-10, trigger prices to
    1e-10) can move a crossing by (1e-8 + 1e-10 x |equity|) / |slope| in price, where the slope
    of t x equity - maintenance is s x |q| x cs x |t x sign(q) - rate| for a tier rate; each
    trigger is pulled towards the reference price by four times that plus 1e-9 relative: a
    spurious re-margin costs one evaluation, a missed one a wrong ledger. A slope that can
    vanish (a tier rate equal to a threshold) cannot be indexed."""
    if any(p.option is not None for p in risk.positions):
        return None  # not reached: an option's scope moves with two prices (``budget_bands``)
    prices = _trigger_prices_of(account, parameters, marks, risk, symbol)
    reference = prices.reference_price
    if reference is None:
        return (None, None)  # unpriced: the first mark of the symbol re-margins its dependents
    spec = parameters.instruments_by_symbol.get(symbol)
    if spec is not None:
        position = risk.position(symbol)
        if position is None or position.quantity == ZERO:
            return None
        slope = position.settlement_price * abs(position.quantity) * position.contract_size
        direction = ONE if position.quantity > ZERO else MINUS_ONE
        gamma = _gamma(parameters, spec, direction, position.multiplier)
    else:
        asset = parameters.asset(symbol)
        if asset is None:
            return None
        amount = account.balance(symbol)
        slope = abs(units_after_haircut(asset, amount))
        gamma = ONE
    if slope == ZERO or gamma == ZERO:
        return None
    equity = abs(risk.equity)

    def slack(root: Decimal) -> Decimal:
        moved = equity + slope * abs(root - reference)
        return (
            root * RELATIVE_SLACK
            + divide(4 * (MONEY_QUANTUM + RATIO_QUANTUM * moved), slope * gamma)
            + 2 * PRICE_QUANTUM
        )

    lower = None if prices.lower is None else prices.lower + slack(prices.lower)
    upper = None if prices.upper is None else max(ZERO, prices.upper - slack(prices.upper))
    return (lower, upper)


def budget_bands(
    account: Account,
    parameters: RiskParameters,
    marks: Mapping[str, Decimal],
    risk: ScopeRisk,
    symbols: tuple[str, ...],
    band_share: Decimal,
) -> tuple[Bands, FillBudget | None] | None:
    """Bands around the current prices of a scope that depends on several prices, inside which no
    combination of moves can change its status, and the record ``triggers.absorbs_fill`` reads
    (None when some part of the scope is not one it can follow); None when the scope cannot be
    indexed. Runs under the ledger context.

    The status is the sign pattern of g_0 = equity and g_t = t x equity - maintenance for t in
    (resolve, warning, 1). Each g moves with the price of a symbol X by at most k_X per unit:
    k_X = |q| x cs x (1 + largest maintenance rate) for an instrument (equity moves by q x cs,
    maintenance by |q| x cs x the tier's rate), |amount - haircut units| for a collateral asset.
    With S the smallest |g| less the ledger's rounding, moves with sum of k_X x |dX| < S flip no
    sign; giving each of the n symbols the band S / (n x k_X) keeps any combination of in-band
    moves below S (the shared budget that one-dimensional triggers lack). The bands spend only
    ``band_share`` of S: the rest is left for the account's own fills (``absorbs_fill``).
    Settlement assets other than the valuation asset are not budgeted (the scope is then
    re-margined on every mark)."""
    if risk.unpriced_assets:
        return None
    sensitivity = _sensitivities(account, parameters, marks, risk, symbols)
    if sensitivity is None:
        return None
    budget = status_budget(risk, parameters, len(risk.positions) + 1)
    if budget <= ZERO:
        return None
    bands: Bands = {}
    budgeted: dict[str, BudgetedPosition] = {}
    spread = ZERO
    share = len(symbols)
    instruments = parameters.instruments_by_symbol
    # ``absorbs_fill`` follows linear fills only: an option fill moves a premium and a
    # requirement its record does not model, so a scope holding options keeps no record.
    follows_fills = not any(p.option is not None for p in risk.positions)
    for symbol, k in sensitivity:
        if k == ZERO:
            continue  # the scope does not move with this price at all
        price = marks[symbol]  # every symbol above was required to have a mark
        band = divide_down(budget * band_share, share * k)
        bands[symbol] = band_around(price, band)
        spec = instruments.get(symbol)
        if spec is None or not follows_fills:
            spread += k * band
            continue
        held = account.positions[(symbol, CROSS)]
        unit = spec.contract_size * price
        widest = _widest(parameters, spec, held_multiplier(marks, spec))
        unit_spread = round_bound_up(spec.contract_size * widest * band)
        size = abs(held.quantity)
        entry = budgeted[symbol] = BudgetedPosition(
            size, unit, unit * (widest - ONE), unit_spread, held.quantity * unit - held.cost, size * unit_spread
        )
        spread += entry.fixed
    record = None
    if risk.scope == CROSS and follows_fills:
        # A rounding step of each requirement and of the fills' credits, set aside once.
        spread += 2 * MONEY_QUANTUM * (len(budgeted) + 1)
        balance = account.balance(parameters.valuation_asset)
        slack = round_bound_down(budget) - spread
        record = FillBudget(balance, _largest_haircut(parameters), budgeted, -balance, slack)
    return bands, record


def status_budget(risk: ScopeRisk, parameters: RiskParameters, requirements: int, slack: Decimal = ZERO) -> Decimal:
    """What the bands of ``risk`` may spend: its ``levels.status_distance`` less the ledger's
    roundings (a requirement rounding of each of ``requirements`` figures and a ratio rounding,
    four times: at the reference and at the mark, on both sides of a threshold) and ``slack`` (a
    model's own). Not positive: the scope is too near a threshold to band."""
    equity = risk.equity
    smallest = status_distance(equity, risk.maintenance_margin, parameters.margin_call)
    rounding = 4 * (MONEY_QUANTUM * requirements + RATIO_QUANTUM * (abs(equity) + smallest))
    return smallest - rounding - slack


def band_around(price: Decimal, band: Decimal) -> tuple[Decimal, Decimal]:
    """The band ``price`` +- ``band`` kept one price step inside (prices of zero or less never come),
    as ``Bands`` holds it; ``band`` rounded down by the caller: a band narrower than its share of
    the budget only re-margins sooner."""
    return (price - band + PRICE_QUANTUM, max(ZERO, price + band - PRICE_QUANTUM))


def _sensitivities(
    account: Account,
    parameters: RiskParameters,
    marks: Mapping[str, Decimal],
    risk: ScopeRisk,
    symbols: tuple[str, ...],
) -> list[tuple[str, Decimal]] | None:
    """k_X of each symbol (``budget_bands``); None when some symbol cannot be budgeted.

    Options (standard option margin, maintenance_rate mr of the underlying). Per unit of the
    option's mark P, a long's equity moves by |q| x cs and its requirement not at all: k = |q| x cs;
    a short's equity moves by |q| x cs and its requirement by at most (1 + mr) x |q| x cs (the
    "+ mark" of both rules and the put's mr x mark), so with t <= 1: k = (2 + mr) x |q| x cs. Per
    unit of the underlying's mark U, only a short's requirement moves, by at most mr x |q| x cs
    (mr x U of both rules; the call's and the put's initial terms do not reach maintenance): added
    to U's own k (a balance of it, a position in it)."""
    instruments = parameters.instruments_by_symbol
    valuation = parameters.valuation_asset
    positions = {p.instrument: p for p in risk.positions}
    moved_by_underlying: dict[str, Decimal] = {}
    for p in risk.positions:
        if p.option is not None:
            if p.mark is None or p.settlement_asset != valuation or p.option.underlying_mark is None:
                return None
            if p.quantity < ZERO:
                moved = p.option.rates.maintenance_rate * p.option.contracts
                moved_by_underlying[p.option.underlying] = moved_by_underlying.get(p.option.underlying, ZERO) + moved
    sensitivity: list[tuple[str, Decimal]] = []
    for symbol in symbols:
        spec = instruments.get(symbol)
        k = moved_by_underlying.get(symbol, ZERO)
        if spec is not None:
            position = positions.get(symbol)
            if position is None or position.quantity == ZERO:
                if symbol in moved_by_underlying:
                    sensitivity.append((symbol, k))
                    continue
                return None
            if position.mark is None or position.settlement_asset != valuation:
                return None
            contracts = abs(position.quantity) * position.contract_size
            if position.option is not None:
                widest = ONE if position.quantity > ZERO else 2 + position.option.rates.maintenance_rate
            else:
                widest = _widest(parameters, spec, position.multiplier)
            sensitivity.append((symbol, k + contracts * widest))
        else:
            asset = parameters.asset(symbol)
            if asset is None or symbol not in marks:
                return None
            k += abs(units_after_haircut(asset, account.balance(symbol)))
            sensitivity.append((symbol, k))
    return sensitivity


def held_multiplier(marks: Mapping[str, Decimal], spec: InstrumentSpec) -> Decimal:
    """Dynamic margin's multiplier of the instrument's underlying in ``marks``."""
    return multiplier_of(marks, spec.underlying_symbol)


def _largest_haircut(parameters: RiskParameters) -> Decimal:
    spec = parameters.asset(parameters.valuation_asset)
    return max((band[2] for band in spec.haircut_band_table), default=ZERO) if spec is not None else ZERO


# ---------------------------------------------------------------------------------------------
# Liquidation arithmetic


def reduction(
    parameters: RiskParameters, position: PositionRisk, equity: Decimal, maintenance: Decimal, reduce: Decimal
) -> Reduction:
    """What reducing ``position`` by ``reduce`` leaves of the scope (equity and maintenance before
    it given): the arithmetic of the lifecycle's liquidation orders, and of ``audit explain``
    checking them."""
    spec = parameters.instruments_by_symbol[position.instrument]
    fee_rate = parameters.liquidation.fee_rate
    left = abs(position.quantity) - reduce
    notional = left * position.contract_size * position.price_used
    if position.option is not None:
        # At the price in use the close moves no equity (the option is valued at it); what is
        # left keeps its per-contract requirement.
        per_contract = position.option.per_contract.maintenance
        left_requirement = (
            _in_valuation(round_requirement(per_contract * left * position.contract_size), position.settlement_price)
            if left
            else ZERO
        )
        option_fee = round_requirement(
            reduce * position.contract_size * position.price_used * position.settlement_price * fee_rate
        )
        return Reduction(
            left,
            notional,
            0,
            left_requirement,
            option_fee,
            equity - option_fee,
            maintenance - position.maintenance_margin + left_requirement,
        )
    tier = tier_in(tiers_of(parameters, spec, position.multiplier), notional)
    requirement = round_requirement(tier.maintenance(notional) * position.settlement_price) if left else ZERO
    unit_value = position.contract_size * position.price_used * position.settlement_price
    fee = round_requirement(reduce * unit_value * fee_rate)
    after_maintenance = maintenance - position.maintenance_margin + requirement
    return Reduction(left, notional, tier.index, requirement, fee, equity - fee, after_maintenance)


def liquidation_order(risk: ScopeRisk) -> tuple[PositionRisk, ...]:
    """The order in which a liquidation reduces the open positions of ``risk``: short options
    first (their risk is unbounded and a close frees their whole requirement), then the largest
    maintenance requirement first, then by instrument."""
    return tuple(
        sorted(
            (p for p in risk.positions if p.quantity != ZERO),
            key=lambda p: (not (p.is_option and p.quantity < ZERO), -p.maintenance_margin, p.instrument),
        )
    )


def bankruptcy_price(position: PositionRisk, equity: Decimal, quantity: Decimal) -> tuple[Decimal, Decimal]:
    """(unrounded, rounded) price at which closing ``quantity`` of ``position`` would use up the
    scope's whole ``equity``; rounded towards the side that protects the insurance fund."""
    long = position.quantity > ZERO
    unit = quantity * position.contract_size * position.settlement_price
    raw = position.price_used - divide(equity, unit) if long else position.price_used + divide(equity, unit)
    return raw, max(round_bankruptcy_price(raw, long=long), ZERO)


# ---------------------------------------------------------------------------------------------
# The model behind the interface


class StandardModel(MarginModel):
    """The ``standard`` model: CONTRACT.md's tiered linear requirements (this module)."""

    def __init__(self) -> None:
        super().__init__(STANDARD)

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
        return evaluate_scope(account, parameters, marks, scope, liquidation_prices=liquidation_prices)

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
        return trigger_prices_of(account, parameters, marks, risk, symbol)

    def index_bounds(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbol: str,
    ) -> tuple[Decimal | None, Decimal | None] | None:
        return index_bounds(account, parameters, marks, risk, symbol)

    def budget_bands(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: Mapping[str, Decimal],
        risk: ScopeRisk,
        symbols: tuple[str, ...],
        band_share: Decimal,
    ) -> tuple[Bands, FillBudget | None] | None:
        return budget_bands(account, parameters, marks, risk, symbols, band_share)

    def liquidation_order(self, scope: EvaluatedScope) -> tuple[PositionRisk, ...]:
        return liquidation_order(scope.risk)

    def reduction(self, scope: EvaluatedScope, planned: Planned, position: PositionRisk, reduce: Decimal) -> Reduction:
        # Each position's requirement is its own (tiers by its own notional): the plan's running
        # equity and maintenance carry the earlier reductions exactly.
        return reduction(scope.parameters, position, planned.equity, planned.maintenance, reduce)

    def bankruptcy_price(self, position: PositionRisk, equity: Decimal, quantity: Decimal) -> tuple[Decimal, Decimal]:
        return bankruptcy_price(position, equity, quantity)
