"""``clearing audit explain`` of the decisions about margin rates and margin models (CONTRACT v2):

* ``MarginRatesChanged`` (by its log position): one dynamic-margin sample of an underlying, redone
  from the log: the block in force, the boundary and the event that crossed it, the sample (the
  underlying's last applied mark before that event), the previous sample, the return, the EWMA
  arithmetic, the raw multiplier with its floor and cap, and the release buffer's rule.
* ``MarginModelChanged`` / ``MarginModelRejected`` (by the request id, or the log position): the
  account's cross scope under the model it asked for (the grid of each underlying under
  ``portfolio``) and under the one it was on, against its equity, its lifecycle, and the decision
  ``lifecycle.decide_margin_model`` takes again on that state (the rule has one owner).

How. A sample is taken before the event that crosses its boundary is applied (CONTRACT v2), so a
rates decision is redone on the shard's state just before its cause, with the previous sample of
the same underlying read from its own ``MarginRatesChanged`` event (``dynamicmargin.apply`` of
``change_from_payload``: what the fold goes on from), and ``dynamicmargin.sample``: the function
the ledger decided with. A model decision is redone on the state after its cause (the request
moves nothing) and the decisions of the same cause before it, with ``models.scope_risk``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from clearing.audit import grid
from clearing.audit.asof import state_at
from clearing.domain import dynamicmargin, fold, lifecycle, models
from clearing.domain import events as ev
from clearing.domain.decimalmath import PRICING_PRECISION_DIGITS, contexts
from clearing.domain.inputs import MarginModelRequest
from clearing.domain.marginmodel import CROSS, MarginModelError
from clearing.domain.numbers import LEDGER_CONTEXT, ONE, round_model_value, to_wire
from clearing.domain.state import LedgerState

MODEL_TYPES = (ev.MARGIN_MODEL_CHANGED, ev.MARGIN_MODEL_REJECTED)
RATES_TYPES = (ev.MARGIN_RATES_CHANGED,)
# The figures of a rates decision the recomputation must give again, digit for digit.
RATES_FIGURES = (
    "underlying", "sample_at", "sample_price", "log_return", "volatility", "raw_multiplier", "multiplier",
    "previous_multiplier", "index",
)  # fmt: skip


class RatesExplainError(LookupError):
    pass


def _w(value: Decimal | None) -> str | None:
    return None if value is None else to_wire(value)


def _shown(value: Decimal) -> str:
    """An intermediate figure as a person reads it: half-even to 12 places."""
    return to_wire(round_model_value(value))


def _decision_row(conn: sa.Connection, position: int) -> Any:
    return conn.execute(
        sa.text("SELECT position, shard, type, payload, occurred_at, cause_position FROM events WHERE position = :p"),
        {"p": position},
    ).one_or_none()


def find_model_decision(conn: sa.Connection, request_id: str) -> Any:
    """The ``MarginModelChanged`` or ``MarginModelRejected`` that answered ``request_id`` (None)."""
    return conn.execute(
        sa.text(
            "SELECT position, shard, type, payload, occurred_at, cause_position FROM events "
            "WHERE type = ANY(:types) AND payload ->> 'request_id' = :id ORDER BY position LIMIT 1"
        ),
        {"types": list(MODEL_TYPES), "id": request_id},
    ).one_or_none()


def decision_at(conn: sa.Connection, position: int) -> Any:
    row = _decision_row(conn, position)
    if row is None:
        raise RatesExplainError(f"no event at log position {position}")
    return row


def _cause(conn: sa.Connection, decision: Any) -> dict[str, Any]:
    cause = conn.execute(
        sa.text("SELECT position, type, payload, occurred_at FROM events WHERE position = :p"),
        {"p": decision.cause_position},
    ).one()
    return {
        "position": cause.position,
        "type": cause.type,
        "payload": cause.payload,
        "occurred_at": cause.occurred_at.isoformat(),
    }


def _same_cause_before(conn: sa.Connection, decision: Any) -> list[Any]:
    return list(
        conn.execute(
            sa.text(
                "SELECT type, payload FROM events WHERE shard = :s AND position > :c AND position < :p "
                "ORDER BY position"
            ),
            {"s": decision.shard, "c": decision.cause_position, "p": decision.position},
        )
    )


def _decision(decision: Any) -> dict[str, Any]:
    return {
        "position": decision.position,
        "type": decision.type,
        "payload": decision.payload,
        "occurred_at": decision.occurred_at.isoformat(),
    }


# ---------------------------------------------------------------------------------------------
# MarginRatesChanged


def explain_rates(conn: sa.Connection, decision: Any) -> dict[str, Any]:
    """One dynamic-margin sample redone from the log (module docstring)."""
    payload = decision.payload
    shard = int(decision.shard)
    cause_position = int(decision.cause_position)
    # The state just before the cause: the sample is taken before the crossing event is applied.
    state = state_at(conn, shard, cause_position - 1)
    previous_row = conn.execute(
        sa.text(
            "SELECT position, payload FROM events WHERE shard = :s AND type = :t AND position < :p "
            "AND payload ->> 'underlying' = :u ORDER BY position DESC LIMIT 1"
        ),
        {"s": shard, "t": ev.MARGIN_RATES_CHANGED, "p": decision.position, "u": str(payload["underlying"])},
    ).one_or_none()
    previous = None if previous_row is None else {"position": int(previous_row.position), **previous_row.payload}
    return {
        "kind": "rates",
        "id": str(decision.position),
        "decision": _decision(decision),
        "cause": _cause(conn, decision),
        **rates_figures(state, payload, previous),
    }


def rates_figures(state: LedgerState, payload: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """A ``MarginRatesChanged`` decision (``payload``) redone on ``state``, the shard's state just
    before the decision's cause, from ``previous``, the payload of the underlying's sample before
    it (None: this is the first): the block in force, the sample, every step of the arithmetic,
    the recomputed figures and whether they are the decision's."""
    underlying = str(payload["underlying"])
    spec = state.parameters.dynamic_margin_spec(underlying)
    if spec is None:
        raise RatesExplainError(
            f"the parameters in force ({state.parameters.version}) have no dynamic_margin block for {underlying}"
        )
    before = dynamicmargin.VolatilityState(underlying)
    if previous is not None:
        before = dynamicmargin.apply(before, dynamicmargin.change_from_payload(previous))
    mark = state.marks.get(underlying)
    sample_at = datetime.fromisoformat(str(payload["sample_at"]))
    with localcontext(LEDGER_CONTEXT):
        _, change = dynamicmargin.sample(spec, before, sample_at, None if mark is None else mark.price)
        if change is None:
            raise RatesExplainError(f"{underlying} had no applied mark before the sample: no sample to explain")
        recomputed = dynamicmargin.change_payload(change)
        steps = _rates_steps(spec, before, change)
    matches = all(_same_figure(name, payload.get(name), recomputed[name]) for name in RATES_FIGURES)
    return {
        "parameters_version": state.parameters.version,
        "block": {
            "sample_seconds": spec.sample_seconds,
            "lambda": to_wire(spec.lambda_),
            "initial_volatility": to_wire(spec.initial_volatility),
            "reference_volatility": to_wire(spec.reference_volatility),
            "multiplier_floor": to_wire(spec.multiplier_floor),
            "multiplier_cap": to_wire(spec.multiplier_cap),
            "release_buffer": to_wire(spec.release_buffer),
        },
        "sample_mark": None
        if mark is None
        else {"price": to_wire(mark.price), "occurred_at": mark.occurred_at.isoformat()},
        "previous": previous,
        "steps": steps,
        "recomputed": recomputed,
        "matches_decision": matches,
    }


def _same_figure(name: str, logged: Any, recomputed: Any) -> bool:
    if logged is None or recomputed is None:
        return logged is None and recomputed is None
    if name in ("underlying", "index"):
        return str(logged) == str(recomputed)
    if name == "sample_at":
        return datetime.fromisoformat(str(logged)) == datetime.fromisoformat(str(recomputed))
    return Decimal(str(logged)) == Decimal(str(recomputed))


def _rates_steps(spec: Any, before: dynamicmargin.VolatilityState, change: dynamicmargin.RatesChange) -> dict[str, Any]:
    """The arithmetic of one sample, each intermediate figure at 12 places (the decision's own
    figures with every digit)."""
    context = contexts(PRICING_PRECISION_DIGITS)[0].copy()
    buffered = ONE + spec.release_buffer
    ratio = context.divide(change.volatility, spec.reference_volatility)
    steps: dict[str, Any] = {
        "index": change.index,
        "sample_price": to_wire(change.sample_price),
        "volatility": to_wire(change.volatility),
        "ratio": _shown(ratio),
        "raw_multiplier": to_wire(change.raw_multiplier),
        "buffered_raw": to_wire(buffered * change.raw_multiplier),
        "multiplier": to_wire(change.multiplier),
        "previous_multiplier": to_wire(change.previous_multiplier),
    }
    if change.log_return is None:
        return steps
    previous_price = before.sample_price
    if previous_price is None:  # pragma: no cover - a started state has its sample
        raise RatesExplainError("a later sample without its previous one")
    r = change.log_return
    variance = context.add(
        context.multiply(spec.lambda_, context.multiply(before.volatility, before.volatility)),
        context.multiply(ONE - spec.lambda_, context.multiply(r, r)),
    )
    held = max(change.raw_multiplier, change.previous_multiplier)
    steps.update(
        previous_sample_price=to_wire(previous_price),
        previous_volatility=to_wire(before.volatility),
        repeated=change.sample_price == previous_price,
        log_return=_shown(r),
        variance=_shown(variance),
        held=to_wire(held),
        rule=(
            "raw above the previous multiplier: the multiplier follows raw"
            if change.raw_multiplier > change.previous_multiplier
            else "the buffer holds the multiplier at its previous value"
            if change.multiplier == change.previous_multiplier
            else "the multiplier comes down to (1 + release_buffer) x raw"
        ),
    )
    return steps


def render_rates(result: dict[str, Any]) -> str:
    d, c, b, s = result["decision"], result["cause"], result["block"], result["steps"]
    p = d["payload"]
    u = p["underlying"]
    out = [
        f"{d['type']} at log position {d['position']}: dynamic margin of {u}, sample t = {s['index']} at the boundary "
        f"{p['sample_at']}, risk parameters {result['parameters_version']}.",
        f"Cause: {c['type']} at position {c['position']} ({c['occurred_at']}) moved event time past the boundary; "
        "the sample is taken before that event is applied.",
        f"Block: sample every {b['sample_seconds']} s, lambda {b['lambda']}, initial volatility "
        f"{b['initial_volatility']}, reference volatility {b['reference_volatility']}, multiplier floor "
        f"{b['multiplier_floor']}, cap {b['multiplier_cap']}, release buffer {b['release_buffer']}.",
    ]
    mark = result["sample_mark"]
    said = "" if mark is None else f" (the mark of {mark['occurred_at']})"
    out.append(
        f"Sample S_{s['index']} = the last applied mark of {u} at or before the boundary = {s['sample_price']}{said}"
    )
    if s["index"] == 0 or "log_return" not in s:
        out += [
            f"First sample: no return; sigma_0 = initial_volatility = {s['volatility']}",
            f"raw_0 = min(max(sigma_0 / reference_volatility, floor), cap) = min(max({s['volatility']} / "
            f"{b['reference_volatility']} = {s['ratio']}, {b['multiplier_floor']}), {b['multiplier_cap']}) = "
            f"{s['raw_multiplier']}",
            f"multiplier_0 = (1 + release_buffer) x raw_0 = (1 + {b['release_buffer']}) x {s['raw_multiplier']} = "
            f"{s['multiplier']} (before it the multiplier was 1)",
        ]
    else:
        t, prev = s["index"], result["previous"]
        out += [
            f"Previous sample (position {prev['position']}, {prev['sample_at']}): S_{t - 1} = "
            f"{s['previous_sample_price']}, sigma_{t - 1} = {s['previous_volatility']}, multiplier_{t - 1} = "
            f"{s['previous_multiplier']}"
            + (" (no new mark since: the sample repeats, r = 0)" if s["repeated"] else ""),
            f"r_{t} = ln(S_{t} / S_{t - 1}) = ln({s['sample_price']} / {s['previous_sample_price']}) = "
            f"{s['log_return']}",
            f"sigma_{t}^2 = lambda x sigma_{t - 1}^2 + (1 - lambda) x r_{t}^2 = {b['lambda']} x "
            f"{s['previous_volatility']}^2 + (1 - {b['lambda']}) x {s['log_return']}^2 = {s['variance']}",
            f"sigma_{t} = sqrt({s['variance']}), half-even to 12 places = {s['volatility']}",
            f"raw_{t} = min(max(sigma_{t} / reference_volatility, floor), cap) = min(max({s['volatility']} / "
            f"{b['reference_volatility']} = {s['ratio']}, {b['multiplier_floor']}), {b['multiplier_cap']}) = "
            f"{s['raw_multiplier']}",
            f"multiplier_{t} = min((1 + release_buffer) x raw_{t}, max(raw_{t}, multiplier_{t - 1})) = "
            f"min({s['buffered_raw']}, max({s['raw_multiplier']}, {s['previous_multiplier']}) = {s['held']}) = "
            f"{s['multiplier']}: {s['rule']}",
        ]
    r = result["recomputed"]
    out += [
        "",
        "Recomputed: " + ", ".join(f"{k} {r[k]}" for k in RATES_FIGURES if r.get(k) is not None),
        f"Decision payload: {_json(p)}",
        "The recomputation matches the decision."
        if result["matches_decision"]
        else "THE RECOMPUTATION DOES NOT MATCH THE DECISION.",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# MarginModelChanged / MarginModelRejected


def _state_before(conn: sa.Connection, decision: Any) -> LedgerState:
    state = state_at(conn, int(decision.shard), int(decision.cause_position))
    for row in _same_cause_before(conn, decision):
        fold.apply(state, row.type, None, row.payload)
    return state


def explain_model(conn: sa.Connection, decision: Any) -> dict[str, Any]:
    """A margin-model decision redone from the log (module docstring)."""
    state = _state_before(conn, decision)
    return {
        "kind": "model",
        "id": str(decision.payload.get("request_id")),
        "decision": _decision(decision),
        "cause": _cause(conn, decision),
        **model_figures(state, decision.type, decision.payload, decision.occurred_at),
    }


def model_figures(
    state: LedgerState, decision_type: str, payload: dict[str, Any], occurred_at: datetime | None = None
) -> dict[str, Any]:
    """A margin-model decision of ``decision_type`` (``payload``) redone on ``state``, the state the
    ledger decided on: the cross scope under the model the account is on and under the one it
    asked for (with their grids), and the decision ``lifecycle.decide_margin_model`` (the rule's
    one owner) takes again on that state, compared with the logged one field by field."""
    account_id = str(payload["account_id"])
    requested = str(payload["model"])
    account = state.accounts.get(account_id)
    if account is None:
        raise RatesExplainError(f"account {account_id} is not in the state the decision was taken on")
    request = MarginModelRequest(str(payload["request_id"]), account_id, requested, occurred_at or _NO_TIME)
    with localcontext(LEDGER_CONTEXT):
        current = models.scope_risk(state, account, CROSS, liquidation_prices=False)
        under: dict[str, Any] | None = None
        problem: str | None = None
        if requested not in models.MODELS:
            problem = f"model {requested!r} is not available (available: {', '.join(sorted(models.MODELS))})"
        else:
            candidate = account.copy()
            candidate.margin_model = requested
            try:
                asked = models.scope_risk(state, candidate, CROSS, liquidation_prices=False)
            except MarginModelError as error:
                problem = str(error)
            else:
                under = {
                    "equity": to_wire(asked.equity),
                    "initial_margin": to_wire(asked.initial_margin),
                    "maintenance_margin": to_wire(asked.maintenance_margin),
                    "meets_initial_margin": asked.equity >= asked.initial_margin,
                    "portfolio": grid.scope_grids(state, asked),
                }
        decided = lifecycle.decide_margin_model(state, request)
    statuses = {scope: status.status for scope, status in sorted(account.margin.items())}
    pending = sorted(order for status in account.margin.values() for order in status.pending_orders)
    recomputed: dict[str, Any] = {"type": decided.TYPE, **decided.payload()}
    matches = decision_type == decided.TYPE and all(
        _same_value(payload.get(name), value) for name, value in decided.payload().items()
    )
    return {
        "account_id": account_id,
        "parameters_version": state.parameters.version,
        "valuation_asset": state.parameters.valuation_asset,
        "current_model": account.margin_model,
        "requested_model": requested,
        "statuses": statuses,
        "pending_orders": pending,
        "under_current": {
            "equity": to_wire(current.equity),
            "initial_margin": to_wire(current.initial_margin),
            "maintenance_margin": to_wire(current.maintenance_margin),
            "portfolio": grid.scope_grids(state, current),
        },
        "under_requested": under,
        "problem": problem,
        "recomputed": recomputed,
        "matches_decision": matches,
    }


_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # a request's time does not enter its decision


def _same_value(logged: Any, recomputed: Any) -> bool:
    if isinstance(logged, str) and isinstance(recomputed, str) and logged != recomputed:
        try:
            return Decimal(logged) == Decimal(recomputed)
        except ArithmeticError:
            return False
    return bool(logged == recomputed)


def render_model(result: dict[str, Any]) -> str:
    d, c = result["decision"], result["cause"]
    p = d["payload"]
    va = result["valuation_asset"]
    now, asked = result["under_current"], result["under_requested"]
    statuses = ", ".join(f"{scope} {status}" for scope, status in result["statuses"].items()) or "no margin status"
    out = [
        f"{d['type']} at log position {d['position']}: account {result['account_id']} asked (request "
        f"{p.get('request_id')}) to move its cross scope from the {result['current_model']} model to "
        f"{result['requested_model']}; risk parameters {result['parameters_version']}.",
        f"Cause: {c['type']} at position {c['position']} ({c['occurred_at']}).",
        "Rule: approved only for another model than the one in force, while no scope of the account is "
        "liquidating or bankrupt and no liquidation order is pending, and when the cross equity meets the "
        "initial margin under the new model.",
        f"Lifecycle: {statuses}; liquidation orders pending: {', '.join(result['pending_orders']) or 'none'}.",
        f"Under {result['current_model']} (now): equity {now['equity']}, initial margin {now['initial_margin']}, "
        f"maintenance margin {now['maintenance_margin']} {va}",
    ]
    if now["portfolio"] is not None:
        out += grid.scope_grid_lines(now["portfolio"], va)
    if asked is None:
        out.append(f"Under {result['requested_model']}: cannot be evaluated: {result['problem']}")
    else:
        out.append(
            f"Under {result['requested_model']}: equity {asked['equity']}, initial margin {asked['initial_margin']}, "
            f"maintenance margin {asked['maintenance_margin']} {va}"
        )
        if asked["portfolio"] is not None:
            out += grid.scope_grid_lines(asked["portfolio"], va)
        verdict = ">=" if asked["meets_initial_margin"] else "<"
        out.append(
            f"Equity {asked['equity']} {verdict} initial margin {asked['initial_margin']} under "
            f"{result['requested_model']}: " + ("meets it" if asked["meets_initial_margin"] else "does not meet it")
        )
    r = result["recomputed"]
    said = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("type", "account_id", "request_id", "model"))
    out += [
        "",
        f"Recomputed: {r['type']}" + (f" ({said})" if said else ""),
        f"Decision payload: {_json(p)}",
        "The recomputation matches the decision."
        if result["matches_decision"]
        else "THE RECOMPUTATION DOES NOT MATCH THE DECISION.",
    ]
    return "\n".join(out)


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True)
