"""Input messages of CONTRACT.md: decoding, validation, and the errors a person can act on.

``decode(topic_kind, raw)`` turns the bytes of one Kafka value into an immutable message (of the
compiled classes in ``inputs``) or raises ``InputError`` with a sentence that says what is wrong
and how to fix it. The checks are pydantic schemas, one per message type (``SCHEMAS``), and the
plain shapes of the fast path (``_FAST_MODELS``): both made from the message's description
(``inputs.FILL``...), so they check the fields the class holds. Nothing here knows about Kafka or
the database; the consumer puts the error in the dead-letter table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, cast

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)

from clearing.domain import inputs
from clearing.domain.inputs import (
    MODELS,
    Deposit,
    FieldSpec,
    Fill,
    FillBust,
    Funding,
    InputMessage,
    IsolatedMarginTransfer,
    LiquidationFill,
    MarginModelRequest,
    Mark,
    Message,
    RiskParametersMessage,
    Settlement,
    Withdrawal,
    format_time,
)
from clearing.domain.numbers import WIRE_FRACTION_DIGITS_MAX, WIRE_INTEGER_DIGITS_MAX, NumberError, is_wire, to_wire
from clearing.domain.params import IDENTIFIER_CHARS_MAX, WireDecimal

MESSAGE_BYTES_MAX = 64 * 1024
BUST_REASON_CHARS_MAX = inputs.TEXT_CHARS_MAX  # a bust's reason (text)
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
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00: raised, it would fail the whole batch
        raise ValueError("is outside the years 1 to 9999 once converted to UTC") from None


# RFC 3339's date-time (section 5.6): a date, "T" (or a space, which its note allows), a time with
# seconds and an optional fraction, and a zone: "Z" or an offset with a colon.
_RFC3339_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
RFC3339_EXAMPLE: Final = "2026-11-23T12:00:00.123Z"


def _rfc3339_text(value: object) -> object:
    """Only an RFC 3339 text with a zone may become an event time (CONTRACT.md). pydantic's lax
    mode would also take a Unix epoch, as a number or as a string of digits, and a time without
    seconds: a producer sending those would have them booked at a time nobody wrote down."""
    if isinstance(value, str) and _RFC3339_TIME.fullmatch(value) is not None:
        return value
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(value, str):
        shown = repr(value[:64])
        number = value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    else:
        shown = f"the JSON number {value}" if number else f"a JSON {_json_kind(value)}"
    epoch = " (Unix epoch times are not accepted)" if number else ""
    raise ValueError(f'must be an RFC 3339 time with a zone such as "{RFC3339_EXAMPLE}", not {shown}{epoch}')


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


Positive = Annotated[WireDecimal, AfterValidator(_positive)]
NotNegative = Annotated[WireDecimal, AfterValidator(_not_negative)]
NonZero = Annotated[WireDecimal, AfterValidator(_non_zero)]
Identifier = Annotated[str, Field(min_length=1, max_length=IDENTIFIER_CHARS_MAX)]
EventTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_utc_microseconds)]


class Schema(BaseModel):
    """The checks of one message type: its fields, their shapes, no others."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# The type that checks a field of each shape (``inputs.FieldSpec.shape``); a LITERAL field's is
# the Literal of its values.
_SHAPE_TYPES: dict[str, Any] = {
    inputs.ID: Identifier,
    inputs.DECIMAL: WireDecimal,
    inputs.POSITIVE: Positive,
    inputs.NOT_NEGATIVE: NotNegative,
    inputs.NON_ZERO: NonZero,
    inputs.TIME: EventTime,
    inputs.DOCUMENT: dict[str, Any],
    inputs.TEXT: Annotated[str, Field(min_length=1, max_length=inputs.TEXT_CHARS_MAX)],
}


def _schema_field(spec: FieldSpec) -> tuple[Any, Any]:
    """(type, default) of a field in its schema."""
    checked: Any = Literal[spec.literals] if spec.shape == inputs.LITERAL else _SHAPE_TYPES[spec.shape]
    if spec.nullable:
        checked = checked | None
    return checked, ... if spec.required else spec.default


def schema_of(model: type[Message]) -> type[Schema]:
    """The pydantic schema of a message type, from its description: ``type`` first, then its
    fields in the contract's order (the order of the errors it reports)."""
    description = model.DESCRIPTION
    fields: dict[str, Any] = {"type": (Literal[(description.type,)], ...)}
    fields.update((spec.name, _schema_field(spec)) for spec in description.fields)
    return create_model(f"{model.__name__}Schema", __base__=Schema, **fields)


SCHEMAS: dict[type[Message], type[Schema]] = {model: schema_of(model) for model in MODELS}


def _built(model: type[Message], values: dict[str, Any]) -> InputMessage:
    """The message of ``model`` with the valid ``values`` of its fields (``type`` among them: the
    class sets it; it takes every other field as a keyword argument)."""
    del values["type"]
    return cast(Callable[..., InputMessage], model)(**values)


def validated(model: type[Message], data: dict[str, Any]) -> InputMessage:
    """The message of ``model`` from ``data`` checked by its schema (pydantic's ``ValidationError``
    when it is not valid)."""
    return _built(model, dict(SCHEMAS[model].model_validate(data).__dict__))


# Which message types each input topic carries (topic names without the prefix).
TOPIC_TYPES: dict[str, dict[str, type[Message]]] = {
    "fills": {"fill": Fill, "fill_bust": FillBust},
    "transfers": {
        "deposit": Deposit,
        "withdrawal": Withdrawal,
        "isolated_margin": IsolatedMarginTransfer,
        "margin_model": MarginModelRequest,
    },
    "marks": {"mark": Mark, "funding": Funding, "settlement": Settlement},
    "liquidations": {"liquidation_fill": LiquidationFill},
    "admin": {"risk_parameters": RiskParametersMessage},
}
INPUT_TOPICS = tuple(TOPIC_TYPES)

def is_wire_time(text: str) -> bool:
    """Whether ``text``, an RFC 3339 time of the plain shape the decoder accepts (``_PLAIN_TIME``),
    is already ``format_time``'s spelling: UTC with a Z, six fractional digits, a year from 1000."""
    return len(text) == 27 and text[26] == "Z" and text[0] != "0"


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
    except RecursionError:
        # A few kilobytes of "[[[[..." exhaust the parser's stack; raised, it would fail every
        # retry of the batch that holds it.
        raise InputError("the message nests JSON arrays or objects too deeply to be a message") from None
    if not isinstance(data, dict):
        raise InputError(f'the message must be a JSON object with a "type", not a JSON {type(data).__name__}')
    where = _nul_at(data, "")
    if where is not None:
        raise InputError(
            f"{where} holds a NUL character (\\u0000), which the log cannot store: remove it and send the message again"
        )
    return data


def _nul_at(value: Any, where: str) -> str | None:
    """The field (a dotted path) whose name or text holds U+0000, which PostgreSQL refuses in text
    and JSONB (every later batch would fail on it), or None."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    pairs: list[tuple[Any, Any]] = (
        list(value.items()) if isinstance(value, dict) else list(enumerate(value)) if isinstance(value, list) else []
    )
    for key, item in pairs:
        if "\x00" in str(key):
            return f"a field name in {where or 'the message'}"
        found = _nul_at(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def decode(topic_kind: str, raw: bytes) -> InputMessage:
    """Decode the value of one message from the input topic ``topic_kind`` (e.g. ``"fills"``).

    Most messages are well formed, and the checked path (``decode_checked``: the stdlib parser
    with its float and constant hooks, then pydantic) costs about as much as the rest of the
    ledger's work on them. So a well-formed message is first tried on a fast path, which
    accepts only what the checked path accepts and builds the same message: orjson parses the
    value, and a message whose values are all of the plain shape its fields expect is built
    directly (``_FAST_MODELS``). Anything else (a float, a big integer orjson would turn into one,
    an error of any kind, an unusual but valid spelling) goes the checked way, so every error is
    the checked path's error. Tests compare both paths on valid, odd and invalid messages."""
    built = _decode_fast(topic_kind, raw)
    return built[0] if built is not None else decode_checked(topic_kind, raw)


def decode_wire(topic_kind: str, raw: bytes) -> tuple[InputMessage, dict[str, Any]]:
    """``decode``, and the message's wire form (``message.wire()``, what the log stores): the
    fast path spells it from the strings it was sent, at a third of ``wire()``'s cost."""
    built = _decode_fast(topic_kind, raw)
    if built is not None:
        return built
    message = decode_checked(topic_kind, raw)
    return message, message.wire()


def _decode_fast(topic_kind: str, raw: bytes) -> tuple[InputMessage, dict[str, Any]] | None:
    kinds = TOPIC_TYPES.get(topic_kind)
    # A NUL (only ever written as the escape \u0000) takes the checked path, which refuses it.
    if kinds is not None and len(raw) <= MESSAGE_BYTES_MAX and b"\\u0000" not in raw:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if data.__class__ is dict:
            message_type = data.get("type")
            model = kinds.get(message_type) if message_type.__class__ is str else None
            fast = _FAST_MODELS.get(model) if model is not None else None
            if fast is not None:
                return _build(fast, data)
    return None


def decode_checked(topic_kind: str, raw: bytes) -> InputMessage:
    """``decode`` the thorough way, with every check that names what is wrong."""
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
        return validated(model, data)
    except ValidationError as error:
        raise InputError(_describe(str(message_type), error)) from None


# Value shapes of the fast path. Each is a string (or null where the field may be null) of a
# plain form that the field's validation accepts, and is built into the value validation would
# build. Every value of every fast-path field is a string or null, so a message with a number,
# a boolean, a list or an object anywhere (or a float, which orjson would have read lossily)
# never takes it.
_PLAIN_DECIMAL = re.compile(
    rf"-?(?:0|[1-9][0-9]{{0,{WIRE_INTEGER_DIGITS_MAX - 1}}})(?:\.[0-9]{{1,{WIRE_FRACTION_DIGITS_MAX}}})?"
)
_PLAIN_TIME = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
@dataclass(frozen=True, slots=True)
class _FastModel:
    """A model's description grouped by shape, for ``_build``."""

    model: type[Message]
    names: frozenset[str]
    required: frozenset[str]
    nullable: frozenset[str]
    template: dict[str, Any]  # every field in declaration order: its default, or None when required
    wire_template: dict[str, Any]  # the template with its defaults in wire form
    optional: tuple[str, ...]  # fields that may be None (given null, or left at a None default)
    ids: tuple[str, ...]
    literals: tuple[tuple[str, frozenset[str]], ...]
    decimals: tuple[tuple[str, str], ...]
    times: tuple[str, ...]

    @classmethod
    def of(cls, model: type[Message]) -> _FastModel:
        description = model.DESCRIPTION
        specs = (FieldSpec("type", inputs.LITERAL, (description.type,)), *description.fields)
        template = {spec.name: None if spec.required else spec.default for spec in specs}
        return cls(
            model,
            frozenset(spec.name for spec in specs),
            frozenset(spec.name for spec in specs if spec.required),
            frozenset(spec.name for spec in specs if spec.nullable),
            template,
            {name: to_wire(value) if isinstance(value, Decimal) else value for name, value in template.items()},
            tuple(spec.name for spec in specs if spec.nullable or (not spec.required and spec.default is None)),
            tuple(spec.name for spec in specs if spec.shape == inputs.ID),
            tuple((spec.name, frozenset(spec.literals)) for spec in specs if spec.shape == inputs.LITERAL),
            tuple((spec.name, spec.shape) for spec in specs if spec.shape in inputs.DECIMAL_SHAPES),
            tuple(spec.name for spec in specs if spec.shape == inputs.TIME),
        )


_ABSENT = object()


def _build(fast: _FastModel, data: dict[str, Any]) -> tuple[InputMessage, dict[str, Any]] | None:
    """The message validation would build from ``data`` and its ``wire()``, or None when ``data``
    is not of the plain shape (then validation decides, and words its errors)."""
    keys = data.keys()
    if not (fast.required <= keys and keys <= fast.names):
        return None  # a field missing, or a key that is not a field
    nullable = fast.nullable
    for name in fast.ids:
        value = data.get(name, _ABSENT)
        if value.__class__ is not str:
            if value is _ABSENT or (value is None and name in nullable):
                continue
            return None
        if not 0 < len(value) <= IDENTIFIER_CHARS_MAX:
            return None
    for name, allowed in fast.literals:
        value = data.get(name, _ABSENT)
        if value.__class__ is not str:
            if value is _ABSENT or (value is None and name in nullable):
                continue
            return None
        if value not in allowed:
            return None
    converted: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # wire forms that differ from the text sent
    for name, shape in fast.decimals:
        value = data.get(name, _ABSENT)
        if value.__class__ is not str:
            if value is _ABSENT or (value is None and name in nullable):
                continue
            return None
        if _PLAIN_DECIMAL.fullmatch(value) is None:
            return None
        number = Decimal(value)
        if (
            (shape == inputs.POSITIVE and number <= 0)
            or (shape == inputs.NOT_NEGATIVE and number < 0)
            or (shape == inputs.NON_ZERO and number == 0)
        ):
            return None
        converted[name] = number
        if not is_wire(value):
            spelled[name] = to_wire(number)
    for name in fast.times:  # every time field is required
        value = data[name]
        if value.__class__ is not str or _PLAIN_TIME.fullmatch(value) is None:
            return None
        try:
            converted[name] = at = datetime.fromisoformat(value).astimezone(UTC)
        except (ValueError, OverflowError):
            return None
        if not is_wire_time(value):
            spelled[name] = format_time(at)
    # What validation builds once the values are valid: defaults for the fields not given.
    message = _built(fast.model, {**fast.template, **data, **converted})
    wire = {**fast.wire_template, **data, **spelled}
    for name in fast.optional:
        if wire[name] is None:
            del wire[name]
    return message, wire


# Every message type but those that hold a document or text (parameter documents are rare and
# nested, busts rare: validation builds them).
_FAST_MODELS: dict[type[Message], _FastModel] = {
    model: _FastModel.of(model)
    for model in MODELS
    if all(spec.shape not in (inputs.DOCUMENT, inputs.TEXT) for spec in model.DESCRIPTION.fields)
}


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
