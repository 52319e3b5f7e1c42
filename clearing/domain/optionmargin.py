"""Standard option margin (CONTRACT v2), per contract and per position, as pure functions.

Per contract of a short option, with U = mark of the underlying, K = strike, mark = the option's
mark, and the ``option_margin`` rates of the underlying:

    short call: OTM = max(K - U, 0)
                IM  = max(initial_rate x U - OTM, minimum_rate x U) + mark
                MM  = maintenance_rate x U + mark
    short put:  OTM = max(U - K, 0)
                MM  = max(maintenance_rate x U, maintenance_rate x mark) + mark
                IM  = max(max(initial_rate x U - OTM, minimum_rate x U) + mark, MM)
    long:       IM = MM = 0 (its premium is paid; its value counts in equity)

A position's requirement is the per-contract figure x |quantity| x contract_size, rounded up to
the money quantum like every requirement (``numbers.round_requirement``): against the account.
Units: U, K and the marks are prices per unit of the underlying in the settlement asset, so the
requirements are in the option's settlement asset.

Every figure is a sum or product of wire values, exact under the ledger context
(``numbers.exact``); the only rounding is the final one. The per-contract result keeps each term
of each max, so an explanation can show the arithmetic it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from clearing.domain.numbers import ZERO, exact, round_requirement
from clearing.domain.params import InstrumentSpec, OptionMarginRates, OptionType


@dataclass(frozen=True, slots=True)
class ContractMargin:
    """Initial and maintenance margin of one contract (unrounded, exact), with the terms they
    were the max of: ``out_of_the_money``, ``rate_term`` (initial_rate x U - OTM), ``floor_term``
    (minimum_rate x U), ``maintenance_underlying_term`` (maintenance_rate x U) and, for a put,
    ``maintenance_mark_term`` (maintenance_rate x mark). All zero for a long."""

    initial: Decimal
    maintenance: Decimal
    out_of_the_money: Decimal = ZERO
    rate_term: Decimal = ZERO
    floor_term: Decimal = ZERO
    maintenance_underlying_term: Decimal = ZERO
    maintenance_mark_term: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PositionMargin:
    """A position's requirements, rounded up to the money quantum, and the per-contract figures
    and the size (|quantity| x contract_size) they were multiplied by."""

    initial: Decimal
    maintenance: Decimal
    contracts: Decimal
    per_contract: ContractMargin


LONG: Final = ContractMargin(initial=ZERO, maintenance=ZERO)


@exact
def short_call(underlying: Decimal, strike: Decimal, mark: Decimal, rates: OptionMarginRates) -> ContractMargin:
    """Per-contract margin of a short call (module docstring)."""
    out_of_the_money = max(strike - underlying, ZERO)
    rate_term = rates.initial_rate * underlying - out_of_the_money
    floor_term = rates.minimum_rate * underlying
    maintenance_underlying_term = rates.maintenance_rate * underlying
    return ContractMargin(
        initial=max(rate_term, floor_term) + mark,
        maintenance=maintenance_underlying_term + mark,
        out_of_the_money=out_of_the_money,
        rate_term=rate_term,
        floor_term=floor_term,
        maintenance_underlying_term=maintenance_underlying_term,
    )


@exact
def short_put(underlying: Decimal, strike: Decimal, mark: Decimal, rates: OptionMarginRates) -> ContractMargin:
    """Per-contract margin of a short put (module docstring). The maintenance rule's second term
    (maintenance_rate x mark) takes over when the put's mark exceeds the underlying's: deep in the
    money, or an underlying near zero."""
    out_of_the_money = max(underlying - strike, ZERO)
    rate_term = rates.initial_rate * underlying - out_of_the_money
    floor_term = rates.minimum_rate * underlying
    maintenance_underlying_term = rates.maintenance_rate * underlying
    maintenance_mark_term = rates.maintenance_rate * mark
    maintenance = max(maintenance_underlying_term, maintenance_mark_term) + mark
    return ContractMargin(
        initial=max(max(rate_term, floor_term) + mark, maintenance),
        maintenance=maintenance,
        out_of_the_money=out_of_the_money,
        rate_term=rate_term,
        floor_term=floor_term,
        maintenance_underlying_term=maintenance_underlying_term,
        maintenance_mark_term=maintenance_mark_term,
    )


def per_contract(
    option_type: OptionType,
    quantity: Decimal,
    underlying: Decimal,
    strike: Decimal,
    mark: Decimal,
    rates: OptionMarginRates,
) -> ContractMargin:
    """The per-contract margin of a position of signed ``quantity``: a short's by its type, a
    long's (or a flat position's) zero."""
    if quantity >= ZERO:
        return LONG
    if option_type == "call":
        return short_call(underlying, strike, mark, rates)
    return short_put(underlying, strike, mark, rates)


@exact
def position_margin(
    spec: InstrumentSpec,
    quantity: Decimal,
    underlying: Decimal,
    mark: Decimal,
    rates: OptionMarginRates,
) -> PositionMargin:
    """Requirements of a position of signed ``quantity`` in the option ``spec``: per contract x
    |quantity| x contract_size, each rounded up (``round_requirement``: rounding must never let an
    account look safer than it is)."""
    if spec.option_type is None or spec.strike is None:
        raise ValueError(f"{spec.symbol} is a {spec.kind}, not an option: standard option margin does not apply")
    contract = per_contract(spec.option_type, quantity, underlying, spec.strike, mark, rates)
    contracts = abs(quantity) * spec.contract_size
    return PositionMargin(
        initial=round_requirement(contract.initial * contracts),
        maintenance=round_requirement(contract.maintenance * contracts),
        contracts=contracts,
        per_contract=contract,
    )
