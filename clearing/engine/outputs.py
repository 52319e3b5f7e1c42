"""What the ledger publishes (CONTRACT.md, output topics): decision events and dead letters turned
into output messages. The outbox stores them in the batch's transaction; the relay sends them."""

from __future__ import annotations

import base64
from typing import Any

from clearing.domain import events as ev
from clearing.domain.inputs import format_time

# Output topic kinds (without the prefix).
MARGIN_CALLS = "margin-calls"
LIQUIDATION_ORDERS = "liquidation-orders"
WITHDRAWALS = "withdrawals"
ACCOUNT_UPDATES = "account-updates"  # CONTRACT v2
DLQ = "dlq"
OUTPUT_TOPICS = (MARGIN_CALLS, LIQUIDATION_ORDERS, WITHDRAWALS, ACCOUNT_UPDATES, DLQ)

_MESSAGE_TYPES: dict[str, tuple[str, str]] = {
    ev.WITHDRAWAL_APPROVED: (WITHDRAWALS, "withdrawal_approved"),
    ev.WITHDRAWAL_REJECTED: (WITHDRAWALS, "withdrawal_rejected"),
    ev.ISOLATED_MARGIN_TRANSFERRED: (ACCOUNT_UPDATES, "isolated_margin_transferred"),
    ev.ISOLATED_MARGIN_TRANSFER_REJECTED: (ACCOUNT_UPDATES, "isolated_margin_rejected"),
    ev.MARGIN_CALL_ISSUED: (MARGIN_CALLS, "margin_call_issued"),
    ev.MARGIN_CALL_ESCALATED: (MARGIN_CALLS, "margin_call_escalated"),
    ev.MARGIN_CALL_RESOLVED: (MARGIN_CALLS, "margin_call_resolved"),
    ev.LIQUIDATION_ORDER_ISSUED: (LIQUIDATION_ORDERS, "liquidation_order"),
    ev.POSITION_AUTO_DELEVERAGED: (LIQUIDATION_ORDERS, "auto_deleveraged"),
    ev.ACCOUNT_BANKRUPTED: (MARGIN_CALLS, "account_bankrupted"),
}


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
    return topic, str(decision.payload["account_id"]), value


def dead_letter_message(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
    error: str,
    existing_payload: dict[str, Any] | None = None,
) -> tuple[str, str | None, dict[str, Any]]:
    """The ``rejected`` message of a dead letter. A conflicting duplicate carries both versions
    (DESIGN.md): ``raw``, the one received, and ``existing_payload``, the one the log holds."""
    text_key = key.decode("utf-8", "replace") if key is not None else None
    value = {
        "type": "rejected",
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": text_key,
        "error": error,
        "raw": base64.b64encode(raw).decode("ascii"),
    }
    if existing_payload is not None:
        value["existing_payload"] = existing_payload
    return DLQ, text_key, value
