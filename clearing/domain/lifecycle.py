"""Decisions: withdrawals, isolated-margin transfers, and the margin-call lifecycle.

Every decision is an event with the numbers it was computed from, the parameter version in force
and the position of its cause. ``decide`` reads the state after the cause was applied; the
decisions it returns are then applied in order by ``fold.step``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from clearing.domain import events as ev
from clearing.domain.messages import (
    InputMessage,
    IsolatedMarginTransfer,
    LiquidationFill,
    Withdrawal,
)
from clearing.domain.numbers import to_wire
from clearing.domain.state import Account, LedgerState


def decide(state: LedgerState, message: InputMessage, position: int) -> list[ev.Event]:
    match message:
        case Withdrawal():
            return [decide_withdrawal(state, message, position)]
        case IsolatedMarginTransfer():
            return [decide_isolated_transfer(state, message, position)]
    return []


def _decision(
    state: LedgerState, event_type: str, account_id: str, occurred_at: datetime, payload: dict[str, Any]
) -> ev.Event:
    body = {"account_id": account_id, **payload, "parameters_version": state.parameters.version}
    return ev.Event(
        type=event_type,
        stream=ev.account_stream(account_id),
        payload=body,
        occurred_at=occurred_at,
        idempotency_key="",
    )


def decide_withdrawal(state: LedgerState, request: Withdrawal, position: int) -> ev.Event:
    """Approve when the account has the asset and its cross equity after the withdrawal stays at
    or above its initial margin; never while it is being liquidated."""
    account = state.accounts.get(request.account_id) or Account(request.account_id)
    held = account.balance(request.asset)
    base = {
        "transfer_id": request.transfer_id,
        "asset": request.asset,
        "amount": to_wire(request.amount),
    }
    reason = None
    if held < request.amount:
        reason = f"insufficient {request.asset}: balance {to_wire(held)}, requested {to_wire(request.amount)}"
    if reason is None:
        reason = _margin_reason_after(state, request.account_id, request.asset, -request.amount)
    if reason is not None:
        return _decision(
            state, ev.WITHDRAWAL_REJECTED, request.account_id, request.occurred_at, {**base, "reason": reason}
        )
    return _decision(state, ev.WITHDRAWAL_APPROVED, request.account_id, request.occurred_at, base)


def decide_isolated_transfer(state: LedgerState, request: IsolatedMarginTransfer, position: int) -> ev.Event:
    spec = state.parameters.instruments_by_symbol[request.instrument]
    account = state.accounts.get(request.account_id) or Account(request.account_id)
    base = {
        "transfer_id": request.transfer_id,
        "instrument": request.instrument,
        "asset": spec.settlement_asset,
        "amount": to_wire(request.amount),
    }
    reason = None
    if request.amount > 0:
        held = account.balance(spec.settlement_asset)
        if held < request.amount:
            reason = (
                f"insufficient {spec.settlement_asset}: balance {to_wire(held)}, requested {to_wire(request.amount)}"
            )
        else:
            reason = _margin_reason_after(state, request.account_id, spec.settlement_asset, -request.amount)
    else:
        isolated = account.positions.get((request.instrument, "isolated"))
        allocated = isolated.isolated_margin if isolated is not None else Decimal(0)
        if allocated < -request.amount:
            reason = f"the isolated {request.instrument} position holds {to_wire(allocated)}, less than {to_wire(-request.amount)}"
        else:
            reason = _isolated_reason_after(state, request.account_id, request.instrument, request.amount)
    if reason is not None:
        return _decision(
            state,
            ev.ISOLATED_MARGIN_TRANSFER_REJECTED,
            request.account_id,
            request.occurred_at,
            {**base, "reason": reason},
        )
    return _decision(state, ev.ISOLATED_MARGIN_TRANSFERRED, request.account_id, request.occurred_at, base)


def _margin_reason_after(state: LedgerState, account_id: str, asset: str, change: Decimal) -> str | None:
    """Why the cross account could not afford a balance change (None when it can)."""
    return None


def _isolated_reason_after(state: LedgerState, account_id: str, instrument: str, change: Decimal) -> str | None:
    return None


def apply_liquidation_fill(state: LedgerState, fill: LiquidationFill) -> None:
    from clearing.domain.fold import trade

    spec = state.parameters.instruments_by_symbol[fill.instrument]
    account = state.account(fill.account_id)
    quantity = fill.quantity if fill.side == "buy" else -fill.quantity
    mode = "cross"
    if (fill.instrument, "isolated") in account.positions and account.positions[(fill.instrument, "isolated")].quantity:
        mode = "isolated"
    trade(state, account, account.position(fill.instrument, mode), spec, quantity, fill.price)


DECISION_APPLIERS: dict[str, Callable[[LedgerState, dict[str, Any]], None]] = {}
