"""The risk parameter document (CONTRACT.md) as a validated, immutable value.

A document is in force from its place in the log until the next one. Before a log's first
``risk_parameters`` event the log-start document is in force (``log_start_parameters``: the bundled
defaults every log written before the ledger logged its own were written under); a ledger opening
an empty log appends the current bundled defaults (``bundled_parameters``) as its first event, so
a log names the parameters it starts under. Tier tables are compiled once per document,
with the maintenance and initial amounts that make each requirement continuous across tiers.

Contract v2 adds, all optional, so that every v1 document reads (and is written back by
``document``) exactly as before: an instrument's ``underlying``, options (``kind: option`` with
``option_type``, ``strike``, ``expiry``, no tiers), and the blocks ``interest_rate``,
``option_margin``, ``portfolio_margin``, ``dynamic_margin`` and ``adl``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from importlib import resources
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StrictBool,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from clearing.domain.numbers import ONE, ZERO, parse_decimal

IDENTIFIER_CHARS_MAX = 128


def _wire(value: object, info: ValidationInfo) -> Decimal:
    return parse_decimal(value, info.field_name or "value")


def _zoned_time(value: object, info: ValidationInfo) -> datetime:
    field = info.field_name or "time"
    if isinstance(value, datetime):
        found = value
    elif isinstance(value, str):
        try:
            found = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f'{field} must be an RFC 3339 time such as "2027-03-26T08:00:00Z", got {value!r}'
            ) from None
    else:
        raise ValueError(f'{field} must be an RFC 3339 time string such as "2027-03-26T08:00:00Z", got {value!r}')
    if found.tzinfo is None:
        raise ValueError(f'{field} needs a zone ("Z" or an offset such as "+00:00"): {value!r} has none')
    try:
        return found.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{field} is outside the years 1 to 9999 once converted to UTC") from None


def _spell_time(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, fractions of a second only when there are any."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


WireDecimal = Annotated[Decimal, BeforeValidator(_wire)]
Identifier = Annotated[str, Field(min_length=1, max_length=IDENTIFIER_CHARS_MAX)]
ZonedTime = Annotated[datetime, BeforeValidator(_zoned_time), PlainSerializer(_spell_time)]
InstrumentKind = Literal["perpetual", "future", "option", "spot"]
OptionType = Literal["call", "put"]
# The kinds whose fills this ledger version books (``fold.admit`` refuses the others with a
# reason; a test holds the two in step). ``booking_report`` tells an operator before applying.
BOOKED_KINDS: Final = ("perpetual", "future", "option")

# Limits of the v2 blocks (CONTRACT v2): beyond them a grid or a sampler would be absurd or slow.
PRICE_STEPS_MAX: Final = 50  # portfolio grid: 2 x 50 + 1 = 101 moves x 3 volatility cells
EXTREME_MOVES_MAX: Final = 10
VOL_REFERENCE_DAYS_MAX: Final = Decimal(3650)
SAMPLE_SECONDS_MIN: Final = 60  # dynamic margin appends a decision per sample
SAMPLE_SECONDS_MAX: Final = 31 * 24 * 3600


class _Document(BaseModel):
    # Later contract versions add fields (options, futures, portfolio margin): keep them, so a
    # document read back from the log is the document that was applied.
    model_config = ConfigDict(frozen=True, extra="allow")

    # Fields a later contract version added with a default: written back by ``document`` only
    # when the document gave them, so that a v1 document is spelled (and hashed, and snapshotted)
    # exactly as v1 spelled it.
    OMITTED_UNLESS_GIVEN: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _as_given(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.OMITTED_UNLESS_GIVEN and isinstance(data, dict):
            for name in self.OMITTED_UNLESS_GIVEN - self.model_fields_set:
                data.pop(name, None)
        return data


class Tier(_Document):
    notional_cap: WireDecimal | None
    initial_rate: WireDecimal
    maintenance_rate: WireDecimal

    @model_validator(mode="after")
    def _rates_make_sense(self) -> Tier:
        if not (ZERO <= self.maintenance_rate <= self.initial_rate <= ONE):
            raise ValueError("a tier needs 0 <= maintenance_rate <= initial_rate <= 1")
        if self.notional_cap is not None and self.notional_cap <= 0:
            raise ValueError("notional_cap must be positive (or null for the last tier)")
        return self


class InstrumentSpec(_Document):
    """One instrument. Linear kinds carry tiers (a dated future may also name its ``expiry``);
    an option carries ``underlying``, ``option_type``, ``strike`` and ``expiry`` instead
    (CONTRACT v2), and is margined by the ``option_margin`` rates of its underlying."""

    OMITTED_UNLESS_GIVEN: ClassVar[frozenset[str]] = frozenset(
        {"tiers", "underlying", "option_type", "strike", "expiry"}
    )

    symbol: Identifier
    kind: InstrumentKind
    settlement_asset: Identifier
    contract_size: WireDecimal = Decimal(1)
    tiers: tuple[Tier, ...] = ()
    underlying: Identifier | None = None
    option_type: OptionType | None = None
    strike: WireDecimal | None = None
    expiry: ZonedTime | None = None

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> InstrumentSpec:
        if self.contract_size <= 0:
            raise ValueError(f"{self.symbol}: contract_size must be positive")
        if self.kind == "option":
            return self._option_fields()
        # A dated future may name its expiry (the ledger settles it by its settlement message).
        option_only = ("option_type", "strike") if self.kind == "future" else ("option_type", "strike", "expiry")
        given = [name for name in option_only if getattr(self, name) is not None]
        if given:
            verb = "is" if len(given) == 1 else "are"
            raise ValueError(
                f"{self.symbol}: {', '.join(given)} {verb} for options only; this instrument is a {self.kind}"
            )
        if not self.tiers:
            raise ValueError(
                f"{self.symbol}: a {self.kind} needs tiers (at least one, the last with notional_cap null)"
            )
        caps = [tier.notional_cap for tier in self.tiers]
        if caps[-1] is not None:
            raise ValueError(f"{self.symbol}: the last tier must have notional_cap null")
        bounded = [cap for cap in caps[:-1] if cap is not None]
        if len(bounded) != len(caps) - 1 or bounded != sorted(set(bounded)):
            raise ValueError(f"{self.symbol}: tier caps must be strictly ascending, only the last null")
        return self

    def _option_fields(self) -> InstrumentSpec:
        missing = [name for name in ("underlying", "option_type", "strike", "expiry") if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"{self.symbol}: an option needs {', '.join(missing)} (underlying: the symbol whose mark is F; "
                'option_type: "call" or "put"; strike: a decimal string; expiry: an RFC 3339 time with a zone)'
            )
        if self.strike is not None and self.strike <= 0:
            raise ValueError(f"{self.symbol}: strike must be positive, got {self.strike}")
        if self.underlying == self.symbol:
            raise ValueError(f"{self.symbol}: an option's underlying must be another symbol, not the option itself")
        if self.tiers:
            raise ValueError(
                f"{self.symbol}: options take no tiers; they are margined by the option_margin rates of their "
                "underlying"
            )
        return self

    @property
    def underlying_symbol(self) -> str:
        """The symbol whose mark moves this instrument: ``underlying``, or the instrument itself
        when the document names none (CONTRACT v2)."""
        return self.underlying if self.underlying is not None else self.symbol

    @cached_property
    def tier_table(self) -> tuple[CompiledTier, ...]:
        """Tiers with their continuity amounts (CONTRACT.md):
        amount_1 = 0, amount_n = cap_{n-1} x (rate_n - rate_{n-1}) + amount_{n-1}."""
        compiled: list[CompiledTier] = []
        floor = ZERO
        initial_amount = maintenance_amount = ZERO
        previous: Tier | None = None
        for index, tier in enumerate(self.tiers):
            if previous is not None and previous.notional_cap is not None:  # only the last cap is null
                cap = previous.notional_cap
                initial_amount += cap * (tier.initial_rate - previous.initial_rate)
                maintenance_amount += cap * (tier.maintenance_rate - previous.maintenance_rate)
            compiled.append(
                CompiledTier(
                    index=index + 1,
                    notional_floor=floor,
                    notional_cap=tier.notional_cap,
                    initial_rate=tier.initial_rate,
                    maintenance_rate=tier.maintenance_rate,
                    initial_amount=initial_amount,
                    maintenance_amount=maintenance_amount,
                )
            )
            floor = tier.notional_cap if tier.notional_cap is not None else floor
            previous = tier
        return tuple(compiled)

    def tier_for(self, notional: Decimal) -> CompiledTier:
        """The tier whose band holds this absolute notional (a notional equal to a cap is in that
        cap's tier)."""
        for tier in self.tier_table:
            if tier.notional_cap is None or notional <= tier.notional_cap:
                return tier
        raise AssertionError("the last tier is unbounded")  # pragma: no cover - validated above


@dataclass(frozen=True, slots=True)
class CompiledTier:
    index: int
    notional_floor: Decimal
    notional_cap: Decimal | None
    initial_rate: Decimal
    maintenance_rate: Decimal
    initial_amount: Decimal
    maintenance_amount: Decimal

    def initial(self, notional: Decimal) -> Decimal:
        return notional * self.initial_rate - self.initial_amount

    def maintenance(self, notional: Decimal) -> Decimal:
        return notional * self.maintenance_rate - self.maintenance_amount


class HaircutTier(_Document):
    amount_cap: WireDecimal | None
    haircut: WireDecimal


class AssetSpec(_Document):
    asset: Identifier
    haircut: WireDecimal | None = None
    haircut_tiers: tuple[HaircutTier, ...] | None = None

    @model_validator(mode="after")
    def _one_haircut_rule(self) -> AssetSpec:
        if self.haircut is not None and self.haircut_tiers is not None:
            raise ValueError(f"{self.asset}: give haircut or haircut_tiers, not both")
        rates = [self.haircut] if self.haircut is not None else [t.haircut for t in self.haircut_tiers or ()]
        if any(not (ZERO <= rate < ONE) for rate in rates):
            raise ValueError(f"{self.asset}: haircuts must be in [0, 1)")
        if self.haircut_tiers:
            caps = [t.amount_cap for t in self.haircut_tiers]
            bounded = [cap for cap in caps[:-1] if cap is not None]
            if caps[-1] is not None or len(bounded) != len(caps) - 1 or bounded != sorted(set(bounded)):
                raise ValueError(f"{self.asset}: haircut tier caps must ascend, only the last null")
        return self

    def haircut_bands(self) -> tuple[tuple[Decimal, Decimal | None, Decimal], ...]:
        """(amount_floor, amount_cap, haircut) bands; a flat haircut is one unbounded band.
        Tiered haircuts apply marginally: each band's haircut to the amount inside the band."""
        return self.haircut_band_table

    @cached_property
    def haircut_band_table(self) -> tuple[tuple[Decimal, Decimal | None, Decimal], ...]:
        """``haircut_bands``, computed once (the document is immutable; the margin model reads
        the bands for every balance it values)."""
        if self.haircut_tiers is None:
            return ((ZERO, None, self.haircut if self.haircut is not None else ZERO),)
        bands: list[tuple[Decimal, Decimal | None, Decimal]] = []
        floor = ZERO
        for tier in self.haircut_tiers:
            bands.append((floor, tier.amount_cap, tier.haircut))
            if tier.amount_cap is not None:
                floor = tier.amount_cap
        return tuple(bands)


class MarginCallPolicy(_Document):
    warning_ratio: WireDecimal
    resolve_ratio: WireDecimal
    grace_period_seconds: int = Field(ge=0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _hysteresis(self) -> MarginCallPolicy:
        if not (ZERO < self.resolve_ratio < self.warning_ratio < ONE):
            raise ValueError("margin_call needs 0 < resolve_ratio < warning_ratio < 1")
        return self


class LiquidationPolicy(_Document):
    fee_rate: WireDecimal
    target_ratio: WireDecimal

    @model_validator(mode="after")
    def _bounds(self) -> LiquidationPolicy:
        if not (ZERO <= self.fee_rate < ONE) or not (ZERO < self.target_ratio < ONE):
            raise ValueError("liquidation needs 0 <= fee_rate < 1 and 0 < target_ratio < 1")
        return self


class OptionMarginRates(_Document):
    """Standard option margin rates of one underlying (CONTRACT v2 "Standard option margin")."""

    underlying: Identifier
    initial_rate: WireDecimal
    minimum_rate: WireDecimal
    maintenance_rate: WireDecimal

    @model_validator(mode="after")
    def _rates_make_sense(self) -> OptionMarginRates:
        # minimum >= maintenance keeps a short call's initial margin (at least minimum_rate x U
        # + mark) at or above its maintenance margin (maintenance_rate x U + mark).
        if not (ZERO < self.maintenance_rate <= self.minimum_rate <= self.initial_rate <= ONE):
            raise ValueError(
                f"option_margin {self.underlying}: needs 0 < maintenance_rate <= minimum_rate <= initial_rate <= 1, "
                f"got {self.maintenance_rate}, {self.minimum_rate}, {self.initial_rate}"
            )
        return self


class PortfolioMarginSpec(_Document):
    """The scenario grid of one underlying (CONTRACT v2 "Portfolio margin")."""

    underlying: Identifier
    price_range: WireDecimal
    price_steps: int = Field(strict=True, ge=1, le=PRICE_STEPS_MAX)
    vol_up: WireDecimal
    vol_down: WireDecimal
    vol_up_floor: WireDecimal
    vol_power: WireDecimal
    vol_reference_days: WireDecimal
    extreme_moves: tuple[WireDecimal, ...] = Field(max_length=EXTREME_MOVES_MAX)
    extreme_weight: WireDecimal
    short_option_minimum_rate: WireDecimal
    maintenance_factor: WireDecimal

    @model_validator(mode="after")
    def _ranges(self) -> PortfolioMarginSpec:
        name = f"portfolio_margin {self.underlying}"
        # Every move keeps the underlying's price positive (Black-76 takes ln F).
        if not (ZERO < self.price_range < ONE):
            raise ValueError(f"{name}: price_range must be in (0, 1), got {self.price_range}")
        if self.vol_up < ZERO or self.vol_up_floor < ZERO:
            raise ValueError(f"{name}: vol_up and vol_up_floor must not be negative")
        if not (ZERO <= self.vol_down <= ONE):
            raise ValueError(f"{name}: vol_down must be in [0, 1], got {self.vol_down}")
        if not (ZERO <= self.vol_power <= ONE):
            raise ValueError(f"{name}: vol_power must be in [0, 1], got {self.vol_power}")
        if not (ZERO < self.vol_reference_days <= VOL_REFERENCE_DAYS_MAX):
            raise ValueError(
                f"{name}: vol_reference_days must be in (0, {VOL_REFERENCE_DAYS_MAX}], got {self.vol_reference_days}"
            )
        if any(move <= -ONE or move.is_zero() for move in self.extreme_moves):
            raise ValueError(f"{name}: every extreme move must be above -1 and not 0")
        if len(set(self.extreme_moves)) != len(self.extreme_moves):
            raise ValueError(f"{name}: extreme_moves must not repeat a move")
        if not (ZERO <= self.extreme_weight <= ONE):
            raise ValueError(f"{name}: extreme_weight must be in [0, 1], got {self.extreme_weight}")
        if not (ZERO <= self.short_option_minimum_rate <= ONE):
            raise ValueError(
                f"{name}: short_option_minimum_rate must be in [0, 1], got {self.short_option_minimum_rate}"
            )
        if not (ZERO < self.maintenance_factor <= ONE):
            raise ValueError(f"{name}: maintenance_factor must be in (0, 1], got {self.maintenance_factor}")
        return self


class DynamicMarginSpec(_Document):
    """Volatility-scaled margin of one underlying (CONTRACT v2 "Dynamic margin")."""

    underlying: Identifier
    sample_seconds: int = Field(strict=True, ge=SAMPLE_SECONDS_MIN, le=SAMPLE_SECONDS_MAX)
    lambda_: WireDecimal = Field(alias="lambda")  # the EWMA decay; "lambda" is a Python keyword
    initial_volatility: WireDecimal
    reference_volatility: WireDecimal
    multiplier_floor: WireDecimal
    multiplier_cap: WireDecimal
    release_buffer: WireDecimal

    @model_validator(mode="after")
    def _ranges(self) -> DynamicMarginSpec:
        name = f"dynamic_margin {self.underlying}"
        if not (ZERO < self.lambda_ < ONE):
            raise ValueError(f"{name}: lambda must be in (0, 1), got {self.lambda_}")
        if self.initial_volatility <= ZERO or self.reference_volatility <= ZERO:
            raise ValueError(f"{name}: initial_volatility and reference_volatility must be positive")
        if not (ZERO < self.multiplier_floor <= self.multiplier_cap):
            raise ValueError(f"{name}: needs 0 < multiplier_floor <= multiplier_cap")
        if not (ZERO <= self.release_buffer <= ONE):
            raise ValueError(f"{name}: release_buffer must be in [0, 1], got {self.release_buffer}")
        return self


class AdlPolicy(_Document):
    """Auto-deleveraging on or off (CONTRACT v2)."""

    enabled: StrictBool


class RiskParameters(_Document):
    OMITTED_UNLESS_GIVEN: ClassVar[frozenset[str]] = frozenset(
        {"interest_rate", "option_margin", "portfolio_margin", "dynamic_margin", "adl"}
    )

    version: Identifier
    valuation_asset: Identifier
    instruments: tuple[InstrumentSpec, ...] = Field(min_length=1)
    assets: tuple[AssetSpec, ...] = Field(min_length=1)
    margin_call: MarginCallPolicy
    liquidation: LiquidationPolicy
    # r of Black-76 (CONTRACT v2), continuously compounded per year.
    interest_rate: WireDecimal = ZERO
    option_margin: tuple[OptionMarginRates, ...] = ()
    portfolio_margin: tuple[PortfolioMarginSpec, ...] = ()
    dynamic_margin: tuple[DynamicMarginSpec, ...] = ()
    adl: AdlPolicy | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RiskParameters:
        symbols = [i.symbol for i in self.instruments]
        assets = [a.asset for a in self.assets]
        if len(set(symbols)) != len(symbols):
            raise ValueError("instrument symbols must be unique")
        if len(set(assets)) != len(assets):
            raise ValueError("asset names must be unique")
        if self.valuation_asset not in assets:
            raise ValueError(f"valuation_asset {self.valuation_asset} must be listed in assets")
        overlap = set(symbols) & set(assets)
        if overlap:
            raise ValueError(f"a symbol cannot be both an instrument and an asset: {sorted(overlap)}")
        for spec in self.instruments:
            if spec.settlement_asset not in assets:
                raise ValueError(f"{spec.symbol}: settlement_asset {spec.settlement_asset} is not listed")
        if self.liquidation.target_ratio >= ONE:
            raise ValueError("liquidation.target_ratio must be below 1")
        if not (-ONE < self.interest_rate < ONE):
            raise ValueError(f"interest_rate must be in (-1, 1), got {self.interest_rate}")
        self._underlyings_are_marked(set(symbols), set(assets))
        return self

    def _underlyings_are_marked(self, symbols: set[str], assets: set[str]) -> None:
        """Every underlying a document names is a symbol with marks: a listed instrument or a
        listed collateral asset (CONTRACT v2); an option's is not itself an option."""
        marked = symbols | assets
        options = {spec.symbol for spec in self.instruments if spec.kind == "option"}
        for spec in self.instruments:
            if spec.underlying is None:
                continue
            if spec.underlying not in marked:
                raise ValueError(
                    f"{spec.symbol}: underlying {spec.underlying} is neither a listed instrument nor a listed asset"
                )
            if spec.kind == "option" and spec.underlying in options:
                raise ValueError(f"{spec.symbol}: an option's underlying cannot be an option ({spec.underlying})")
        blocks: tuple[tuple[str, tuple[OptionMarginRates, ...] | tuple[PortfolioMarginSpec, ...]
                            | tuple[DynamicMarginSpec, ...]], ...] = (
            ("option_margin", self.option_margin),
            ("portfolio_margin", self.portfolio_margin),
            ("dynamic_margin", self.dynamic_margin),
        )
        for block, entries in blocks:
            named = [entry.underlying for entry in entries]
            repeated = sorted(name for name, count in Counter(named).items() if count > 1)
            if repeated:
                raise ValueError(f"{block}: one entry per underlying; {', '.join(repeated)} repeated")
            unknown = sorted(set(named) - marked)
            if unknown:
                raise ValueError(
                    f"{block}: underlying {', '.join(unknown)} is neither a listed instrument nor a listed asset"
                )
        rated = {entry.underlying for entry in self.option_margin}
        unrated = sorted(
            {spec.underlying_symbol for spec in self.instruments if spec.kind == "option"} - rated
        )
        if unrated:
            raise ValueError(
                f"option_margin has no rates for the underlying {', '.join(unrated)} of listed options: "
                "add an entry per option underlying"
            )

    @cached_property
    def instruments_by_symbol(self) -> dict[str, InstrumentSpec]:
        return {spec.symbol: spec for spec in self.instruments}

    @cached_property
    def assets_by_name(self) -> dict[str, AssetSpec]:
        return {spec.asset: spec for spec in self.assets}

    def instrument(self, symbol: str) -> InstrumentSpec | None:
        return self.instruments_by_symbol.get(symbol)

    def asset(self, name: str) -> AssetSpec | None:
        return self.assets_by_name.get(name)

    def knows_symbol(self, symbol: str) -> bool:
        return symbol in self.instruments_by_symbol or symbol in self.assets_by_name

    @cached_property
    def option_margin_by_underlying(self) -> dict[str, OptionMarginRates]:
        return {entry.underlying: entry for entry in self.option_margin}

    def option_margin_rates(self, underlying: str) -> OptionMarginRates | None:
        return self.option_margin_by_underlying.get(underlying)

    @cached_property
    def portfolio_margin_by_underlying(self) -> dict[str, PortfolioMarginSpec]:
        return {entry.underlying: entry for entry in self.portfolio_margin}

    def portfolio_margin_spec(self, underlying: str) -> PortfolioMarginSpec | None:
        """The scenario grid of ``underlying`` (None: the document gives it none)."""
        return self.portfolio_margin_by_underlying.get(underlying)

    @cached_property
    def dynamic_margin_by_underlying(self) -> dict[str, DynamicMarginSpec]:
        return {entry.underlying: entry for entry in self.dynamic_margin}

    def dynamic_margin_spec(self, underlying: str) -> DynamicMarginSpec | None:
        """The dynamic margin block of ``underlying`` (None: its rates are not scaled)."""
        return self.dynamic_margin_by_underlying.get(underlying)

    @cached_property
    def instruments_by_underlying(self) -> dict[str, tuple[InstrumentSpec, ...]]:
        """The instruments that move with each underlying (``underlying_symbol``), in document
        order: the instruments a portfolio grid and a dynamic multiplier take together."""
        grouped: dict[str, list[InstrumentSpec]] = {}
        for spec in self.instruments:
            grouped.setdefault(spec.underlying_symbol, []).append(spec)
        return {underlying: tuple(specs) for underlying, specs in grouped.items()}

    def instruments_on(self, underlying: str) -> tuple[InstrumentSpec, ...]:
        return self.instruments_by_underlying.get(underlying, ())

    def document(self) -> dict[str, Any]:
        """The document as JSON-ready data with decimals as strings, as it travels and is logged."""
        data: dict[str, Any] = json.loads(self.model_dump_json(by_alias=True))
        return data


def booking_report(parameters: RiskParameters) -> list[str]:
    """One line per instrument kind the document lists: how many, and whether this ledger version
    books their fills (``BOOKED_KINDS``) or will dead-letter them, for ``params apply --check``."""
    counts = Counter(spec.kind for spec in parameters.instruments)
    lines = []
    for kind in ("perpetual", "future", "option", "spot"):
        count = counts.get(kind, 0)
        if not count:
            continue
        noun = "instrument" if count == 1 else "instruments"
        if kind in BOOKED_KINDS:
            lines.append(f"{kind}: {count} {noun}, booked by this ledger version")
        else:
            lines.append(
                f"{kind}: {count} {noun} parsed; this ledger version does not book {kind} fills yet "
                "(they would be dead-lettered)"
            )
    return lines


def load_parameters(document: dict[str, Any]) -> RiskParameters:
    return RiskParameters.model_validate(document)


# The two bundled documents. Every decision payload carries ``parameters_version``, so a version
# names one document for good: a changed bundled document takes a new version, and the one logs
# started under stays, frozen, as the log-start document.
BUNDLED_FILE: Final = "default_parameters.json"
LOG_START_FILE: Final = "log_start_parameters.json"
LOG_START_VERSION: Final = "bundled-2026-11-23.1"


def _packaged_document(name: str) -> dict[str, Any]:
    text = resources.files("clearing.domain").joinpath(name).read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def bundled_document() -> dict[str, Any]:
    """The current bundled defaults (with the option chain): what a new ledger opens an empty log
    with, the calculator's parameters when it is given none, the domain tests' usual document."""
    return _packaged_document(BUNDLED_FILE)


def log_start_document() -> dict[str, Any]:
    """The document in force at the start of every log, until its first ``risk_parameters`` event:
    the bundled defaults of contract v1 (``LOG_START_VERSION``), exactly as the ledger had them
    when it did not log them. Never edit it: snapshots and decisions of existing logs hold it."""
    return _packaged_document(LOG_START_FILE)


_LOADED: dict[str, RiskParameters] = {}


def _loaded(name: str, read: Callable[[], dict[str, Any]]) -> RiskParameters:
    # Read once, then shared: the value is immutable.
    found = _LOADED.get(name)
    if found is None:
        found = _LOADED[name] = load_parameters(read())
    return found


def bundled_parameters() -> RiskParameters:
    """``bundled_document`` validated (read once)."""
    return _loaded(BUNDLED_FILE, bundled_document)


def log_start_parameters() -> RiskParameters:
    """``log_start_document`` validated (read once): a new ``LedgerState``'s parameters, those of
    every replay before the log's first ``risk_parameters`` event."""
    return _loaded(LOG_START_FILE, log_start_document)
