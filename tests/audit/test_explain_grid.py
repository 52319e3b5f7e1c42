"""``audit explain`` shows the portfolio grid and the dynamic-margin arithmetic (CONTRACT v2): the
grid of each underlying as a table of moves x volatility cells with the worst cell marked, the
extreme cells with their weight, W, S, IM and MM; a ``MarginRatesChanged`` sample step by step;
a margin-model request against the account's equity under the new model.

The grids are the hand grids of tests/domain/test_portfolio_model.py (iv 0 and vol_up_floor 0:
every volatility cell is 0 and an option is worth its intrinsic value, so each cell is written
down without a computer); the EWMA series is the worked one of tests/domain/test_dynamicmargin.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

from clearing.audit import explain, grid, rates_explain
from clearing.domain import events as ev
from clearing.domain import models
from clearing.domain.dynamicmargin import VolatilityState, change_payload, sample
from clearing.domain.marginmodel import CROSS
from clearing.domain.numbers import round_model_value, to_wire
from clearing.domain.params import DynamicMarginSpec, load_parameters
from clearing.domain.portfolio import PORTFOLIO
from clearing.domain.state import Account, LedgerState, MarkState, Position
from tests.domain.test_portfolio_model import CALL, parameters_document

AT = datetime(2027, 1, 1, tzinfo=UTC)
DYNAMIC_BTC = {
    "underlying": "BTC", "sample_seconds": 3600, "lambda": "0.9", "initial_volatility": "0.02",
    "reference_volatility": "0.02", "multiplier_floor": "1", "multiplier_cap": "3", "release_buffer": "0.25",
}  # fmt: skip


def ledger(*, dynamic: bool = False) -> LedgerState:
    document = parameters_document()
    if dynamic:
        document = copy.deepcopy(document)
        document["dynamic_margin"] = [dict(DYNAMIC_BTC)]
    state = LedgerState(parameters=load_parameters(document))
    for symbol, price, iv in (("BTC", "60000", None), ("BTCUSDT", "60000", None), (CALL, "2000", D(0))):
        state.marks[symbol] = MarkState(D(price), AT, iv)
    return state


def holder(state: LedgerState, *, perp: bool = True, model: str = PORTFOLIO, cash: str = "100000") -> Account:
    account = state.account("A")
    account.margin_model = model
    account.credit("USDT", D(cash))
    if perp:
        account.positions[("BTCUSDT", "cross")] = Position("BTCUSDT", "cross", D(1), D(60000))
    account.positions[(CALL, "cross")] = Position(CALL, "cross", D(-1), D(-2000))
    return account


def figures(state: LedgerState) -> dict[str, Any]:
    _, scope = explain._scope_figures(state, "A", CROSS)
    return scope


def words(scope: dict[str, Any], payload: dict[str, Any] | None = None) -> str:
    """``render`` of a margin call on ``scope`` (the decision part as explain builds it)."""
    return explain.render(
        {
            "id": "MC-9",
            "decision": {"position": 9, "type": ev.MARGIN_CALL_ISSUED, "payload": payload or {}, "occurred_at": "t"},
            "cause": {"position": 8, "type": "MarkRecorded", "payload": {}},
            "scope": scope,
            "later_events": [],
            "recomputed": {"equity": scope["equity"]},
            "matches_decision": True,
            "worst_cells_recomputed": scope.get("worst_cells"),
        }
    )


def test_explain_prints_the_grid_of_a_covered_call_with_the_worst_cell_marked_and_the_arithmetic() -> None:
    """Long 1 BTCUSDT + short 1 60,000 call at 60,000, multiplier 1: per cell 60,000 m -
    max(60,000 m, 0): -9,600 at -0.16 in all three volatility cells (up is first: the worst),
    0 from 0 up; extreme -0.33: -19,800 x 0.35 = -6,930, 0.5: 0. W = 9,600; S = 0.01 x 60,000 x 1
    = 600; IM = 9,600; MM = 0.8 x 9,600 = 7,680."""
    state = ledger()
    holder(state)
    scope = figures(state)
    assert scope["margin_model"] == PORTFOLIO and scope["multipliers"] == {"BTC": "1"}
    assert scope["worst_cells"] == [{"underlying": "BTC", "move": "-0.16", "volatility": "up"}]
    (btc,) = scope["portfolio"]["grids"]
    assert btc["moves"] == ["-0.16", "-0.12", "-0.08", "-0.04", "0", "0.04", "0.08", "0.12", "0.16"]
    assert [c["pnl"] for c in btc["cells"] if c["volatility"] == "unchanged"] == [
        "-9600", "-7200", "-4800", "-2400", "0", "0", "0", "0", "0",
    ]  # fmt: skip
    assert [(c["move"], c["volatility"]) for c in btc["cells"] if c["worst"]] == [("-0.16", "up")]
    assert btc["extreme_cells"] == [
        {"move": "-0.33", "volatility": "unchanged", "extreme": True, "pnl": "-19800", "weight": "0.35",
         "weighted_pnl": "-6930", "worst": False},
        {"move": "0.5", "volatility": "unchanged", "extreme": True, "pnl": "0", "weight": "0.35",
         "weighted_pnl": "0", "worst": False},
    ]  # fmt: skip
    assert (btc["worst_loss"], btc["short_option_minimum"]["value"]) == ("9600", "600")
    assert (btc["initial_margin"], btc["maintenance_margin"]) == ("9600", "7680")
    text = words(scope)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["move", "up", "unchanged", "down"])
    assert lines[header + 1].split() == ["-0.16", "-9600", "*", "-9600", "-9600"]  # the worst cell marked
    assert lines[header + 5].split() == ["0", "0", "0", "0"]
    assert sum(line.count("*") for line in lines[header + 1 :]) == 1  # one worst cell
    for said in (
        "Margin model: portfolio; dynamic margin multiplier in force: BTC 1",
        "Grid of BTC: multiplier 1 in force, price range 0.16 x 1 = 0.16 in 4 steps each way; U = 60000",
        "move -0.33: P&L -19800 x 0.35 = weighted -6930",
        "Worst cell: move -0.16, volatility up, weighted P&L -9600",
        "W = max(0, -(-9600)) = 9600",
        "S = short_option_minimum_rate x U x short option contracts = 0.01 x 60000 x 1 = 600",
        "IM = max(W, S) = max(9600, 600) = 9600, rounded up = 9600",
        "MM = maintenance_factor x max(W, S) = 0.8 x 9600, rounded up = 7680",
        "IM = BTC 9600 = 9600",
        "MM = BTC 7680 = 7680",
        "Worst cells: BTC move -0.16 volatility up",
        "BTCUSDT (cross): quantity 1, contract size 1, cost 60000, mark used 60000, unrealised PnL 0; margined on "
        "the grid of its underlying (below)",
    ):
        assert said in text, said
    assert "Maintenance margin = sum of the positions'" not in text  # not the standard sum


def test_the_grid_widens_with_the_multiplier_in_force() -> None:
    """Multiplier 1.5: price range 0.16 x 1.5 = 0.24, moves -0.24 .. 0.24 by 0.06; the worst is
    60,000 x -0.24 = -14,400 (up); W = 14,400, IM = 14,400, MM = 11,520."""
    state = ledger()
    holder(state)
    state.volatility["BTC"] = VolatilityState("BTC", started=True, multiplier=D("1.5"))
    scope = figures(state)
    (btc,) = scope["portfolio"]["grids"]
    assert (btc["multiplier"], btc["scaled_price_range"]) == ("1.5", "0.24")
    assert btc["moves"][:2] == ["-0.24", "-0.18"] and btc["worst_pnl"] == "-14400"
    assert (btc["initial_margin"], btc["maintenance_margin"]) == ("14400", "11520")
    assert scope["multipliers"] == {"BTC": "1.5"}
    text = words(scope)
    assert "price range 0.16 x 1.5 = 0.24 in 4 steps each way" in text
    assert "dynamic margin multiplier in force: BTC 1.5" in text


def test_a_naked_short_call_is_marked_in_its_extreme_cell() -> None:
    """Short 1 60,000 call alone: the extreme 0.5 loses 30,000, x 0.35 = 10,500, more than 9,600
    at 0.16: that cell is the worst. IM = 10,500, MM = 8,400."""
    state = ledger()
    holder(state, perp=False)
    scope = figures(state)
    (btc,) = scope["portfolio"]["grids"]
    assert not any(c["worst"] for c in btc["cells"])
    assert btc["worst_cell"] == {"move": "0.5", "volatility": "unchanged", "extreme": True}
    text = words(scope)
    assert "move 0.5: P&L -30000 x 0.35 = weighted -10500 *" in text
    assert "W = max(0, -(-10500)) = 10500" in text
    assert "IM = max(W, S) = max(10500, 600) = 10500, rounded up = 10500" in text
    assert "MM = maintenance_factor x max(W, S) = 0.8 x 10500, rounded up = 8400" in text
    assert "BTC move 0.5 volatility unchanged (extreme)" in text
    option = btc["positions"][0]
    assert option["volatilities"] == {"up": "0", "unchanged": "0", "down": "0"} and option["iv"] == "0"


def test_a_standard_account_shows_no_grid_and_its_tier_terms_scaled_by_the_multiplier() -> None:
    state = ledger()
    account = holder(state, model="standard")
    del account.positions[(CALL, "cross")]
    state.volatility["BTC"] = VolatilityState("BTC", started=True, multiplier=D(2))
    scope = figures(state)
    assert scope["margin_model"] == "standard" and "portfolio" not in scope and "worst_cells" not in scope
    (perp,) = scope["positions"]
    tier = state.parameters.instruments_by_symbol["BTCUSDT"].tier_table[perp["tier"] - 1]
    assert perp["multiplier"] == "2" and D(perp["initial_amount"]) == 2 * tier.initial_amount
    text = words(scope)
    assert "Margin model: standard; dynamic margin multiplier in force: BTC 2" in text
    assert "rates and amounts x multiplier 2 in force" in text


def test_a_decision_naming_another_worst_cell_does_not_match() -> None:
    state = ledger()
    holder(state)
    scope = figures(state)
    assert explain._same_cells([{"underlying": "BTC", "move": "-0.160", "volatility": "up"}], scope["worst_cells"])
    assert not explain._same_cells([{"underlying": "BTC", "move": "0.16", "volatility": "up"}], scope["worst_cells"])


# ------------------------------------------------------------------------------------------------
# MarginRatesChanged


def test_a_rates_change_is_explained_step_by_step_and_matches_its_decision() -> None:
    """The worked series (lambda 0.9, sigma_0 0.02, reference 0.02, buffer 0.25): S_0 = 100 gives
    sigma_0 0.02, raw 1, multiplier 1.25; S_1 = 110: r = ln 1.1 = 0.095310179804 (12 places),
    sigma^2 = 0.9 x 0.02^2 + 0.1 x r^2 = 0.00126840303..., sigma = 0.035614646389, raw =
    1.78073231945, above the previous 1.25: the multiplier follows raw. Then a boundary with no new
    mark: r = 0, sigma = 0.033787020195, raw 1.68935100975: the buffer holds 1.78073231945."""
    state = ledger(dynamic=True)
    spec = state.parameters.dynamic_margin_spec("BTC")
    assert isinstance(spec, DynamicMarginSpec)
    after0, t0 = sample(spec, VolatilityState("BTC"), datetime(2027, 1, 1, 1, tzinfo=UTC), D(100))
    after1, t1 = sample(spec, after0, datetime(2027, 1, 1, 2, tzinfo=UTC), D(110))
    _, t2 = sample(spec, after1, datetime(2027, 1, 1, 3, tzinfo=UTC), D(110))
    assert t0 is not None and t1 is not None and t2 is not None
    state.marks["BTC"] = MarkState(D(110), datetime(2027, 1, 1, 1, 20, tzinfo=UTC))

    def decided(change: Any) -> dict[str, Any]:
        return {"account_id": ev.MARGIN_RATES_ACCOUNT, **change_payload(change), "parameters_version": "v"}

    def said(payload: dict[str, Any], previous: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
        result = rates_explain.rates_figures(state, payload, previous)
        result.update(
            decision={"position": 40, "type": ev.MARGIN_RATES_CHANGED, "payload": payload},
            cause={"position": 39, "type": "MarkRecorded", "occurred_at": "2027-01-01T02:05:00+00:00"},
        )
        return result, rates_explain.render_rates(result)

    result, text = said(decided(t1), {"position": 20, **decided(t0)})
    assert result["matches_decision"]
    steps = result["steps"]
    assert (steps["log_return"], steps["volatility"], steps["raw_multiplier"], steps["multiplier"]) == (
        "0.095310179804", "0.035614646389", "1.78073231945", "1.78073231945",
    )  # fmt: skip
    assert steps["variance"].startswith("0.0012684030")
    for line in (
        "Block: sample every 3600 s, lambda 0.9, initial volatility 0.02, reference volatility 0.02, multiplier "
        "floor 1, cap 3, release buffer 0.25.",
        "Sample S_1 = the last applied mark of BTC at or before the boundary = 110",
        "Previous sample (position 20, 2027-01-01T01:00:00Z): S_0 = 100, sigma_0 = 0.02, multiplier_0 = 1.25",
        "r_1 = ln(S_1 / S_0) = ln(110 / 100) = 0.095310179804",
        "sigma_1 = sqrt(",
        "), half-even to 12 places = 0.035614646389",
        "raw_1 = min(max(sigma_1 / reference_volatility, floor), cap) = min(max(0.035614646389 / 0.02 = "
        "1.78073231945, 1), 3) = 1.78073231945",
        "multiplier_1 = min((1 + release_buffer) x raw_1, max(raw_1, multiplier_0)) = min(2.2259153993125, "
        "max(1.78073231945, 1.25) = 1.78073231945) = 1.78073231945: raw above the previous multiplier: the "
        "multiplier follows raw",
        "The recomputation matches the decision.",
    ):
        assert line in text, line
    # The boundary with no new mark repeats the sample, and the buffer holds the multiplier.
    result, text = said(decided(t2), {"position": 40, **decided(t1)})
    assert result["matches_decision"] and result["steps"]["repeated"]
    assert "(no new mark since: the sample repeats, r = 0)" in text
    assert "= 1.78073231945: the buffer holds the multiplier at its previous value" in text
    # A decision whose figures are not the recomputation's is called out.
    forged = {**decided(t1), "multiplier": "1.25"}
    result, text = said(forged, {"position": 20, **decided(t0)})
    assert not result["matches_decision"] and "THE RECOMPUTATION DOES NOT MATCH THE DECISION." in text


def test_the_first_sample_is_explained_from_the_initial_volatility() -> None:
    state = ledger(dynamic=True)
    spec = state.parameters.dynamic_margin_spec("BTC")
    assert spec is not None
    state.marks["BTC"] = MarkState(D(100), datetime(2027, 1, 1, 0, 30, tzinfo=UTC))
    _, t0 = sample(spec, VolatilityState("BTC"), datetime(2027, 1, 1, 1, tzinfo=UTC), D(100))
    assert t0 is not None
    payload = {"account_id": ev.MARGIN_RATES_ACCOUNT, **change_payload(t0), "parameters_version": "v"}
    result = rates_explain.rates_figures(state, payload, None)
    result.update(
        decision={"position": 5, "type": ev.MARGIN_RATES_CHANGED, "payload": payload},
        cause={"position": 4, "type": "MarkRecorded", "occurred_at": "2027-01-01T01:10:00+00:00"},
    )
    text = rates_explain.render_rates(result)
    assert result["matches_decision"]
    assert "First sample: no return; sigma_0 = initial_volatility = 0.02" in text
    assert (
        "multiplier_0 = (1 + release_buffer) x raw_0 = (1 + 0.25) x 1 = 1.25 (before it the multiplier was 1)" in text
    )


# ------------------------------------------------------------------------------------------------
# MarginModelChanged / MarginModelRejected


def model_words(state: LedgerState, decision_type: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
    result = rates_explain.model_figures(state, decision_type, payload)
    result.update(
        decision={"position": 12, "type": decision_type, "payload": payload},
        cause={"position": 11, "type": "MarginModelRequested", "occurred_at": "2027-01-01T00:00:00+00:00"},
    )
    return result, rates_explain.render_model(result)


def test_a_model_change_is_explained_with_the_grid_under_the_new_model_against_equity() -> None:
    """The covered call on the standard model (IM 500 + 11,000 = 11,500) asks for portfolio: IM
    9,600 on the grid, equity 100,000 - 2,000 = 98,000 >= 9,600: approved, and the lifecycle's own
    rule, taken again on the state, gives the logged decision field for field."""
    state = ledger()
    holder(state, model="standard")
    payload = {"account_id": "A", "request_id": "S-1", "model": PORTFOLIO, "previous_model": "standard",
               "equity": "98000", "initial_margin": "9600", "parameters_version": "portfolio-test"}  # fmt: skip
    result, text = model_words(state, ev.MARGIN_MODEL_CHANGED, payload)
    assert result["matches_decision"] and result["recomputed"] == {"type": ev.MARGIN_MODEL_CHANGED, **payload}
    assert result["under_current"]["initial_margin"] == "11500"
    for line in (
        "account A asked (request S-1) to move its cross scope from the standard model to portfolio",
        "Lifecycle: no margin status; liquidation orders pending: none.",
        "Under standard (now): equity 98000, initial margin 11500, maintenance margin 6750 USDT",
        "Under portfolio: equity 98000, initial margin 9600, maintenance margin 7680 USDT",
        "W = max(0, -(-9600)) = 9600",
        "Equity 98000 >= initial margin 9600 under portfolio: meets it",
        "Recomputed: MarginModelChanged (previous_model standard, equity 98000, initial_margin 9600, "
        "parameters_version portfolio-test)",
        "The recomputation matches the decision.",
    ):
        assert line in text, line
    assert models.model_of(state.accounts["A"]).name == "standard"  # explaining changes nothing
    # A logged figure the rule does not give again is called out.
    forged = {**payload, "initial_margin": "9599"}
    result, text = model_words(state, ev.MARGIN_MODEL_CHANGED, forged)
    assert not result["matches_decision"] and "THE RECOMPUTATION DOES NOT MATCH THE DECISION." in text


def test_a_rejected_model_change_is_explained_by_the_initial_margin_it_would_not_meet() -> None:
    """Cash 9,000: equity 9,000 - 2,000 = 7,000 < the grid's IM 9,600: rejected with the rule's
    reason; a Changed decision on the same state would not match."""
    state = ledger()
    holder(state, model="standard", cash="9000")
    reason = "equity 7000 is below the initial margin 9600 that the portfolio model requires"
    payload = {"account_id": "A", "request_id": "S-2", "model": PORTFOLIO, "reason": reason,
               "parameters_version": "portfolio-test"}  # fmt: skip
    result, text = model_words(state, ev.MARGIN_MODEL_REJECTED, payload)
    assert result["matches_decision"] and result["recomputed"]["reason"] == reason
    assert "Equity 7000 < initial margin 9600 under portfolio: does not meet it" in text
    changed = {"account_id": "A", "request_id": "S-2", "model": PORTFOLIO, "previous_model": "standard",
               "equity": "7000", "initial_margin": "9600", "parameters_version": "portfolio-test"}  # fmt: skip
    result, _ = model_words(state, ev.MARGIN_MODEL_CHANGED, changed)
    assert not result["matches_decision"]


def test_a_request_while_liquidating_is_explained_by_the_lifecycle() -> None:
    """The same healthy book, its cross scope in liquidation: rejected whatever the margin."""
    from clearing.domain.state import MarginStatus

    state = ledger()
    account = holder(state, model="standard")
    account.margin[CROSS] = MarginStatus("liquidation", "MC-7")
    reason = "the account is in liquidation (cross) and cannot withdraw or add risk"
    payload = {"account_id": "A", "request_id": "S-4", "model": PORTFOLIO, "reason": reason,
               "parameters_version": "portfolio-test"}  # fmt: skip
    result, text = model_words(state, ev.MARGIN_MODEL_REJECTED, payload)
    assert result["matches_decision"]
    assert "Lifecycle: cross liquidation; liquidation orders pending: none." in text
    assert "Equity 98000 >= initial margin 9600 under portfolio: meets it" in text  # but it is liquidating


def test_a_request_for_an_unknown_model_is_explained_as_unavailable() -> None:
    state = ledger()
    holder(state, model="standard")
    payload = {"account_id": "A", "request_id": "S-3", "model": "span", "parameters_version": "portfolio-test",
               "reason": "the span model cannot margin this account: margin model 'span' is not available in this "
               "ledger (available: portfolio, standard)"}  # fmt: skip
    result, text = model_words(state, ev.MARGIN_MODEL_REJECTED, payload)
    assert result["matches_decision"], result["recomputed"]
    assert "Under span: cannot be evaluated: model 'span' is not available" in text


def test_worst_cells_name_every_underlying_of_the_scope() -> None:
    state = ledger()
    holder(state)
    scope = models.scope_risk(state, state.accounts["A"], CROSS)
    assert grid.worst_cells(scope) == [{"underlying": "BTC", "move": "-0.16", "volatility": "up"}]


def test_an_options_volatility_cells_are_shown_with_their_terms() -> None:
    """Valued 30 days before the 26 March expiry (08:00), DTE = 30 = vol_reference_days, so
    k_o = (30 / 30)^0.3 = 1: with iv 0.6, up = max(0.6 x (1 + 0.5), 0) = 0.9, unchanged 0.6,
    down = max(0.6 x (1 - 0.25), 0) = 0.45. The option is valued at the later of its own mark's
    time and its underlying's: the underlying's, marked an hour later."""
    state = ledger()
    holder(state)
    option_at = datetime(2027, 2, 24, 7, tzinfo=UTC)
    valued_at = datetime(2027, 2, 24, 8, tzinfo=UTC)
    state.marks[CALL] = MarkState(D(2000), option_at, D("0.6"))
    state.marks["BTC"] = MarkState(D(60000), valued_at)
    scope = figures(state)
    (btc,) = scope["portfolio"]["grids"]
    option = next(p for p in btc["positions"] if p["instrument"] == CALL)
    assert (option["iv"], option["valuation_at"], option["days_to_expiry"]) == ("0.6", valued_at.isoformat(), "30")
    assert option["volatilities"] == {"up": "0.9", "unchanged": "0.6", "down": "0.45"}
    assert (
        f"{CALL}: quantity -1 (option; iv 0.6, valued at 2027-02-24T08:00:00+00:00, DTE 30: volatility up 0.9, "
        "unchanged 0.6, down 0.45)"
    ) in words(scope)
    # The cells are the model's: the explanation's worst cell is the scope's.
    requirement = models.scope_risk(state, state.accounts["A"], CROSS).underlyings[0]
    assert btc["worst_pnl"] == to_wire(round_model_value(requirement.worst.weighted_pnl))
    assert btc["initial_margin"] == to_wire(requirement.initial_margin)
