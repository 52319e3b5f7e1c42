"""Input messages of CONTRACT.md: decoding, validation, and the errors a person can act on.

``decode(topic_kind, raw)`` turns the bytes of one Kafka value into a frozen message or raises
``InputError`` with a sentence that says what is wrong and how to fix it. Nothing here knows about
Kafka or the database; the consumer puts the error in the dead-letter table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from clearing.domain.numbers import NumberError, to_wire
from clearing.domain.params import IDENTIFIER_CHARS_MAX, WireDecimal

MESSAGE_BYTES_MAX = 64 * 1024
ADMIN_MESSAGE_BYTES_MAX = 1024 * 1024


class InputError(ValueError):
    """A message that cannot enter the log. ``str(error)`` is the sentence for the dead letter."""


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _not_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _non_zero(value: Decimal) -> Decimal:
    if value == 0:
        raise ValueError("must not be zero")
    return value


def _utc_microseconds(value: datetime) -> datetime:
    # PostgreSQL keeps microseconds: normalise now so the hash of a row read back is the hash of
    # the row written.
    return value.astimezone(UTC)


Positive = Annotated[WireDecimal, AfterValidator(_positive)]
NotNegative = Annotated[WireDecimal, AfterValidator(_not_negative)]
NonZero = Annotated[WireDecimal, AfterValidator(_non_zero)]
Identifier = Annotated[str, Field(min_length=1, max_length=IDENTIFIER_CHARS_MAX)]
EventTime = Annotated[AwareDatetime, AfterValidator(_utc_microseconds)]
Side = Literal["buy", "sell"]
MarginMode = Literal["cross", "isolated"]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The normalised payload: decimals as canonical strings, times in UTC with a Z."""
        out: dict[str, Any] = {}
        # The fields in declaration order, as iterating the model gives them (extra fields are
        # forbidden), without pydantic's iterator.
        for name, value in self.__dict__.items():
            if value is None:
                continue
            if value.__class__ is str:
                out[name] = value
            elif isinstance(value, Decimal):
                out[name] = to_wire(value)
            elif isinstance(value, datetime):
                out[name] = format_time(value)
            else:
                out[name] = value
        return out


class Fill(Message):
    type: Literal["fill"]
    fill_id: Identifier
    trade_id: Identifier
    account_id: Identifier
    instrument: Identifier
    side: Side
    quantity: Positive
    price: Positive
    fee: WireDecimal = Decimal(0)
    fee_asset: Identifier | None = None
    liquidity: Literal["maker", "taker"] | None = None
    margin_mode: MarginMode = "cross"
    occurred_at: EventTime


class Deposit(Message):
    type: Literal["deposit"]
    transfer_id: Identifier
    account_id: Identifier
    asset: Identifier
    amount: Positive
    occurred_at: EventTime


class Withdrawal(Message):
    type: Literal["withdrawal"]
    transfer_id: Identifier
    account_id: Identifier
    asset: Identifier
    amount: Positive
    occurred_at: EventTime


class IsolatedMarginTransfer(Message):
    type: Literal["isolated_margin"]
    transfer_id: Identifier
    account_id: Identifier
    instrument: Identifier
    amount: NonZero
    occurred_at: EventTime


class Mark(Message):
    type: Literal["mark"]
    symbol: Identifier
    price: Positive
    iv: NotNegative | None = None
    occurred_at: EventTime


class Funding(Message):
    type: Literal["funding"]
    symbol: Identifier
    rate: WireDecimal
    occurred_at: EventTime


class Settlement(Message):
    type: Literal["settlement"]
    symbol: Identifier
    price: Positive
    occurred_at: EventTime


class LiquidationFill(Message):
    type: Literal["liquidation_fill"]
    liquidation_id: Identifier
    fill_id: Identifier
    account_id: Identifier
    instrument: Identifier
    side: Side
    quantity: Positive
    price: Positive
    occurred_at: EventTime


class RiskParametersMessage(Message):
    type: Literal["risk_parameters"]
    parameters: dict[str, Any]
    occurred_at: EventTime


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
)

# Which message types each input topic carries (topic names without the prefix).
TOPIC_TYPES: dict[str, dict[str, type[Message]]] = {
    "fills": {"fill": Fill},
    "transfers": {"deposit": Deposit, "withdrawal": Withdrawal, "isolated_margin": IsolatedMarginTransfer},
    "marks": {"mark": Mark, "funding": Funding, "settlement": Settlement},
    "liquidations": {"liquidation_fill": LiquidationFill},
    "admin": {"risk_parameters": RiskParametersMessage},
}
INPUT_TOPICS = tuple(TOPIC_TYPES)

_ADAPTERS: dict[type[Message], TypeAdapter[Any]] = {}


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


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


def _reject_float(text: str) -> Any:
    raise InputError(
        f"the JSON number {text} is not accepted: send amounts, prices and rates as decimal strings "
        f'such as "{text}" so no precision is lost'
    )


def _reject_constant(text: str) -> Any:
    raise InputError(f"{text} is not a number the ledger accepts: send a finite decimal string")


def parse_json(raw: bytes, *, bytes_max: int = MESSAGE_BYTES_MAX) -> dict[str, Any]:
    """Parse one message value: UTF-8 JSON object, integers kept exact, floats refused."""
    if len(raw) > bytes_max:
        raise InputError(f"the message is {len(raw)} bytes; at most {bytes_max} are accepted")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"the message is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        data = json.loads(text, parse_float=_reject_float, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InputError(
            f"the message is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f'the message must be a JSON object with a "type", not a JSON {type(data).__name__}')
    return data


def decode(topic_kind: str, raw: bytes) -> InputMessage:
    """Decode the value of one message from the input topic ``topic_kind`` (e.g. ``"fills"``)."""
    kinds = TOPIC_TYPES.get(topic_kind)
    if kinds is None:
        raise InputError(f"the ledger does not consume the topic kind {topic_kind!r}")
    limit = ADMIN_MESSAGE_BYTES_MAX if topic_kind == "admin" else MESSAGE_BYTES_MAX
    data = parse_json(raw, bytes_max=limit)
    message_type = data.get("type")
    model = kinds.get(message_type) if isinstance(message_type, str) else None
    if model is None:
        allowed = ", ".join(f'"{name}"' for name in kinds)
        raise InputError(f'"type" is {message_type!r}; on the {topic_kind} topic it must be one of {allowed}')
    try:
        message = cast(InputMessage, model.model_validate(data))
    except ValidationError as error:
        raise InputError(_describe(str(message_type), error)) from None
    return message


def _describe(message_type: str, error: ValidationError) -> str:
    parts = []
    for detail in error.errors(include_url=False)[:5]:
        where = ".".join(str(item) for item in detail["loc"]) or "message"
        cause = detail.get("ctx", {}).get("error")
        text = str(cause) if isinstance(cause, NumberError | ValueError) else detail["msg"]
        if detail["type"] == "missing":
            text = "is required"
        elif detail["type"] == "extra_forbidden":
            text = "is not a field of this message type"
        parts.append(f"{where} {text}" if not text.startswith(where) else text)
    return f"{message_type} message rejected: " + "; ".join(parts)
