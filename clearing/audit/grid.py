"""The portfolio grid as an auditor reads it (``audit explain``) and as the report draws it: each
underlying of a portfolio-margined scope with every cell, the worst one, and the arithmetic from
the cells to the requirement (CONTRACT v2 "Portfolio margin").

Every figure comes from the margin model (``ScopeRisk.underlyings``: the ``UnderlyingRequirement``
the model computed, cell for cell); the terms of the arithmetic around them (U, the short option
contracts, the multiplier, the volatility cells of each option) are read from the same state the
model was given, so a person can redo the requirement from the table with a calculator:

    W  = max(0, -(the worst weighted P&L))
    S  = short_option_minimum_rate x U x the sum over short options of |quantity| x contract size
    IM = max(W, S) rounded up;  MM = maintenance_factor x max(W, S) rounded up

and the scope's requirement is the sum over its underlyings (no offsets between underlyings),
plus the standard requirements of positions on an underlying the parameters give no grid.

P&L in the tables is the model's exact sum, shown half-even to 12 places (``round_model_value``,
the calculator's spelling); W and S are exact; IM and MM are rounded up as every requirement.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from clearing.domain.marginmodel import PositionRisk, ScopeRisk, StateMarks, valuation_time
from clearing.domain.numbers import ONE, ZERO, round_model_value, to_wire
from clearing.domain.params import InstrumentSpec, RiskParameters
from clearing.domain.scenarios import (
    VOLATILITY_CELLS,
    UnderlyingRequirement,
    cell_wire,
    days_to_expiry,
    short_option_contracts,
    volatility_cells,
)
from clearing.domain.state import LedgerState

WORST_MARK = "*"


def _w(value: Decimal | None) -> str | None:
    return None if value is None else to_wire(value)


def _pnl(value: Decimal) -> str:
    return to_wire(round_model_value(value))


def underlying_mark(state: LedgerState, underlying: str) -> Decimal | None:
    """U: the underlying's last mark (1 for the valuation asset itself), as the model reads it."""
    if underlying == state.parameters.valuation_asset:
        return ONE
    mark = state.marks.get(underlying)
    return None if mark is None else mark.price


def _option_terms(state: LedgerState, spec: InstrumentSpec, requirement: UnderlyingRequirement) -> dict[str, Any]:
    """An option's inputs to its cells: iv, valuation time, DTE and the (up, unchanged, down)
    volatilities (``scenarios.volatility_cells``)."""
    pm = state.parameters.portfolio_margin_spec(requirement.underlying)
    mark = state.marks.get(spec.symbol)
    iv = None if mark is None else mark.iv
    at = valuation_time(StateMarks(state), spec.symbol, spec.underlying_symbol)
    terms: dict[str, Any] = {"iv": _w(iv), "valuation_at": None if at is None else at.isoformat()}
    if pm is None or iv is None or at is None or spec.expiry is None:
        return terms
    days = days_to_expiry(spec.expiry, at)
    up, unchanged, down = volatility_cells(pm, iv, days)
    terms.update(
        expiry=spec.expiry.isoformat(),
        days_to_expiry=_w(round_model_value(days)),
        volatilities={"up": _pnl(up), "unchanged": _pnl(unchanged), "down": _pnl(down)},
    )
    return terms


def underlying_figures(
    state: LedgerState, requirement: UnderlyingRequirement, positions: list[PositionRisk]
) -> dict[str, Any]:
    """One underlying's grid and arithmetic (module docstring), as JSON-ready strings."""
    parameters = state.parameters
    spec = parameters.portfolio_margin_spec(requirement.underlying)
    if spec is None:  # pragma: no cover - the model computes a requirement only under a block
        raise LookupError(f"no portfolio_margin block for {requirement.underlying}")
    instruments = parameters.instruments_by_symbol
    book = [(instruments[p.instrument], p.quantity) for p in positions]
    contracts = short_option_contracts(book)
    u = underlying_mark(state, requirement.underlying)
    worst = requirement.worst
    cells: list[dict[str, Any]] = []
    extreme: list[dict[str, Any]] = []
    for index, scenario in enumerate(requirement.scenarios):
        entry = cell_wire(scenario.cell)
        entry["pnl"] = _pnl(scenario.pnl)
        entry["worst"] = index == requirement.worst_index
        if scenario.cell.extreme:
            entry["weight"] = to_wire(scenario.cell.weight)
            entry["weighted_pnl"] = _pnl(scenario.weighted_pnl)
            extreme.append(entry)
        else:
            cells.append(entry)
    moves: list[str] = []
    for entry in cells:
        if entry["move"] not in moves:
            moves.append(entry["move"])
    largest = max(requirement.worst_loss, requirement.short_option_minimum)
    return {
        "underlying": requirement.underlying,
        "underlying_mark": _w(u),
        "multiplier": to_wire(requirement.multiplier),
        "price_range": to_wire(spec.price_range),
        "scaled_price_range": to_wire(spec.price_range * requirement.multiplier),
        "price_steps": spec.price_steps,
        "moves": moves,
        "volatility_cells": list(VOLATILITY_CELLS),
        "cells": cells,
        "extreme_cells": extreme,
        "extreme_weight": to_wire(spec.extreme_weight),
        "worst_cell": cell_wire(requirement.worst_cell),
        "worst_pnl": _pnl(worst.weighted_pnl),
        "worst_loss": to_wire(requirement.worst_loss),
        "short_option_minimum": {
            "rate": to_wire(spec.short_option_minimum_rate),
            "underlying_mark": _w(u),
            "short_option_contracts": to_wire(contracts),
            "value": to_wire(requirement.short_option_minimum),
        },
        "larger_of_w_and_s": to_wire(largest),
        "initial_margin": to_wire(requirement.initial_margin),
        "maintenance_factor": to_wire(spec.maintenance_factor),
        "maintenance_margin": to_wire(requirement.maintenance_margin),
        "positions": [
            {
                "instrument": p.instrument,
                "kind": instruments[p.instrument].kind,
                "quantity": to_wire(p.quantity),
                "contract_size": to_wire(p.contract_size),
                **(
                    _option_terms(state, instruments[p.instrument], requirement)
                    if instruments[p.instrument].kind == "option"
                    else {"mark": _w(p.price_used)}
                ),
            }
            for p in positions
        ],
    }


def scope_grids(state: LedgerState, scope: ScopeRisk) -> dict[str, Any] | None:
    """The grids of a portfolio-margined scope and the sum to its requirement; None for a scope
    the standard model margins (no ``underlyings``)."""
    if not scope.underlyings:
        return None
    parameters: RiskParameters = state.parameters
    instruments = parameters.instruments_by_symbol
    by_underlying: dict[str, list[PositionRisk]] = {}
    for position in scope.positions:
        underlying = instruments[position.instrument].underlying_symbol
        by_underlying.setdefault(underlying, []).append(position)
    gridded = {requirement.underlying for requirement in scope.underlyings}
    grids = [
        underlying_figures(state, requirement, by_underlying.get(requirement.underlying, []))
        for requirement in scope.underlyings
    ]
    # Positions on an underlying without a grid keep their standard requirements (the model's rule).
    standard = [p for p in scope.positions if instruments[p.instrument].underlying_symbol not in gridded]
    standard_initial = sum((p.initial_margin for p in standard), ZERO)
    standard_maintenance = sum((p.maintenance_margin for p in standard), ZERO)
    return {
        "grids": grids,
        "standard_positions": [p.instrument for p in standard],
        "standard_initial_margin": to_wire(standard_initial),
        "standard_maintenance_margin": to_wire(standard_maintenance),
        "initial_margin": to_wire(scope.initial_margin),
        "maintenance_margin": to_wire(scope.maintenance_margin),
    }


def worst_cells(scope: ScopeRisk) -> list[dict[str, Any]]:
    """The worst cell of each underlying of the scope, as the decisions name them (``cell_wire``
    plus the underlying)."""
    return [{"underlying": r.underlying, **cell_wire(r.worst_cell)} for r in scope.underlyings]


# ------------------------------------------------------------------------------------------------
# words


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]]


def grid_lines(grid: dict[str, Any], valuation_asset: str) -> list[str]:
    """One underlying's grid as a table of moves x volatility cells (the worst marked), its extreme
    cells, and the arithmetic to its IM and MM."""
    u = grid["underlying"]
    out = [
        f"Grid of {u}: multiplier {grid['multiplier']} in force, price range {grid['price_range']} x "
        f"{grid['multiplier']} = {grid['scaled_price_range']} in {grid['price_steps']} steps each way; "
        f"U = {grid['underlying_mark']}",
    ]
    for position in grid["positions"]:
        if position["kind"] == "option":
            vols = position.get("volatilities")
            said = (
                f"iv {position['iv']}, valued at {position['valuation_at']}, DTE {position['days_to_expiry']}: "
                f"volatility up {vols['up']}, unchanged {vols['unchanged']}, down {vols['down']}"
                if vols
                else f"iv {position['iv']}"
            )
            out.append(f"  {position['instrument']}: quantity {position['quantity']} (option; {said})")
        else:
            out.append(f"  {position['instrument']}: quantity {position['quantity']} (mark {position['mark']})")
    out.append(f"  P&L of the book in each cell ({valuation_asset}; {WORST_MARK} the worst cell):")
    by_cell = {(c["move"], c["volatility"]): c for c in grid["cells"]}
    rows = []
    for move in grid["moves"]:
        row = [move]
        for volatility in grid["volatility_cells"]:
            cell = by_cell[(move, volatility)]
            row.append(cell["pnl"] + (f" {WORST_MARK}" if cell["worst"] else "  "))
        rows.append(row)
    out += ["    " + line for line in _table(["move", *grid["volatility_cells"]], rows)]
    if grid["extreme_cells"]:
        out.append(f"  Extreme cells (volatility unchanged, loss counted at weight {grid['extreme_weight']}):")
        for cell in grid["extreme_cells"]:
            out.append(
                f"    move {cell['move']}: P&L {cell['pnl']} x {cell['weight']} = weighted {cell['weighted_pnl']}"
                + (f" {WORST_MARK}" if cell["worst"] else "")
            )
    worst = grid["worst_cell"]
    named = f"move {worst['move']}, volatility {worst['volatility']}" + (" (extreme)" if worst.get("extreme") else "")
    s = grid["short_option_minimum"]
    out += [
        f"  Worst cell: {named}, weighted P&L {grid['worst_pnl']} (of equal losses, the first in grid order)",
        f"  W = max(0, -({grid['worst_pnl']})) = {grid['worst_loss']}",
        f"  S = short_option_minimum_rate x U x short option contracts = {s['rate']} x {s['underlying_mark']} x "
        f"{s['short_option_contracts']} = {s['value']}",
        f"  IM = max(W, S) = max({grid['worst_loss']}, {s['value']}) = {grid['larger_of_w_and_s']}, rounded up = "
        f"{grid['initial_margin']}",
        f"  MM = maintenance_factor x max(W, S) = {grid['maintenance_factor']} x {grid['larger_of_w_and_s']}, "
        f"rounded up = {grid['maintenance_margin']}",
    ]
    return out


def scope_grid_lines(grids: dict[str, Any], valuation_asset: str) -> list[str]:
    """Every grid of the scope, then the sum over the underlyings to the scope's requirement."""
    out = ["Portfolio margin: the cross scope is margined on the scenario grid of each underlying."]
    for grid in grids["grids"]:
        out += grid_lines(grid, valuation_asset)
    initial_terms = [f"{g['underlying']} {g['initial_margin']}" for g in grids["grids"]]
    maintenance_terms = [f"{g['underlying']} {g['maintenance_margin']}" for g in grids["grids"]]
    if grids["standard_positions"]:
        named = ", ".join(grids["standard_positions"])
        initial_terms.append(f"standard ({named}: no grid for their underlying) {grids['standard_initial_margin']}")
        maintenance_terms.append(f"standard {grids['standard_maintenance_margin']}")
    out += [
        "Requirement = the sum over the underlyings (no offsets between underlyings):",
        f"  IM = {' + '.join(initial_terms)} = {grids['initial_margin']}",
        f"  MM = {' + '.join(maintenance_terms)} = {grids['maintenance_margin']}",
    ]
    return out
