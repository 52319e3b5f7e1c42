"""Dynamic margin as decisions of the fold (CONTRACT v2 "Dynamic margin"): the samples of the
boundaries an event crosses are taken before it is applied and decided first of its decisions
(``MarginRatesChanged``), booked into ``state.volatility``; a multiplier that moves re-margins
every holder on the underlying in the same step, with the tiers it scales. Figures are those of
tests/domain/test_dynamicmargin.py's worked series (lambda 0.9, sigma_0 0.02, reference 0.02,
floor 1, cap 3, buffer 0.25), here hourly."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from typing import Any

import pytest

from clearing.domain import events as ev
from clearing.domain.dynamicmargin import BOUNDARIES_PER_EVENT_MAX, VolatilityState
from clearing.domain.fold import admit, replay_event
from clearing.domain.messages import InputError
from clearing.domain.params import bundled_document
from clearing.engine.statecodec import decode_state, encode_state
from tests.domain.test_fold import T0, Book, deposit, fill, mark, message, opened_state, rates_document

HOUR = 3600


def at(hours: float, seconds: int = 0) -> Any:
    """T0 (12:00, on an hour boundary) + ``hours`` + ``seconds``."""
    return T0 + timedelta(hours=hours, seconds=seconds)


def parameters(document: dict[str, Any], seconds: float = 0) -> Any:
    return message("admin", type="risk_parameters", parameters=document, occurred_at=at(0, int(seconds)).isoformat())


def hourly(version: str = "rates-hourly", **overrides: Any) -> dict[str, Any]:
    return rates_document(version, sample_seconds=HOUR, **overrides)


def transfer_in(account: str, hours: float, seconds: int = 0, tid: str = "") -> Any:
    """A deposit: an event of no consequence to margin, that moves event time."""
    return deposit(account, "1", tid or f"x{hours}-{seconds}").replace(occurred_at=at(hours, seconds))


def payloads(decisions: list[ev.Event], event_type: str = ev.MARGIN_RATES_CHANGED) -> list[dict[str, Any]]:
    return [d.payload for d in decisions if d.type == event_type]


def series_book() -> Book:
    """Dynamic margin on BTC from 12:00; BTC marked 100 at 12:30."""
    book = Book()
    book.feed(parameters(hourly()))
    book.feed(mark("BTC", "100", at(0.5)))
    return book


def test_a_boundary_crossed_is_sampled_with_the_last_mark_and_decided_first() -> None:
    book = series_book()
    # An event at 13:10 crosses 13:00: S_0 = 100 (the mark of 12:30), no return, sigma_0 = 0.02,
    # raw_0 = min(max(0.02 / 0.02, 1), 3) = 1, multiplier_0 = 1.25 x 1 = 1.25. ETH has no mark:
    # no sample for it.
    [first] = book.feed(transfer_in("Z", 1, 600))
    assert (first.type, first.stream) == (ev.MARGIN_RATES_CHANGED, "account:system:margin-rates")
    assert first.idempotency_key == f"s0/decision/{first.cause_position}/0"
    assert first.payload == {
        "account_id": "system:margin-rates", "underlying": "BTC", "sample_at": "2026-11-23T13:00:00.000000Z",
        "sample_price": "100", "log_return": None, "volatility": "0.02", "raw_multiplier": "1",
        "multiplier": "1.25", "previous_multiplier": "1", "index": 0, "parameters_version": "rates-hourly",
    }  # fmt: skip
    assert book.state.multiplier("BTC") == D("1.25") and book.state.multiplier("ETH") == 1
    # BTC at 110 from 13:20; an event at 14:05 crosses 14:00: r = ln(110 / 100) = 0.0953101798...;
    # sigma^2 = 0.9 x 0.02^2 + 0.1 x r^2 = 0.00036 + 0.00090840303 = 0.00126840303, sigma =
    # 0.035614646389; raw = 1.78073231945; multiplier = min(1.25 x raw, max(raw, 1.25)) = raw.
    book.feed(mark("BTC", "110", at(1, 1200)))
    [second] = payloads(book.feed(transfer_in("Z", 2, 300)))
    assert second["log_return"].startswith("0.0953101798043248")
    assert (second["sample_at"], second["sample_price"], second["index"]) == ("2026-11-23T14:00:00.000000Z", "110", 1)
    assert (second["volatility"], second["raw_multiplier"], second["multiplier"], second["previous_multiplier"]) == (
        "0.035614646389", "1.78073231945", "1.78073231945", "1.25")  # fmt: skip


def test_a_boundary_with_no_new_mark_repeats_the_sample() -> None:
    book = series_book()
    book.feed(transfer_in("Z", 1, 600))
    book.feed(mark("BTC", "110", at(1, 1200)))
    book.feed(transfer_in("Z", 2, 300))
    # No BTC mark since 13:20; an event at 15:06 crosses 15:00: S_2 = 110 again, r = 0; sigma^2 =
    # 0.9 x 0.035614646389^2, sigma = 0.033787020195, raw 1.68935100975 is lower, and the buffer
    # holds the multiplier at 1.78073231945.
    [third] = payloads(book.feed(transfer_in("Z", 3, 360)))
    assert (third["sample_price"], third["log_return"], third["index"]) == ("110", "0", 2)
    assert (third["volatility"], third["raw_multiplier"], third["multiplier"]) == (
        "0.033787020195", "1.68935100975", "1.78073231945")  # fmt: skip


def test_an_event_that_crosses_several_boundaries_samples_each_in_order_before_it_is_applied() -> None:
    book = series_book()
    # A BTC mark of 200 at 14:30 crosses 13:00 and 14:00: both are sampled before it is applied,
    # with the mark of 12:30 (100), the second repeating the first.
    decisions = book.feed(mark("BTC", "200", at(2.5)))
    assert [(p["sample_at"][11:16], p["sample_price"], p["index"]) for p in payloads(decisions)] == [
        ("13:00", "100", 0), ("14:00", "100", 1)]  # fmt: skip
    assert [d.idempotency_key[-2:] for d in decisions] == ["/0", "/1"]
    # The next boundary (15:00) takes the 200.
    [later] = payloads(book.feed(transfer_in("Z", 3, 1)))
    assert later["sample_price"] == "200"


def test_event_time_is_the_largest_occurred_at_applied_and_survives_snapshots_and_replays() -> None:
    book = series_book()
    book.feed(transfer_in("Z", 0, 3000))  # 12:50
    book.feed(transfer_in("Y", 0, 1200))  # 12:20: late, applied, event time stays 12:50
    assert book.state.last_occurred_at == at(0, 3000)
    # A mark refused at admission (stale) does not move it.
    with pytest.raises(InputError, match="stale mark"):
        admit(book.state, mark("BTC", "90", at(0, 60)))
    restored = decode_state(encode_state(book.state))
    replayed = opened_state()
    for logged in book.log:
        replay_event(replayed, logged.type, logged.payload)
    assert restored.last_occurred_at == replayed.last_occurred_at == at(0, 3000)
    # So an event at 12:59 crosses nothing, and one at 13:00:00.000001 crosses 13:00.
    assert book.feed(transfer_in("Y", 0, 3540)) == []
    later = transfer_in("Y", 1).replace(occurred_at=at(1) + timedelta(microseconds=1))
    assert [p["sample_at"] for p in payloads(book.feed(later))] == ["2026-11-23T13:00:00.000000Z"]


def linear_book() -> Book:
    """A: 80 USDT, long 1 BTCUSDT at 10,000 marked there (tier 1: maintenance 0.004): MM 40,
    ratio 0.5. B: the short side, rich. Dynamic margin on BTC hourly; BTC marked 100 at 12:30."""
    book = series_book()
    book.feed(deposit("A", "80", "dA").replace(occurred_at=at(0.5)))
    book.feed(deposit("B", "100000", "dB").replace(occurred_at=at(0.5)))
    book.feed(fill("A", "buy", "1", "10000", fid="a1").replace(occurred_at=at(0.5)))
    book.feed(fill("B", "sell", "1", "10000", fid="b1").replace(occurred_at=at(0.5)))
    book.feed(mark("BTCUSDT", "10000", at(0.5)))
    return book


def test_a_multiplier_rise_pushes_a_standard_account_into_a_call_in_the_same_step() -> None:
    book = linear_book()
    # 13:00: multiplier 1.25: MM = 10,000 x 0.005 = 50, ratio 50 / 80 = 0.625: healthy.
    assert [d.type for d in book.feed(transfer_in("Z", 1, 600))] == [ev.MARGIN_RATES_CHANGED]
    book.feed(mark("BTC", "110", at(1, 1200)))
    # 14:00: multiplier 1.78073231945: MM = 10,000 x 0.004 x 1.78073231945 = 71.229292778, up to
    # 71.22929278; ratio 71.22929278 / 80 = 0.89036615975, up to 0.8903661598 >= warning 0.8: a
    # warning, in this step, though no price of BTCUSDT and nothing of A moved.
    rates, issued = book.feed(transfer_in("Z", 2, 300))
    assert (rates.type, issued.type, issued.payload["account_id"]) == (
        ev.MARGIN_RATES_CHANGED, ev.MARGIN_CALL_ISSUED, "A")  # fmt: skip
    assert (issued.payload["level"], issued.payload["maintenance_margin"], issued.payload["margin_ratio"]) == (
        "warning", "71.22929278", "0.8903661598")  # fmt: skip
    # IM scales too: 10,000 x 0.008 x 1.78073231945 = 142.458585556, up to 142.45858556.
    assert issued.payload["initial_margin"] == "142.45858556"


def test_after_a_multiplier_change_the_index_watches_the_scaled_thresholds() -> None:
    """The index bounds A with the scaled tiers: at multiplier 1.78073231945 its maintenance
    crossing (equity = MM) is where 80 + (P - 10,000) = 0.004 x 1.78073231945 x P, i.e.
    P = 9,920 / (1 - 0.0071229292778) = 9,991.1641...; bounds from the document's own tiers
    (0.004) would put it at 9,920 / 0.996 = 9,959.84 and miss a mark at 9,980. Brute force and
    the index decide alike."""
    decided: dict[bool, list[Any]] = {}
    for brute in (False, True):
        book = linear_book()
        book.state.triggers.brute_force = brute
        book.feed(transfer_in("Z", 1, 600))
        book.feed(mark("BTC", "110", at(1, 1200)))
        book.feed(transfer_in("Z", 2, 300))  # the warning above
        escalated = book.feed(mark("BTCUSDT", "9980", at(2, 600)))
        # equity 60, MM = 9,980 x 0.004 x 1.78073231945 = 71.0868...: ratio >= 1, grace 0: liquidation.
        assert [d.type for d in escalated[:2]] == [ev.MARGIN_CALL_ESCALATED, ev.MARGIN_CALL_ESCALATED]
        decided[brute] = [(d.type, d.payload) for d in book.decisions]
    assert decided[False] == decided[True]


def test_a_dropped_block_puts_the_multiplier_back_to_one_and_forgets_the_samples() -> None:
    book = linear_book()
    book.feed(transfer_in("Z", 1, 600))
    book.feed(mark("BTC", "110", at(1, 1200)))
    book.feed(transfer_in("Z", 2, 300))  # A in warning at multiplier 1.78...
    document = bundled_document()
    document["version"] = "no-rates"
    decisions = book.feed(parameters(document, 2.5 * HOUR))
    assert book.state.volatility == {} and book.state.multiplier("BTC") == 1
    # Re-margined at once under the document's own rates: MM 40, ratio 0.5 < resolve 0.7.
    assert [(d.type, d.payload["account_id"]) for d in decisions] == [(ev.MARGIN_CALL_RESOLVED, "A")]
    # No block, no samples; a block added again starts afresh (t = 0 at its first boundary).
    assert book.feed(transfer_in("Z", 4, 1)) == []
    book.feed(parameters(hourly("rates-again"), 4 * HOUR + 2))
    [restart] = payloads(book.feed(transfer_in("Z", 5, 1)))
    assert (restart["index"], restart["multiplier"], restart["sample_price"]) == (0, "1.25", "110")


def test_a_document_that_drops_the_block_as_it_crosses_a_boundary_takes_the_sample_then_drops_it() -> None:
    book = linear_book()
    book.feed(transfer_in("Z", 1, 600))  # 13:00 sampled: multiplier 1.25
    document = bundled_document()
    document["version"] = "no-rates"
    # At 14:10 the document crosses 14:00: sampled under the block in force before it (decided
    # under that version), then the document, applied first, has dropped the block.
    decisions = book.feed(parameters(document, 2 * HOUR + 600))
    assert [(p["sample_at"][11:16], p["parameters_version"]) for p in payloads(decisions)] == [
        ("14:00", "rates-hourly")]  # fmt: skip
    assert book.state.volatility == {} and book.state.multiplier("BTC") == 1
    replayed = opened_state()
    for logged in book.log:
        replay_event(replayed, logged.type, logged.payload)
    assert replayed.volatility == {}


def test_a_changed_block_keeps_the_volatility_measured_so_far() -> None:
    book = linear_book()
    book.feed(transfer_in("Z", 1, 600))
    book.feed(mark("BTC", "110", at(1, 1200)))
    book.feed(transfer_in("Z", 2, 300))
    kept = book.state.volatility["BTC"]
    book.feed(parameters(hourly("rates-capped", multiplier_cap="1.5"), 2.5 * HOUR))
    assert book.state.volatility["BTC"] == kept  # the multiplier in force stays until the next sample
    # 15:00 repeats 110: sigma 0.033787020195, raw 1.68935100975 capped at 1.5; multiplier =
    # min(1.25 x 1.5, max(1.5, 1.78073231945)) = 1.78073231945: the buffer holds it up to 1.875.
    [next_sample] = payloads(book.feed(transfer_in("Z", 3, 1)))
    assert (next_sample["index"], next_sample["volatility"], next_sample["raw_multiplier"]) == (
        2, "0.033787020195", "1.5")  # fmt: skip
    assert (next_sample["multiplier"], next_sample["parameters_version"]) == ("1.78073231945", "rates-capped")


def test_an_event_that_crosses_more_boundaries_than_a_step_samples_is_refused_at_admission() -> None:
    book = Book()
    book.feed(parameters(rates_document(sample_seconds=60)))
    book.feed(mark("BTC", "100", at(0, 30)))
    # Event time 12:00:30; a minute boundary every 60 s: an event at 12:00:30 + N minutes crosses N.
    allowed = transfer_in("Z", 0, 30 + 60 * BOUNDARIES_PER_EVENT_MAX)
    too_late = transfer_in("Z", 0, 30 + 60 * (BOUNDARIES_PER_EVENT_MAX + 1))
    with pytest.raises(InputError, match=r"dynamic margin BTC: .*BOUNDARIES_PER_EVENT_MAX"):
        admit(book.state, too_late)
    admit(book.state, allowed)
    # Without dynamic margin, time may jump as far as it likes.
    plain = Book()
    plain.feed(mark("BTC", "100", at(0, 30)))
    admit(plain.state, too_late)


def test_the_rates_decisions_rebuild_the_volatility_state_on_replay_and_in_snapshots() -> None:
    book = linear_book()
    book.feed(transfer_in("Z", 1, 600))
    book.feed(mark("BTC", "110", at(1, 1200)))
    book.feed(transfer_in("Z", 2, 300))
    replayed = opened_state()
    for logged in book.log:
        replay_event(replayed, logged.type, logged.payload)
    restored = decode_state(encode_state(book.state))
    expected = VolatilityState("BTC", True, at(2), D(110), D("0.035614646389"), D("1.78073231945"),
                               D("1.78073231945"), 2)  # fmt: skip
    assert replayed.volatility == restored.volatility == book.state.volatility == {"BTC": expected}
