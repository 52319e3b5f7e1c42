"""The input messages of CONTRACT.md as the fold reads them: immutable values of compiled classes.

``messages`` decodes and validates a message (pydantic schemas, the errors a person can act on)
and builds one of these; a replay builds them from logged payloads with ``from_wire`` (validated
on their way in, and the hash chain says they were not changed since). They are compiled with
the fold (clearing/domain/native.py) because the fold reads their fields on every event: a field
of a pydantic model costs a read through its ``__getattr__`` hook, 48 ns against 7 ns here, and
building one from a logged payload (``events.trusted_message``) took 2.8 us against 1.0 us here.

Every field is ``Final``: assigning one raises ``AttributeError``. ``FIELDS`` lists a class's
fields in the contract's order, ``type`` first, for ``wire()``, equality and ``repr``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, Self

from clearing.domain.numbers import ZERO, to_wire

_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a Z: the one spelling of time in the log, which is
    ``value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")``. ``isoformat`` spells a UTC time
    the same way, with "+00:00" for the Z, in a third less time (the writer spells several
    times per event); strftime writes years before 1000 without the leading zeros, so those
    keep it."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if value.year < 1000:
        return value.strftime(_TIME_FORMAT)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


# Decimals of the wire texts met last, by text, for the fields that repeat: a market trades at a
# few thousand prices and sizes at a time (bench/replay.py's log: 928,000 fills at 28,918 prices
# and 9,398 quantities). Its verify replay went from 97,619 to 95,208 instructions an event with
# the cache (callgrind, 28,000 events from the snapshot at 500,106; 99,919 to 97,387 over 58,000 from
# 300,060): a look-up instead of building a decimal, and no decimal to free.
_WIRE_DECIMALS: Final[dict[str | int, Decimal]] = {}
WIRE_DECIMALS_MAX: Final = 65_536  # then the cache starts again, empty


def wire_decimal(value: str | int) -> Decimal:
    """``Decimal(value)`` for a logged wire number, the same object for the same text while the
    cache holds it: a decimal is immutable, and one text is one value with one exponent."""
    found = _WIRE_DECIMALS.get(value)
    if found is None:
        if len(_WIRE_DECIMALS) >= WIRE_DECIMALS_MAX:
            _WIRE_DECIMALS.clear()
        found = _WIRE_DECIMALS[value] = Decimal(value)
    return found


# The time read last, as (text, time): a trade's two fills come one after the other with one
# time, so the second finds the first's (a datetime is immutable).
_LAST_TIME: Final[list[tuple[str, datetime]]] = [("", datetime.min)]


def _time(value: str) -> datetime:
    last = _LAST_TIME[0]
    if last[0] == value:
        return last[1]
    found = datetime.fromisoformat(value)
    _LAST_TIME[0] = (value, found)
    return found


class Message:
    """What every input message has: its fields, in order, and their wire form."""

    FIELDS: ClassVar[tuple[str, ...]] = ()

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def replace(self, **changes: Any) -> Self:
        """A copy with the fields named in ``changes`` changed (not checked: the message it makes
        is as valid as what the caller gives it)."""
        values = {name: getattr(self, name) for name in self.FIELDS if name != "type"}
        values.update(changes)
        constructor: Any = type(self)
        copy: Self = constructor(**values)
        return copy

    def wire(self) -> dict[str, Any]:
        """The normalised payload: decimals as canonical strings, times in UTC with a Z, fields
        that are None left out."""
        out: dict[str, Any] = {}
        for name in self.FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, Decimal):
                out[name] = to_wire(value)
            elif isinstance(value, datetime):
                out[name] = format_time(value)
            else:
                out[name] = value
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Message) and other.values() == self.values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({fields})"


class Fill(Message):
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type", "fill_id", "trade_id", "account_id", "instrument", "side", "quantity", "price", "fee", "fee_asset",
        "liquidity", "margin_mode", "occurred_at",
    )  # fmt: skip

    def __init__(
        self,
        *,
        fill_id: str,
        trade_id: str,
        account_id: str,
        instrument: str,
        side: str,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal = ZERO,
        fee_asset: str | None = None,
        liquidity: str | None = None,
        margin_mode: str = "cross",
        occurred_at: datetime,
    ) -> None:
        self.type: Final = "fill"
        self.fill_id: Final = fill_id
        self.trade_id: Final = trade_id
        self.account_id: Final = account_id
        self.instrument: Final = instrument
        self.side: Final = side
        self.quantity: Final = quantity
        self.price: Final = price
        self.fee: Final = fee
        self.fee_asset: Final = fee_asset
        self.liquidity: Final = liquidity
        self.margin_mode: Final = margin_mode
        self.occurred_at: Final = occurred_at


def fill_from_wire(payload: dict[str, Any]) -> Fill:
    return fill_from_fields(
        payload["fill_id"],
        payload["trade_id"],
        payload["account_id"],
        payload["instrument"],
        payload["side"],
        payload["quantity"],
        payload["price"],
        payload.get("fee"),
        payload.get("fee_asset"),
        payload.get("liquidity"),
        payload.get("margin_mode", "cross"),
        payload["occurred_at"],
    )


def fill_from_fields(
    fill_id: str,
    trade_id: str,
    account_id: str,
    instrument: str,
    side: str,
    quantity: str | int,
    price: str | int,
    fee: str | int | None,
    fee_asset: str | None,
    liquidity: str | None,
    margin_mode: str,
    occurred_at: str,
) -> Fill:
    """A fill from its payload's values in wire form, however they were read: from the payload
    as a dict (``fill_from_wire``) or straight from its text (``logreplay.decode_fill``)."""
    return Fill(
        fill_id=fill_id,
        trade_id=trade_id,
        account_id=account_id,
        instrument=instrument,
        side=side,
        quantity=wire_decimal(quantity),
        price=wire_decimal(price),
        fee=ZERO if fee is None else Decimal(fee),
        fee_asset=fee_asset,
        liquidity=liquidity,
        margin_mode=margin_mode,
        occurred_at=_time(occurred_at),
    )


class Deposit(Message):
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "transfer_id", "account_id", "asset", "amount", "occurred_at")

    def __init__(
        self, *, transfer_id: str, account_id: str, asset: str, amount: Decimal, occurred_at: datetime
    ) -> None:
        self.type: Final = "deposit"
        self.transfer_id: Final = transfer_id
        self.account_id: Final = account_id
        self.asset: Final = asset
        self.amount: Final = amount
        self.occurred_at: Final = occurred_at


def deposit_from_wire(payload: dict[str, Any]) -> Deposit:
    return Deposit(
        transfer_id=payload["transfer_id"],
        account_id=payload["account_id"],
        asset=payload["asset"],
        amount=Decimal(payload["amount"]),
        occurred_at=_time(payload["occurred_at"]),
    )


class Withdrawal(Message):
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "transfer_id", "account_id", "asset", "amount", "occurred_at")

    def __init__(
        self, *, transfer_id: str, account_id: str, asset: str, amount: Decimal, occurred_at: datetime
    ) -> None:
        self.type: Final = "withdrawal"
        self.transfer_id: Final = transfer_id
        self.account_id: Final = account_id
        self.asset: Final = asset
        self.amount: Final = amount
        self.occurred_at: Final = occurred_at


def withdrawal_from_wire(payload: dict[str, Any]) -> Withdrawal:
    return Withdrawal(
        transfer_id=payload["transfer_id"],
        account_id=payload["account_id"],
        asset=payload["asset"],
        amount=Decimal(payload["amount"]),
        occurred_at=_time(payload["occurred_at"]),
    )


class IsolatedMarginTransfer(Message):
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "transfer_id", "account_id", "instrument", "amount", "occurred_at")

    def __init__(
        self, *, transfer_id: str, account_id: str, instrument: str, amount: Decimal, occurred_at: datetime
    ) -> None:
        self.type: Final = "isolated_margin"
        self.transfer_id: Final = transfer_id
        self.account_id: Final = account_id
        self.instrument: Final = instrument
        self.amount: Final = amount
        self.occurred_at: Final = occurred_at


def isolated_margin_transfer_from_wire(payload: dict[str, Any]) -> IsolatedMarginTransfer:
    return IsolatedMarginTransfer(
        transfer_id=payload["transfer_id"],
        account_id=payload["account_id"],
        instrument=payload["instrument"],
        amount=Decimal(payload["amount"]),
        occurred_at=_time(payload["occurred_at"]),
    )


class Mark(Message):
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "symbol", "price", "iv", "occurred_at")

    def __init__(self, *, symbol: str, price: Decimal, iv: Decimal | None = None, occurred_at: datetime) -> None:
        self.type: Final = "mark"
        self.symbol: Final = symbol
        self.price: Final = price
        self.iv: Final = iv
        self.occurred_at: Final = occurred_at


def mark_from_wire(payload: dict[str, Any]) -> Mark:
    return Mark(
        symbol=payload["symbol"],
        price=Decimal(payload["price"]),
        iv=_decimal(payload.get("iv")),
        occurred_at=_time(payload["occurred_at"]),
    )


class Funding(Message):
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "symbol", "rate", "occurred_at")

    def __init__(self, *, symbol: str, rate: Decimal, occurred_at: datetime) -> None:
        self.type: Final = "funding"
        self.symbol: Final = symbol
        self.rate: Final = rate
        self.occurred_at: Final = occurred_at


def funding_from_wire(payload: dict[str, Any]) -> Funding:
    return Funding(symbol=payload["symbol"], rate=Decimal(payload["rate"]), occurred_at=_time(payload["occurred_at"]))


class Settlement(Message):
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "symbol", "price", "occurred_at")

    def __init__(self, *, symbol: str, price: Decimal, occurred_at: datetime) -> None:
        self.type: Final = "settlement"
        self.symbol: Final = symbol
        self.price: Final = price
        self.occurred_at: Final = occurred_at


def settlement_from_wire(payload: dict[str, Any]) -> Settlement:
    return Settlement(
        symbol=payload["symbol"], price=Decimal(payload["price"]), occurred_at=_time(payload["occurred_at"])
    )


class LiquidationFill(Message):
    FIELDS: ClassVar[tuple[str, ...]] = (
        "type", "liquidation_id", "fill_id", "account_id", "instrument", "side", "quantity", "price", "occurred_at",
    )  # fmt: skip

    def __init__(
        self,
        *,
        liquidation_id: str,
        fill_id: str,
        account_id: str,
        instrument: str,
        side: str,
        quantity: Decimal,
        price: Decimal,
        occurred_at: datetime,
    ) -> None:
        self.type: Final = "liquidation_fill"
        self.liquidation_id: Final = liquidation_id
        self.fill_id: Final = fill_id
        self.account_id: Final = account_id
        self.instrument: Final = instrument
        self.side: Final = side
        self.quantity: Final = quantity
        self.price: Final = price
        self.occurred_at: Final = occurred_at


def liquidation_fill_from_wire(payload: dict[str, Any]) -> LiquidationFill:
    return LiquidationFill(
        liquidation_id=payload["liquidation_id"],
        fill_id=payload["fill_id"],
        account_id=payload["account_id"],
        instrument=payload["instrument"],
        side=payload["side"],
        quantity=wire_decimal(payload["quantity"]),
        price=wire_decimal(payload["price"]),
        occurred_at=_time(payload["occurred_at"]),
    )


class FillBust(Message):
    """A correction by the exchange (CONTRACT v2): the booked fill ``fill_id`` is reversed.

    ``fill`` is not a field of the message as sent: it is the booked fill the bust reverses, which
    the ledger finds in its log and attaches (``events.with_busted_fill``) before it admits the
    bust, and which the logged payload carries under ``"fill"``. So a replay reverses the fill
    from the bust's own payload, with no look-up of the log; the hash chain keeps both as booked.
    """

    FIELDS: ClassVar[tuple[str, ...]] = ("type", "bust_id", "fill_id", "account_id", "reason", "occurred_at")

    def __init__(
        self,
        *,
        bust_id: str,
        fill_id: str,
        account_id: str,
        reason: str,
        occurred_at: datetime,
        fill: Fill | None = None,
    ) -> None:
        self.type: Final = "fill_bust"
        self.bust_id: Final = bust_id
        self.fill_id: Final = fill_id
        self.account_id: Final = account_id
        self.reason: Final = reason
        self.occurred_at: Final = occurred_at
        self.fill: Final = fill

    def wire(self) -> dict[str, Any]:
        """The message's fields, and the busted fill's wire form under ``"fill"`` once attached."""
        out = super().wire()
        if self.fill is not None:
            out["fill"] = self.fill.wire()
        return out

    def values(self) -> tuple[Any, ...]:
        return (*super().values(), self.fill)


def fill_bust_from_wire(payload: dict[str, Any]) -> FillBust:
    booked = payload.get("fill")
    return FillBust(
        bust_id=payload["bust_id"],
        fill_id=payload["fill_id"],
        account_id=payload["account_id"],
        reason=payload["reason"],
        occurred_at=_time(payload["occurred_at"]),
        fill=None if booked is None else fill_from_wire(booked),
    )


class RiskParametersMessage(Message):
    FIELDS: ClassVar[tuple[str, ...]] = ("type", "parameters", "occurred_at")

    def __init__(self, *, parameters: dict[str, Any], occurred_at: datetime) -> None:
        self.type: Final = "risk_parameters"
        self.parameters: Final = parameters
        self.occurred_at: Final = occurred_at

    def __hash__(self) -> int:
        raise TypeError("a risk_parameters message holds a document (a dict): it has no hash")


def risk_parameters_from_wire(payload: dict[str, Any]) -> RiskParametersMessage:
    return RiskParametersMessage(parameters=payload["parameters"], occurred_at=_time(payload["occurred_at"]))


InputMessage = (
    Fill
    | Deposit
    | Withdrawal
    | IsolatedMarginTransfer
    | Mark
    | Funding
    | Settlement
    | LiquidationFill
    | RiskParametersMessage
    | FillBust
)

# Each class's reader of a logged payload (``events.trusted_message``, by event type).
FROM_WIRE: Final[dict[type[Message], Callable[[dict[str, Any]], InputMessage]]] = {
    Fill: fill_from_wire,
    Deposit: deposit_from_wire,
    Withdrawal: withdrawal_from_wire,
    IsolatedMarginTransfer: isolated_margin_transfer_from_wire,
    Mark: mark_from_wire,
    Funding: funding_from_wire,
    Settlement: settlement_from_wire,
    LiquidationFill: liquidation_fill_from_wire,
    RiskParametersMessage: risk_parameters_from_wire,
    FillBust: fill_bust_from_wire,
}
