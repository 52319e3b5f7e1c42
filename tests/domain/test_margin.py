"""The margin model by hand-derived example, then by property.

Unless a test says otherwise the parameters are CONTRACT.md's example document, whose BTCUSDT
tiers are (notional in USDT):

    tier  notional band          initial  maintenance  initial amount  maintenance amount
    1     0 .. 50 000            0.008    0.004        0               0
    2     50 000 .. 250 000      0.01     0.005        100             50
    3     250 000 ..             0.02     0.01         2 600           1 300

    maintenance amount_2 = 50 000 x (0.005 - 0.004) = 50
    maintenance amount_3 = 250 000 x (0.01 - 0.005) + 50 = 1 300
    initial amount_2     = 50 000 x (0.01 - 0.008) = 100
    initial amount_3     = 250 000 x (0.02 - 0.01) + 100 = 2 600

plus an ETHUSDT perpetual (contract size 0.1, one tier: initial 0.02, maintenance 0.01) and the
assets USDT (no haircut) and BTC (2% up to 10 BTC, 5% above). warning_ratio 0.8, resolve 0.7.
"""

from __future__ import annotations

from decimal import Decimal as D
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain.levels import Level
from clearing.domain.margin import (
    THRESHOLD_BANKRUPT,
    THRESHOLD_MAINTENANCE,
    THRESHOLD_RESOLVE,
    THRESHOLD_WARNING,
    collateral_value,
    evaluate,
    evaluate_scope,
    trigger_prices,
)
from clearing.domain.marginmodel import MarginModelError, ScopeRisk, isolated_scope
from clearing.domain.models import scope_risk
from clearing.domain.numbers import LEDGER_CONTEXT
from clearing.domain.params import InstrumentSpec, RiskParameters, load_parameters
from clearing.domain.state import Account, LedgerState, MarkState, Position

HEALTHY, WARNING, MAINTENANCE = Level.HEALTHY, Level.WARNING, Level.MAINTENANCE


def contract_document() -> dict[str, Any]:
    return {
        "version": "test-1",
        "valuation_asset": "USDT",
        "instruments": [
            {
                "symbol": "BTCUSDT",
                "kind": "perpetual",
                "settlement_asset": "USDT",
                "contract_size": "1",
                "tiers": [
                    {"notional_cap": "50000", "initial_rate": "0.008", "maintenance_rate": "0.004"},
                    {"notional_cap": "250000", "initial_rate": "0.01", "maintenance_rate": "0.005"},
                    {"notional_cap": None, "initial_rate": "0.02", "maintenance_rate": "0.01"},
                ],
            },
            {
                "symbol": "ETHUSDT",
                "kind": "perpetual",
                "settlement_asset": "USDT",
                "contract_size": "0.1",
                "tiers": [{"notional_cap": None, "initial_rate": "0.02", "maintenance_rate": "0.01"}],
            },
        ],
        "assets": [
            {"asset": "USDT", "haircut": "0"},
            {
                "asset": "BTC",
                "haircut_tiers": [{"amount_cap": "10", "haircut": "0.02"}, {"amount_cap": None, "haircut": "0.05"}],
            },
        ],
        "margin_call": {"warning_ratio": "0.8", "resolve_ratio": "0.7", "grace_period_seconds": 0},
        "liquidation": {"fee_rate": "0.005", "target_ratio": "0.7"},
    }


PARAMS = load_parameters(contract_document())


def account(balances: dict[str, str], *positions: Position) -> Account:
    return Account("A1", {asset: D(amount) for asset, amount in balances.items()}, {p.key: p for p in positions})


def btc(quantity: str, entry: str, mode: str = "cross", isolated_margin: str = "0") -> Position:
    q = D(quantity)
    return Position("BTCUSDT", mode, q, q * D(entry), isolated_margin=D(isolated_margin))


def btc_requirements(mark: str) -> tuple[D, D, int]:
    """(initial, maintenance, tier) of a 1 BTC long at ``mark``."""
    risk = evaluate(account({}, btc("1", mark)), PARAMS, {"BTCUSDT": D(mark)})
    position = risk.cross.positions[0]
    return position.initial_margin, position.maintenance_margin, position.tier


# ------------------------------------------------------------------------------------------ tiers


def test_notional_exactly_at_a_cap_is_in_that_caps_tier() -> None:
    # 1 BTC at 50 000: notional 50 000 = cap 1 -> tier 1; 0.004 x 50 000 = 200, 0.008 x 50 000 = 400
    assert btc_requirements("50000") == (D("400"), D("200"), 1)


def test_notional_just_above_a_cap_moves_to_the_next_tier_continuously() -> None:
    # 50 000.01 -> tier 2: maintenance 0.005 x 50 000.01 - 50 = 200.00005 -> rounds up to 200.00005
    #                      initial     0.01  x 50 000.01 - 100 = 400.0001
    assert btc_requirements("50000.01") == (D("400.0001"), D("200.00005"), 2)


def test_requirements_are_equal_from_both_sides_of_every_cap() -> None:
    spec = PARAMS.instruments_by_symbol["BTCUSDT"]
    tiers = spec.tier_table
    # at 50 000: tier 1 maintenance 200 = tier 2's 250 - 50; initial 400 = 500 - 100
    # at 250 000: tier 2 maintenance 1 250 - 50 = 1 200 = tier 3's 2 500 - 1 300; initial 2 400
    expected = {D(50000): (D(400), D(200)), D(250000): (D(2400), D(1200))}
    for below, above in pairwise(tiers):
        cap = below.notional_cap
        assert cap is not None
        assert below.maintenance(cap) == above.maintenance(cap) == expected[cap][1]
        assert below.initial(cap) == above.initial(cap) == expected[cap][0]


def test_tier_three_requirement() -> None:
    # 1 BTC at 300 000: maintenance 0.01 x 300 000 - 1 300 = 1 700, initial 0.02 x 300 000 - 2 600 = 3 400
    assert btc_requirements("300000") == (D("3400"), D("1700"), 3)


# ------------------------------------------------------------------------------------- collateral


def test_tiered_haircut_applies_each_band_to_the_amount_inside_it() -> None:
    # 12 BTC at 64 000: 10 BTC lose 2% (0.2 BTC), 2 BTC lose 5% (0.1 BTC): (12 - 0.3) x 64 000 = 748 800
    value = collateral_value(PARAMS, "BTC", D("12"), D("64000"))
    assert value.haircut_units == D("0.3")
    assert value.value == D("748800")


def test_haircut_below_the_first_cap_uses_the_first_rate_only() -> None:
    # 5 BTC at 100: 5 x 0.98 x 100 = 490
    assert collateral_value(PARAMS, "BTC", D("5"), D("100")).value == D("490")


def test_negative_balances_count_at_full_value_without_haircut() -> None:
    # -1 BTC at 64 000 is a debt of 64 000, not 62 720; -500 USDT is -500
    risk = evaluate(account({"BTC": "-1", "USDT": "-500"}), PARAMS, {"BTC": D("64000")})
    assert risk.cross.collateral == D("-64500")
    assert risk.cross.equity == D("-64500")
    assert risk.cross.status == HEALTHY  # nothing open to call or liquidate


def test_unpriced_collateral_counts_zero_and_is_named() -> None:
    risk = evaluate(account({"BTC": "2", "USDT": "100", "DOGE": "5"}), PARAMS, {})
    assert risk.cross.collateral == D("100")
    assert risk.cross.unpriced_assets == ("BTC", "DOGE")


# --------------------------------------------------------------------------------------- scopes


def test_cross_equity_ratio_and_status() -> None:
    # USDT 10 000, long 1 BTC from 60 000, mark 59 000:
    #   PnL = 59 000 - 60 000 = -1 000, equity = 9 000
    #   notional 59 000 in tier 2: maintenance 0.005 x 59 000 - 50 = 245, initial 0.01 x 59 000 - 100 = 490
    #   ratio = 245 / 9 000 = 0.027222... -> rounds up to 0.0272222223
    risk = evaluate(account({"USDT": "10000"}, btc("1", "60000")), PARAMS, {"BTCUSDT": D("59000")})
    cross = risk.cross
    assert (cross.equity, cross.unrealised_pnl) == (D("9000"), D("-1000"))
    assert (cross.initial_margin, cross.maintenance_margin) == (D("490"), D("245"))
    assert cross.margin_ratio == D("0.0272222223")
    assert cross.status == HEALTHY


def test_statuses_follow_the_ratio() -> None:
    # USDT 10 000, long 1 BTC from 60 000; equity = P - 50 000, maintenance = 0.005 P - 50 (tier 2)
    #   P = 50 260: equity 260, maintenance 201.3, ratio 0.774... healthy
    #   P = 50 240: equity 240, maintenance 201.2, ratio 0.838... warning
    #   P = 50 200: equity 200, maintenance 201,   ratio 1.005   maintenance
    #   P = 49 990: equity -10 (tier 1 now, maintenance 199.96)        maintenance (an infinite
    #               ratio: bankrupt is a lifecycle state, reached only after liquidation)
    expected = {"50260": HEALTHY, "50240": WARNING, "50200": MAINTENANCE, "49990": MAINTENANCE}
    acct = account({"USDT": "10000"}, btc("1", "60000"))
    for mark, status in expected.items():
        assert evaluate(acct, PARAMS, {"BTCUSDT": D(mark)}).cross.status == status, mark


def test_an_isolated_loss_does_not_touch_cross_equity() -> None:
    # cross: USDT 10 000, nothing open. isolated BTC long 1 from 60 000 with 1 000 allocated.
    #   mark 59 500: isolated equity = 1 000 - 500 = 500, maintenance 0.005 x 59 500 - 50 = 247.5,
    #                ratio 247.5 / 500 = 0.495 (healthy)
    #   mark 58 800: isolated equity = 1 000 - 1 200 = -200 -> maintenance (not bankrupt while the
    #                position is open to liquidate); cross still 10 000
    acct = account({"USDT": "10000"}, btc("1", "60000", "isolated", "1000"))
    risk = evaluate(acct, PARAMS, {"BTCUSDT": D("59500")})
    scope = risk.scope(isolated_scope("BTCUSDT"))
    assert (scope.equity, scope.maintenance_margin, scope.margin_ratio) == (D("500"), D("247.5"), D("0.495"))
    assert risk.cross.equity == D("10000") and risk.cross.positions == ()
    crashed = evaluate(acct, PARAMS, {"BTCUSDT": D("58800")})
    assert crashed.scope(isolated_scope("BTCUSDT")).equity == D("-200")
    assert crashed.scope(isolated_scope("BTCUSDT")).status == MAINTENANCE
    assert crashed.scope(isolated_scope("BTCUSDT")).margin_ratio is None
    assert (crashed.cross.equity, crashed.cross.status) == (D("10000"), HEALTHY)


def test_unmarked_position_is_valued_at_its_entry_price() -> None:
    # short 10 ETHUSDT (contract size 0.1) from 1 500, no mark: PnL 0,
    # notional = |cost| = 10 x 0.1 x 1 500 = 1 500, maintenance 15, initial 30
    eth = Position("ETHUSDT", "cross", D("-10"), D("-10") * D("0.1") * D("1500"))
    risk = evaluate(account({"USDT": "1000"}, eth), PARAMS, {})
    position = risk.cross.positions[0]
    assert not position.marked and position.price_used == D("1500")
    assert (position.notional, position.unrealised_pnl) == (D("1500"), D("0"))
    assert (position.maintenance_margin, position.initial_margin) == (D("15"), D("30"))


def test_an_instrument_the_parameters_do_not_list_is_an_error() -> None:
    stray = Position("DOGEUSDT", "cross", D("1"), D("1"))
    with pytest.raises(MarginModelError, match="DOGEUSDT is not listed"):
        evaluate(account({}, stray), PARAMS, {})


def test_scope_risk_reads_the_ledger_state() -> None:
    state = LedgerState(parameters=PARAMS)
    acct = state.account("A1")
    acct.balances["USDT"] = D("10000")
    acct.positions[("BTCUSDT", "cross")] = btc("1", "60000")
    from datetime import UTC, datetime

    state.marks["BTCUSDT"] = MarkState(D("59000"), datetime(2026, 11, 23, tzinfo=UTC))
    assert scope_risk(state, acct, "cross") == evaluate(acct, PARAMS, {"BTCUSDT": D("59000")}).cross


# ----------------------------------------------------------------------------- liquidation prices


def test_liquidation_price_of_a_long() -> None:
    # USDT 10 000, long 1 BTC from 60 000. Equity = 10 000 + P - 60 000; in tier 2 maintenance =
    # 0.005 P - 50. Equity = maintenance: P - 50 000 = 0.005 P - 50 -> 0.995 P = 49 950
    # -> P = 50 201.005025125628... (notional inside tier 2), rounded up -> 50 201.0050251257
    risk = evaluate(account({"USDT": "10000"}, btc("1", "60000")), PARAMS, {"BTCUSDT": D("60000")})
    assert risk.cross.positions[0].liquidation_price == D("50201.0050251257")


def test_liquidation_price_of_a_short() -> None:
    # USDT 10 000, short 1 BTC from 60 000. Equity = 10 000 + 60 000 - P; maintenance 0.005 P - 50.
    # 70 000 - P = 0.005 P - 50 -> 1.005 P = 70 050 -> P = 69 701.4925373134328..., rounded down
    risk = evaluate(account({"USDT": "10000"}, btc("-1", "60000")), PARAMS, {"BTCUSDT": D("60000")})
    assert risk.cross.positions[0].liquidation_price == D("69701.4925373134")


def test_liquidation_price_crosses_into_a_lower_tier() -> None:
    # USDT 60 000, long 5 BTC from 60 000 (cost 300 000), mark 60 000: notional 300 000 is tier 3.
    # Solving with tier 3's line: 60 000 + 5P - 300 000 = 0.05 P - 1 300 -> P = 238 700 / 4.95
    # = 48 222.22, but there the notional is 241 111 < 250 000: that is tier 2, not 3.
    # Tier 2's line: 5P - 240 000 = 0.025 P - 50 -> 4.975 P = 239 950 -> P = 48 231.1557788944723...
    # (notional 241 155.78, inside tier 2) -> rounded up 48 231.1557788945
    risk = evaluate(account({"USDT": "60000"}, btc("5", "60000")), PARAMS, {"BTCUSDT": D("60000")})
    position = risk.cross.positions[0]
    assert position.tier == 3
    assert position.liquidation_price == D("48231.1557788945")


def test_fully_collateralised_long_has_no_liquidation_price() -> None:
    # USDT 100 000, long 1 BTC from 60 000: even at a mark of 0 equity is 40 000 > 0 = maintenance
    risk = evaluate(account({"USDT": "100000"}, btc("1", "60000")), PARAMS, {"BTCUSDT": D("60000")})
    assert risk.cross.positions[0].liquidation_price is None


def test_a_long_already_under_maintenance_shows_the_price_it_must_recover_to() -> None:
    # Same long as above (liquidation 50 201.005...) with the mark at 50 100: equity 100 < 200.5
    risk = evaluate(account({"USDT": "10000"}, btc("1", "60000")), PARAMS, {"BTCUSDT": D("50100")})
    assert risk.cross.status == MAINTENANCE
    assert risk.cross.positions[0].liquidation_price == D("50201.0050251257")


def test_liquidation_price_of_an_isolated_position_uses_its_own_margin() -> None:
    # isolated: 1 000 allocated to a long 1 BTC from 60 000; cross has 1 000 000 USDT that must not
    # help. 1 000 + P - 60 000 = 0.005 P - 50 -> 0.995 P = 58 950 -> 59 246.2311557788944... up
    acct = account({"USDT": "1000000"}, btc("1", "60000", "isolated", "1000"))
    risk = evaluate(acct, PARAMS, {"BTCUSDT": D("60000")})
    assert risk.scope(isolated_scope("BTCUSDT")).positions[0].liquidation_price == D("59246.2311557789")


def test_liquidation_price_accounts_for_other_positions_in_the_cross_account() -> None:
    # USDT 10 000, long 1 BTC from 60 000, short 10 ETHUSDT (cs 0.1) from 2 000 marked at 2 100:
    #   ETH PnL = -10 x 0.1 x 2 100 + 2 000 = -100, ETH maintenance = 0.01 x 2 100 = 21
    #   BTC: 10 000 - 100 + P - 60 000 = 0.005 P - 50 + 21 -> 0.995 P = 50 071 -> 50 322.6130653266...
    eth = Position("ETHUSDT", "cross", D("-10"), D("-10") * D("0.1") * D("2000"))
    risk = evaluate(
        account({"USDT": "10000"}, btc("1", "60000"), eth), PARAMS, {"BTCUSDT": D("60000"), "ETHUSDT": D("2100")}
    )
    assert risk.cross.position("BTCUSDT") is not None
    assert risk.cross.position("BTCUSDT").liquidation_price == D("50322.6130653267")  # type: ignore[union-attr]


# -------------------------------------------------------------------------------- trigger prices


def side(scope: ScopeRisk) -> tuple[str, bool, bool]:
    """What a trigger watches: the status, whether the ratio is at or above resolve_ratio, and
    whether equity is below zero (the lifecycle's waterfall reads its sign)."""
    ratio = scope.margin_ratio
    above_resolve = scope.status != "healthy" or (ratio is not None and ratio >= PARAMS.margin_call.resolve_ratio)
    return scope.status, above_resolve, scope.equity < 0


def check_triggers(acct: Account, scope: str, instrument: str, marks: dict[str, D], delta: D) -> list[str]:
    """Evaluate just inside and just outside each trigger: inside matches the reference, outside
    differs in what the trigger's threshold governs. Returns the thresholds seen."""
    triggers = trigger_prices(acct, PARAMS, marks, scope, instrument)
    reference = side(evaluate_scope(acct, PARAMS, marks, scope))

    def at(price: D) -> tuple[str, bool, bool]:
        return side(evaluate_scope(acct, PARAMS, {**marks, instrument: price}, scope))

    seen = []
    for bound, threshold, inward in (
        (triggers.lower, triggers.lower_threshold, delta),
        (triggers.upper, triggers.upper_threshold, -delta),
    ):
        if bound is None:
            continue
        assert threshold is not None
        seen.append(threshold)
        inside, outside = at(bound + inward), at(bound - inward)
        assert inside == reference, (bound, threshold)
        assert outside != reference, (bound, threshold)
        if threshold == THRESHOLD_RESOLVE:
            assert inside[0] == outside[0] == HEALTHY and inside[1] != outside[1]
        elif threshold == THRESHOLD_BANKRUPT:
            # equity = 0 with the position open: maintenance on both sides, equity changes sign
            assert inside[0] == outside[0] == MAINTENANCE and inside[2] != outside[2]
        else:
            expected = {
                THRESHOLD_WARNING: {HEALTHY, WARNING},
                THRESHOLD_MAINTENANCE: {WARNING, MAINTENANCE},
            }[threshold]
            assert {inside[0], outside[0]} == expected, (bound, threshold, inside, outside)
    return seen


def test_trigger_prices_of_a_long_walk_down_through_every_threshold() -> None:
    # USDT 10 000, long 1 BTC from 60 000; in tier 2, t x (P - 50 000) = 0.005 P - 50 gives
    #   resolve (t=0.7):     P = 34 950 / 0.695 = 50 287.7697841726...
    #   warning (t=0.8):     P = 39 950 / 0.795 = 50 251.5723270440...
    #   maintenance (t=1):   P = 49 950 / 0.995 = 50 201.0050251256...
    #   bankrupt (equity 0): P = 50 000
    acct = account({"USDT": "10000"}, btc("1", "60000"))
    first = trigger_prices(acct, PARAMS, {"BTCUSDT": D("60000")}, "cross", "BTCUSDT")
    assert (first.lower, first.lower_threshold) == (D("50287.7697841727"), THRESHOLD_RESOLVE)
    assert (first.upper, first.upper_threshold) == (None, None)
    between = trigger_prices(acct, PARAMS, {"BTCUSDT": D("50230")}, "cross", "BTCUSDT")
    assert (between.lower, between.lower_threshold) == (D("50201.0050251257"), THRESHOLD_MAINTENANCE)
    assert (between.upper, between.upper_threshold) == (D("50251.572327044"), THRESHOLD_WARNING)
    seen: set[str] = set()
    for mark in ("60000", "50270", "50230", "50100", "49000"):
        seen.update(check_triggers(acct, "cross", "BTCUSDT", {"BTCUSDT": D(mark)}, D("0.001")))
    assert seen == {THRESHOLD_RESOLVE, THRESHOLD_WARNING, THRESHOLD_MAINTENANCE, THRESHOLD_BANKRUPT}


def test_trigger_prices_of_a_short_and_of_an_isolated_scope() -> None:
    # short: 70 000 t - t P = 0.005 P - 50 -> P = (70 000 t + 50) / (t + 0.005):
    #   resolve 49 050 / 0.705 = 69 574.46..., warning 56 050 / 0.805 = 69 627.32..., maintenance
    #   69 701.49..., bankrupt 70 000
    acct = account({"USDT": "10000"}, btc("-1", "60000"), btc("1", "60000", "isolated", "1000"))
    short = trigger_prices(acct, PARAMS, {"BTCUSDT": D("60000")}, "cross", "BTCUSDT")
    assert (short.upper, short.upper_threshold) == (D("69574.4680851063"), THRESHOLD_RESOLVE)
    for mark in ("60000", "69600", "69650", "69800", "71000"):
        check_triggers(acct, "cross", "BTCUSDT", {"BTCUSDT": D(mark)}, D("0.001"))
    for mark in ("61000", "59300", "59260", "59200", "58000"):
        check_triggers(acct, isolated_scope("BTCUSDT"), "BTCUSDT", {"BTCUSDT": D(mark)}, D("0.001"))


def test_trigger_prices_of_a_collateral_asset() -> None:
    # 1 BTC of collateral (0.98 BTC after the 2% haircut) behind a short 1 BTCUSDT from 60 000
    # marked 60 000 (PnL 0, maintenance 0.005 x 60 000 - 50 = 250). Equity = 0.98 p, so
    # t x 0.98 p = 250: resolve p = 250 / 0.686 = 364.4314868804..., warning 250 / 0.784 =
    # 318.8775510204..., maintenance 250 / 0.98 = 255.1020408163...; equity = 0 only at p = 0.
    acct = account({"BTC": "1"}, btc("-1", "60000"))
    marks = {"BTCUSDT": D("60000"), "BTC": D("64000")}
    triggers = trigger_prices(acct, PARAMS, marks, "cross", "BTC")
    assert (triggers.lower, triggers.lower_threshold, triggers.upper) == (D("364.4314868805"), "resolve", None)
    for price in ("64000", "340", "300", "200"):
        check_triggers(acct, "cross", "BTC", {**marks, "BTC": D(price)}, D("0.001"))
    low = trigger_prices(acct, PARAMS, {**marks, "BTC": D("200")}, "cross", "BTC")
    assert (low.lower, low.upper, low.upper_threshold) == (None, D("255.1020408163"), "maintenance")
    # the valuation asset's price never moves
    usdt = trigger_prices(acct, PARAMS, marks, "cross", "USDT")
    assert (usdt.lower, usdt.upper) == (None, None)


def test_a_scope_without_that_instrument_has_no_trigger() -> None:
    acct = account({"USDT": "10000"}, btc("1", "60000"))
    triggers = trigger_prices(acct, PARAMS, {"BTCUSDT": D("60000")}, "cross", "ETHUSDT")
    assert (triggers.lower, triggers.upper) == (None, None)


# ---------------------------------------------------------------------------------- properties

money = st.decimals(min_value=-5000, max_value=200000, places=2, allow_nan=False, allow_infinity=False)
prices = st.decimals(min_value=D("100"), max_value=D("150000"), places=2)
quantities = st.decimals(min_value=D("-20"), max_value=D("20"), places=3).filter(lambda q: q != 0)


@st.composite
def accounts(draw: st.DrawFn) -> tuple[Account, dict[str, D]]:
    balances = {"USDT": draw(money)}
    if draw(st.booleans()):
        balances["BTC"] = draw(st.decimals(min_value=D("-2"), max_value=D("30"), places=4))
    positions = []
    marks: dict[str, D] = {}
    if draw(st.booleans()):
        positions.append(btc(str(draw(quantities)), str(draw(prices)), "cross"))
    if draw(st.booleans()):
        q = draw(quantities) * 10
        positions.append(Position("ETHUSDT", "cross", q, q * D("0.1") * draw(prices) / 10))
    if draw(st.booleans()):
        positions.append(btc(str(draw(quantities)), str(draw(prices)), "isolated", str(abs(draw(money)))))
    for symbol in ("BTCUSDT", "ETHUSDT", "BTC"):
        if draw(st.integers(0, 4)):  # mostly marked, sometimes not
            marks[symbol] = draw(prices) / (10 if symbol == "ETHUSDT" else 1)
    return account({k: str(v) for k, v in balances.items()}, *positions), marks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accounts())
def test_at_the_liquidation_price_equity_equals_maintenance(case: tuple[Account, dict[str, D]]) -> None:
    acct, marks = case
    risk = evaluate(acct, PARAMS, marks)
    for scope in risk.scopes:
        for position in scope.positions:
            spec = PARAMS.instruments_by_symbol[position.instrument]
            size = abs(position.quantity) * spec.contract_size
            price = position.liquidation_price
            if price is None:
                # no positive price reaches equity = maintenance: the sign of equity - maintenance
                # is the same at a tiny price and at the price in use
                signs = set()
                for probe in (D("0.0001"), position.price_used):
                    there = evaluate_scope(acct, PARAMS, {**marks, position.instrument: probe}, scope.scope)
                    signs.add(there.equity - there.maintenance_margin >= 0)
                assert len(signs) == 1
                continue
            there = evaluate_scope(acct, PARAMS, {**marks, position.instrument: price}, scope.scope)
            # the requirement rounds up by < 1e-8; the price rounds by < 1e-10, which moves
            # equity - maintenance by at most 1e-10 x size x (1 + rate) (rate <= 0.01 here)
            tolerance = D("1e-8") + D("1e-10") * size * D("1.01")
            gap = LEDGER_CONTEXT.subtract(there.equity, there.maintenance_margin)
            assert abs(gap) <= tolerance, (position, gap)


def class_of(scope: ScopeRisk) -> tuple[str, bool]:
    return side(scope)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accounts(), st.lists(st.sampled_from(["0.01", "0.3", "0.5", "0.9", "0.99"]), min_size=2, max_size=4))
def test_no_status_change_between_the_trigger_prices(case: tuple[Account, dict[str, D]], fractions: list[str]) -> None:
    acct, marks = case
    for risk in evaluate(acct, PARAMS, marks).scopes:
        symbols = [(p.instrument, p.price_used) for p in risk.positions]
        if risk.scope == "cross" and "BTC" in marks and acct.balance("BTC") != 0:
            symbols.append(("BTC", marks["BTC"]))  # a collateral asset's price moves the scope too
        for instrument, reference in symbols:
            triggers = trigger_prices(acct, PARAMS, marks, risk.scope, instrument)
            low = triggers.lower if triggers.lower is not None else reference / 100
            high = triggers.upper if triggers.upper is not None else reference * 100
            here = class_of(risk)
            for fraction in map(D, fractions):
                for probe in (low + (reference - low) * fraction, reference + (high - reference) * fraction):
                    if probe <= 0:
                        continue
                    there = evaluate_scope(acct, PARAMS, {**marks, instrument: probe}, risk.scope)
                    assert class_of(there) == here, (risk.scope, probe, triggers)


@st.composite
def tier_tables(draw: st.DrawFn) -> InstrumentSpec:
    caps = sorted(set(draw(st.lists(st.integers(1, 10_000_000), min_size=1, max_size=5))))
    tiers = []
    for cap in [*caps, None]:
        maintenance = draw(st.decimals(min_value=0, max_value=D("0.5"), places=4))
        initial = draw(st.decimals(min_value=maintenance, max_value=D("1"), places=4))
        tiers.append(
            {
                "notional_cap": None if cap is None else str(cap),
                "initial_rate": str(initial),
                "maintenance_rate": str(maintenance),
            }
        )
    return InstrumentSpec.model_validate(
        {"symbol": "XUSDT", "kind": "perpetual", "settlement_asset": "USDT", "tiers": tiers}
    )


@given(tier_tables(), st.lists(st.decimals(min_value=0, max_value=20_000_000, places=2), min_size=2, max_size=6))
def test_requirements_are_continuous_and_non_decreasing_in_notional(spec: InstrumentSpec, notionals: list[D]) -> None:
    document = contract_document()
    document["instruments"] = [spec.model_dump(mode="json")]
    parameters: RiskParameters = load_parameters(document)
    table = parameters.instruments_by_symbol["XUSDT"].tier_table
    for below, above in pairwise(table):
        assert below.notional_cap is not None
        assert below.maintenance(below.notional_cap) == above.maintenance(below.notional_cap)
        assert below.initial(below.notional_cap) == above.initial(below.notional_cap)

    def requirements(notional: D) -> tuple[D, D]:
        position = Position("XUSDT", "cross", D(1), notional)
        figures = evaluate(Account("X", {}, {position.key: position}), parameters, {"XUSDT": notional}).cross
        return figures.initial_margin, figures.maintenance_margin

    ordered = sorted(notionals)
    values = [requirements(n) for n in ordered]
    for (i1, m1), (i2, m2) in pairwise(values):
        assert i1 <= i2 and m1 <= m2
    for below in table[:-1]:
        cap = below.notional_cap
        assert cap is not None
        at, past = requirements(cap), requirements(cap + D("0.01"))
        # one cent of notional moves a requirement by at most one cent x the larger rate (<= 1)
        assert D(0) <= past[0] - at[0] <= D("0.01") + D("1e-8")
        assert D(0) <= past[1] - at[1] <= D("0.01") + D("1e-8")
