"""Events as the log holds them: input events (facts that arrived) and decision events (what the
ledger decided because of them).

An event is a type, a stream, a payload in wire form (decimals as strings, times as RFC 3339 in
UTC), its event time, its idempotency key and, for decisions, the position of its cause. The log
adds position, shard, stream version, ledger time and the hash chain.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, NamedTuple

from clearing.domain import inputs
from clearing.domain.inputs import (
    Deposit,
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
from clearing.domain.messages import validated

SCHEMA_VERSION: Final = 1

# The input event types the engine's own code tests for by name.
FILL_RECORDED: Final = "FillRecorded"
LIQUIDATION_FILL_RECORDED: Final = "LiquidationFillRecorded"
FILL_BUSTED: Final = "FillBusted"

# Input message type -> (event type, message model).
INPUT_EVENT_TYPES: Final[dict[str, tuple[str, type[Message]]]] = {
    "fill": (FILL_RECORDED, Fill),
    "deposit": ("CollateralDeposited", Deposit),
    "withdrawal": ("WithdrawalRequested", Withdrawal),
    "isolated_margin": ("IsolatedMarginTransferRequested", IsolatedMarginTransfer),
    "mark": ("MarkRecorded", Mark),
    "funding": ("FundingRateRecorded", Funding),
    "settlement": ("SettlementPriceRecorded", Settlement),
    "liquidation_fill": (LIQUIDATION_FILL_RECORDED, LiquidationFill),
    "risk_parameters": ("RiskParametersChanged", RiskParametersMessage),
    "fill_bust": (FILL_BUSTED, FillBust),
    "margin_model": ("MarginModelRequested", MarginModelRequest),
}
MODEL_BY_EVENT_TYPE: Final[dict[str, type[Message]]] = {
    event_type: model for event_type, model in INPUT_EVENT_TYPES.values()
}

# Decision event types: the ledger's own decisions, each caused by the event at cause_position.
WITHDRAWAL_APPROVED: Final = "WithdrawalApproved"
WITHDRAWAL_REJECTED: Final = "WithdrawalRejected"
ISOLATED_MARGIN_TRANSFERRED: Final = "IsolatedMarginTransferred"
ISOLATED_MARGIN_TRANSFER_REJECTED: Final = "IsolatedMarginTransferRejected"
MARGIN_CALL_ISSUED: Final = "MarginCallIssued"
MARGIN_CALL_ESCALATED: Final = "MarginCallEscalated"
MARGIN_CALL_RESOLVED: Final = "MarginCallResolved"
LIQUIDATION_ORDER_ISSUED: Final = "LiquidationOrderIssued"
INSURANCE_FUND_DRAWN: Final = "InsuranceFundDrawn"
ACCOUNT_BANKRUPTED: Final = "AccountBankrupted"
POSITION_AUTO_DELEVERAGED: Final = "PositionAutoDeleveraged"
LIQUIDATION_ORDER_CANCELLED: Final = "LiquidationOrderCancelled"
MARGIN_MODEL_CHANGED: Final = "MarginModelChanged"
MARGIN_MODEL_REJECTED: Final = "MarginModelRejected"
MARGIN_RATES_CHANGED: Final = "MarginRatesChanged"
# The account id (and so the stream) of dynamic margin's decisions: they are about an underlying,
# not an account, and name the clearing house's own books as the other system decisions do.
MARGIN_RATES_ACCOUNT: Final = "system:margin-rates"
DECISION_TYPES: Final = frozenset(
    {
        WITHDRAWAL_APPROVED,
        WITHDRAWAL_REJECTED,
        ISOLATED_MARGIN_TRANSFERRED,
        ISOLATED_MARGIN_TRANSFER_REJECTED,
        MARGIN_CALL_ISSUED,
        MARGIN_CALL_ESCALATED,
        MARGIN_CALL_RESOLVED,
        LIQUIDATION_ORDER_ISSUED,
        INSURANCE_FUND_DRAWN,
        ACCOUNT_BANKRUPTED,
        POSITION_AUTO_DELEVERAGED,
        LIQUIDATION_ORDER_CANCELLED,
        MARGIN_MODEL_CHANGED,
        MARGIN_MODEL_REJECTED,
        MARGIN_RATES_CHANGED,
    }
)


class Event(NamedTuple):
    """An event of the log, input or decision. (A named tuple: immutable, and the ledger makes one
    per input at under half a frozen dataclass's cost, whose generated ``__init__`` a compiled
    module still runs as Python.)"""

    type: str
    stream: str
    payload: dict[str, Any]
    occurred_at: datetime
    idempotency_key: str
    cause_position: int | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def is_decision(self) -> bool:
        return self.type in DECISION_TYPES


def account_stream(account_id: str) -> str:
    return f"account:{account_id}"


def symbol_stream(symbol: str) -> str:
    return f"symbol:{symbol}"


SYSTEM_STREAM: Final = "system"


def idempotency_key(message: InputMessage, shard: int) -> str:
    """The key under which a message may enter a shard's log once (CONTRACT.md): fills by
    fill_id, transfers by transfer_id, marks by (symbol, occurred_at, type), liquidation fills by
    fill_id, parameter documents by version. Marks and parameters are copied into every shard's
    log, so every key carries its shard."""
    prefix = f"s{shard}/"
    match message:
        case Fill():
            return f"{prefix}fill/{message.fill_id}"
        case Deposit() | Withdrawal() | IsolatedMarginTransfer():
            return f"{prefix}transfer/{message.transfer_id}"
        case Mark() | Funding() | Settlement():
            return f"{prefix}{message.type}/{message.symbol}/{format_time(message.occurred_at)}"
        case LiquidationFill():
            return f"{prefix}liquidation_fill/{message.fill_id}"
        case RiskParametersMessage():
            version = message.parameters.get("version")
            return f"{prefix}risk_parameters/{version}"
        case FillBust():
            return f"{prefix}fill_bust/{message.bust_id}"
        case MarginModelRequest():
            return f"{prefix}margin_model/{message.request_id}"
    raise AssertionError(f"no idempotency key for {type(message).__name__}")  # pragma: no cover


def stream_of(message: InputMessage) -> str:
    match message:
        case Mark() | Funding() | Settlement():
            return symbol_stream(message.symbol)
        case RiskParametersMessage():
            return SYSTEM_STREAM
        case _:
            return account_stream(message.account_id)


def input_event(
    message: InputMessage, shard: int, *, payload: dict[str, Any] | None = None, key: str | None = None
) -> Event:
    """The log event of an input message (``payload`` and ``key``: when the caller has already
    computed ``message.wire()`` and the idempotency key)."""
    event_type = INPUT_EVENT_TYPES[message.type][0]
    return Event(
        type=event_type,
        stream=stream_of(message),
        payload=message.wire() if payload is None else payload,
        occurred_at=message.occurred_at,
        idempotency_key=idempotency_key(message, shard) if key is None else key,
    )


# Event type -> the reader of its logged payload (``trusted_message``).
_FROM_WIRE: Final[dict[str, Callable[[dict[str, Any]], InputMessage]]] = {
    event_type: inputs.FROM_WIRE[model] for event_type, model in MODEL_BY_EVENT_TYPE.items()
}


def trusted_message(event_type: str, payload: dict[str, Any]) -> InputMessage:
    """The typed message of a logged input event, built without validation: how replays read the
    log. Logged payloads were validated by ``messages.decode`` on their way in and are stored in
    wire form (decimals as strings, times in RFC 3339), and the hash chain says they have not
    changed since, so validating them again would only cost time (a third of a replay's, when
    profiled). ``message_of`` validates, for payloads from anywhere else. A test checks that both
    give equal messages for every input type."""
    return _FROM_WIRE[event_type](payload)


def message_of(event_type: str, payload: dict[str, Any]) -> InputMessage:
    """The typed message behind a logged input event (upcast first when schema versions differ)."""
    if event_type == FILL_BUSTED and "fill" in payload:
        return logged_bust(payload)
    return validated(MODEL_BY_EVENT_TYPE[event_type], payload)


# --------------------------------------------------------------------------------------------
# Busts: the ledger finds the fill a bust names in its log and attaches it before admitting it.


def busted_fill_key(message: InputMessage, shard: int) -> str | None:
    """The idempotency key of the logged fill that ``message`` reverses (a ``fill_bust``), or
    None. Fills are keyed by fill_id on their account's shard, which is where the bust goes too
    (both are keyed by account_id on the fills topic)."""
    if isinstance(message, FillBust):
        return f"s{shard}/fill/{message.fill_id}"
    return None


def with_busted_fill(
    bust: FillBust, payload: dict[str, Any], fill_payload: dict[str, Any]
) -> tuple[FillBust, dict[str, Any]]:
    """The bust and its payload with the booked fill it reverses (the fill's logged payload)
    attached: what the log keeps of a bust, so that replays reverse the fill from it alone."""
    fill = validated(Fill, fill_payload)
    if not isinstance(fill, Fill):  # pragma: no cover - validated builds the model asked for
        raise TypeError("a fill payload did not make a fill")
    attached = bust.replace(fill=fill)
    return attached, {**payload, "fill": fill.wire()}


def logged_bust(payload: dict[str, Any]) -> FillBust:
    """A logged bust validated: the message's own fields by its schema, its fill by the fill's."""
    own = {name: value for name, value in payload.items() if name != "fill"}
    bust = validated(FillBust, own)
    if not isinstance(bust, FillBust):  # pragma: no cover - validated builds the model asked for
        raise TypeError("a fill_bust payload did not make a bust")
    fill = validated(Fill, payload["fill"])
    if not isinstance(fill, Fill):  # pragma: no cover
        raise TypeError("a fill payload did not make a fill")
    return bust.replace(fill=fill)


def decision_key(shard: int, cause_position: int, index: int) -> str:
    return f"s{shard}/decision/{cause_position}/{index}"
