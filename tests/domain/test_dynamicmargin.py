"""Dynamic margin (``dynamicmargin``): event-time boundaries, a worked EWMA series derived by hand
(several samples, a boundary with no mark, the cap, the floor, the release buffer holding the
multiplier up while volatility falls, then releasing it), replays from the decisions alone, and
the parameters a multiplier scales."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain import optionmargin
from clearing.domain.dynamicmargin import (
    BOUNDARIES_PER_EVENT_MAX,
    DynamicMarginError,
    RatesChange,
    VolatilityState,
    apply,
    boundaries_crossed,
    boundary_time,
    change_from_payload,
    change_payload,
    sample,
    samples_for_event,
    scaled_option_margin,
    scaled_price_range,
    scaled_tier_table,
)
from clearing.domain.params import (
    DynamicMarginSpec,
    OptionMarginRates,
    PortfolioMarginSpec,
    bundled_document,
    bundled_parameters,
    load_parameters,
)
from clearing.domain.scenarios import scenario_grid

D = Decimal
T = datetime(2027, 1, 1, tzinfo=UTC)  # a multiple of 3600 s since the epoch
T_SECONDS = 1_798_761_600


def at(hours: float, seconds: int = 0) -> datetime:
    return T + timedelta(hours=hours, seconds=seconds)


def block(**overrides: Any) -> DynamicMarginSpec:
    document: dict[str, Any] = {
        "underlying": "BTC", "sample_seconds": 3600, "lambda": "0.9",
        "initial_volatility": "0.02", "reference_volatility": "0.02",
        "multiplier_floor": "1", "multiplier_cap": "3", "release_buffer": "0.25",
    }
    document.update(overrides)
    return DynamicMarginSpec.model_validate(document)


# ------------------------------------------------------------------------------------------------
# Boundaries


def test_the_epoch_second_of_the_first_hour_of_2027() -> None:
    assert boundary_time(T_SECONDS) == T


def test_an_event_crosses_the_boundaries_from_event_time_up_to_but_not_at_its_own_time() -> None:
    hour = 3600
    # Event time 00:30, event at 03:00: 01:00 and 02:00 (03:00 is not passed yet).
    assert list(boundaries_crossed(at(0.5), at(3), hour)) == [T_SECONDS + hour, T_SECONDS + 2 * hour]
    # A microsecond past 03:00 crosses it.
    assert list(boundaries_crossed(at(0.5), at(3) + timedelta(microseconds=1), hour))[-1] == T_SECONDS + 3 * hour
    # Event time exactly on 01:00 (an event at the boundary instant was applied): 01:00 is crossed
    # by the next later event, with the marks at or before 01:00.
    assert list(boundaries_crossed(at(1), at(1, seconds=1), hour)) == [T_SECONDS + hour]
    # Event time a fraction past 01:00: 01:00 was crossed already.
    assert list(boundaries_crossed(at(1) + timedelta(microseconds=5), at(1.5), hour)) == []
    # An event no later than event time crosses nothing; nothing is crossed before the first event.
    assert list(boundaries_crossed(at(2), at(1), hour)) == []
    assert list(boundaries_crossed(None, at(5), hour)) == []


def test_a_gap_longer_than_the_named_limit_fails_loudly() -> None:
    minute = 60
    last = at(0) + timedelta(minutes=BOUNDARIES_PER_EVENT_MAX)
    assert len(boundaries_crossed(at(0), last, minute)) == BOUNDARIES_PER_EVENT_MAX
    with pytest.raises(DynamicMarginError, match="BOUNDARIES_PER_EVENT_MAX"):
        boundaries_crossed(at(0), last + timedelta(minutes=1), minute)


# ------------------------------------------------------------------------------------------------
# A worked series (lambda 0.9, sigma_0 0.02, reference 0.02, floor 1, cap 3, buffer 0.25, hourly)


def run(spec: DynamicMarginSpec, steps: list[tuple[datetime, datetime, Decimal | None]]) -> list[RatesChange]:
    state = VolatilityState(spec.underlying)
    changes: list[RatesChange] = []
    for event_time, occurred_at, mark in steps:
        for after, change in samples_for_event(spec, state, event_time, occurred_at, mark):
            changes.append(change)
            state = after
    return changes


def test_a_worked_ewma_series_with_a_repeated_sample_the_cap_and_the_release_buffer() -> None:
    spec = block()
    changes = run(spec, [
        (at(0.25), at(0.5), None),  # 00:00 crossed before any mark: no sample, multiplier 1
        (at(0.5), at(1, seconds=600), D(100)),  # mark 100 applied at 00:30; 01:00 -> S_0 = 100
        (at(1, seconds=600), at(2, seconds=300), D(110)),  # mark 110 at 01:20; 02:00 -> S_1 = 110
        (at(2, seconds=300), at(3, seconds=360), D(110)),  # no new mark; 03:00 repeats S_2 = 110
        (at(3, seconds=360), at(4, seconds=360), D(200)),  # mark 200; 04:00 -> S_3 = 200
    ])
    assert [c.index for c in changes] == [0, 1, 2, 3]
    assert [c.sample_at for c in changes] == [at(1), at(2), at(3), at(4)]
    t0, t1, t2, t3 = changes
    # t = 0: no return; sigma_0 = 0.02; raw_0 = min(max(0.02 / 0.02, 1), 3) = 1; multiplier_0 = 1.25 x 1.
    assert (t0.log_return, t0.volatility, t0.raw_multiplier, t0.multiplier) == (None, D("0.02"), D(1), D("1.25"))
    assert str(t0.volatility) == "0.020000000000"  # published to 12 places
    assert t0.previous_multiplier == D(1)
    # t = 1: r = ln(110 / 100) = 0.0953101798043249; r^2 = 0.0090840303...;
    # sigma^2 = 0.9 x 0.02^2 + 0.1 x 0.0090840303 = 0.00036 + 0.00090840303 = 0.00126840303;
    # sigma = 0.035614646389; raw = 0.035614646389 / 0.02 = 1.78073231945;
    # multiplier = min(1.25 x 1.78073231945 = 2.2259..., max(1.78073231945, 1.25)) = 1.78073231945.
    assert str(t1.log_return)[:18] == "0.0953101798043248"
    assert (t1.volatility, t1.raw_multiplier, t1.multiplier) == (
        D("0.035614646389"), D("1.78073231945"), D("1.78073231945"))
    # t = 2, the same mark: r = ln(1) = 0; sigma^2 = 0.9 x 0.035614646389^2 = 0.00114155...;
    # sigma = 0.033787020195; raw = 1.68935100975, lower; the buffer holds the multiplier:
    # min(1.25 x 1.68935100975 = 2.1117, max(1.68935100975, 1.78073231945)) = 1.78073231945.
    assert t2.log_return == 0 and t2.sample_price == D(110)
    assert (t2.volatility, t2.raw_multiplier, t2.multiplier) == (
        D("0.033787020195"), D("1.68935100975"), D("1.78073231945"))
    assert not t2.changed
    # t = 3: r = ln(200 / 110) = 0.5978370007556204; sigma^2 = 0.9 x 0.033787020195^2
    # + 0.1 x 0.357409...= 0.00102740... + 0.03574093... = 0.0367683...; sigma = 0.191750656863;
    # sigma / 0.02 = 9.58... is capped: raw = 3; multiplier = min(3.75, max(3, 1.7807...)) = 3.
    assert str(t3.log_return)[:18] == "0.5978370007556204"
    assert (t3.volatility, t3.raw_multiplier, t3.multiplier) == (D("0.191750656863"), D(3), D(3))


def test_the_buffer_holds_the_capped_multiplier_until_raw_falls_below_it_over_one_plus_buffer() -> None:
    spec = block()
    start = [(at(0.5), at(1, seconds=600), D(100)), (at(1, seconds=600), at(2, seconds=300), D(200))]
    # S_0 = 100, S_1 = 200: r = ln 2 = 0.693147...; sigma^2 = 0.9 x 0.0004 + 0.1 x 0.480453 = 0.048405...;
    # sigma = 0.22001...: raw capped at 3, multiplier 3. Then one event 40 hours later crosses 03:00 ..
    # 42:00 with no new mark: each sample multiplies sigma^2 by 0.9.
    changes = run(spec, [*start, (at(2, seconds=300), at(42, seconds=1), D(200))])
    assert changes[1].multiplier == D(3) and changes[1].raw_multiplier == D(3)
    repeated = changes[2:]
    assert [c.sample_at for c in repeated] == [at(hour) for hour in range(3, 43)]
    assert all(c.log_return == 0 for c in repeated)
    context = Context(prec=60)
    for before, after in zip(changes[1:], repeated, strict=False):
        # sigma_t = sigma_{t-1} x sqrt(0.9), to the 12 places published.
        expected = context.multiply(before.volatility, context.sqrt(D("0.9"))).quantize(D("1e-12"))
        assert abs(after.volatility - expected) <= D("1e-12")
        # The multiplier never rises without a rise of raw, never leaves [raw, 1.25 raw].
        assert after.raw_multiplier <= after.multiplier <= D("1.25") * after.raw_multiplier
        assert after.multiplier <= before.multiplier
    held = [c for c in repeated if c.multiplier == D(3)]
    released = [c for c in repeated if c.multiplier < D(3)]
    # Held while raw >= 3 / 1.25 = 2.4, i.e. sigma >= 0.048; then multiplier = 1.25 x raw.
    assert held and released and repeated.index(released[0]) == len(held)
    assert all(c.raw_multiplier >= D("2.4") for c in held)
    first = released[0]
    assert first.raw_multiplier < D("2.4") and first.multiplier == D("1.25") * first.raw_multiplier


def test_the_floor_keeps_the_raw_multiplier_at_one_when_volatility_is_below_reference() -> None:
    # reference 0.05: sigma_0 = 0.02 gives 0.4, lifted to the floor 1; multiplier_0 = 1.25.
    # S_1 = 100.5: r = ln(1.005) = 0.0049875415...; sigma^2 = 0.9 x 0.0004 + 0.1 x 0.0000248755...
    # = 0.000362487...; sigma = 0.019039...; 0.38 -> floor 1; multiplier = min(1.25, max(1, 1.25)) = 1.25.
    spec = block(reference_volatility="0.05")
    changes = run(spec, [(at(0.5), at(1, seconds=1), D(100)), (at(1, seconds=1), at(2, seconds=1), D("100.5"))])
    assert [(c.raw_multiplier, c.multiplier) for c in changes] == [(D(1), D("1.25")), (D(1), D("1.25"))]
    assert str(changes[1].volatility)[:8] == "0.019039"


def test_before_the_first_mark_the_multiplier_is_one_and_no_decision_is_taken() -> None:
    state = VolatilityState("BTC")
    new_state, change = sample(block(), state, at(1), None)
    assert change is None and new_state == state and state.multiplier == D(1)


def test_a_state_rebuilt_from_the_decisions_alone_continues_as_the_live_one() -> None:
    spec = block()
    marks = [D(100), D(104), D(97), D(97), D("120.25"), D(90)]
    live = VolatilityState("BTC")
    changes: list[RatesChange] = []
    for hour, mark in enumerate(marks):
        live, change = sample(spec, live, at(hour + 1), mark)
        assert change is not None
        changes.append(change)
    rebuilt = VolatilityState("BTC")
    for change in changes[:3]:
        # Through the event payload and back (json: what the log stores), figure for figure.
        payload = json.loads(json.dumps(change_payload(change)))
        assert change_from_payload(payload) == change
        rebuilt = apply(rebuilt, change_from_payload(payload))
    for hour, mark in enumerate(marks[3:], start=3):
        rebuilt, change = sample(spec, rebuilt, at(hour + 1), mark)
        assert change == changes[hour]
    assert rebuilt == live


@settings(max_examples=60, deadline=None)
@given(
    moves=st.lists(st.decimals(min_value=D("-0.3"), max_value=D("0.3"), places=4), min_size=1, max_size=30),
    buffer=st.sampled_from([D(0), D("0.25"), D(1)]),
)
def test_the_multiplier_stays_between_raw_and_raw_times_one_plus_buffer_and_within_floor_and_cap(
    moves: list[Decimal], buffer: Decimal
) -> None:
    spec = block(release_buffer=str(buffer), multiplier_floor="0.8", multiplier_cap="2.5")
    state = VolatilityState("BTC")
    price = D(100)
    for hour, move in enumerate(moves):
        price = price * (1 + move)
        state, change = sample(spec, state, at(hour + 1), price)
        assert change is not None
        assert D("0.8") <= change.raw_multiplier <= D("2.5")
        assert change.raw_multiplier <= change.multiplier <= (1 + buffer) * change.raw_multiplier
        assert change.volatility.as_tuple().exponent >= -12  # type: ignore[operator]


def test_a_non_positive_mark_is_refused() -> None:
    with pytest.raises(DynamicMarginError, match="positive mark"):
        sample(block(), VolatilityState("BTC"), at(1), D(0))


# ------------------------------------------------------------------------------------------------
# What a multiplier scales


def test_scaled_tiers_scale_rates_and_amounts_and_stay_continuous() -> None:
    spec = bundled_parameters().instrument("BTCUSDT")
    assert spec is not None and len(spec.tier_table) >= 2
    doubled = scaled_tier_table(spec, D(2))
    for tier, scaled in zip(spec.tier_table, doubled, strict=True):
        assert scaled.initial_rate == 2 * tier.initial_rate and scaled.maintenance_rate == 2 * tier.maintenance_rate
        assert scaled.maintenance_amount == 2 * tier.maintenance_amount
        assert scaled.notional_cap == tier.notional_cap
    for lower, upper in pairwise(doubled):
        cap = lower.notional_cap
        assert cap is not None
        assert lower.maintenance(cap) == upper.maintenance(cap) and lower.initial(cap) == upper.initial(cap)
    assert scaled_tier_table(spec, D(1)) is spec.tier_table


def test_scaled_option_margin_rates_scale_every_rate_even_past_one() -> None:
    rates = OptionMarginRates.model_validate(
        {"underlying": "BTC", "initial_rate": "0.15", "minimum_rate": "0.10", "maintenance_rate": "0.075"})
    tripled = scaled_option_margin(rates, D(3))
    assert (tripled.initial_rate, tripled.minimum_rate, tripled.maintenance_rate) == (D("0.45"), D("0.30"), D("0.225"))
    # A short call K 110 at U 100, mark 2: IM = max(0.45 x 100 - 10, 0.30 x 100) + 2 = 37, MM = 22.5 + 2.
    margin = optionmargin.short_call(D(100), D(110), D(2), tripled)
    assert (margin.initial, margin.maintenance) == (D(37), D("24.5"))
    assert scaled_option_margin(rates, D(7)).initial_rate == D("1.05")
    assert scaled_option_margin(rates, D(1)) is rates


PORTFOLIO_BLOCK: dict[str, Any] = {
    "underlying": "BTC", "price_range": "0.16", "price_steps": 4, "vol_up": "0.5", "vol_down": "0.25",
    "vol_up_floor": "0.5", "vol_power": "0.3", "vol_reference_days": "30", "extreme_moves": ["-0.33", "0.5"],
    "extreme_weight": "0.35", "short_option_minimum_rate": "0.01", "maintenance_factor": "0.8",
}


def test_the_multiplier_widens_the_portfolio_price_range() -> None:
    spec = PortfolioMarginSpec.model_validate(PORTFOLIO_BLOCK)
    assert scaled_price_range(spec, D("1.78073231945")) == D("0.284917171112")
    grid = scenario_grid(spec, D("1.5"))
    assert grid.price_range == D("0.24") and grid.moves[0] == D("-0.24") and grid.moves[1] == D("-0.18")


def test_the_document_names_its_blocks_and_instruments_by_underlying() -> None:
    document = bundled_document()
    document["portfolio_margin"] = [PORTFOLIO_BLOCK]
    document["dynamic_margin"] = [block().model_dump(by_alias=True, mode="json")]
    parameters = load_parameters(document)
    on_btc = parameters.instruments_on("BTC")
    assert "BTCUSDT" in [spec.symbol for spec in on_btc] and "ETHUSDT" not in [spec.symbol for spec in on_btc]
    assert sum(spec.kind == "option" for spec in on_btc) >= 6
    assert "ETHUSDT" in [spec.symbol for spec in parameters.instruments_on("ETH")]
    assert all(spec.underlying_symbol == "ETH" for spec in parameters.instruments_on("ETH"))
    assert parameters.instruments_on("NOPE") == ()
    portfolio, dynamic = parameters.portfolio_margin_spec("BTC"), parameters.dynamic_margin_spec("BTC")
    assert portfolio is not None and portfolio.price_range == D("0.16")
    assert dynamic is not None and dynamic.lambda_ == D("0.9")
    assert parameters.portfolio_margin_spec("ETH") is None and parameters.dynamic_margin_spec("ETH") is None


def test_the_payload_spells_the_message_figures_in_full() -> None:
    changes = run(block(), [(at(0.5), at(1, seconds=600), D(100)), (at(1, seconds=600), at(2, seconds=300), D(110))])
    payload = change_payload(changes[1])
    assert payload["sample_at"] == "2027-01-01T02:00:00Z" and payload["underlying"] == "BTC"
    assert payload["volatility"] == "0.035614646389" and payload["multiplier"] == "1.78073231945"
    assert payload["previous_multiplier"] == "1.25" and payload["index"] == 1 and payload["sample_price"] == "110"
    assert change_payload(changes[0])["log_return"] is None
