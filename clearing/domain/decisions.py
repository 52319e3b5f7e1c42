"""Decision events as typed values: one frozen class per decision, its payload spelt once.

A decision's fields are declared once, in the order its payload has them in the log; ``payload``
writes them in wire form (decimals ``numbers.to_wire``, times ``inputs.format_time``, levels their
text) and ``from_payload`` reads them back. The lifecycle builds these values; the log keeps
``payload()``; ``booking`` applies ``from_payload(payload())``, the log's own form, so a live
ledger and a replay of its log apply the same digits (a decimal's exponent included).

Every payload starts with ``account_id`` and ends with ``parameters_version`` (the parameters in
force when it was decided); ``omitted when None`` fields (``metadata={OMIT_NONE: True}``) are
left out of the payload instead of written as null, as the ledger has always written them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, TypeVar

from clearing.domain import events as ev
from clearing.domain.inputs import format_time
from clearing.domain.levels import Level
from clearing.domain.numbers import parse_decimal, to_wire

OMIT_NONE: Final = "omit_none"

_Codec = tuple[Callable[[Any], Any], Callable[[Any, str], Any]]


def _same(value: Any) -> Any:
    return value


def _read_same(value: Any, _name: str) -> Any:
    return value


def _optional(codec: _Codec) -> _Codec:
    write, read = codec
    return (
        lambda value: None if value is None else write(value),
        lambda value, name: None if value is None else read(value, name),
    )


@dataclass(frozen=True, slots=True)
class WorstCell:
    """The worst cell of one underlying's grid in a scope the portfolio model margins: what its
    decisions name (CONTRACT v2). ``move`` and ``volatility`` (up, unchanged, down) as the
    calculator's ``worst_cell`` spells them (``scenarios.cell_wire``); ``extreme`` always written,
    true for an extreme cell (its loss counted at the extreme weight)."""

    underlying: str
    move: Decimal
    volatility: str
    extreme: bool


def _write_worst_cells(cells: tuple[WorstCell, ...]) -> list[dict[str, Any]]:
    return [
        {"underlying": c.underlying, "move": to_wire(c.move), "volatility": c.volatility, "extreme": c.extreme}
        for c in cells
    ]


def _read_worst_cells(cells: list[dict[str, Any]], name: str) -> tuple[WorstCell, ...]:
    return tuple(
        WorstCell(c["underlying"], parse_decimal(c["move"], f"{name}.move"), c["volatility"], bool(c["extreme"]))
        for c in cells
    )


_DECIMAL: Final[_Codec] = (to_wire, parse_decimal)
# A figure a decision carries with every digit it was computed with, beyond what an input's
# number may hold (``parse_decimal``'s limits): a log return under the pricing context.
WideDecimal = Decimal
_WIDE: Final[_Codec] = (to_wire, lambda value, _name: Decimal(value))
_TIME: Final[_Codec] = (format_time, lambda value, _name: datetime.fromisoformat(value))
_PLAIN: Final[_Codec] = (_same, _read_same)
# By the field's annotation (this module is written with ``from __future__ import annotations``).
_CODECS: Final[dict[str, _Codec]] = {
    "str": _PLAIN,
    "str | None": _PLAIN,
    "bool": _PLAIN,
    "Decimal": _DECIMAL,
    "Decimal | None": _optional(_DECIMAL),
    "WideDecimal | None": _optional(_WIDE),
    "datetime": _TIME,
    "int": (_same, lambda value, _name: int(value)),
    "datetime | None": _optional(_TIME),
    "Level": (lambda level: level.value, lambda value, _name: Level(value)),
    "tuple[str, ...] | None": _optional((list, lambda value, _name: tuple(value))),
    "tuple[WorstCell, ...] | None": _optional((_write_worst_cells, _read_worst_cells)),
    "dict[str, Decimal]": (
        lambda prices: {symbol: to_wire(price) for symbol, price in prices.items()},
        lambda prices, name: {symbol: parse_decimal(price, f"{name}.{symbol}") for symbol, price in prices.items()},
    ),
}

D = TypeVar("D", bound="Decision")


class Decision:
    """Base of the decision classes: ``TYPE`` is the event type in the log; ``WIRE`` the payload's
    fields in order, with their codecs (set by ``@decision``)."""

    TYPE: ClassVar[str]
    WIRE: ClassVar[tuple[tuple[str, bool, _Codec], ...]]
    account_id: str

    def payload(self) -> dict[str, Any]:
        """The wire form the log holds."""
        out: dict[str, Any] = {}
        for name, omit_none, (write, _read) in self.WIRE:
            value = getattr(self, name)
            if value is None and omit_none:
                continue
            out[name] = write(value)
        return out

    @classmethod
    def from_payload(cls: type[D], payload: dict[str, Any]) -> D:
        """The decision a logged payload holds."""
        values = {name: read(payload.get(name), name) for name, _omit, (_write, read) in cls.WIRE}
        return cls(**values)


DECISIONS: Final[dict[str, type[Decision]]] = {}


def decision(event_type: str) -> Callable[[type[D]], type[D]]:
    """Register a frozen dataclass as the decision ``event_type`` and derive its wire codecs."""

    def register(cls: type[D]) -> type[D]:
        cls.TYPE = event_type
        cls.WIRE = tuple(
            (f.name, bool(f.metadata.get(OMIT_NONE)), _CODECS[str(f.type)])
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]  # a dataclass, by the decorator below it
        )
        DECISIONS[event_type] = cls
        return cls

    return register


def decision_of(event_type: str, payload: dict[str, Any]) -> Decision | None:
    """The typed decision of a logged event; None when ``event_type`` is not a decision."""
    cls = DECISIONS.get(event_type)
    return None if cls is None else cls.from_payload(payload)


# ---------------------------------------------------------------------------------------------
# requests


@decision(ev.WITHDRAWAL_APPROVED)
@dataclass(frozen=True, slots=True)
class WithdrawalApproved(Decision):
    account_id: str
    transfer_id: str
    asset: str
    amount: Decimal
    parameters_version: str


@decision(ev.WITHDRAWAL_REJECTED)
@dataclass(frozen=True, slots=True)
class WithdrawalRejected(Decision):
    account_id: str
    transfer_id: str
    asset: str
    amount: Decimal
    reason: str
    parameters_version: str


@decision(ev.ISOLATED_MARGIN_TRANSFERRED)
@dataclass(frozen=True, slots=True)
class IsolatedMarginTransferred(Decision):
    account_id: str
    transfer_id: str
    instrument: str
    asset: str
    amount: Decimal  # into the isolated position; negative: back to the wallet
    parameters_version: str


@decision(ev.ISOLATED_MARGIN_TRANSFER_REJECTED)
@dataclass(frozen=True, slots=True)
class IsolatedMarginTransferRejected(Decision):
    account_id: str
    transfer_id: str
    instrument: str
    asset: str
    amount: Decimal
    reason: str
    parameters_version: str


# ---------------------------------------------------------------------------------------------
# the margin-call lifecycle


@decision(ev.MARGIN_CALL_ISSUED)
@dataclass(frozen=True, slots=True)
class MarginCallIssued(Decision):
    account_id: str
    margin_call_id: str
    scope: str
    level: Level
    equity: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    margin_ratio: Decimal | None  # None: infinite, or no requirement
    shortfall: Decimal
    deadline: datetime | None  # maintenance level only
    marks: dict[str, Decimal]  # the price each position was valued at (and an option's underlying's mark)
    # The worst cell of each underlying of a scope the portfolio model margins; omitted otherwise.
    worst_cells: tuple[WorstCell, ...] | None = field(metadata={OMIT_NONE: True})
    parameters_version: str


@decision(ev.MARGIN_CALL_ESCALATED)
@dataclass(frozen=True, slots=True)
class MarginCallEscalated(Decision):
    account_id: str
    margin_call_id: str
    scope: str
    level: Level
    equity: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    margin_ratio: Decimal | None
    shortfall: Decimal
    deadline: datetime | None
    marks: dict[str, Decimal]
    # The worst cell of each underlying of a scope the portfolio model margins; omitted otherwise.
    worst_cells: tuple[WorstCell, ...] | None = field(metadata={OMIT_NONE: True})
    parameters_version: str


@decision(ev.MARGIN_CALL_RESOLVED)
@dataclass(frozen=True, slots=True)
class MarginCallResolved(Decision):
    account_id: str
    margin_call_id: str
    scope: str
    level: Level  # the level the call was at when it resolved
    equity: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    margin_ratio: Decimal | None
    shortfall: Decimal
    deadline: datetime | None
    marks: dict[str, Decimal]
    resolution: str
    # Orders cancelled with the call (a call resolved while liquidating); omitted otherwise.
    cancelled_orders: tuple[str, ...] | None = field(metadata={OMIT_NONE: True})
    # The worst cell of each underlying of a scope the portfolio model margins; omitted otherwise.
    worst_cells: tuple[WorstCell, ...] | None = field(metadata={OMIT_NONE: True})
    parameters_version: str


MarginCall = MarginCallIssued | MarginCallEscalated


@decision(ev.LIQUIDATION_ORDER_ISSUED)
@dataclass(frozen=True, slots=True)
class LiquidationOrderIssued(Decision):
    account_id: str
    liquidation_id: str
    margin_call_id: str
    scope: str
    instrument: str
    margin_mode: str
    side: str  # "sell" closes a long, "buy" a short
    quantity: Decimal
    position_quantity: Decimal  # signed, before the order
    bankruptcy_price: Decimal
    mark: Decimal  # the price the position was valued at
    equity: Decimal  # of the scope before this order (after the earlier orders of the call)
    maintenance_margin: Decimal
    target_ratio: Decimal
    full: bool  # the whole position
    # The worst cells of the scope the order was planned on (portfolio model); omitted otherwise.
    worst_cells: tuple[WorstCell, ...] | None = field(metadata={OMIT_NONE: True})
    parameters_version: str


@decision(ev.INSURANCE_FUND_DRAWN)
@dataclass(frozen=True, slots=True)
class InsuranceFundDrawn(Decision):
    account_id: str
    margin_call_id: str | None  # None: a loss realised without a margin call open
    scope: str
    asset: str
    amount: Decimal
    deficit: Decimal
    fund_before: Decimal
    beyond_fund: Decimal  # drawn beyond what the fund held (isolated scopes)
    parameters_version: str


@decision(ev.ACCOUNT_BANKRUPTED)
@dataclass(frozen=True, slots=True)
class AccountBankrupted(Decision):
    account_id: str
    margin_call_id: str | None
    scope: str
    asset: str
    deficit: Decimal  # what the fund could not cover: the account owes it
    equity: Decimal
    insurance_fund_drawn: Decimal
    parameters_version: str


# ---------------------------------------------------------------------------------------------
# auto-deleveraging (CONTRACT v2, ``adl``)


@decision(ev.LIQUIDATION_ORDER_CANCELLED)
@dataclass(frozen=True, slots=True)
class LiquidationOrderCancelled(Decision):
    """An open liquidation order of a scope the ledger auto-deleverages: the exchange is told to
    cancel it. An execution of it that arrives later is still a fact, booked as any other."""

    account_id: str
    liquidation_id: str
    margin_call_id: str | None
    scope: str
    instrument: str
    remaining: Decimal  # what was left of the order when it was cancelled
    reason: str
    parameters_version: str


@decision(ev.POSITION_AUTO_DELEVERAGED)
@dataclass(frozen=True, slots=True)
class PositionAutoDeleveraged(Decision):
    """One counterparty position taken by auto-deleveraging: ``account_id`` (the counterparty)
    is booked ``side`` ``quantity`` at ``price`` and the bankrupt scope the opposite, both by the
    ledger, no fee. ``price`` is the bankrupt position's bankruptcy price; ``rank``, ``pnl`` and
    ``leverage`` are the counterparty position's figures the ranking used (``adl``), rounded for
    the wire; a None ``leverage`` (and, with a profit, ``rank``) is infinite: the counterparty's
    scope equity is exactly zero."""

    account_id: str
    adl_id: str
    instrument: str
    margin_mode: str  # of the counterparty position
    side: str  # what the counterparty was booked: a short taken against a bankrupt long buys
    quantity: Decimal
    price: Decimal
    rank: Decimal | None
    pnl: Decimal
    leverage: Decimal | None
    position_quantity: Decimal  # the counterparty position, signed, before this step
    entry_price: Decimal
    mark: Decimal
    bankrupt_account_id: str
    bankrupt_scope: str
    bankrupt_margin_mode: str
    bankrupt_quantity: Decimal  # the bankrupt position, signed, before this step
    bankrupt_equity: Decimal  # of the bankrupt scope before this step, at the marks
    insurance_fund: Decimal  # the fund's balance in the valuation asset (it could not cover the deficit)
    margin_call_id: str | None
    parameters_version: str


# ---------------------------------------------------------------------------------------------
# margin models and dynamic margin (CONTRACT v2)


@decision(ev.MARGIN_MODEL_CHANGED)
@dataclass(frozen=True, slots=True)
class MarginModelChanged(Decision):
    """A ``margin_model`` request approved: the account's cross scope is margined by ``model``
    from this event on. ``equity`` and ``initial_margin`` are the cross scope's under ``model``,
    at the marks in force, which the approval checked (equity >= initial margin)."""

    account_id: str
    request_id: str
    model: str
    previous_model: str
    equity: Decimal
    initial_margin: Decimal
    parameters_version: str


@decision(ev.MARGIN_MODEL_REJECTED)
@dataclass(frozen=True, slots=True)
class MarginModelRejected(Decision):
    account_id: str
    request_id: str
    model: str
    reason: str
    parameters_version: str


@decision(ev.MARGIN_RATES_CHANGED)
@dataclass(frozen=True, slots=True)
class MarginRatesChanged(Decision):
    """One dynamic-margin sample of an underlying (``dynamicmargin.RatesChange``; its fields as
    ``dynamicmargin.change_payload`` names them), taken at the boundary ``sample_at``. Every
    sample is one, whether or not the multiplier moved. ``account_id`` is
    ``events.MARGIN_RATES_ACCOUNT``."""

    account_id: str
    underlying: str
    sample_at: datetime
    sample_price: Decimal
    log_return: WideDecimal | None  # None at the first sample (t = 0); every digit of the ln
    volatility: Decimal
    raw_multiplier: Decimal
    multiplier: Decimal
    previous_multiplier: Decimal
    index: int
    parameters_version: str
