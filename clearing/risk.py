"""The risk calculator behind ``clearing risk evaluate FILE|- [--json]`` (CONTRACT.md).

Input: ``{"parameters": {...}, "marks": {...}, "account": {"balances": {...}, "positions": [...]}}``
and, CONTRACT v2, ``at`` (an RFC 3339 time with a zone: the valuation time of options, required
when the account holds options), option positions (cross only), and marks given as
``{"price": ..., "iv": ...}`` objects (a plain string stays a price). Each option position's
output adds ``model_price``, Black-76 at the mark's iv and the underlying's mark at ``at``
(half-even to 12 places; null without an iv or an underlying mark), its ``value`` at the mark
(what equity counts; its ``unrealized_pnl`` is that value less the premium paid) and the
per-contract terms of standard option margin.
with every number an exact decimal string (or a JSON integer). It builds an ``Account`` (cost of a
position = quantity x entry_price x contract_size), evaluates it with the margin model the input
names (``margin_model``, CONTRACT v2; ``standard`` when left out) through the margin-model
interface (``domain.models``), and returns the output document: the cross account's ``equity``, ``initial_margin``,
``maintenance_margin``, ``margin_ratio``, ``status``; per position ``notional``,
``unrealized_pnl``, ``initial_margin``, ``maintenance_margin``, ``liquidation_price``, ``tier``;
and an ``isolated`` list with each isolated scope's figures. Decimals go out as strings
(``numbers.to_wire``); money is in the valuation asset, ``notional`` in the settlement asset.

The calculator is a what-if tool, so it is strict where a typo would silently change the answer:
a mark or balance of a symbol the parameters do not list, a position in an unlisted instrument,
a duplicate position, a zero quantity or a non-positive entry price are errors, not zeros.
``parameters`` may be left out: the bundled parameters are used then.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clearing.domain.black76 import PricingError, option_value
from clearing.domain.marginmodel import (
    CROSS,
    ISOLATED,
    ISOLATED_SCOPE_PREFIX,
    AccountRisk,
    MarginModel,
    MarginModelError,
    PositionRisk,
    ScopeRisk,
)
from clearing.domain.models import DEFAULT_MODEL, model_named
from clearing.domain.numbers import (
    ONE,
    ZERO,
    NumberError,
    divide,
    exact,
    parse_decimal,
    round_model_value,
    to_wire,
)
from clearing.domain.params import RiskParameters, bundled_parameters, load_parameters
from clearing.domain.state import Account, Position

CALCULATOR_ACCOUNT_ID = "risk-calculator"
INPUT_BYTES_MAX = 16 * 1024 * 1024
POSITIONS_MAX = 10_000
EXIT_OK = 0
EXIT_BAD_INPUT = 2


class CalculatorInputError(ValueError):
    """The calculator input is not something we can evaluate; the message says what to fix."""


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        raise CalculatorInputError(f"{where} is missing: it must be a JSON object")
    if not isinstance(value, dict):
        raise CalculatorInputError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _decimal(value: Any, where: str) -> Decimal:
    try:
        return parse_decimal(value, where)
    except NumberError as error:
        raise CalculatorInputError(str(error)) from error


def _validation_sentence(error: ValidationError) -> str:
    parts = []
    for detail in error.errors():
        location = ".".join(str(part) for part in detail["loc"])
        parts.append(f"parameters.{location}: {detail['msg']}" if location else f"parameters: {detail['msg']}")
    return "; ".join(parts)


def _parameters(document: dict[str, Any]) -> RiskParameters:
    if "parameters" not in document or document["parameters"] is None:
        return bundled_parameters()
    raw = _object(document["parameters"], "parameters")
    try:
        return load_parameters(raw)
    except ValidationError as error:
        raise CalculatorInputError(_validation_sentence(error)) from error
    except (NumberError, ValueError) as error:
        raise CalculatorInputError(f"parameters: {error}") from error


def _marks(raw: Any, parameters: RiskParameters) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """Prices by symbol, and the implied volatilities of the marks that carry one."""
    marks: dict[str, Decimal] = {}
    ivs: dict[str, Decimal] = {}
    for symbol, value in _object(raw if raw is not None else {}, "marks").items():
        if not parameters.knows_symbol(symbol):
            raise CalculatorInputError(
                f"marks.{symbol}: {symbol} is neither an instrument nor an asset of parameters {parameters.version}"
            )
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"price", "iv"})
            if unknown:
                raise CalculatorInputError(f"marks.{symbol} takes price and iv only, not {', '.join(unknown)}")
            if value.get("iv") is not None:
                iv = _decimal(value["iv"], f"marks.{symbol}.iv")
                if iv < 0:
                    raise CalculatorInputError(f"marks.{symbol}.iv must not be negative, got {to_wire(iv)}")
                ivs[symbol] = iv
            value = value.get("price")
        price = _decimal(value, f"marks.{symbol}")
        if price <= 0:
            raise CalculatorInputError(f"marks.{symbol} must be positive, got {to_wire(price)}")
        if symbol == parameters.valuation_asset and price != ONE:
            raise CalculatorInputError(
                f"marks.{symbol} must be 1: {symbol} is the valuation asset, got {to_wire(price)}"
            )
        marks[symbol] = price
    return marks, ivs


def _at(raw: Any) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise CalculatorInputError(f"at must be an RFC 3339 time string, got {type(raw).__name__}")
    try:
        at = datetime.fromisoformat(raw)
    except ValueError as error:
        raise CalculatorInputError(f"at is not an RFC 3339 time: {raw!r}") from error
    if at.tzinfo is None:
        raise CalculatorInputError(f"at needs a zone (Z or an offset): {raw!r}")
    return at


def _position(raw: Any, index: int, parameters: RiskParameters) -> Position:
    where = f"account.positions[{index}]"
    item = _object(raw, where)
    instrument = item.get("instrument")
    if not isinstance(instrument, str) or not instrument:
        raise CalculatorInputError(f"{where}.instrument must be a non-empty string")
    spec = parameters.instrument(instrument)
    if spec is None:
        listed = ", ".join(sorted(parameters.instruments_by_symbol))
        raise CalculatorInputError(
            f"{where}.instrument {instrument} is not listed in parameters.instruments (listed: {listed})"
        )
    quantity = _decimal(item.get("quantity"), f"{where}.quantity")
    if quantity == 0:
        raise CalculatorInputError(f"{where}.quantity must not be zero (signed: negative is short)")
    entry_price = _decimal(item.get("entry_price"), f"{where}.entry_price")
    if entry_price <= 0:
        raise CalculatorInputError(f"{where}.entry_price must be positive, got {to_wire(entry_price)}")
    mode = item.get("margin_mode", CROSS)
    if mode not in (CROSS, ISOLATED):
        raise CalculatorInputError(f"{where}.margin_mode must be 'cross' or 'isolated', got {mode!r}")
    if spec.kind == "option" and mode != CROSS:
        raise CalculatorInputError(f"{where}: {instrument} is an option; options are held in cross margin only")
    isolated_margin = ZERO
    if item.get("isolated_margin") is not None:
        isolated_margin = _decimal(item["isolated_margin"], f"{where}.isolated_margin")
        if mode == CROSS and isolated_margin != 0:
            raise CalculatorInputError(f"{where}.isolated_margin is only for margin_mode 'isolated'")
        if isolated_margin < 0:
            raise CalculatorInputError(f"{where}.isolated_margin must not be negative")
    return Position(
        instrument=instrument,
        margin_mode=mode,
        quantity=quantity,
        cost=quantity * entry_price * spec.contract_size,
        isolated_margin=isolated_margin,
    )


class CalculatorInput:
    """What a calculator input describes, parsed: the account, the parameters, the marks (prices)
    and, CONTRACT v2, the marks' implied volatilities and the valuation time ``at``."""

    def __init__(
        self,
        account: Account,
        parameters: RiskParameters,
        marks: dict[str, Decimal],
        ivs: dict[str, Decimal],
        at: datetime | None,
    ) -> None:
        self.account = account
        self.parameters = parameters
        self.marks = marks
        self.ivs = ivs
        self.at = at


def parse_input(document: Any) -> tuple[Account, RiskParameters, dict[str, Decimal]]:
    """The account, parameters and marks a calculator input describes (see the module docstring)."""
    parsed = parse_calculator_input(document)
    return parsed.account, parsed.parameters, parsed.marks


@exact
def parse_calculator_input(document: Any) -> CalculatorInput:
    """``parse_input`` with the v2 additions (``CalculatorInput``)."""
    top = _object(document, "the input")
    parameters = _parameters(top)
    marks, ivs = _marks(top.get("marks"), parameters)
    at = _at(top.get("at"))
    raw_account = _object(top.get("account"), "account")
    balances: dict[str, Decimal] = {}
    for asset, value in _object(raw_account.get("balances") or {}, "account.balances").items():
        if parameters.asset(asset) is None:
            raise CalculatorInputError(f"account.balances.{asset}: {asset} is not listed in parameters.assets")
        balances[asset] = _decimal(value, f"account.balances.{asset}")
    raw_positions = raw_account.get("positions") or []
    if not isinstance(raw_positions, list):
        raise CalculatorInputError("account.positions must be a JSON list")
    if len(raw_positions) > POSITIONS_MAX:
        raise CalculatorInputError(f"account.positions has {len(raw_positions)} entries; at most {POSITIONS_MAX}")
    account = Account(CALCULATOR_ACCOUNT_ID, balances)
    for index, raw in enumerate(raw_positions):
        position = _position(raw, index, parameters)
        if position.key in account.positions:
            raise CalculatorInputError(
                f"account.positions[{index}] repeats {position.instrument} {position.margin_mode}; give one entry each"
            )
        account.positions[position.key] = position
    options = [key[0] for key in account.positions if parameters.instruments_by_symbol[key[0]].kind == "option"]
    if options and at is None:
        raise CalculatorInputError(
            f"at is required when the account holds options ({', '.join(options)}): the valuation time of "
            "model_price, as RFC 3339 with a zone"
        )
    return CalculatorInput(account, parameters, marks, ivs, at)


def _optional(value: Decimal | None) -> str | None:
    return None if value is None else to_wire(value)


def _option_document(
    position: PositionRisk, parameters: RiskParameters, calculator: CalculatorInput | None
) -> dict[str, Any]:
    """The option-only fields of a position: model_price, value, the inputs and the per-contract
    terms of standard option margin (each branch of each max, so a person can check it)."""
    option = position.option
    assert option is not None
    spec = parameters.instruments_by_symbol[position.instrument]
    model_price: str | None = None
    iv = None if calculator is None else calculator.ivs.get(position.instrument)
    if calculator is not None and calculator.at is not None and iv is not None and option.underlying_mark is not None:
        try:
            value = option_value(spec, option.underlying_mark, iv, calculator.at, parameters.interest_rate)
        except PricingError as error:
            raise CalculatorInputError(f"{position.instrument}: {error}") from error
        model_price = to_wire(round_model_value(value))
    terms = option.per_contract
    return {
        "model_price": model_price,
        "iv": _optional(iv),
        "value": to_wire(position.unrealised_pnl),
        "underlying": option.underlying,
        "underlying_mark": _optional(option.underlying_mark),
        "option_type": option.option_type,
        "strike": to_wire(option.strike),
        "option_margin": {
            "contracts": to_wire(option.contracts),
            "out_of_the_money": to_wire(terms.out_of_the_money),
            "rate_term": to_wire(terms.rate_term),
            "floor_term": to_wire(terms.floor_term),
            "maintenance_underlying_term": to_wire(terms.maintenance_underlying_term),
            "maintenance_mark_term": _optional(terms.maintenance_mark_term),
            "initial_per_contract": to_wire(terms.initial),
            "maintenance_per_contract": to_wire(terms.maintenance),
        },
    }


def _position_document(
    position: PositionRisk, parameters: RiskParameters, calculator: CalculatorInput | None = None
) -> dict[str, Any]:
    spec = parameters.instruments_by_symbol[position.instrument]
    # Exact here: the calculator built cost as quantity x entry_price x contract_size.
    entry = divide(position.cost, position.quantity * spec.contract_size)
    if position.option is not None:
        return {
            "instrument": position.instrument,
            "margin_mode": position.margin_mode,
            "quantity": to_wire(position.quantity),
            "entry_price": to_wire(entry),
            "mark": _optional(position.mark),
            "marked": position.marked,
            "notional": to_wire(position.notional),
            "unrealized_pnl": to_wire(position.pnl),
            "initial_margin": to_wire(position.initial_margin),
            "maintenance_margin": to_wire(position.maintenance_margin),
            "liquidation_price": None,
            "tier": position.tier,
            **_option_document(position, parameters, calculator),
        }
    return {
        "instrument": position.instrument,
        "margin_mode": position.margin_mode,
        "quantity": to_wire(position.quantity),
        "entry_price": to_wire(entry),
        "mark": _optional(position.mark),
        "marked": position.marked,
        "notional": to_wire(position.notional),
        "unrealized_pnl": to_wire(position.unrealised_pnl),
        "initial_margin": to_wire(position.initial_margin),
        "maintenance_margin": to_wire(position.maintenance_margin),
        "liquidation_price": _optional(position.liquidation_price),
        "tier": position.tier,
    }


def _scope_figures(scope: ScopeRisk) -> dict[str, Any]:
    return {
        "equity": to_wire(scope.equity),
        "unrealized_pnl": to_wire(scope.unrealised_pnl),
        "initial_margin": to_wire(scope.initial_margin),
        "maintenance_margin": to_wire(scope.maintenance_margin),
        "margin_ratio": _optional(scope.margin_ratio),
        "status": scope.status.value,
    }


@exact
def risk_document(
    risk: AccountRisk, parameters: RiskParameters, account: Account, calculator: CalculatorInput | None = None
) -> dict[str, Any]:
    """The calculator's output document for an evaluated account; positions in the account's
    insertion order (the input order)."""
    by_key = {(p.instrument, p.margin_mode): p for p in risk.positions}
    positions = [_position_document(by_key[key], parameters, calculator) for key in account.positions if key in by_key]
    isolated = [
        {
            "instrument": scope.scope.removeprefix(ISOLATED_SCOPE_PREFIX),
            "isolated_margin": to_wire(scope.collateral),
            **_scope_figures(scope),
        }
        for scope in risk.isolated
    ]
    unpriced = sorted({asset for scope in risk.scopes for asset in scope.unpriced_assets})
    return {
        "parameters_version": risk.parameters_version,
        "valuation_asset": parameters.valuation_asset,
        "collateral": to_wire(risk.cross.collateral),
        **_scope_figures(risk.cross),
        "positions": positions,
        "isolated": isolated,
        "collateral_values": [
            {
                "asset": c.asset,
                "amount": to_wire(c.amount),
                "price": _optional(c.price),
                "haircut_units": to_wire(c.haircut_units),
                "value": to_wire(c.value),
            }
            for c in risk.collateral
        ],
        "unpriced_assets": unpriced,
    }


def _model(document: Any) -> MarginModel:
    name = document.get("margin_model") if isinstance(document, dict) else None
    if name is None:
        name = DEFAULT_MODEL
    if not isinstance(name, str):
        raise CalculatorInputError(f"margin_model must be a string naming a margin model, got {type(name).__name__}")
    try:
        return model_named(name)
    except MarginModelError as error:
        raise CalculatorInputError(f"margin_model: {error}") from error


def evaluate_document(document: Any) -> dict[str, Any]:
    """Calculator input (parsed JSON) -> output document. Raises ``CalculatorInputError``."""
    parsed = parse_calculator_input(document)
    account, parameters, marks = parsed.account, parsed.parameters, parsed.marks
    model = _model(document)
    try:
        risk = model.evaluate(account, parameters, marks, liquidation_prices=True)
    except MarginModelError as error:
        raise CalculatorInputError(str(error)) from error
    return risk_document(risk, parameters, account, parsed)


def render_text(output: Mapping[str, Any]) -> str:
    """A short human-readable form of the output document."""
    ratio = output["margin_ratio"] if output["margin_ratio"] is not None else "-"
    lines = [
        f"parameters {output['parameters_version']}, amounts in {output['valuation_asset']}",
        f"cross: equity {output['equity']}  initial {output['initial_margin']}  "
        f"maintenance {output['maintenance_margin']}  ratio {ratio}  status {output['status']}",
    ]
    for p in output["positions"]:
        liquidation = p["liquidation_price"] if p["liquidation_price"] is not None else "none"
        mark = p["mark"] if p["mark"] is not None else "unmarked (valued at entry)"
        if "model_price" in p:
            model_price = p["model_price"] if p["model_price"] is not None else "-"
            lines.append(
                f"  {p['instrument']} qty {p['quantity']} mark {mark} (model {model_price}, underlying "
                f"{p['underlying_mark'] or 'unmarked'}): value {p['value']}  pnl {p['unrealized_pnl']}  "
                f"initial {p['initial_margin']}  maintenance {p['maintenance_margin']}"
            )
            continue
        lines.append(
            f"  {p['instrument']} {p['margin_mode']} qty {p['quantity']} mark {mark}: notional {p['notional']} "
            f"(tier {p['tier']})  pnl {p['unrealized_pnl']}  initial {p['initial_margin']}  "
            f"maintenance {p['maintenance_margin']}  liquidation {liquidation}"
        )
    for scope in output["isolated"]:
        ratio = scope["margin_ratio"] if scope["margin_ratio"] is not None else "-"
        lines.append(
            f"isolated {scope['instrument']}: equity {scope['equity']}  initial {scope['initial_margin']}  "
            f"maintenance {scope['maintenance_margin']}  ratio {ratio}  status {scope['status']}"
        )
    if output["unpriced_assets"]:
        lines.append(f"unpriced (counted 0): {', '.join(output['unpriced_assets'])}")
    return "\n".join(lines) + "\n"


def _read(path_or_dash: str) -> str:
    try:
        if path_or_dash == "-":
            data = sys.stdin.buffer.read(INPUT_BYTES_MAX + 1)
        else:
            with Path(path_or_dash).open("rb") as handle:
                data = handle.read(INPUT_BYTES_MAX + 1)
    except OSError as error:
        raise CalculatorInputError(f"cannot read {path_or_dash}: {error.strerror or error}") from error
    if len(data) > INPUT_BYTES_MAX:
        raise CalculatorInputError(f"the input is larger than {INPUT_BYTES_MAX} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CalculatorInputError(f"the input is not UTF-8: {error.reason} at byte {error.start}") from error


def run_risk_evaluate(path_or_dash: str, as_json: bool) -> int:
    """``clearing risk evaluate FILE|- [--json]``: writes the output document (JSON, or text) to
    stdout and returns 0; on bad input writes one line to stderr and returns 2."""
    try:
        text = _read(path_or_dash)
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise CalculatorInputError(
                f"the input is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
            ) from error
        except (ValueError, RecursionError) as error:  # oversize integer literals, deep nesting
            raise CalculatorInputError(f"the input is not JSON we accept: {error}") from error
        output = evaluate_document(document)
    except CalculatorInputError as error:
        message = " ".join(str(error).split())
        sys.stderr.write(f"clearing risk evaluate: {message}\n")
        return EXIT_BAD_INPUT
    if as_json:
        sys.stdout.write(json.dumps(output, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(output))
    return EXIT_OK
