"""The input messages of CONTRACT.md: one description of each (``FILL``, ``DEPOSIT``...), and the
immutable values of compiled classes the fold reads.

A description (``Description``) lists a message type's fields in the contract's order, each with
its shape on the wire (an identifier, one of some literals, a decimal that must be positive, a
time...), its default when it may be left out, and whether null is accepted. Everything that
reads or checks a message is derived from it: the class's ``FIELDS`` and ``wire()`` here, the
reader of a logged payload (``Reader``, ``FROM_WIRE``), the validator (``messages.SCHEMAS``, the
pydantic schemas), the decoder's fast path (``messages._FAST_MODELS``) and the replay's reader of a
fill's text (``clearing.audit.fillwire``). So a field is added in its description, and in the
class that holds it: the fold reads the fields of a compiled class (mypyc compiles its source, so
the class cannot be made from the description), and tests/domain/test_message_descriptions.py
checks that each class takes exactly its description's fields.

``messages`` decodes and validates a message and builds one of these; a replay builds them from
logged payloads with ``FROM_WIRE`` (validated on their way in, and the hash chain says they were
not changed since). They are compiled with the fold (clearing/native.py) because the fold reads
their fields on every event: a field of a pydantic model is read through its ``__getattr__``
hook, several times slower than an attribute of a compiled class, and building one from a logged
payload costs more too (docs/performance.md).

Every field is ``Final``: assigning one raises ``AttributeError``. A class's constructor takes its
required fields first, then the optional ones (each in the description's order): the order in
which ``Reader`` passes them, by position.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, NamedTuple, Self

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


# Decimals of the wire texts met last, by text, for the fields whose values repeat (``repeats``):
# a market trades at a few thousand prices and sizes at a time, and a look-up is cheaper than
# building a decimal (and freeing it).
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


# ---------------------------------------------------------------------------------------------
# descriptions

# A field's shape on the wire: how it is checked on the way in and read from the log.
ID: Final = "id"  # a non-empty string of at most IDENTIFIER_CHARS_MAX characters
LITERAL: Final = "literal"  # one of the field's ``literals``
DECIMAL: Final = "decimal"  # an exact decimal (a string; an integer is accepted)
POSITIVE: Final = "positive"  # a decimal greater than zero
NOT_NEGATIVE: Final = "not_negative"  # a decimal of zero or more
NON_ZERO: Final = "non_zero"  # a decimal other than zero
TIME: Final = "time"  # RFC 3339 with a zone
DOCUMENT: Final = "document"  # a JSON object (a risk parameter document), validated by its reader
TEXT: Final = "text"  # a non-empty string of at most TEXT_CHARS_MAX characters (words for people)
TEXT_CHARS_MAX: Final = 1_000  # a sentence or two for the people who read the log
DECIMAL_SHAPES: Final = frozenset({DECIMAL, POSITIVE, NOT_NEGATIVE, NON_ZERO})


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()  # the default of a field that must be given


class FieldSpec(NamedTuple):
    """One field of an input message."""

    name: str
    shape: str
    literals: tuple[str, ...] = ()  # the values a LITERAL field may take
    default: Any = REQUIRED  # the value when the field is left out
    nullable: bool = False  # null is accepted too (and read as the default, None)
    repeats: bool = False  # its values repeat from message to message (prices, sizes): read through a cache

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Description(NamedTuple):
    """An input message type: its ``type`` and its other fields, in the contract's order."""

    type: str
    fields: tuple[FieldSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every field's name, ``type`` first: the class's ``FIELDS``."""
        return ("type", *(spec.name for spec in self.fields))

    @property
    def constructor_order(self) -> tuple[FieldSpec, ...]:
        """The fields in the order the class's constructor takes them: the required ones, then
        the optional ones."""
        return tuple(s for s in self.fields if s.required) + tuple(s for s in self.fields if not s.required)


SIDES: Final = ("buy", "sell")
FILL: Final = Description(
    "fill",
    (
        FieldSpec("fill_id", ID),
        FieldSpec("trade_id", ID),
        FieldSpec("account_id", ID),
        FieldSpec("instrument", ID),
        FieldSpec("side", LITERAL, SIDES),
        FieldSpec("quantity", POSITIVE, repeats=True),
        FieldSpec("price", POSITIVE, repeats=True),
        FieldSpec("fee", DECIMAL, default=ZERO),
        FieldSpec("fee_asset", ID, default=None, nullable=True),
        FieldSpec("liquidity", LITERAL, ("maker", "taker"), default=None, nullable=True),
        FieldSpec("margin_mode", LITERAL, ("cross", "isolated"), default="cross"),
        FieldSpec("occurred_at", TIME),
    ),
)
DEPOSIT: Final = Description(
    "deposit",
    (
        FieldSpec("transfer_id", ID),
        FieldSpec("account_id", ID),
        FieldSpec("asset", ID),
        FieldSpec("amount", POSITIVE),
        FieldSpec("occurred_at", TIME),
    ),
)
WITHDRAWAL: Final = Description("withdrawal", DEPOSIT.fields)
ISOLATED_MARGIN: Final = Description(
    "isolated_margin",
    (
        FieldSpec("transfer_id", ID),
        FieldSpec("account_id", ID),
        FieldSpec("instrument", ID),
        FieldSpec("amount", NON_ZERO),  # negative: back to the cross wallet
        FieldSpec("occurred_at", TIME),
    ),
)
MARK: Final = Description(
    "mark",
    (
        FieldSpec("symbol", ID),
        FieldSpec("price", POSITIVE),
        FieldSpec("iv", NOT_NEGATIVE, default=None, nullable=True),
        FieldSpec("occurred_at", TIME),
    ),
)
FUNDING: Final = Description(
    "funding", (FieldSpec("symbol", ID), FieldSpec("rate", DECIMAL), FieldSpec("occurred_at", TIME))
)
SETTLEMENT: Final = Description(
    "settlement", (FieldSpec("symbol", ID), FieldSpec("price", POSITIVE), FieldSpec("occurred_at", TIME))
)
LIQUIDATION_FILL: Final = Description(
    "liquidation_fill",
    (
        FieldSpec("liquidation_id", ID),
        FieldSpec("fill_id", ID),
        FieldSpec("account_id", ID),
        FieldSpec("instrument", ID),
        FieldSpec("side", LITERAL, SIDES),
        FieldSpec("quantity", POSITIVE, repeats=True),
        FieldSpec("price", POSITIVE, repeats=True),
        FieldSpec("occurred_at", TIME),
    ),
)
FILL_BUST: Final = Description(
    "fill_bust",
    (
        FieldSpec("bust_id", ID),
        FieldSpec("fill_id", ID),
        FieldSpec("account_id", ID),
        FieldSpec("reason", TEXT),
        FieldSpec("occurred_at", TIME),
    ),
)
# The margin models an account may ask for (CONTRACT v2): the names of ``models.MODELS``, which
# this module cannot import (the models import the state, which imports these messages);
# tests/domain/test_margin_model_request.py checks that the two lists agree.
MARGIN_MODEL_NAMES: Final = ("standard", "portfolio")
MARGIN_MODEL: Final = Description(
    "margin_model",
    (
        FieldSpec("request_id", ID),
        FieldSpec("account_id", ID),
        FieldSpec("model", LITERAL, MARGIN_MODEL_NAMES),
        FieldSpec("occurred_at", TIME),
    ),
)
RISK_PARAMETERS: Final = Description(
    "risk_parameters", (FieldSpec("parameters", DOCUMENT), FieldSpec("occurred_at", TIME))
)


# ---------------------------------------------------------------------------------------------
# the classes

class Message:
    """What every input message has: its description, its fields in order, and their wire form."""

    DESCRIPTION: ClassVar[Description]
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
    DESCRIPTION: ClassVar[Description] = FILL
    FIELDS: ClassVar[tuple[str, ...]] = FILL.names

    def __init__(
        self,
        fill_id: str,
        trade_id: str,
        account_id: str,
        instrument: str,
        side: str,
        quantity: Decimal,
        price: Decimal,
        occurred_at: datetime,
        fee: Decimal = ZERO,
        fee_asset: str | None = None,
        liquidity: str | None = None,
        margin_mode: str = "cross",
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


class Deposit(Message):
    DESCRIPTION: ClassVar[Description] = DEPOSIT
    FIELDS: ClassVar[tuple[str, ...]] = DEPOSIT.names

    def __init__(self, transfer_id: str, account_id: str, asset: str, amount: Decimal, occurred_at: datetime) -> None:
        self.type: Final = "deposit"
        self.transfer_id: Final = transfer_id
        self.account_id: Final = account_id
        self.asset: Final = asset
        self.amount: Final = amount
        self.occurred_at: Final = occurred_at


class Withdrawal(Message):
    DESCRIPTION: ClassVar[Description] = WITHDRAWAL
    FIELDS: ClassVar[tuple[str, ...]] = WITHDRAWAL.names

    def __init__(self, transfer_id: str, account_id: str, asset: str, amount: Decimal, occurred_at: datetime) -> None:
        self.type: Final = "withdrawal"
        self.transfer_id: Final = transfer_id
        self.account_id: Final = account_id
        self.asset: Final = asset
        self.amount: Final = amount
        self.occurred_at: Final = occurred_at


class IsolatedMarginTransfer(Message):
    DESCRIPTION: ClassVar[Description] = ISOLATED_MARGIN
    FIELDS: ClassVar[tuple[str, ...]] = ISOLATED_MARGIN.names

    def __init__(
        self, transfer_id: str, account_id: str, instrument: str, amount: Decimal, occurred_at: datetime
    ) -> None:
        self.type: Final = "isolated_margin"
        self.transfer_id: Final = transfer_id
        self.account_id: Final = account_id
        self.instrument: Final = instrument
        self.amount: Final = amount
        self.occurred_at: Final = occurred_at


class Mark(Message):
    DESCRIPTION: ClassVar[Description] = MARK
    FIELDS: ClassVar[tuple[str, ...]] = MARK.names

    def __init__(self, symbol: str, price: Decimal, occurred_at: datetime, iv: Decimal | None = None) -> None:
        self.type: Final = "mark"
        self.symbol: Final = symbol
        self.price: Final = price
        self.iv: Final = iv
        self.occurred_at: Final = occurred_at


class Funding(Message):
    DESCRIPTION: ClassVar[Description] = FUNDING
    FIELDS: ClassVar[tuple[str, ...]] = FUNDING.names

    def __init__(self, symbol: str, rate: Decimal, occurred_at: datetime) -> None:
        self.type: Final = "funding"
        self.symbol: Final = symbol
        self.rate: Final = rate
        self.occurred_at: Final = occurred_at


class Settlement(Message):
    DESCRIPTION: ClassVar[Description] = SETTLEMENT
    FIELDS: ClassVar[tuple[str, ...]] = SETTLEMENT.names

    def __init__(self, symbol: str, price: Decimal, occurred_at: datetime) -> None:
        self.type: Final = "settlement"
        self.symbol: Final = symbol
        self.price: Final = price
        self.occurred_at: Final = occurred_at


class LiquidationFill(Message):
    DESCRIPTION: ClassVar[Description] = LIQUIDATION_FILL
    FIELDS: ClassVar[tuple[str, ...]] = LIQUIDATION_FILL.names

    def __init__(
        self,
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


class FillBust(Message):
    """A correction by the exchange (CONTRACT v2): the booked fill ``fill_id`` is reversed.

    ``fill`` is not a field of the message as sent: it is the booked fill the bust reverses, which
    the ledger finds in its log and attaches (``events.with_busted_fill``) before it admits the
    bust, and which the logged payload carries under ``"fill"``. So a replay reverses the fill
    from the bust's own payload, with no look-up of the log; the hash chain keeps both as booked.
    """

    DESCRIPTION: ClassVar[Description] = FILL_BUST
    FIELDS: ClassVar[tuple[str, ...]] = FILL_BUST.names

    def __init__(
        self, bust_id: str, fill_id: str, account_id: str, reason: str, occurred_at: datetime, fill: Fill | None = None
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


class MarginModelRequest(Message):
    """An account asks to be margined by another model (CONTRACT v2, ``margin_model``): a request
    the ledger answers with ``MarginModelChanged`` or ``MarginModelRejected``."""

    DESCRIPTION: ClassVar[Description] = MARGIN_MODEL
    FIELDS: ClassVar[tuple[str, ...]] = MARGIN_MODEL.names

    def __init__(self, request_id: str, account_id: str, model: str, occurred_at: datetime) -> None:
        self.type: Final = "margin_model"
        self.request_id: Final = request_id
        self.account_id: Final = account_id
        self.model: Final = model
        self.occurred_at: Final = occurred_at


class RiskParametersMessage(Message):
    DESCRIPTION: ClassVar[Description] = RISK_PARAMETERS
    FIELDS: ClassVar[tuple[str, ...]] = RISK_PARAMETERS.names

    def __init__(self, parameters: dict[str, Any], occurred_at: datetime) -> None:
        self.type: Final = "risk_parameters"
        self.parameters: Final = parameters
        self.occurred_at: Final = occurred_at

    def __hash__(self) -> int:
        raise TypeError("a risk_parameters message holds a document (a dict): it has no hash")


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
    | MarginModelRequest
)
MODELS: Final[tuple[type[Message], ...]] = (
    Fill, Deposit, Withdrawal, IsolatedMarginTransfer, Mark, Funding, Settlement, LiquidationFill,
    RiskParametersMessage, FillBust, MarginModelRequest,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# reading logged payloads

# How ``Reader`` turns a field's wire value into the class's value.
_AS_IS: Final = 0
_AS_DECIMAL: Final = 1
_AS_CACHED_DECIMAL: Final = 2
_AS_TIME: Final = 3


def _read_as(spec: FieldSpec) -> int:
    if spec.shape in DECIMAL_SHAPES:
        return _AS_CACHED_DECIMAL if spec.repeats else _AS_DECIMAL
    return _AS_TIME if spec.shape == TIME else _AS_IS


class Reader:
    """Builds the message of one description from a logged payload in wire form, without
    validation (``events.trusted_message``: it was validated on its way in): decimals from their
    text (through the cache for the fields that repeat), times by ``datetime.fromisoformat``, a
    field left out (or null) as its default.

    ``from_list`` takes the values already read out of the text, in the constructor's order with
    None for a field left out: the replay's reader of a fill (``clearing.audit.fillwire``)."""

    def __init__(self, model: type[Message]) -> None:
        order = model.DESCRIPTION.constructor_order
        self.model: Final[Any] = model
        self.names: Final = tuple(spec.name for spec in order)
        self.required: Final = tuple(spec.required for spec in order)
        self.defaults: Final = tuple(None if spec.required else spec.default for spec in order)
        self._fields: Final = tuple((spec.name, spec.required) for spec in order)
        # (place, how it is read, required, default) of the places that may need more than the
        # value as it is: read, or defaulted.
        self._steps: Final = tuple(
            (place, _read_as(spec), spec.required, self.defaults[place])
            for place, spec in enumerate(order)
            if _read_as(spec) != _AS_IS or not spec.required
        )

    def __call__(self, payload: dict[str, Any]) -> InputMessage:
        values: list[Any] = []
        for name, required in self._fields:
            values.append(payload[name] if required else payload.get(name))
        return self.from_list(values)

    def from_list(self, values: list[Any]) -> InputMessage:
        """The message of ``values`` (in ``names`` order, None for a field left out), which it
        converts in place."""
        for place, kind, required, default in self._steps:
            value = values[place]
            if value is None and not required:
                values[place] = default
            elif kind == _AS_CACHED_DECIMAL:
                values[place] = wire_decimal(value)
            elif kind == _AS_DECIMAL:
                values[place] = Decimal(value)
            elif kind == _AS_TIME:
                values[place] = _time(value)
        message: InputMessage = self.model(*values)
        return message


class BustReader(Reader):
    """A logged bust: its own fields as any message's, and the booked fill it carries under
    ``"fill"`` (``FillBust``) read as a fill."""

    def __call__(self, payload: dict[str, Any]) -> InputMessage:
        bust = super().__call__(payload)
        booked = payload.get("fill")
        if booked is None or not isinstance(bust, FillBust):
            return bust
        fill = FROM_WIRE[Fill](booked)
        return bust.replace(fill=fill)


# Each class's reader of a logged payload (``events.trusted_message``, by event type).
FROM_WIRE: Final[dict[type[Message], Reader]] = {model: Reader(model) for model in MODELS}
FROM_WIRE[FillBust] = BustReader(FillBust)
