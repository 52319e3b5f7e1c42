"""What the ledger publishes (CONTRACT.md, output topics): decision events, dead letters and log
checkpoints turned into output messages. The outbox stores them in the batch's transaction; the
relay sends them.

Every message is bounded: its key and value, as the relay sends them (``encode_key``,
``encode_value``), take at most ``OUTPUT_MESSAGE_BYTES_MAX`` bytes, so the producer (configured
with ``PRODUCER_REQUEST_BYTES_MAX``) never refuses one. A message the relay could not send would
stop every message behind it: the relay publishes in outbox order.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from clearing.domain import events as ev
from clearing.domain.inputs import format_time

# Output topic kinds (without the prefix).
MARGIN_CALLS = "margin-calls"
LIQUIDATION_ORDERS = "liquidation-orders"
WITHDRAWALS = "withdrawals"
ACCOUNT_UPDATES = "account-updates"  # CONTRACT v2
DLQ = "dlq"
CHECKPOINTS = "checkpoints"
DELEVERAGING = "deleveraging"  # CONTRACT v2
MARGIN_RATES = "margin-rates"  # CONTRACT v2
OUTPUT_TOPICS = (
    MARGIN_CALLS, LIQUIDATION_ORDERS, WITHDRAWALS, ACCOUNT_UPDATES, DLQ, CHECKPOINTS, DELEVERAGING, MARGIN_RATES,
)  # fmt: skip

# The largest request the outbox's producer sends (its ``max_request_size``): Kafka's default, which
# a broker's default ``message.max.bytes`` (1 MiB + 12 bytes) accepts. The relay sends one message
# per record batch at most this large.
PRODUCER_REQUEST_BYTES_MAX = 1024 * 1024
# What a record batch adds around one message's key and value: 61 bytes of batch header and at
# most ~30 of record header (varints), with room to spare.
RECORD_FRAMING_BYTES_MAX = 1024
OUTPUT_MESSAGE_BYTES_MAX = PRODUCER_REQUEST_BYTES_MAX - RECORD_FRAMING_BYTES_MAX
# A dead letter whose raw value does not fit carries this many of its first bytes (base64 on the
# topic: 4/3 as many), with its size and SHA-256; the dead_letters table keeps all of it.
DEAD_LETTER_RAW_PREFIX_BYTES = 64 * 1024
# A dead letter's key and error as published, at most (the table keeps them whole). An input key
# of any size is accepted by Kafka; an error quotes at most a field of the input.
DEAD_LETTER_KEY_CHARS_MAX = 1024
DEAD_LETTER_ERROR_CHARS_MAX = 16 * 1024
if DEAD_LETTER_RAW_PREFIX_BYTES * 4 // 3 + 12 * (DEAD_LETTER_KEY_CHARS_MAX * 2 + DEAD_LETTER_ERROR_CHARS_MAX) + 4096 > (
    OUTPUT_MESSAGE_BYTES_MAX
):  # each character at most 12 bytes escaped (a surrogate pair), the key twice (key and value)
    raise RuntimeError("a shortened dead letter could exceed OUTPUT_MESSAGE_BYTES_MAX: lower its parts")


class OutputTooLargeError(RuntimeError):
    """An output message over ``OUTPUT_MESSAGE_BYTES_MAX`` that cannot be shortened: a bug (decisions
    carry identifiers of at most 128 characters and bounded numbers)."""


_MESSAGE_TYPES: dict[str, tuple[str, str]] = {
    ev.WITHDRAWAL_APPROVED: (WITHDRAWALS, "withdrawal_approved"),
    ev.WITHDRAWAL_REJECTED: (WITHDRAWALS, "withdrawal_rejected"),
    ev.ISOLATED_MARGIN_TRANSFERRED: (ACCOUNT_UPDATES, "isolated_margin_transferred"),
    ev.ISOLATED_MARGIN_TRANSFER_REJECTED: (ACCOUNT_UPDATES, "isolated_margin_rejected"),
    ev.MARGIN_CALL_ISSUED: (MARGIN_CALLS, "margin_call_issued"),
    ev.MARGIN_CALL_ESCALATED: (MARGIN_CALLS, "margin_call_escalated"),
    ev.MARGIN_CALL_RESOLVED: (MARGIN_CALLS, "margin_call_resolved"),
    ev.LIQUIDATION_ORDER_ISSUED: (LIQUIDATION_ORDERS, "liquidation_order"),
    ev.LIQUIDATION_ORDER_CANCELLED: (LIQUIDATION_ORDERS, "liquidation_order_cancelled"),
    ev.POSITION_AUTO_DELEVERAGED: (DELEVERAGING, "auto_deleveraged"),
    ev.ACCOUNT_BANKRUPTED: (MARGIN_CALLS, "account_bankrupted"),
    ev.MARGIN_MODEL_CHANGED: (ACCOUNT_UPDATES, "margin_model_changed"),
    ev.MARGIN_MODEL_REJECTED: (ACCOUNT_UPDATES, "margin_model_rejected"),
    ev.MARGIN_RATES_CHANGED: (MARGIN_RATES, "margin_rates_changed"),
}
PUBLISHED_DECISION_TYPES = frozenset(_MESSAGE_TYPES)  # decision events that go out on a topic


def encode_value(value: dict[str, Any]) -> bytes:
    """A message's value as the relay sends it (JSON, compact, non-ASCII escaped)."""
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def encode_key(key: str | None) -> bytes | None:
    return None if key is None else key.encode("utf-8", "surrogatepass")


def message_bytes(key: str | None, value: dict[str, Any]) -> int:
    """The bytes of a message's key and value as sent: what ``OUTPUT_MESSAGE_BYTES_MAX`` bounds."""
    encoded = encode_key(key)
    return len(encode_value(value)) + (0 if encoded is None else len(encoded))


def check_size(key: str | None, value: dict[str, Any]) -> None:
    size = message_bytes(key, value)
    if size > OUTPUT_MESSAGE_BYTES_MAX:
        raise OutputTooLargeError(
            f"a {value.get('type')!r} message of {size} bytes is over the {OUTPUT_MESSAGE_BYTES_MAX} bytes an "
            "output may take"
        )


def decision_message(decision: ev.Event, position: int) -> tuple[str, str, dict[str, Any]] | None:
    """(topic kind, key, value) for a decision that goes out, or None for one that stays in the log."""
    found = _MESSAGE_TYPES.get(decision.type)
    if found is None:
        return None
    topic, message_type = found
    value = {
        "type": message_type,
        **decision.payload,
        "position": position,
        "cause_position": decision.cause_position,
        "occurred_at": format_time(decision.occurred_at),
    }
    # A rate sample concerns an underlying, not an account: keyed by it, so a consumer reads each
    # underlying's samples in order from one partition.
    key = str(decision.payload["underlying" if topic == MARGIN_RATES else "account_id"])
    check_size(key, value)
    return topic, key, value


def dead_letter_message(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
    error: str,
    existing_payload: dict[str, Any] | None = None,
) -> tuple[str, str | None, dict[str, Any]]:
    """The ``rejected`` message of a dead letter. ``raw`` is the whole value in base64 when the
    message fits in ``OUTPUT_MESSAGE_BYTES_MAX``; otherwise its first ``DEAD_LETTER_RAW_PREFIX_BYTES``
    bytes, with ``raw_truncated`` true (and the key and error shortened if they are what is too
    large). ``raw_bytes`` and ``raw_sha256`` (hex) always describe the whole value, so a consumer can
    check a copy fetched from the dead-letter table. A conflicting duplicate carries both versions
    (DESIGN.md): ``raw``, the one received, and ``existing_payload``, the one the log holds."""
    text_key = key.decode("utf-8", "replace") if key is not None else None
    value: dict[str, Any] = {
        "type": "rejected",
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": text_key,
        "error": error,
        "raw": base64.b64encode(raw).decode("ascii"),
        "raw_bytes": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_truncated": False,
    }
    if existing_payload is not None:
        value["existing_payload"] = existing_payload
    if message_bytes(text_key, value) > OUTPUT_MESSAGE_BYTES_MAX:
        value = shorten_dead_letter(value, raw[:DEAD_LETTER_RAW_PREFIX_BYTES])
        text_key = value["key"]
    check_size(text_key, value)
    return DLQ, text_key, value


def shorten_dead_letter(value: dict[str, Any], raw_prefix: bytes | None = None) -> dict[str, Any]:
    """A ``rejected`` message cut to fit: the first bytes of the raw value (``raw_prefix``, else
    taken from the message's own base64), the key and the error bounded. Also used by the relay on
    rows written before messages were bounded."""
    if raw_prefix is None:
        raw = base64.b64decode(value.get("raw") or "")
        raw_prefix = raw[:DEAD_LETTER_RAW_PREFIX_BYTES]
        value = {"raw_bytes": len(raw), "raw_sha256": hashlib.sha256(raw).hexdigest(), **value}
    short = dict(value)
    short["raw"] = base64.b64encode(raw_prefix).decode("ascii")
    short["raw_truncated"] = True
    if isinstance(short.get("key"), str) and len(short["key"]) > DEAD_LETTER_KEY_CHARS_MAX:
        short["key"] = short["key"][:DEAD_LETTER_KEY_CHARS_MAX]
        short["key_truncated"] = True
    if isinstance(short.get("error"), str) and len(short["error"]) > DEAD_LETTER_ERROR_CHARS_MAX:
        short["error"] = short["error"][:DEAD_LETTER_ERROR_CHARS_MAX] + " [error shortened]"
    return short
