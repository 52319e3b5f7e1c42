"""The risk calculator (``clearing risk evaluate``): CONTRACT.md's example by hand, bad input as
one-line errors with exit code 2, and its output equal to ``margin.evaluate`` by property."""

from __future__ import annotations

import io
import json
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from clearing.domain.margin import evaluate
from clearing.domain.numbers import to_wire
from clearing.domain.params import bundled_document
from clearing.risk import CalculatorInputError, evaluate_document, run_risk_evaluate
from tests.domain.test_margin import PARAMS, accounts, contract_document

CONTRACT_EXAMPLE_ACCOUNT = {
    "balances": {"USDT": "1535443.01"},
    "positions": [
        {"instrument": "BTCUSDT", "quantity": "109.488", "entry_price": "32481.98", "margin_mode": "cross"},
        {
            "instrument": "ETHUSDT",
            "quantity": "-10",
            "entry_price": "1456.84",
            "margin_mode": "isolated",
            "isolated_margin": "2000",
        },
    ],
}


def contract_example() -> dict[str, Any]:
    """CONTRACT.md's calculator input, with the bundled parameters (which list ETHUSDT) in place of
    "...risk parameter document..."."""
    return {
        "parameters": bundled_document(),
        "marks": {"BTCUSDT": "31967.27", "USDT": "1"},
        "account": json.loads(json.dumps(CONTRACT_EXAMPLE_ACCOUNT)),
    }


def run(document: Any, monkeypatch: pytest.MonkeyPatch, *, as_json: bool = True) -> tuple[int, str, str]:
    text = document if isinstance(document, str) else json.dumps(document)
    stdin = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    code = run_risk_evaluate("-", as_json)
    return code, out.getvalue(), err.getvalue()


def test_contract_example_through_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bundled BTCUSDT tiers: 50k/250k/1M caps, maintenance 0.004/0.005/0.01/0.025, so amounts
    # 0, 50, 1 300, 16 300 (1 000 000 x (0.025 - 0.01) + 1 300).
    # BTC long 109.488 at mark 31 967.27:
    #   notional = 109.488 x 31 967.27 = 3 500 032.45776 -> tier 4
    #   PnL = 109.488 x (31 967.27 - 32 481.98) = 109.488 x -514.71 = -56 354.56848
    #   maintenance = 0.025 x 3 500 032.45776 - 16 300 = 71 200.811444
    #   initial: amounts 0, 100, 2 600, 32 600; 0.05 x 3 500 032.45776 - 32 600 = 142 401.622888
    # cross equity = 1 535 443.01 - 56 354.56848 = 1 479 088.44152
    # ratio = 71 200.811444 / 1 479 088.44152 = 0.04813830567... -> up to 0.0481383057
    # BTC liquidation (tier 4 line): 1 479 088.44152 - 56 354.56848... solve
    #   1 535 443.01 + 109.488 P - 3 556 390.02... see test_margin for the method; checked by value
    # ETH isolated short 10 (contract size 1), unmarked: valued at entry 1 456.84, PnL 0,
    #   notional 14 568.4 (tier 1: maintenance 0.005, initial 0.01) -> 72.842 and 145.684,
    #   equity 2 000, ratio 72.842 / 2 000 = 0.036421
    #   liquidation: 2 000 + 14 568.4 - 10 P = 0.05 P -> P = 16 568.4 / 10.05 = 1 648.59701492537...
    #   rounded down (a short) -> 1648.5970149253
    code, out, err = run(contract_example(), monkeypatch)
    assert (code, err) == (0, "")
    output = json.loads(out)
    assert output["equity"] == "1479088.44152"
    assert output["initial_margin"] == "142401.622888"
    assert output["maintenance_margin"] == "71200.811444"
    assert output["margin_ratio"] == "0.0481383057"
    assert output["status"] == "healthy"
    btc, eth = output["positions"]
    assert btc["instrument"] == "BTCUSDT" and btc["tier"] == 4
    assert btc["notional"] == "3500032.45776"
    assert btc["unrealized_pnl"] == "-56354.56848"
    assert eth["margin_mode"] == "isolated" and eth["mark"] is None
    assert (eth["notional"], eth["maintenance_margin"], eth["initial_margin"]) == ("14568.4", "72.842", "145.684")
    assert eth["liquidation_price"] == "1648.5970149253"
    assert output["isolated"] == [
        {
            "instrument": "ETHUSDT",
            "isolated_margin": "2000",
            "equity": "2000",
            "unrealized_pnl": "0",
            "initial_margin": "145.684",
            "maintenance_margin": "72.842",
            "margin_ratio": "0.036421",
            "status": "healthy",
        }
    ]
    # BTC liquidation price: cross equity - maintenance = 0 in tier 4:
    #   1 535 443.01 + 109.488 P - 3 556 390.02... - (0.025 x 109.488 P - 16 300) = 0
    cost = D("109.488") * D("32481.98")
    price = (cost - D("1535443.01") - D("16300")) / (D("109.488") * D("0.975"))
    assert abs(D(btc["liquidation_price"]) - price) < D("1e-9")
    assert D(btc["liquidation_price"]) * D("109.488") > D("1000000")  # still tier 4 there


def test_text_output_names_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(contract_example(), monkeypatch, as_json=False)
    assert code == 0
    assert "equity 1479088.44152" in out and "isolated ETHUSDT" in out and "unmarked" in out


def test_reading_a_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps(contract_example()))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert run_risk_evaluate(str(path), True) == 0
    assert json.loads(out.getvalue())["status"] == "healthy"


def test_contract_parameters_without_ethusdt_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    document = contract_example()
    document["parameters"] = contract_document()
    document["parameters"]["instruments"] = document["parameters"]["instruments"][:1]  # BTCUSDT only
    code, out, err = run(document, monkeypatch)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "account.positions[1].instrument ETHUSDT is not listed in parameters.instruments" in err


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["marks"].update(BTCUSDT=31967.27), "not the JSON number"),
        (lambda d: d["marks"].update(DOGE="1"), "marks.DOGE"),
        (lambda d: d["marks"].update(USDT="1.01"), "must be 1"),
        (lambda d: d["account"]["positions"][0].update(quantity="0"), "must not be zero"),
        (lambda d: d["account"]["positions"][0].update(entry_price="-1"), "entry_price must be positive"),
        (lambda d: d["account"]["positions"][0].update(margin_mode="portfolio"), "margin_mode"),
        (lambda d: d["account"]["positions"].append(d["account"]["positions"][0]), "repeats BTCUSDT cross"),
        (lambda d: d["account"]["balances"].update(XYZ="5"), "XYZ is not listed"),
        (lambda d: d["parameters"]["margin_call"].update(warning_ratio="0.5"), "parameters"),
        (lambda d: d.pop("account"), "account is missing"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(
    mutate: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = contract_example()
    mutate(document)
    code, out, err = run(document, monkeypatch)
    assert (code, out) == (2, "")
    assert err.startswith("clearing risk evaluate: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"marks": {"BTCUSDT": NaN}, "account": {}}'])
def test_malformed_documents_are_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(text, monkeypatch)
    assert code == 2 and err.count("\n") == 1


def test_missing_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert run_risk_evaluate("/nonexistent/input.json", True) == 2
    assert "cannot read /nonexistent/input.json" in err.getvalue()


def test_evaluate_document_raises_a_typed_error() -> None:
    with pytest.raises(CalculatorInputError):
        evaluate_document({"account": {"positions": "none"}})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accounts())
def test_calculator_output_equals_evaluate_on_the_same_account(case: Any) -> None:
    account, marks = case
    positions = []
    for position in account.positions.values():
        size = PARAMS.instruments_by_symbol[position.instrument].contract_size
        item = {
            "instrument": position.instrument,
            "quantity": to_wire(position.quantity),
            "entry_price": to_wire(position.cost / (position.quantity * size)),
            "margin_mode": position.margin_mode,
        }
        if position.margin_mode == "isolated":
            item["isolated_margin"] = to_wire(position.isolated_margin)
        positions.append(item)
    document = {
        "parameters": contract_document(),
        "marks": {symbol: to_wire(price) for symbol, price in marks.items()},
        "account": {"balances": {a: to_wire(v) for a, v in account.balances.items()}, "positions": positions},
    }
    output = evaluate_document(json.loads(json.dumps(document)))
    risk = evaluate(account, PARAMS, marks)

    def wire(value: D | None) -> str | None:
        return None if value is None else to_wire(value)

    assert output["equity"] == to_wire(risk.cross.equity)
    assert output["initial_margin"] == to_wire(risk.cross.initial_margin)
    assert output["maintenance_margin"] == to_wire(risk.cross.maintenance_margin)
    assert output["margin_ratio"] == wire(risk.cross.margin_ratio)
    assert output["status"] == risk.cross.status
    expected = {(p.instrument, p.margin_mode): p for p in risk.positions}
    assert len(output["positions"]) == len(expected)
    for item in output["positions"]:
        figures = expected[(item["instrument"], item["margin_mode"])]
        assert item["notional"] == to_wire(figures.notional)
        assert item["unrealized_pnl"] == to_wire(figures.unrealised_pnl)
        assert item["initial_margin"] == to_wire(figures.initial_margin)
        assert item["maintenance_margin"] == to_wire(figures.maintenance_margin)
        assert item["liquidation_price"] == wire(figures.liquidation_price)
        assert item["tier"] == figures.tier
    assert [s["equity"] for s in output["isolated"]] == [to_wire(s.equity) for s in risk.isolated]
    assert [s["status"] for s in output["isolated"]] == [s.status for s in risk.isolated]


def test_without_parameters_the_calculator_uses_the_current_bundled_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the log-start document a ledger's state begins with: a calculator input names no log,
    so it takes the bundled document of this version (its option chain's marks are known)."""
    from clearing.domain.params import bundled_parameters, log_start_parameters

    document = {**contract_example(), "marks": {"BTCUSDT": "31967.27", "BTC-26MAR27-70000-C": "1500", "USDT": "1"}}
    del document["parameters"]
    code, out, err = run(document, monkeypatch)
    assert (code, err) == (0, "")
    assert json.loads(out)["parameters_version"] == bundled_parameters().version != log_start_parameters().version
    with_log_start = {**document, "parameters": log_start_parameters().document()}
    code, _, err = run(with_log_start, monkeypatch)
    assert code == 2 and "BTC-26MAR27-70000-C is neither an instrument nor an asset" in err
