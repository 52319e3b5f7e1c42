"""Re-margin on marks by trigger prices gives exactly the decisions of re-margining every dependent."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain import triggers
from clearing.domain.fold import conservation, replay_event
from clearing.domain.messages import InputError
from tests.domain.test_fold import T0, Book, deposit, fill, mark, markets, message
from tests.domain.test_lifecycle import counterpart, liquidation_fill

ACCOUNTS = ["A", "B", "C", "D", "E", "F"]


@st.composite
def walks(draw: st.DrawFn) -> list[Any]:
    """Accounts with varied leverage in one instrument (a few in two, some isolated), then marks
    that walk in small steps through their thresholds, with transfers and funding between."""
    msgs: list[Any] = []
    at = T0
    price = D(draw(st.integers(min_value=1_000, max_value=50_000)))
    msgs.append(mark("BTCUSDT", str(price), at))
    msgs.append(mark("ETHUSDT", str(D(draw(st.integers(min_value=100, max_value=5_000)))), at))
    msgs.append(deposit("MM", "100000000", "dMM"))
    for index, account in enumerate(draw(st.lists(st.sampled_from(ACCOUNTS), min_size=1, max_size=6, unique=True))):
        collateral = D(draw(st.integers(min_value=10, max_value=100_000)))
        msgs.append(deposit(account, str(collateral), f"d{account}"))
        for leg in range(draw(st.integers(min_value=1, max_value=2))):
            instrument = "BTCUSDT" if leg == 0 else "ETHUSDT"
            leverage = D(draw(st.integers(min_value=5, max_value=600))) / 10
            side = draw(st.sampled_from(["buy", "sell"]))
            mode = draw(st.sampled_from(["cross", "cross", "isolated"]))
            q = (collateral * leverage / price).quantize(D("0.001"))
            if q <= 0:
                continue
            other = "sell" if side == "buy" else "buy"
            fid = f"o{index}{leg}"
            msgs.append(fill(account, side, str(q), str(price), fid=fid, mode=mode, instrument=instrument))
            msgs.append(fill("MM", other, str(q), str(price), fid=fid + "m", instrument=instrument))
            if mode == "isolated":
                msgs.append(message("transfers", type="isolated_margin", transfer_id=f"m{fid}", account_id=account,
                                    instrument=instrument, amount=str(max(collateral // 2, D(1))),
                                    occurred_at=at.isoformat()))
    for index in range(draw(st.integers(min_value=5, max_value=60))):
        at += timedelta(seconds=draw(st.integers(min_value=0, max_value=5)))
        kind = draw(st.sampled_from(["mark"] * 8 + ["eth", "deposit", "withdrawal", "funding"]))
        if kind == "mark":
            price = max(D(1), (price * (1 + D(draw(st.integers(min_value=-250, max_value=250))) / 10_000)).quantize(
                D("0.01")))
            msgs.append(mark("BTCUSDT", str(price), at))
        elif kind == "eth":
            msgs.append(mark("ETHUSDT", str(D(draw(st.integers(min_value=100, max_value=5_000)))), at))
        elif kind in ("deposit", "withdrawal"):
            msgs.append(message("transfers", type=kind, transfer_id=f"t{index}", account_id=draw(
                st.sampled_from(ACCOUNTS)), asset="USDT", amount=str(draw(st.integers(min_value=1, max_value=5_000))),
                occurred_at=at.isoformat()))
        else:
            rate = D(draw(st.integers(min_value=-100, max_value=100))) / 100_000
            msgs.append(message("marks", type="funding", symbol="BTCUSDT", rate=str(rate), occurred_at=at.isoformat()))
    return msgs


def run(msgs: list[Any], *, brute_force: bool, replay_at: int | None = None) -> Book:
    """Feed the messages, filling every liquidation order at its mark against MM (as a
    liquidator would). ``replay_at``: rebuild the state from the log after that many messages
    and go on from the replayed state (the index is rebuilt from it)."""
    book = Book()
    book.state.triggers.brute_force = brute_force
    fills = 0
    for count, msg in enumerate(msgs):
        if replay_at == count:
            state = type(book.state)()
            for event in book.log:
                replay_event(state, event.type, event.payload)
            state.triggers.brute_force = brute_force
            book.state = state
        try:
            decisions = book.feed(msg)
        except InputError:
            continue
        for decision in decisions:
            if decision.type != ev.LIQUIDATION_ORDER_ISSUED:
                continue
            fills += 1
            price = decision.payload["mark"]
            lf = liquidation_fill(decision, price, fid=f"LF-{fills}").model_copy(
                update={"occurred_at": msg.occurred_at})
            try:
                book.feed(lf)
            except InputError:
                continue
            book.feed(counterpart(decision, price, fid=f"LC-{fills}", account="MM"))
    return book


def decisions(book: Book) -> list[tuple[str, Any, str, int | None]]:
    return [(d.type, d.payload, d.idempotency_key, d.cause_position) for d in book.decisions]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks())
def test_the_index_decides_exactly_as_brute_force_on_walking_marks(msgs: list[Any]) -> None:
    indexed = run(msgs, brute_force=False)
    brute = run(msgs, brute_force=True)
    assert decisions(indexed) == decisions(brute)
    assert conservation(indexed.state) == {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets())
def test_the_index_decides_exactly_as_brute_force_on_random_markets(msgs: list[Any]) -> None:
    assert decisions(run(msgs, brute_force=False)) == decisions(run(msgs, brute_force=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks(), st.integers(min_value=0, max_value=80))
def test_a_replayed_state_rebuilds_the_index_and_decides_the_same(msgs: list[Any], cut: int) -> None:
    assert decisions(run(msgs, brute_force=False, replay_at=cut)) == decisions(run(msgs, brute_force=True))


def test_a_mark_inside_the_triggers_looks_at_no_one_and_a_crossing_at_exactly_that_scope() -> None:
    book = Book()
    book.feed(mark("BTCUSDT", "10000"))
    book.feed(deposit("A", "1000", "dA"))
    book.feed(deposit("B", "100000", "dB"))
    book.feed(fill("A", "buy", "1", "10000", fid="a1"))
    book.feed(fill("B", "sell", "1", "10000", fid="b1"))
    state = book.state
    # A (10x long) warns at 9,045 (test_lifecycle): its lower trigger is the resolve crossing
    # near 9,052; B (0.1x short) has none near.
    hits, always = triggers.crossed(state, "BTCUSDT", D("9900"))
    assert (hits, always) == (set(), set())
    hits, always = triggers.crossed(state, "BTCUSDT", D("9045"))
    assert hits == {("A", "cross")} and always == set()


def test_per_parameters_constants_follow_the_parameters_in_force() -> None:
    """The bounds' per-parameters constants (largest maintenance rate, flattest slope) are cached
    by the parameters document: a new document with other rates must not read the old figures."""
    from clearing.domain.numbers import ONE
    from clearing.domain.params import bundled_document, load_parameters

    first = load_parameters(bundled_document())
    document = bundled_document()
    for spec in document["instruments"]:
        if spec["symbol"] == "BTCUSDT":
            spec["tiers"] = [{"notional_cap": None, "initial_rate": "0.5", "maintenance_rate": "0.25"}]
    document["margin_call"]["resolve_ratio"] = "0.3"
    second = load_parameters(document)
    for parameters in (first, second, first, second):
        spec = parameters.instruments_by_symbol["BTCUSDT"]
        policy = parameters.margin_call
        rates = [tier.maintenance_rate for tier in spec.tier_table]
        assert triggers._widest(parameters, spec) == ONE + max(rates)
        for direction in (ONE, -ONE):
            thresholds = (policy.resolve_ratio, policy.warning_ratio, ONE)
            expected = min([ONE] + [abs(t * direction - rate) for t in thresholds for rate in rates])
            assert triggers._gamma(parameters, spec, direction) == expected
    assert triggers._widest(second, second.instruments_by_symbol["BTCUSDT"]) == D("1.25")
