"""``clearing audit explain ADL-...``: one auto-deleveraging step (``PositionAutoDeleveraged``),
redone from the log: the bankrupt scope and the insurance fund's balance when the ledger took the
step, the bankruptcy price, the ranking table of the opposite positions at that moment (each
candidate's pnl, leverage and rank, CONTRACT v2), the quantities the round took, and the
executions of the cancelled liquidation orders that arrived after the cancel (facts, booked as
any execution: how they add up with the ADL is shown on the bankrupt position).

How: the shard's log folded up to and including the cause, then the decisions of the same cause
before the round's first step on this instrument (the cancellations, earlier instruments' steps):
the state the lifecycle ranked on. The ranking is ``clearing.domain.adl.ranking`` on that state.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from clearing.audit.asof import state_at
from clearing.domain import adl, fold, models
from clearing.domain import events as ev
from clearing.domain.numbers import LEDGER_CONTEXT, ZERO, round_model_value, to_wire


class AdlExplainError(LookupError):
    pass


def _w(value: Decimal | None) -> str | None:
    return None if value is None else to_wire(value)


def explain_adl(engine: sa.Engine, adl_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        decision = conn.execute(
            sa.text(
                "SELECT position, shard, type, payload, occurred_at, cause_position FROM events "
                "WHERE type = :t AND payload ->> 'adl_id' = :id ORDER BY position LIMIT 1"
            ),
            {"t": ev.POSITION_AUTO_DELEVERAGED, "id": adl_id},
        ).one_or_none()
        if decision is None:
            raise AdlExplainError(f"no auto-deleveraging step {adl_id!r} in the log")
        p = decision.payload
        same_cause = conn.execute(
            sa.text(
                "SELECT position, type, payload FROM events WHERE shard = :s AND cause_position = :c "
                "AND position > :c ORDER BY position"
            ),
            {"s": decision.shard, "c": decision.cause_position},
        ).all()
        steps = [
            r
            for r in same_cause
            if r.type == ev.POSITION_AUTO_DELEVERAGED
            and r.payload["bankrupt_account_id"] == p["bankrupt_account_id"]
            and r.payload["bankrupt_scope"] == p["bankrupt_scope"]
            and r.payload["instrument"] == p["instrument"]
        ]
        first = steps[0].position
        cancelled = [
            r.payload
            for r in same_cause
            if r.type == ev.LIQUIDATION_ORDER_CANCELLED and r.payload["account_id"] == p["bankrupt_account_id"]
        ]
        state = state_at(conn, int(decision.shard), int(decision.cause_position))
        for row in same_cause:
            if row.position >= first:
                break
            fold.apply(state, row.type, None, row.payload)
        late = conn.execute(
            sa.text(
                "SELECT position, payload FROM events WHERE shard = :s AND type = :t AND position > :p "
                "AND payload ->> 'liquidation_id' = ANY(:ids) ORDER BY position"
            ),
            {
                "s": decision.shard,
                "t": ev.LIQUIDATION_FILL_RECORDED,
                "p": decision.position,
                "ids": [c["liquidation_id"] for c in cancelled],
            },
        ).all()
    with localcontext(LEDGER_CONTEXT):
        return _explained(state, decision, steps, cancelled, list(late))


def _explained(state: Any, decision: Any, steps: list[Any], cancelled: list[Any], late: list[Any]) -> dict[str, Any]:
    p = decision.payload
    bankrupt = state.accounts[p["bankrupt_account_id"]]
    scope = models.scope_risk(state, bankrupt, p["bankrupt_scope"], liquidation_prices=False)
    position = scope.position(p["instrument"])
    if position is None:
        raise AdlExplainError(f"{p['adl_id']}: the bankrupt scope holds no {p['instrument']} before the step")
    long = position.quantity > ZERO
    raw, price = models.model_of(bankrupt, p["bankrupt_scope"]).bankruptcy_price(
        position, scope.equity, abs(position.quantity)
    )
    taken = {(r.payload["account_id"], r.payload["margin_mode"]): r.payload for r in steps}
    ranked = adl.ranking(state, p["instrument"], not long, exclude=bankrupt.account_id)
    table = [
        {
            "place": place + 1,
            "account_id": c.account_id,
            "margin_mode": c.margin_mode,
            "quantity": _w(c.quantity),
            "entry_price": _w(c.entry_price),
            "mark": _w(c.mark),
            "bankruptcy_price": _w(c.bankruptcy_price),
            "pnl": _w(round_model_value(c.pnl)),
            "leverage": None if c.leverage is None else _w(round_model_value(c.leverage)),
            "rank": None if c.rank is None else _w(round_model_value(c.rank)),
            "quantile": adl.quantile(place, len(ranked)),
            "taken": taken[(c.account_id, c.margin_mode)]["quantity"]
            if (c.account_id, c.margin_mode) in taken
            else "0",
            "adl_id": taken.get((c.account_id, c.margin_mode), {}).get("adl_id"),
        }
        for place, c in enumerate(ranked)
    ]
    mine = next((row for row in table if row["adl_id"] == p["adl_id"]), None)
    took = sum((Decimal(r.payload["quantity"]) for r in steps), ZERO)
    late_quantity = sum((Decimal(r.payload["quantity"]) for r in late), ZERO)
    signed_took = -took if long else took
    signed_late = sum((Decimal(r.payload["quantity"]) * (1 if r.payload["side"] == "buy" else -1) for r in late), ZERO)
    recomputed = {"price": _w(price), "rank": None if mine is None else mine["rank"]}
    return {
        "id": p["adl_id"],
        "decision": {"position": decision.position, "type": decision.type, "payload": p},
        "cause_position": decision.cause_position,
        "bankrupt": {
            "account_id": bankrupt.account_id,
            "scope": p["bankrupt_scope"],
            "equity": _w(scope.equity),
            "maintenance_margin": _w(scope.maintenance_margin),
            "position": {
                "instrument": position.instrument,
                "quantity": _w(position.quantity),
                "cost": _w(position.cost),
                "price_used": _w(position.price_used),
                "contract_size": _w(position.contract_size),
                "settlement_price": _w(position.settlement_price),
            },
            "bankruptcy_price_unrounded": _w(raw),
            "bankruptcy_price": _w(price),
        },
        "insurance_fund": _w(adl.fund_balance(state)),
        "valuation_asset": state.parameters.valuation_asset,
        "cancelled_orders": cancelled,
        "ranking": table,
        "round": [
            {"adl_id": r.payload["adl_id"], "account_id": r.payload["account_id"], "quantity": r.payload["quantity"]}
            for r in steps
        ],
        "taken_total": _w(took),
        "late_executions": [{"position": r.position, **r.payload} for r in late],
        "adds_up": {
            "position_before": _w(position.quantity),
            "auto_deleveraged": _w(signed_took),
            "late_executions": _w(signed_late),
            "position_after": _w(position.quantity + signed_took + signed_late),
            "late_quantity": _w(late_quantity),
        },
        "recomputed": recomputed,
        "matches_decision": recomputed["price"] == p["price"]
        and (mine is not None and mine["rank"] == p.get("rank") and mine["taken"] == p["quantity"]),
    }


def render_adl(result: dict[str, Any]) -> str:
    p = result["decision"]["payload"]
    b = result["bankrupt"]
    q = b["position"]
    va = result["valuation_asset"]
    sign = "+" if Decimal(q["quantity"]) < 0 else "-"
    out = [
        f"{result['id']}: {result['decision']['type']} at log position {result['decision']['position']} "
        f"(cause {result['cause_position']}): {p['account_id']} ({p['margin_mode']}) {p['side']} {p['quantity']} "
        f"{p['instrument']} at {p['price']}, booked by the ledger, no fee.",
        f"Bankrupt scope: {b['account_id']} {b['scope']}, equity {b['equity']} {va} at the marks; the insurance "
        f"fund held {result['insurance_fund']} {va}: it cannot cover {b['equity']}, so the scope is deleveraged.",
        f"  {q['instrument']}: quantity {q['quantity']}, cost {q['cost']}, mark {q['price_used']}",
        f"  Bankruptcy price = mark {q['price_used']} {sign} equity {b['equity']} / (|{q['quantity']}| x "
        f"{q['contract_size']} x {q['settlement_price']}) = {b['bankruptcy_price_unrounded']}, rounded towards the "
        f"fund = {b['bankruptcy_price']}",
    ]
    for c in result["cancelled_orders"]:
        out.append(f"  Cancelled {c['liquidation_id']} ({c['remaining']} left): {c['reason']}")
    out += [
        "",
        "Ranking of the opposite positions at that moment (pnl = (q x M - cost) / |cost|; leverage = M / |M - B|; "
        "rank = pnl x leverage when pnl > 0, else pnl / leverage; ties: the lower account id):",
    ]
    for row in result["ranking"]:
        out.append(
            f"  {row['place']}. {row['account_id']} ({row['margin_mode']}) q {row['quantity']} entry "
            f"{row['entry_price']} mark {row['mark']} B {row['bankruptcy_price']}: pnl {row['pnl']}, leverage "
            f"{row['leverage'] or 'infinite'}, rank {row['rank'] or 'infinite'} (quantile {row['quantile']}); "
            f"taken {row['taken']}" + (f" ({row['adl_id']})" if row["adl_id"] else "")
        )
    a = result["adds_up"]
    out += [
        f"Taken in this round: {result['taken_total']} of {q['quantity']}.",
        f"The bankrupt position: {a['position_before']} + ADL {a['auto_deleveraged']} + late executions of the "
        f"cancelled orders {a['late_executions']} = {a['position_after']}",
    ]
    for late in result["late_executions"]:
        out.append(
            f"  Late: {late['liquidation_id']} {late['side']} {late['quantity']} at {late['price']} "
            f"(position {late['position']}), booked as any execution"
        )
    out.append("Recomputed: " + ", ".join(f"{k} {v}" for k, v in result["recomputed"].items()))
    out.append(
        "The recomputation matches the decision."
        if result["matches_decision"]
        else "THE RECOMPUTATION DOES NOT MATCH THE DECISION."
    )
    return "\n".join(out)
