"""The v2 risk parameter document (CONTRACT v2): option instruments, ``underlying``, the
``interest_rate``, ``option_margin``, ``portfolio_margin``, ``dynamic_margin`` and ``adl`` blocks,
each validated with a sentence a person can act on; v1 documents read and are written back as
before; the bundled defaults; and what ``params apply --check`` reports."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from clearing.domain.fold import admit
from clearing.domain.messages import InputError, decode
from clearing.domain.params import (
    BOOKED_KINDS,
    LOG_START_VERSION,
    RiskParameters,
    booking_report,
    bundled_document,
    bundled_parameters,
    load_parameters,
    log_start_document,
    log_start_parameters,
)
from clearing.domain.state import LedgerState

D = Decimal
T0 = "2026-11-23T12:00:00Z"

OPTION = {
    "symbol": "BTC-27DEC26-70000-C",
    "kind": "option",
    "underlying": "BTC",
    "option_type": "call",
    "strike": "70000",
    "expiry": "2026-12-27T08:00:00Z",
    "settlement_asset": "USDT",
    "contract_size": "1",
}
OPTION_MARGIN = [{"underlying": "BTC", "initial_rate": "0.15", "minimum_rate": "0.10", "maintenance_rate": "0.075"}]
# CONTRACT v2's examples of the blocks, as written there.
PORTFOLIO_MARGIN = {
    "underlying": "BTC", "price_range": "0.16", "price_steps": 4, "vol_up": "0.5", "vol_down": "0.25",
    "vol_up_floor": "0.5", "vol_power": "0.3", "vol_reference_days": "30", "extreme_moves": ["-0.33", "0.5"],
    "extreme_weight": "0.35", "short_option_minimum_rate": "0.01", "maintenance_factor": "0.8",
}  # fmt: skip
DYNAMIC_MARGIN = {
    "underlying": "BTC", "sample_seconds": 86400, "lambda": "0.94", "initial_volatility": "0.03",
    "reference_volatility": "0.03", "multiplier_floor": "1", "multiplier_cap": "3", "release_buffer": "0.25",
}  # fmt: skip


def bundled_state() -> LedgerState:
    """A state under the current bundled document (a new ``LedgerState`` is under the log-start
    document, which lists no options)."""
    return LedgerState(parameters=bundled_parameters())


def v1_document() -> dict[str, Any]:
    """The bundled document as it was before contract v2: no underlying, no options, no blocks."""
    document = bundled_document()
    document["instruments"] = [
        {key: value for key, value in spec.items() if key != "underlying"}
        for spec in document["instruments"]
        if spec["kind"] != "option"
    ]
    del document["option_margin"]
    del document["portfolio_margin"]
    return document


def with_option(**changes: Any) -> dict[str, Any]:
    document = v1_document()
    option = {**OPTION, **changes}
    document["instruments"].append({key: value for key, value in option.items() if value is not None})
    document["option_margin"] = copy.deepcopy(OPTION_MARGIN)
    return document


def rejected(document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        load_parameters(document)
    return str(caught.value)


# ------------------------------------------------------------------------------------------------
# v1 documents stay as they were


def test_a_v1_document_is_written_back_exactly_as_v1_wrote_it() -> None:
    """Snapshots and published documents hold ``document()``: the v2 fields a v1 document does
    not give must not appear in it (no "underlying": null, no "interest_rate": "0")."""
    document = v1_document()
    written = load_parameters(document).document()
    assert set(written) == {"version", "valuation_asset", "instruments", "assets", "margin_call", "liquidation"}
    assert written["instruments"] == document["instruments"]
    for spec in written["instruments"]:
        assert set(spec) == {"symbol", "kind", "settlement_asset", "contract_size", "tiers"}
    # (v1 spelled an asset's unused haircut rule as null; so it still does.)
    assert written["assets"][0] == {"asset": "USDT", "haircut": "0", "haircut_tiers": None}


def test_underlying_defaults_to_the_instruments_own_symbol() -> None:
    parameters = load_parameters(v1_document())
    spec = parameters.instrument("BTCUSDT")
    assert spec is not None and spec.underlying is None
    assert spec.underlying_symbol == "BTCUSDT"
    assert parameters.interest_rate == 0
    assert parameters.option_margin == () and parameters.adl is None


# ------------------------------------------------------------------------------------------------
# The bundled defaults


def test_the_log_start_document_is_the_v1_bundled_document_under_its_version() -> None:
    """Every decision payload carries parameters_version; logs written before the ledger logged
    its parameters started under the v1 bundled document and name its version: that document, and
    no other, goes under that name (a snapshot of such a log holds it byte for byte)."""
    assert log_start_parameters().version == LOG_START_VERSION == "bundled-2026-11-23.1"
    document = log_start_document()
    assert "option_margin" not in document
    assert all("underlying" not in spec and spec["kind"] == "perpetual" for spec in document["instruments"])
    assert load_parameters(document) == log_start_parameters()
    assert LedgerState().parameters is log_start_parameters()


def test_a_v1_document_is_logged_as_it_was_sent() -> None:
    """A risk_parameters message's logged payload carries the document as sent, not as v2
    validation would spell it again (``document()`` adds ``haircut_tiers: null`` and the like): a
    log written before v2 is written again byte for byte by this code (the pinned log's test)."""
    from clearing.domain.messages import decode_wire
    from clearing.store.hashing import canonical_json

    sent = {"type": "risk_parameters", "parameters": log_start_document(), "occurred_at": "2026-11-23T12:00:00Z"}
    message, payload = decode_wire("admin", json.dumps(sent).encode())
    assert canonical_json(payload["parameters"]) == canonical_json(sent["parameters"])
    assert payload["parameters"] != log_start_parameters().document()  # which is the same document, spelled anew
    assert load_parameters(payload["parameters"]) == log_start_parameters()
    assert message.parameters == sent["parameters"]


def test_the_current_bundled_document_has_a_version_of_its_own() -> None:
    """One version names one document: the v2 bundled document (option chain, option_margin)
    is not the log-start one, so it may not take its version."""
    assert bundled_parameters().version == "bundled-2026-12-08.1"
    assert bundled_parameters().version != log_start_parameters().version
    assert bundled_parameters().document() != log_start_parameters().document()
    # The v2 document is the v1 one plus underlyings, options, option_margin and portfolio_margin
    # (no dynamic_margin: the risk team enables it by a document of its own), and a version.
    assert "dynamic_margin" not in bundled_document()
    assert [block.underlying for block in bundled_parameters().portfolio_margin] == ["BTC", "ETH"]
    assert {**v1_document(), "version": LOG_START_VERSION} == log_start_document()


def test_the_bundled_linear_instruments_are_those_of_v1_plus_their_underlying() -> None:
    bundled = bundled_document()
    linear = [spec for spec in bundled["instruments"] if spec["kind"] != "option"]
    assert [(spec["symbol"], spec["underlying"]) for spec in linear] == [
        ("BTCUSDT", "BTC"),
        ("ETHUSDT", "ETH"),
        ("SOLUSDT", "SOL"),
    ]
    assert [{k: v for k, v in spec.items() if k != "underlying"} for spec in linear] == v1_document()["instruments"]


def test_the_bundled_option_chain() -> None:
    parameters = bundled_parameters()
    options = [spec for spec in parameters.instruments if spec.kind == "option"]
    assert len(options) == 20
    assert {spec.underlying for spec in options} == {"BTC", "ETH"}
    assert {spec.option_type for spec in options} == {"call", "put"}
    for spec in options:
        # In force for years of tests: no bundled option expires before 2027.
        assert spec.expiry is not None and spec.expiry >= datetime(2027, 1, 1, tzinfo=UTC)
        assert spec.expiry.tzinfo is not None
        assert spec.settlement_asset == "USDT" and spec.tiers == ()
        assert parameters.option_margin_rates(spec.underlying_symbol) is not None
    spec = parameters.instrument("BTC-26MAR27-70000-C")
    assert spec is not None
    assert (spec.underlying, spec.option_type, spec.strike) == ("BTC", "call", D(70000))
    assert spec.expiry == datetime(2027, 3, 26, 8, tzinfo=UTC)
    rates = parameters.option_margin_rates("ETH")
    assert rates is not None and (rates.initial_rate, rates.minimum_rate, rates.maintenance_rate) == (
        D("0.15"),
        D("0.1"),
        D("0.075"),
    )


def test_the_bundled_document_round_trips_through_its_written_form() -> None:
    parameters = bundled_parameters()
    written = parameters.document()
    assert load_parameters(written) == parameters
    assert load_parameters(json.loads(json.dumps(written))).document() == written


# ------------------------------------------------------------------------------------------------
# Options


def test_an_option_parses_with_exact_fields_and_its_expiry_in_utc() -> None:
    parameters = load_parameters(with_option(expiry="2026-12-27T09:00:00+01:00"))
    spec = parameters.instrument("BTC-27DEC26-70000-C")
    assert spec is not None
    assert spec.strike == D(70000) and isinstance(spec.strike, Decimal)
    assert spec.expiry == datetime(2026, 12, 27, 8, tzinfo=UTC)
    written = next(s for s in parameters.document()["instruments"] if s["symbol"] == spec.symbol)
    assert written == {**OPTION, "expiry": "2026-12-27T08:00:00Z"}


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("2027-03-26T08:00:00Z", "2027-03-26T08:00:00Z"),
        ("2027-03-26T08:00:00+00:00", "2027-03-26T08:00:00Z"),
        ("2027-03-26T10:00:00.5+02:00", "2027-03-26T08:00:00.500000Z"),
        ("2027-03-26T02:30:00-05:30", "2027-03-26T08:00:00Z"),
    ],
)
def test_an_expiry_is_written_back_in_utc_and_reads_back_the_same(given: str, written: str) -> None:
    parameters = load_parameters(with_option(expiry=given))
    spelled = parameters.document()["instruments"][-1]["expiry"]
    assert spelled == written
    assert load_parameters(parameters.document()) == parameters


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"option_type": None}, "an option needs option_type"),
        ({"strike": None, "expiry": None}, "an option needs strike, expiry"),
        ({"underlying": None}, "an option needs underlying"),
        ({"option_type": "straddle"}, "option_type"),
        ({"strike": "0"}, "strike must be positive"),
        ({"strike": "-5"}, "strike must be positive"),
        ({"strike": 70000.0}, "not the JSON number"),
        ({"expiry": "2026-12-27T08:00:00"}, "needs a zone"),
        ({"expiry": "2026-12-27"}, "needs a zone"),
        ({"expiry": "27 Dec 2026"}, "must be an RFC 3339 time"),
        ({"expiry": 1798358400}, "must be an RFC 3339 time string"),
        ({"underlying": "BTC-27DEC26-70000-C"}, "must be another symbol"),
        ({"underlying": "DOGE"}, "underlying DOGE is neither a listed instrument nor a listed asset"),
        (
            {"tiers": [{"notional_cap": None, "initial_rate": "0.1", "maintenance_rate": "0.05"}]},
            "options take no tiers",
        ),
    ],
)
def test_a_bad_option_is_refused_with_a_reason(changes: dict[str, Any], reason: str) -> None:
    assert reason in rejected(with_option(**changes))


def test_an_options_underlying_cannot_be_an_option() -> None:
    document = with_option()
    document["instruments"].append({**OPTION, "symbol": "OPT-ON-OPT", "underlying": OPTION["symbol"]})
    assert "an option's underlying cannot be an option" in rejected(document)


def test_an_option_without_option_margin_rates_for_its_underlying_is_refused() -> None:
    document = with_option()
    del document["option_margin"]
    assert "option_margin has no rates for the underlying BTC of listed options" in rejected(document)


def test_option_fields_on_a_linear_instrument_are_refused_but_a_future_may_name_its_expiry() -> None:
    document = v1_document()
    document["instruments"][0]["strike"] = "70000"
    assert "strike is for options only; this instrument is a perpetual" in rejected(document)
    document = v1_document()
    document["instruments"][0]["expiry"] = "2027-03-26T08:00:00Z"
    assert "expiry is for options only; this instrument is a perpetual" in rejected(document)
    document["instruments"][0]["kind"] = "future"
    spec = load_parameters(document).instruments[0]
    assert spec.expiry == datetime(2027, 3, 26, 8, tzinfo=UTC)
    document["instruments"][0]["option_type"] = "call"
    assert "option_type is for options only; this instrument is a future" in rejected(document)


def test_a_linear_instrument_still_needs_tiers() -> None:
    document = v1_document()
    del document["instruments"][0]["tiers"]
    assert "a perpetual needs tiers" in rejected(document)


def test_a_linear_instruments_underlying_must_be_marked() -> None:
    document = v1_document()
    document["instruments"][0]["underlying"] = "XBT"
    assert "BTCUSDT: underlying XBT is neither a listed instrument nor a listed asset" in rejected(document)
    document["instruments"][0]["underlying"] = "ETHUSDT"  # an instrument is a marked symbol too
    assert load_parameters(document).instruments[0].underlying_symbol == "ETHUSDT"


# ------------------------------------------------------------------------------------------------
# The v2 blocks


def full_v2_document() -> dict[str, Any]:
    document = with_option()
    document["interest_rate"] = "0.05"
    document["portfolio_margin"] = [copy.deepcopy(PORTFOLIO_MARGIN)]
    document["dynamic_margin"] = [copy.deepcopy(DYNAMIC_MARGIN)]
    document["adl"] = {"enabled": True}
    return document


def test_the_contracts_examples_of_every_block_parse_as_exact_values() -> None:
    parameters = load_parameters(full_v2_document())
    assert parameters.interest_rate == D("0.05")
    rates = parameters.option_margin_rates("BTC")
    assert rates is not None and rates.minimum_rate == D("0.10")
    grid = parameters.portfolio_margin[0]
    assert (grid.price_range, grid.price_steps, grid.extreme_moves) == (D("0.16"), 4, (D("-0.33"), D("0.5")))
    assert grid.vol_reference_days == D(30) and grid.maintenance_factor == D("0.8")
    dynamic = parameters.dynamic_margin[0]
    assert (dynamic.sample_seconds, dynamic.lambda_, dynamic.multiplier_cap) == (86400, D("0.94"), D(3))
    assert parameters.adl is not None and parameters.adl.enabled is True


def test_a_v2_document_is_written_back_with_the_contracts_spelling() -> None:
    document = full_v2_document()
    written = load_parameters(document).document()
    assert written["dynamic_margin"][0]["lambda"] == "0.94" and "lambda_" not in written["dynamic_margin"][0]
    assert written["interest_rate"] == "0.05" and written["adl"] == {"enabled": True}
    assert written["portfolio_margin"][0]["price_steps"] == 4
    assert written["portfolio_margin"][0]["extreme_moves"] == ["-0.33", "0.5"]
    assert load_parameters(written) == load_parameters(document)


def block_rejected(block: str, **changes: Any) -> str:
    document = full_v2_document()
    if block in ("interest_rate", "adl"):
        document[block] = changes["value"]
    else:
        entry = document[block][0]
        for key, value in changes.items():
            if value is None:
                del entry[key]
            else:
                entry[key] = value
    return rejected(document)


@pytest.mark.parametrize(
    ("block", "changes", "reason"),
    [
        ("option_margin", {"maintenance_rate": "0.2"}, "0 < maintenance_rate <= minimum_rate <= initial_rate <= 1"),
        ("option_margin", {"minimum_rate": "0.2"}, "0 < maintenance_rate <= minimum_rate <= initial_rate <= 1"),
        ("option_margin", {"initial_rate": "1.5"}, "initial_rate <= 1"),
        ("option_margin", {"maintenance_rate": "0"}, "0 < maintenance_rate"),
        ("option_margin", {"underlying": "DOGE"}, "option_margin: underlying DOGE is neither"),
        ("portfolio_margin", {"price_range": "1"}, "price_range must be in (0, 1)"),
        ("portfolio_margin", {"price_steps": "4"}, "price_steps"),
        ("portfolio_margin", {"price_steps": 4.0}, "price_steps"),
        ("portfolio_margin", {"price_steps": 0}, "price_steps"),
        ("portfolio_margin", {"price_steps": 51}, "price_steps"),
        ("portfolio_margin", {"vol_down": "1.5"}, "vol_down must be in [0, 1]"),
        ("portfolio_margin", {"vol_power": "-0.1"}, "vol_power must be in [0, 1]"),
        ("portfolio_margin", {"vol_reference_days": "0"}, "vol_reference_days must be in (0, 3650]"),
        ("portfolio_margin", {"extreme_moves": ["-1", "0.5"]}, "every extreme move must be above -1 and not 0"),
        ("portfolio_margin", {"extreme_moves": ["0.5", "0.5"]}, "must not repeat a move"),
        ("portfolio_margin", {"extreme_moves": ["0.1"] * 11}, "extreme_moves"),
        ("portfolio_margin", {"extreme_weight": "1.2"}, "extreme_weight must be in [0, 1]"),
        ("portfolio_margin", {"maintenance_factor": "0"}, "maintenance_factor must be in (0, 1]"),
        ("portfolio_margin", {"short_option_minimum_rate": "-0.01"}, "short_option_minimum_rate"),
        ("portfolio_margin", {"vol_up": None}, "vol_up"),
        ("dynamic_margin", {"lambda": "1"}, "lambda must be in (0, 1)"),
        ("dynamic_margin", {"lambda": 0.94}, "not the JSON number"),
        ("dynamic_margin", {"sample_seconds": 30}, "sample_seconds"),
        ("dynamic_margin", {"initial_volatility": "0"}, "initial_volatility and reference_volatility must be positive"),
        ("dynamic_margin", {"multiplier_floor": "4"}, "0 < multiplier_floor <= multiplier_cap"),
        ("dynamic_margin", {"release_buffer": "-0.1"}, "release_buffer must be in [0, 1]"),
        ("interest_rate", {"value": "1.5"}, "interest_rate must be in (-1, 1)"),
        ("interest_rate", {"value": 0.05}, "not the JSON number"),
        ("adl", {"value": {"enabled": "yes"}}, "enabled"),
        ("adl", {"value": {}}, "enabled"),
    ],
)
def test_a_bad_block_is_refused_with_a_reason(block: str, changes: dict[str, Any], reason: str) -> None:
    assert reason in block_rejected(block, **changes)


@pytest.mark.parametrize("block", ["option_margin", "portfolio_margin", "dynamic_margin"])
def test_one_entry_per_underlying(block: str) -> None:
    document = full_v2_document()
    document[block].append(copy.deepcopy(document[block][0]))
    assert f"{block}: one entry per underlying; BTC repeated" in rejected(document)


# ------------------------------------------------------------------------------------------------
# What the ledger books


def fill_of(instrument: str) -> Any:
    fields = {
        "type": "fill", "fill_id": "F-1", "trade_id": "T-1", "account_id": "A", "instrument": instrument,
        "side": "buy", "quantity": "1", "price": "100", "occurred_at": T0,
    }  # fmt: skip
    return decode("fills", json.dumps(fields).encode())


def one_of_each_kind() -> RiskParameters:
    document = with_option()
    tiers = [{"notional_cap": None, "initial_rate": "0.1", "maintenance_rate": "0.05"}]
    for kind in ("future", "spot"):
        document["instruments"].append(
            {"symbol": f"X-{kind}", "kind": kind, "settlement_asset": "USDT", "contract_size": "1", "tiers": tiers}
        )
    return load_parameters(document)


def test_the_ledger_books_fills_of_exactly_the_booked_kinds() -> None:
    """``BOOKED_KINDS`` (what ``params apply --check`` reports) says what the fold admits."""
    parameters = one_of_each_kind()
    for spec in parameters.instruments:
        state = LedgerState(parameters=parameters)
        if spec.kind in BOOKED_KINDS:
            admit(state, fill_of(spec.symbol))
        else:
            with pytest.raises(InputError, match=f"{spec.symbol} is a {spec.kind}; this ledger version books"):
                admit(state, fill_of(spec.symbol))


def test_an_option_fill_is_admitted_in_cross_margin_before_its_expiry_only() -> None:
    """Options are booked (issue 23): a cross fill before the expiry enters the log; an isolated
    one, and one at or after the expiry, are rejected with the reason."""
    admit(bundled_state(), fill_of("BTC-26MAR27-70000-C"))
    fields = {
        "type": "fill", "fill_id": "F-1", "trade_id": "T-1", "account_id": "A", "instrument": "BTC-26MAR27-70000-C",
        "side": "buy", "quantity": "1", "price": "100", "occurred_at": T0, "margin_mode": "isolated",
    }  # fmt: skip
    with pytest.raises(InputError, match="options are held in cross margin only, not isolated"):
        admit(bundled_state(), decode("fills", json.dumps(fields).encode()))
    expired = {**fields, "margin_mode": "cross", "occurred_at": "2027-03-26T08:00:00Z"}
    with pytest.raises(InputError, match="expired at 2027-03-26T08:00:00"):
        admit(bundled_state(), decode("fills", json.dumps(expired).encode()))
    admit(bundled_state(), decode("fills", json.dumps({**expired, "occurred_at": "2027-03-26T07:59:59Z"}).encode()))


def test_the_booking_report_names_each_kind_and_what_the_ledger_does_with_it() -> None:
    assert booking_report(one_of_each_kind()) == [
        "perpetual: 3 instruments, booked by this ledger version",
        "future: 1 instrument, booked by this ledger version",
        "option: 1 instrument, booked by this ledger version",
        "spot: 1 instrument parsed; this ledger version does not book spot fills yet (they would be dead-lettered)",
    ]
    assert booking_report(bundled_parameters())[1] == "option: 20 instruments, booked by this ledger version"


# ------------------------------------------------------------------------------------------------
# The options in the bundled document change nothing for linear books


def run(parameters: RiskParameters, messages: list[Any]) -> tuple[LedgerState, list[Any]]:
    from clearing.domain.fold import step

    state = LedgerState(parameters=parameters)
    decisions: list[Any] = []
    position = 0
    for message in messages:
        try:
            admit(state, message)
        except InputError:
            continue
        position += 1
        taken = step(state, message, position)
        position += len(taken)
        decisions.extend(taken)
    return state, decisions


def accounts(state: LedgerState) -> dict[str, Any]:
    return {
        account_id: (
            dict(account.balances),
            {key: (p.quantity, p.cost, p.realised_pnl, p.funding_paid) for key, p in account.positions.items()},
        )
        for account_id, account in state.accounts.items()
    }


def test_a_simulated_linear_market_decides_identically_with_and_without_the_bundled_options() -> None:
    """The same simulated market (fills, marks, funding, a crash with calls and liquidations)
    under the v1 bundled document and under the v2 one: the same decisions, field for field, and
    the same books. Then marks of every bundled option (with iv) are recorded and move nothing."""
    from clearing.simulate import Scenario, generate

    scenario = Scenario(seed=11, accounts=30, trades=600, steps=60, crash_at=0.6, crash_depth=D("0.45"))
    messages = [decode(m.kind, m.encode()) for m in generate(scenario)]
    v1_state, v1_decisions = run(load_parameters(v1_document()), messages)
    v2_state, v2_decisions = run(bundled_parameters(), messages)
    assert {"MarginCallIssued", "LiquidationOrderIssued", "WithdrawalApproved"} <= {e.type for e in v1_decisions}
    assert v2_decisions == v1_decisions
    assert accounts(v2_state) == accounts(v1_state)

    from clearing.domain.fold import step

    before = accounts(v2_state)
    at = (v2_state.last_occurred_at or datetime(2026, 11, 23, tzinfo=UTC)).isoformat()
    for number, spec in enumerate(s for s in bundled_parameters().instruments if s.kind == "option"):
        fields = {"type": "mark", "symbol": spec.symbol, "price": "1234.5", "iv": "0.61", "occurred_at": at}
        mark = decode("marks", json.dumps(fields).encode())
        admit(v2_state, mark)
        assert step(v2_state, mark, 1_000_000 + number) == []
    assert accounts(v2_state) == before


def test_params_apply_check_reports_what_the_ledger_books(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``clearing params apply --check`` validates and publishes nothing; it says per kind what
    this ledger version books, so an operator learns before applying that option fills would be
    dead-lettered."""
    from clearing.cli import main

    path = tmp_path / "bundled.json"
    path.write_text(json.dumps(bundled_document()))
    assert main(["params", "apply", "--check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "valid: risk parameters bundled-2026-12-08.1, 23 instruments, 5 assets",
        "  perpetual: 3 instruments, booked by this ledger version",
        "  option: 20 instruments, booked by this ledger version",
    ]
    bad = with_option(strike="0")
    path.write_text(json.dumps(bad))
    assert main(["params", "apply", "--check", str(path)]) == 2
    assert "strike must be positive" in capsys.readouterr().err


def test_an_isolated_margin_transfer_to_an_option_is_rejected_with_a_reason() -> None:
    """The bundled options are listed, so the transfer is no longer an unknown instrument; it
    must not reach the margin model either (which prices linear instruments only, and raised)."""
    transfer = {
        "type": "isolated_margin", "transfer_id": "M-1", "account_id": "A", "instrument": "BTC-26MAR27-70000-C",
        "amount": "100", "occurred_at": T0,
    }  # fmt: skip
    with pytest.raises(InputError, match="BTC-26MAR27-70000-C is an option, held in cross margin only"):
        admit(bundled_state(), decode("transfers", json.dumps(transfer).encode()))
    admit(bundled_state(), decode("transfers", json.dumps({**transfer, "instrument": "BTCUSDT"}).encode()))
