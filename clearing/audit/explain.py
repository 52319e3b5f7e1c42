"""``clearing audit explain ID``: the inputs and the arithmetic behind one margin call (``MC-...``)
or one liquidation order (``L-...``), in words and numbers a person can redo with a calculator.

How: find the decision in the log (its shard and the position of its cause), fold the shard's log
up to and including the cause (the nearest snapshot, then the tail), apply the decisions of the
same cause that the log holds before this one (the engine applied them before it decided this
one), and evaluate the scope with the margin model the engine uses. Every figure printed comes
from that state; the explanation ends by comparing the recomputed figures with the decision's
payload.

The scope's margin model says how its requirement is shown: under ``standard``, each position's
tiers (rates and amounts scaled by dynamic margin's multiplier in force) or standard option
margin; under ``portfolio``, the grid of each underlying (``clearing.audit.grid``: the moves x
volatility cells as a table with the worst cell marked, the extreme cells with their weight, and
W, S, IM = max(W, S), MM = maintenance_factor x IM, summed over the underlyings), and the worst
cells a decision names are compared with the recomputed ones.

Other decisions (``explain_any``): an auto-deleveraging step (``ADL-...``, ``adl_explain``); a
margin-model request by its request id, and a dynamic-margin sample (``MarginRatesChanged``) by
its log position (``rates_explain``); any of these, or one decision of a call (an escalation), by
its log position.

Rounding rules (``clearing/domain/numbers.py``): requirements and amounts owed round up to 1e-8;
ratios round up to 1e-10; a bankruptcy price rounds up for a long and down for a short, to 1e-10.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from clearing.audit import grid, rates_explain
from clearing.audit.adl_explain import AdlExplainError, explain_adl, render_adl
from clearing.audit.asof import state_at
from clearing.domain import dynamicmargin, fold, lifecycle, models
from clearing.domain import events as ev
from clearing.domain.levels import Level
from clearing.domain.marginmodel import (
    CROSS,
    ISOLATED,
    Planned,
    PositionRisk,
    ScopeRisk,
    quantity_step,
    scope_instrument,
)
from clearing.domain.numbers import (
    LEDGER_CONTEXT,
    ZERO,
    divide,
    round_display_price,
    to_wire,
)
from clearing.domain.state import LedgerState

CALL_TYPES = (
    ev.MARGIN_CALL_ISSUED,
    ev.MARGIN_CALL_ESCALATED,
    ev.MARGIN_CALL_RESOLVED,
    ev.ACCOUNT_BANKRUPTED,
    ev.INSURANCE_FUND_DRAWN,
)


class ExplainError(LookupError):
    pass


def w(value: Decimal | None) -> str | None:
    return None if value is None else to_wire(value)


def _find(conn: sa.Connection, decision_id: str, position: int | None = None) -> tuple[Any, list[Any]]:
    """The decision to explain (the first of the call or order, or the one at ``position``) and
    the later events of the same call or order."""
    types: tuple[str, ...]
    if decision_id.startswith("L-"):
        # The order, then its cancellation by auto-deleveraging and its executions (a late one
        # included: an execution is a fact, whatever the order's state).
        types = (ev.LIQUIDATION_ORDER_ISSUED, ev.LIQUIDATION_ORDER_CANCELLED, ev.LIQUIDATION_FILL_RECORDED)
        field = "liquidation_id"
    else:
        types, field = CALL_TYPES, "margin_call_id"
    rows = conn.execute(
        sa.text(
            "SELECT position, shard, type, payload, occurred_at, cause_position FROM events "
            "WHERE type = ANY(:types) AND payload ->> :field = :id ORDER BY position"
        ),
        {"types": list(types), "field": field, "id": decision_id},
    ).all()
    if not rows:
        raise ExplainError(f"no margin call or liquidation order {decision_id!r} in the log")
    index = 0
    if position is not None:
        index = next((i for i, row in enumerate(rows) if int(row.position) == position), -1)
        if index < 0:
            raise ExplainError(f"{decision_id} has no decision at log position {position}")
    return rows[index], list(rows[index + 1 :])


def _state_before(conn: sa.Connection, decision: Any) -> LedgerState:
    state = state_at(conn, int(decision.shard), int(decision.cause_position))
    for row in conn.execute(
        sa.text(
            "SELECT type, payload FROM events WHERE shard = :s AND position > :c AND position < :p ORDER BY position"
        ),
        {"s": decision.shard, "c": decision.cause_position, "p": decision.position},
    ):
        fold.apply(state, row.type, None, row.payload)
    return state


def _option_figures(p: PositionRisk) -> dict[str, Any]:
    """An option's standard option margin (CONTRACT v2), with every term of every max."""
    option = p.option
    assert option is not None
    terms = option.per_contract
    return {
        "underlying": option.underlying,
        "underlying_mark": w(option.underlying_used),
        "underlying_marked": option.underlying_mark is not None,
        "option_type": option.option_type,
        "strike": w(option.strike),
        "short": p.quantity < 0,
        "initial_rate": w(option.rates.initial_rate),
        "minimum_rate": w(option.rates.minimum_rate),
        "maintenance_rate": w(option.rates.maintenance_rate),
        "out_of_the_money": w(terms.out_of_the_money),
        "rate_term": w(terms.rate_term),
        "floor_term": w(terms.floor_term),
        "maintenance_underlying_term": w(terms.maintenance_underlying_term),
        "maintenance_mark_term": w(terms.maintenance_mark_term),
        "initial_per_contract": w(terms.initial),
        "maintenance_per_contract": w(terms.maintenance),
        "contracts": w(option.contracts),
    }


def _position_figures(p: PositionRisk, state: LedgerState) -> dict[str, Any]:
    entry = divide(p.cost, p.quantity * p.contract_size) if p.quantity else None
    figures: dict[str, Any] = {
        "instrument": p.instrument,
        "margin_mode": p.margin_mode,
        "quantity": w(p.quantity),
        "contract_size": w(p.contract_size),
        "cost": w(p.cost),
        "entry_price": w(entry),
        "mark": w(p.mark),
        "price_used": w(p.price_used),
        "settlement_asset": p.settlement_asset,
        "settlement_price": w(p.settlement_price),
        "notional": w(p.notional),
    }
    if p.option is not None:
        figures["value"] = w(p.unrealised_pnl)  # an option counts at its value (long +, short -)
    else:
        # The tier terms in force: the document's, scaled by dynamic margin's multiplier of the
        # instrument's underlying (the rates and amounts the model read).
        spec = state.parameters.instruments_by_symbol[p.instrument]
        multiplier = state.multiplier(spec.underlying_symbol)
        tier = dynamicmargin.scaled_tier_table(spec, multiplier)[p.tier - 1]
        figures.update(
            multiplier=w(multiplier),
            tier=p.tier,
            tier_notional_floor=w(tier.notional_floor),
            tier_notional_cap=w(tier.notional_cap),
            initial_rate=w(p.initial_rate),
            initial_amount=w(tier.initial_amount),
            maintenance_rate=w(p.maintenance_rate),
            maintenance_amount=w(tier.maintenance_amount),
        )
    figures.update(
        unrealised_pnl=w(p.unrealised_pnl),
        initial_margin=w(p.initial_margin),
        maintenance_margin=w(p.maintenance_margin),
    )
    if p.option is not None:
        figures["option"] = _option_figures(p)
    return figures


def _scope_figures(state: LedgerState, account_id: str, scope_name: str) -> tuple[ScopeRisk, dict[str, Any]]:
    account = state.accounts[account_id]
    scope = models.scope_risk(state, account, scope_name)
    collateral: list[dict[str, Any]] = []
    if scope_name == CROSS:
        valued = models.account_risk(state, account, liquidation_prices=False).collateral
        values = {value.asset: value for value in valued}
        for asset, amount in sorted(account.balances.items()):
            if amount == 0:
                continue
            price = state.asset_price(asset)
            value = values[asset]
            spec = state.parameters.asset(asset)
            collateral.append(
                {
                    "asset": asset,
                    "amount": w(amount),
                    "price": w(price),
                    "haircut_bands": [
                        {"from": w(lo), "to": w(hi), "haircut": w(cut)} for lo, hi, cut in spec.haircut_bands()
                    ]
                    if spec is not None
                    else [],
                    "haircut_units": w(value.haircut_units),
                    "value": w(value.value),
                }
            )
    else:
        instrument = scope_instrument(scope_name) or ""
        position = account.positions.get((instrument, ISOLATED))
        collateral.append(
            {"isolated_margin": w(position.isolated_margin if position else ZERO), "value": w(scope.collateral)}
        )
    policy = state.parameters.margin_call
    instruments = state.parameters.instruments_by_symbol
    held = sorted({instruments[p.instrument].underlying_symbol for p in scope.positions if p.instrument in instruments})
    figures = {
        "account_id": account_id,
        "scope": scope_name,
        "margin_model": models.model_of(account, scope_name).name,
        "multipliers": {underlying: w(state.multiplier(underlying)) for underlying in held},
        "parameters_version": state.parameters.version,
        "valuation_asset": state.parameters.valuation_asset,
        "collateral": collateral,
        "collateral_value": w(scope.collateral),
        "positions": [_position_figures(p, state) for p in scope.positions],
        "unrealised_pnl": w(scope.unrealised_pnl),
        "equity": w(scope.equity),
        "initial_margin": w(scope.initial_margin),
        "maintenance_margin": w(scope.maintenance_margin),
        "margin_ratio": w(scope.margin_ratio),
        "thresholds": {
            "warning_ratio": w(policy.warning_ratio),
            "maintenance_ratio": "1",
            "resolve_ratio": w(policy.resolve_ratio),
            "grace_period_seconds": policy.grace_period_seconds,
        },
    }
    portfolio = grid.scope_grids(state, scope)
    if portfolio is not None:
        figures["portfolio"] = portfolio
        figures["worst_cells"] = grid.worst_cells(scope)
    return scope, figures


def _liquidation_steps(state: LedgerState, scope: ScopeRisk, order: dict[str, Any], planned: Planned) -> dict[str, Any]:
    """The quantity search of one order: the requirement and fee after reducing by q (with the
    orders of the same call before it, ``planned``), at the chosen quantity and one step less."""
    policy = state.parameters.liquidation
    account = state.accounts[order["account_id"]]
    model = models.model_of(account, scope.scope)
    evaluated = models.evaluated_scope(state, account, scope)
    equity, maintenance = planned.equity, planned.maintenance
    p = next(x for x in scope.positions if x.instrument == order["instrument"])
    held = abs(p.quantity)
    step = quantity_step(p.quantity)

    def after(reduce: Decimal) -> dict[str, Any]:
        left = model.reduction(evaluated, planned, p, reduce)
        return {
            "reduce_by": w(reduce),
            "left": w(left.left),
            "notional_left": w(left.notional),
            "tier_left": left.tier,
            "maintenance_left": w(left.requirement),
            "fee": w(left.fee),
            "equity_after": w(left.equity),
            "maintenance_after": w(left.maintenance),
            "target_x_equity_after": w(policy.target_ratio * left.equity),
            "meets_target": left.meets(policy.target_ratio),
        }

    quantity = Decimal(order["quantity"])
    long = p.quantity > 0
    raw, bankruptcy = model.bankruptcy_price(p, equity, quantity)
    checks = [after(quantity)]
    if quantity - step > 0 and quantity < held:
        checks.append(after(quantity - step))
    return {
        "position": _position_figures(p, state),
        "equity_before": w(equity),
        "maintenance_before": w(maintenance),
        "target_ratio": w(policy.target_ratio),
        "fee_rate": w(policy.fee_rate),
        "quantity_step": w(step),
        "quantity": w(quantity),
        "full": quantity == held,
        "at_quantity_and_one_step_less": checks,
        "bankruptcy_price_unrounded": w(raw),
        "mark_shown": w(lifecycle.shown_price(p)),
        "bankruptcy_price": w(bankruptcy),
        "bankruptcy_rounding": "up (long: sold no lower)" if long else "down (short: bought back no higher)",
    }


def _earlier_orders(conn: sa.Connection, decision: Any) -> list[Any]:
    """The liquidation orders of the same cause that the log holds before ``decision``."""
    return list(
        conn.execute(
            sa.text(
                "SELECT payload FROM events WHERE shard = :s AND position > :c AND position < :p "
                "AND type = :t ORDER BY position"
            ),
            {
                "s": decision.shard,
                "c": decision.cause_position,
                "p": decision.position,
                "t": ev.LIQUIDATION_ORDER_ISSUED,
            },
        )
    )


def explain(engine: sa.Engine, decision_id: str, position: int | None = None) -> dict[str, Any]:
    """The explanation of a margin call or liquidation order: its first decision, or the one at
    log ``position`` (an escalation, a resolution)."""
    with engine.connect() as conn:
        decision, later = _find(conn, decision_id, position)
        cause = conn.execute(
            sa.text("SELECT position, type, payload, occurred_at FROM events WHERE position = :p"),
            {"p": decision.cause_position},
        ).one()
        state = _state_before(conn, decision)
        earlier = _earlier_orders(conn, decision) if decision.type == ev.LIQUIDATION_ORDER_ISSUED else []
    payload = decision.payload
    account_id = payload["account_id"]
    with _ledger_context():
        scope, figures = _scope_figures(state, account_id, payload["scope"])
        result: dict[str, Any] = {
            "id": decision_id,
            "decision": {
                "position": decision.position,
                "type": decision.type,
                "payload": payload,
                "occurred_at": decision.occurred_at.isoformat(),
            },
            "cause": {"position": cause.position, "type": cause.type, "payload": cause.payload},
            "later_events": [{"position": r.position, "type": r.type, "payload": r.payload} for r in later],
            "scope": figures,
        }
        recomputed: dict[str, Any]
        if decision.type == ev.LIQUIDATION_ORDER_ISSUED:
            # Orders of one call are chosen one after another: each starts from the equity and
            # maintenance the previous orders of the same cause would leave.
            # The model measures each against the book with the earlier ones applied (``Planned``).
            planned = Planned({}, scope.equity, scope.maintenance_margin)
            for row in earlier:
                if row.payload.get("margin_call_id") != payload.get("margin_call_id"):
                    continue
                step = _liquidation_steps(state, scope, row.payload, planned)
                planned = Planned(
                    {**planned.reduced, row.payload["instrument"]: Decimal(row.payload["quantity"])},
                    Decimal(step["at_quantity_and_one_step_less"][0]["equity_after"]),
                    Decimal(step["at_quantity_and_one_step_less"][0]["maintenance_after"]),
                )
            search = _liquidation_steps(state, scope, payload, planned)
            result["liquidation"] = search
            recomputed = {
                "equity": search["equity_before"],
                "maintenance_margin": search["maintenance_before"],
                "bankruptcy_price": search["bankruptcy_price"],
                "mark": search["mark_shown"],
            }
        else:
            deadline = None
            if payload.get("level") == Level.MAINTENANCE and payload.get("deadline") is not None:
                grace = timedelta(seconds=state.parameters.margin_call.grace_period_seconds)
                deadline = (decision.occurred_at + grace).isoformat()
            recomputed = {
                "equity": w(scope.equity),
                "initial_margin": w(scope.initial_margin),
                "maintenance_margin": w(scope.maintenance_margin),
                "margin_ratio": w(scope.margin_ratio),
                "shortfall": w(lifecycle.shortfall(scope, state.parameters.margin_call.resolve_ratio)),
            }
            result["deadline_recomputed"] = deadline
        result["recomputed"] = recomputed
        result["matches_decision"] = all(
            payload.get(name) is None or Decimal(str(payload[name])) == Decimal(value)
            for name, value in recomputed.items()
            if value is not None and name in payload
        )
        if "worst_cells" in figures:
            result["worst_cells_recomputed"] = figures["worst_cells"]
            # A decision names the worst cells of the scope it was decided on (CONTRACT v2): the
            # state of the figures above (an order's: its call's scope; earlier orders move nothing).
            if payload.get("worst_cells") is not None:
                result["matches_decision"] = result["matches_decision"] and _same_cells(
                    payload["worst_cells"], figures["worst_cells"]
                )
    return result


def _same_cells(logged: list[dict[str, Any]], recomputed: list[dict[str, Any]]) -> bool:
    """The worst cells a decision names against the recomputed ones: the same underlyings, moves
    (as decimals), volatility cells and extreme flags."""

    def key(cell: dict[str, Any]) -> tuple[Any, ...]:
        return (cell.get("underlying"), Decimal(str(cell["move"])), cell["volatility"], bool(cell.get("extreme")))

    return sorted(map(key, logged)) == sorted(map(key, recomputed))


def _ledger_context() -> Any:
    from decimal import localcontext

    return localcontext(LEDGER_CONTEXT)


# ---------------------------------------------------------------------------------------------
# words


def shown_price(text: str | None) -> str | None:
    """An averaged or unrounded price as a person reads it: at display precision (1e-10, half
    even). The JSON keeps every digit; the words need not carry 160 of them."""
    if text is None:
        return None
    with _ledger_context():
        return to_wire(round_display_price(Decimal(text)))


def _approximately(text: str) -> str:
    shown = shown_price(text) or text
    return shown if Decimal(shown) == Decimal(text) else f"{shown} (to 10 decimal places)"


def _present(payload: dict[str, Any], names: tuple[str, ...]) -> str:
    """``name value`` for each of ``names`` the payload has (a field that does not apply is left
    out, not printed as None)."""
    return ", ".join(f"{name.replace('_', ' ')} {payload[name]}" for name in names if payload.get(name) is not None)


def _collateral_lines(s: dict[str, Any]) -> list[str]:
    va = s["valuation_asset"]
    out: list[str] = []
    for item in s["collateral"]:
        if "asset" in item:
            bands = "; ".join(f"{b['haircut']} on {b['from']}..{b['to'] or 'above'}" for b in item["haircut_bands"])
            out.append(
                f"  {item['asset']}: amount {item['amount']} x price {item['price']}; "
                f"haircut units {item['haircut_units']}"
                f" (bands: {bands or 'none'}); value = {item['price']} x ({item['amount']} - {item['haircut_units']}) "
                f"= {item['value']} {va}"
            )
        else:
            out.append(f"  isolated margin {item['isolated_margin']} (value {item['value']} {va})")
    out.append(f"  collateral value = {s['collateral_value']} {va}")
    return out


def _option_lines(q: dict[str, Any]) -> list[str]:
    o = q["option"]
    u, k, mark = o["underlying_mark"], o["strike"], q["price_used"]
    head = [
        f"  {q['instrument']} (option, {o['option_type']} strike {k} on {o['underlying']}): quantity {q['quantity']}, "
        f"contract size {q['contract_size']}, premium {q['cost']}, mark used {mark}, underlying U = {u}"
        + ("" if o["underlying_marked"] else " (unmarked: taken at the strike)"),
        f"    value in equity = {q['settlement_price']} x {q['quantity']} x {q['contract_size']} x {mark} = "
        f"{q['value']}",
    ]
    if not o["short"]:
        return [*head, "    long: initial = maintenance = 0 (its premium is paid; its value counts in equity)"]
    if o["option_type"] == "call":
        otm = f"OTM = max({k} - {u}, 0) = {o['out_of_the_money']}"
        maintenance = (
            f"maintenance per contract = {o['maintenance_rate']} x {u} + {mark} = {o['maintenance_per_contract']}"
        )
        initial = (
            f"initial per contract = max({o['initial_rate']} x {u} - {o['out_of_the_money']} = {o['rate_term']}, "
            f"{o['minimum_rate']} x {u} = {o['floor_term']}) + {mark} = {o['initial_per_contract']}"
        )
    else:
        otm = f"OTM = max({u} - {k}, 0) = {o['out_of_the_money']}"
        maintenance = (
            f"maintenance per contract = max({o['maintenance_rate']} x {u} = {o['maintenance_underlying_term']}, "
            f"{o['maintenance_rate']} x {mark} = {o['maintenance_mark_term']}) + {mark} = "
            f"{o['maintenance_per_contract']}"
        )
        initial = (
            f"initial per contract = max(max({o['initial_rate']} x {u} - {o['out_of_the_money']} = {o['rate_term']}, "
            f"{o['minimum_rate']} x {u} = {o['floor_term']}) + {mark}, maintenance per contract) = "
            f"{o['initial_per_contract']}"
        )
    return [
        *head,
        f"    short {o['option_type']}: {otm}",
        f"    {maintenance}",
        f"    {initial}",
        f"    maintenance = {q['settlement_price']} x {o['maintenance_per_contract']} x {o['contracts']} "
        f"contracts rounded up = {q['maintenance_margin']}",
        f"    initial = {q['settlement_price']} x {o['initial_per_contract']} x {o['contracts']} contracts "
        f"rounded up = {q['initial_margin']}",
    ]


def _gridded(s: dict[str, Any]) -> set[str]:
    """The instruments of the scope that the portfolio model margins on a grid."""
    portfolio = s.get("portfolio")
    if portfolio is None:
        return set()
    return {q["instrument"] for g in portfolio["grids"] for q in g["positions"]}


def _position_lines(s: dict[str, Any]) -> list[str]:
    out = ["Positions:"]
    gridded = _gridded(s)
    for q in s["positions"]:
        if q["instrument"] in gridded:
            # Its requirement is the grid's of the whole book (below), not its own.
            value = f"value in equity {q['value']}" if "value" in q else f"unrealised PnL {q['unrealised_pnl']}"
            out.append(
                f"  {q['instrument']} ({q['margin_mode']}): quantity {q['quantity']}, contract size "
                f"{q['contract_size']}, cost {q['cost']}, mark used {q['price_used']}, {value}; margined on the "
                "grid of its underlying (below)"
            )
            continue
        if "option" in q:
            out += _option_lines(q)
            continue
        out += [
            f"  {q['instrument']} ({q['margin_mode']}): quantity {q['quantity']}, contract size {q['contract_size']}, "
            f"cost {q['cost']}, entry price {shown_price(q['entry_price'])}, mark used {q['price_used']}",
            f"    notional = |{q['quantity']}| x {q['contract_size']} x {q['price_used']} = {q['notional']} "
            f"{q['settlement_asset']} -> tier {q['tier']} "
            f"({q['tier_notional_floor']} to {q['tier_notional_cap'] or 'no cap'})"
            + ("" if q["multiplier"] == "1" else f"; rates and amounts x multiplier {q['multiplier']} in force"),
            f"    unrealised PnL = {q['settlement_price']} x ({q['quantity']} x {q['contract_size']} x "
            f"{q['price_used']} - {q['cost']}) = {q['unrealised_pnl']}",
            f"    maintenance = {q['settlement_price']} x ({q['notional']} x {q['maintenance_rate']} - "
            f"{q['maintenance_amount']}) rounded up = {q['maintenance_margin']}",
            f"    initial = {q['settlement_price']} x ({q['notional']} x {q['initial_rate']} - {q['initial_amount']}) "
            f"rounded up = {q['initial_margin']}",
        ]
    return out


def _liquidation_lines(p: dict[str, Any], liq: dict[str, Any]) -> list[str]:
    out = [
        "",
        f"Liquidation order: {p['side']} {p['quantity']} {p['instrument']} (position {p['position_quantity']}).",
        f"  Orders start from equity {liq['equity_before']} and maintenance {liq['maintenance_before']}; the "
        f"target is maintenance <= {liq['target_ratio']} x equity after the order, with the liquidation fee "
        f"({liq['fee_rate']} x notional executed, rounded up) taken from equity. Quantities move in steps of "
        f"{liq['quantity_step']}; the least quantity that meets the target is chosen"
        + (" (none does: the whole position)." if liq["full"] else "."),
    ]
    for step in liq["at_quantity_and_one_step_less"]:
        out.append(
            f"  reduce by {step['reduce_by']}: left {step['left']} (notional {step['notional_left']}, tier "
            f"{step['tier_left']}, maintenance {step['maintenance_left']}), fee {step['fee']}; equity "
            f"{step['equity_after']}, maintenance {step['maintenance_after']} vs {liq['target_ratio']} x equity = "
            f"{step['target_x_equity_after']}: {'meets' if step['meets_target'] else 'misses'} the target"
        )
    sign = "-" if p["side"] == "sell" else "+"
    out.append(
        f"  Bankruptcy price = mark {liq['position']['price_used']} {sign} equity {liq['equity_before']} / "
        f"({liq['quantity']} x {liq['position']['contract_size']} x {liq['position']['settlement_price']}) = "
        f"{_approximately(liq['bankruptcy_price_unrounded'])}, rounded {liq['bankruptcy_rounding']} = "
        f"{liq['bankruptcy_price']}"
    )
    return out


def render(result: dict[str, Any]) -> str:
    d, c, s = result["decision"], result["cause"], result["scope"]
    p = d["payload"]
    va = s["valuation_asset"]
    out = [
        f"{result['id']}: {d['type']} at log position {d['position']} ({d['occurred_at']}), account "
        f"{s['account_id']}, scope {s['scope']}, risk parameters {s['parameters_version']}.",
        f"Cause: {c['type']} at position {c['position']}: {json.dumps(c['payload'], sort_keys=True)}",
        "The state is the shard's log folded up to and including the cause.",
        "",
        "Collateral:",
    ]
    out += _collateral_lines(s)
    out += _position_lines(s)
    t = s["thresholds"]
    out.append(
        f"Equity = collateral {s['collateral_value']} + "
        + ("PnL and option values" if any("option" in q for q in s["positions"]) else "PnL")
        + f" {s['unrealised_pnl']} = {s['equity']} {va}"
    )
    multipliers = ", ".join(f"{u} {m}" for u, m in s["multipliers"].items())
    out.append(
        f"Margin model: {s['margin_model']}"
        + (f"; dynamic margin multiplier in force: {multipliers}" if multipliers else "")
    )
    if "portfolio" in s:
        out += grid.scope_grid_lines(s["portfolio"], va)
    else:
        out.append(
            f"Maintenance margin = sum of the positions' = {s['maintenance_margin']}; initial = {s['initial_margin']}"
        )
    out += [
        (
            f"Margin ratio = maintenance / equity = {s['maintenance_margin']} / {s['equity']} rounded up = "
            f"{s['margin_ratio']}"
            if s["margin_ratio"] is not None
            else "Margin ratio: none (it is defined only while both equity and maintenance margin are positive)"
        )
        + f" (warning at {t['warning_ratio']}, maintenance call at {t['maintenance_ratio']}, "
        f"resolved below {t['resolve_ratio']}; grace {t['grace_period_seconds']} s)",
    ]
    if "liquidation" in result:
        out += _liquidation_lines(p, result["liquidation"])
    else:
        parts = []
        if p.get("level") is not None:
            parts.append(f"Level: {p['level']}")
        shortfall = result["recomputed"].get("shortfall")
        if shortfall is not None:
            parts.append(f"shortfall = max(0, maintenance / resolve_ratio - equity) rounded up = {shortfall}")
        if p.get("deadline") is not None:
            parts.append(f"deadline {p['deadline']}")
        if parts:
            out.append("; ".join(parts))
    cells = result.get("worst_cells_recomputed")
    if cells is not None:
        named = "; ".join(
            f"{c['underlying']} move {c['move']} volatility {c['volatility']}"
            + (" (extreme)" if c.get("extreme") else "")
            for c in cells
        )
        out.append(f"Worst cells: {named}" + ("" if p.get("worst_cells") is None else " (the decision names them too)"))
    out.append("")
    out.append("Recomputed: " + ", ".join(f"{k} {v}" for k, v in result["recomputed"].items() if v is not None))
    out.append("Decision payload: " + json.dumps(p, sort_keys=True))
    out.append(
        "The recomputation matches the decision."
        if result["matches_decision"]
        else "THE RECOMPUTATION DOES NOT MATCH THE DECISION."
    )
    for later in result["later_events"]:
        lp = later["payload"]
        if later["type"] == ev.LIQUIDATION_ORDER_CANCELLED:
            out.append(f"Later: cancelled at {later['position']} with {lp.get('remaining')} left: {lp.get('reason')}")
            continue
        if later["type"] == ev.LIQUIDATION_FILL_RECORDED:
            out.append(
                f"Later: executed at {later['position']}: {lp.get('side')} {lp.get('quantity')} at {lp.get('price')}"
            )
            continue
        said = _present(lp, ("level", "equity", "margin_ratio", "amount", "deficit"))
        out.append(f"Later: {later['type']} at {later['position']}" + (f": {said}" if said else ""))
    return "\n".join(out)


def explain_any(engine: sa.Engine, decision_id: str) -> tuple[dict[str, Any], Any]:
    """The explanation of ``decision_id`` and the function that puts it in words: a margin call
    (``MC-...``), a liquidation order (``L-...``), an auto-deleveraging step (``ADL-...``), a
    margin-model request (its request id), or any of these and a ``MarginRatesChanged`` by its
    log position (digits)."""
    if decision_id.startswith("ADL-"):
        return explain_adl(engine, decision_id), render_adl
    if decision_id.isdigit():
        with engine.connect() as conn:
            row = rates_explain.decision_at(conn, int(decision_id))
            if row.type in rates_explain.RATES_TYPES:
                return rates_explain.explain_rates(conn, row), rates_explain.render_rates
            if row.type in rates_explain.MODEL_TYPES:
                return rates_explain.explain_model(conn, row), rates_explain.render_model
        if row.type in CALL_TYPES and row.payload.get("margin_call_id") is not None:
            return explain(engine, str(row.payload["margin_call_id"]), int(row.position)), render
        if row.type == ev.LIQUIDATION_ORDER_ISSUED:
            return explain(engine, str(row.payload["liquidation_id"]), int(row.position)), render
        if row.type == ev.POSITION_AUTO_DELEVERAGED:
            return explain_adl(engine, str(row.payload["adl_id"])), render_adl
        raise ExplainError(
            f"log position {decision_id} holds a {row.type}: explain knows margin calls, liquidation orders, "
            "auto-deleveraging steps, margin-model decisions and margin-rate changes"
        )
    try:
        return explain(engine, decision_id), render
    except ExplainError:
        with engine.connect() as conn:
            row = rates_explain.find_model_decision(conn, decision_id)
            if row is None:
                raise ExplainError(
                    f"no margin call, liquidation order or margin-model request {decision_id!r} in the log "
                    "(a margin-rate change is explained by its log position)"
                ) from None
            return rates_explain.explain_model(conn, row), rates_explain.render_model


def run_explain(engine: sa.Engine, decision_id: str, as_json: bool) -> int:
    try:
        result, words = explain_any(engine, decision_id)
    except (ExplainError, AdlExplainError, rates_explain.RatesExplainError) as error:
        sys.stderr.write(f"{error}\n")
        return 1
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(words(result) + "\n")
    return 0 if result["matches_decision"] else 1
