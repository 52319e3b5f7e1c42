"""The snapshot codec: a shard's ``LedgerState`` as plain JSON values and back
(``clearing.engine.snapshots`` spells them as bytes and stores them).

Compiled with the fold (clearing/native.py): ``audit verify`` spells the state it re-ran at every
stored snapshot to compare it byte for byte (``state_bytes``), and the live ledger spells one
every ``SNAPSHOT_EVERY_EVENTS`` events (docs/performance.md has the times).

Decimals are their exact wire text (``to_wire``), times RFC 3339, the risk parameters their
document. ``touched`` and ``marks_touched`` (what the next batch must write) are not part of it: a
snapshot is taken between batches, when both are empty.

The open fills and the busted fills (``LedgerState.open_fills``, ``busted_fills``, the pairing
record) are always written, empty or not: a snapshot says whether it carries the pairing record.
One written before the record existed (no ``open_fills`` key) reads as a state without open or
busted fills, which it need not have been: ``audit verify`` compares it with the re-run state
without the record (``clearing.engine.snapshots.snapshot_matches``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from clearing.domain.dynamicmargin import VolatilityState
from clearing.domain.models import DEFAULT_MODEL
from clearing.domain.numbers import to_wire
from clearing.domain.params import RiskParameters, load_parameters
from clearing.domain.state import (
    Account,
    LedgerState,
    LiquidationOrder,
    MarginStatus,
    MarkState,
    OpenFill,
    Position,
)

SNAPSHOT_FORMAT: Final = 1
PAIRING_KEYS: Final = ("open_fills", "busted_fills")  # the pairing record's keys in a snapshot

_PARAMETERS_CACHE: Final[dict[str, RiskParameters]] = {}


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def encode_state(state: LedgerState) -> dict[str, Any]:
    """The state as plain JSON values."""
    document = _encode_books(state)
    document.update(encode_pairing(state))
    return document


def encode_pairing(state: LedgerState) -> dict[str, Any]:
    """The open fills, oldest first (their order is the order they are pushed out in), and the
    busted fills; both keys even when empty (``PAIRING_KEYS``)."""
    return {
        "open_fills": [
            [trade_id, f.fill_id, f.account_id, f.instrument, f.side, to_wire(f.quantity), to_wire(f.price)]
            for trade_id, f in state.open_fills.items()
        ],
        "busted_fills": dict(state.busted_fills),
    }


def encode_books(state: LedgerState) -> dict[str, Any]:
    """The state as plain JSON values without the pairing record: what a snapshot written before
    the record existed holds."""
    return _encode_books(state)


def carries_pairing(data: dict[str, Any]) -> bool:
    """Whether a snapshot's document holds the pairing record (every one written since it exists)."""
    return PAIRING_KEYS[0] in data


def decode_pairing(data: dict[str, Any], state: LedgerState) -> None:
    """``encode_pairing``'s values back into ``state``."""
    for trade_id, fill_id, account_id, instrument, side, quantity, price in data.get("open_fills", ()):
        state.open_fills[trade_id] = OpenFill(fill_id, account_id, instrument, side, Decimal(quantity), Decimal(price))
    state.busted_fills = dict(data.get("busted_fills", {}))


def _encode_books(state: LedgerState) -> dict[str, Any]:
    document = {
        "format": SNAPSHOT_FORMAT,
        "parameters": state.parameters.document(),
        "accounts": {
            account_id: {
                "balances": {asset: to_wire(amount) for asset, amount in account.balances.items()},
                "positions": [
                    [
                        p.instrument,
                        p.margin_mode,
                        to_wire(p.quantity),
                        to_wire(p.cost),
                        to_wire(p.realised_pnl),
                        to_wire(p.isolated_margin),
                        to_wire(p.funding_paid),
                    ]
                    for p in account.positions.values()
                ],
                "margin": {
                    scope: [s.status, s.margin_call_id, _t(s.deadline), list(s.pending_orders)]
                    for scope, s in account.margin.items()
                },
                "deficit": to_wire(account.deficit),
            }
            for account_id, account in state.accounts.items()
        },
        "marks": {
            symbol: [to_wire(m.price), _t(m.occurred_at), None if m.iv is None else to_wire(m.iv)]
            for symbol, m in state.marks.items()
        },
        "deposits": {asset: to_wire(v) for asset, v in state.deposits.items()},
        "withdrawals": {asset: to_wire(v) for asset, v in state.withdrawals.items()},
        "last_occurred_at": _t(state.last_occurred_at),
        "holders": {symbol: sorted(ids) for symbol, ids in state.holders.items()},
        "liquidations": {
            lid: [
                o.account_id,
                o.scope,
                o.instrument,
                o.margin_mode,
                o.side,
                to_wire(o.quantity),
                to_wire(o.remaining),
                o.cancelled,
            ]
            for lid, o in state.liquidations.items()
        },
        "deadlines": [[account_id, scope, _t(at)] for (account_id, scope), at in state.deadlines.items()],
    }
    # Written only when there is something to write, so a state without them (every state of a
    # log written before them) spells the same bytes as before: ``audit verify`` compares stored
    # snapshots byte for byte.
    models = {account_id: a.margin_model for account_id, a in state.accounts.items() if a.margin_model != DEFAULT_MODEL}
    if models:
        document["margin_models"] = models
    if state.volatility:
        document["volatility"] = {
            underlying: [
                v.started,
                _t(v.sample_at),
                None if v.sample_price is None else to_wire(v.sample_price),
                to_wire(v.volatility),
                to_wire(v.raw_multiplier),
                to_wire(v.multiplier),
                v.samples,
            ]
            for underlying, v in state.volatility.items()
        }
    return document


def decode_state(data: dict[str, Any]) -> LedgerState:
    if data.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"snapshot format {data.get('format')!r} is not {SNAPSHOT_FORMAT}")
    document = data["parameters"]
    key = json.dumps(document, sort_keys=True)
    parameters = _PARAMETERS_CACHE.get(key)
    if parameters is None:
        parameters = _PARAMETERS_CACHE[key] = load_parameters(document)
    state = LedgerState(parameters=parameters)
    for account_id, a in data["accounts"].items():
        account = Account(account_id, deficit=Decimal(a["deficit"]))
        account.balances = {asset: Decimal(v) for asset, v in a["balances"].items()}
        for instrument, mode, quantity, cost, realised, isolated, funding in a["positions"]:
            account.positions[(instrument, mode)] = Position(
                instrument,
                mode,
                Decimal(quantity),
                Decimal(cost),
                Decimal(realised),
                Decimal(isolated),
                Decimal(funding),
            )
        for scope, (status, call_id, deadline, pending) in a["margin"].items():
            account.margin[scope] = MarginStatus(status, call_id, _dt(deadline), list(pending))
        state.accounts[account_id] = account
    state.marks = {
        symbol: MarkState(Decimal(price), _dt(at) or datetime.min, None if iv is None else Decimal(iv))
        for symbol, (price, at, iv) in data["marks"].items()
    }
    state.deposits = {asset: Decimal(v) for asset, v in data["deposits"].items()}
    state.withdrawals = {asset: Decimal(v) for asset, v in data["withdrawals"].items()}
    state.last_occurred_at = _dt(data["last_occurred_at"])
    state.holders = {symbol: set(ids) for symbol, ids in data["holders"].items()}
    state.liquidations = {
        lid: LiquidationOrder(lid, acc, scope, instrument, mode, side, Decimal(q), Decimal(r), cancelled)
        for lid, (acc, scope, instrument, mode, side, q, r, cancelled) in data["liquidations"].items()
    }
    state.deadlines = {(acc, scope): _dt(at) or datetime.min for acc, scope, at in data["deadlines"]}
    for account_id, model in data.get("margin_models", {}).items():
        state.accounts[account_id].margin_model = model
    state.volatility = {
        underlying: VolatilityState(
            underlying,
            started,
            _dt(sample_at),
            None if sample_price is None else Decimal(sample_price),
            Decimal(volatility),
            Decimal(raw),
            Decimal(multiplier),
            samples,
        )
        for underlying, (started, sample_at, sample_price, volatility, raw, multiplier, samples) in data.get(
            "volatility", {}
        ).items()
    }
    decode_pairing(data, state)
    return state
