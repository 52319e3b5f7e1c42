"""The risk parameter document (CONTRACT.md) as a validated, immutable value.

A document is in force from its place in the log until the next one; the bundled defaults are in
force before the first ``risk_parameters`` event. Tier tables are compiled once per document,
with the maintenance and initial amounts that make each requirement continuous across tiers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from clearing.domain.numbers import ONE, ZERO, parse_decimal

IDENTIFIER_CHARS_MAX = 128


def _wire(value: object, info: ValidationInfo) -> Decimal:
    return parse_decimal(value, info.field_name or "value")


WireDecimal = Annotated[Decimal, BeforeValidator(_wire)]
Identifier = Annotated[str, Field(min_length=1, max_length=IDENTIFIER_CHARS_MAX)]
InstrumentKind = Literal["perpetual", "future", "option", "spot"]


class _Document(BaseModel):
    # Later contract versions add fields (options, futures, portfolio margin): keep them, so a
    # document read back from the log is the document that was applied.
    model_config = ConfigDict(frozen=True, extra="allow")


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
    symbol: Identifier
    kind: InstrumentKind
    settlement_asset: Identifier
    contract_size: WireDecimal = Decimal(1)
    tiers: tuple[Tier, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _tiers_ascend(self) -> InstrumentSpec:
        if self.contract_size <= 0:
            raise ValueError(f"{self.symbol}: contract_size must be positive")
        caps = [tier.notional_cap for tier in self.tiers]
        if caps[-1] is not None:
            raise ValueError(f"{self.symbol}: the last tier must have notional_cap null")
        bounded = [cap for cap in caps[:-1] if cap is not None]
        if len(bounded) != len(caps) - 1 or bounded != sorted(set(bounded)):
            raise ValueError(f"{self.symbol}: tier caps must be strictly ascending, only the last null")
        return self

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


class RiskParameters(_Document):
    version: Identifier
    valuation_asset: Identifier
    instruments: tuple[InstrumentSpec, ...] = Field(min_length=1)
    assets: tuple[AssetSpec, ...] = Field(min_length=1)
    margin_call: MarginCallPolicy
    liquidation: LiquidationPolicy

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
        return self

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

    def document(self) -> dict[str, Any]:
        """The document as JSON-ready data with decimals as strings, as it travels and is logged."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        return data


def load_parameters(document: dict[str, Any]) -> RiskParameters:
    return RiskParameters.model_validate(document)


def bundled_document() -> dict[str, Any]:
    text = resources.files("clearing.domain").joinpath("default_parameters.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


_BUNDLED: list[RiskParameters] = []


def bundled_parameters() -> RiskParameters:
    """The parameters in force until the first ``risk_parameters`` event (read once, then shared:
    the value is immutable)."""
    if not _BUNDLED:
        _BUNDLED.append(load_parameters(bundled_document()))
    return _BUNDLED[0]
