"""Re-margin on marks by trigger prices gives exactly the decisions of re-margining every dependent."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain import margin, triggers
from clearing.domain.fold import conservation, replay_event
from clearing.domain.messages import InputError
from tests.domain.test_fold import T0, Book, deposit, fill, mark, markets, message, opened_state
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
            state = opened_state()
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
            lf = liquidation_fill(decision, price, fid=f"LF-{fills}").replace(occurred_at=msg.occurred_at)
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets(models=True, rates=True))
def test_the_index_decides_exactly_as_brute_force_with_rate_changes_and_model_requests(msgs: list[Any]) -> None:
    # Dynamic margin moves every holder's rates at a sample, and an approved request moves an
    # account to another model: the index must bound each account by the rates and the model in
    # force (bounds from the document's own tiers would miss crossings the scaled ones make).
    assert decisions(run(msgs, brute_force=False)) == decisions(run(msgs, brute_force=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walks(), st.data())
def test_a_replayed_state_rebuilds_the_index_and_decides_the_same(msgs: list[Any], data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=1, max_value=len(msgs) - 1))  # inside the market
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
    # ... and by dynamic margin's multiplier, which scales the rates (CONTRACT v2).
    for parameters, multiplier in [(p, m) for p in (first, second, first, second) for m in (ONE, D("2.5"), ONE)]:
        spec = parameters.instruments_by_symbol["BTCUSDT"]
        policy = parameters.margin_call
        rates = [tier.maintenance_rate * multiplier for tier in spec.tier_table]
        assert margin._widest(parameters, spec, multiplier) == ONE + max(rates)
        for direction in (ONE, -ONE):
            thresholds = (policy.resolve_ratio, policy.warning_ratio, ONE)
            expected = min([ONE] + [abs(t * direction - rate) for t in thresholds for rate in rates])
            assert margin._gamma(parameters, spec, direction, multiplier) == expected
    assert margin._widest(second, second.instruments_by_symbol["BTCUSDT"], ONE) == D("1.25")
    assert margin._widest(second, second.instruments_by_symbol["BTCUSDT"], D("2")) == D("1.5")


# ---------------------------------------------------------------------------------------------
# fills the index absorbs (triggers.absorbs_fill)

INSTRUMENTS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@st.composite
def busy_books(draw: st.DrawFn) -> list[Any]:
    """Cross accounts in two or three instruments (some with BTC collateral), then many fills
    between marks: small adds and reduces, closes, flips, a first fill in a new instrument,
    fees in USDT or BTC, now and then a fill big enough to cross a threshold, and funding."""
    msgs: list[Any] = []
    at = T0
    marks = {"BTCUSDT": D(draw(st.integers(min_value=20_000, max_value=60_000))),
             "ETHUSDT": D(draw(st.integers(min_value=1_000, max_value=4_000))),
             "SOLUSDT": D(draw(st.integers(min_value=50, max_value=300)))}
    for symbol, price in marks.items():
        msgs.append(mark(symbol, str(price), at))
    msgs.append(mark("BTC", str(marks["BTCUSDT"]), at))
    msgs.append(deposit("MM", "1000000000", "dMM"))
    msgs.append(deposit("MM", "1000", "dMMb", asset="BTC"))
    accounts = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=1, max_size=4, unique=True))
    for account in accounts:
        collateral = D(draw(st.integers(min_value=1_000, max_value=200_000)))
        msgs.append(deposit(account, str(collateral), f"d{account}"))
        if draw(st.booleans()):
            msgs.append(deposit(account, str(draw(st.integers(min_value=1, max_value=3))), f"b{account}", asset="BTC"))
        for leg, instrument in enumerate(INSTRUMENTS[: draw(st.integers(min_value=2, max_value=3))]):
            leverage = D(draw(st.integers(min_value=2, max_value=120))) / 10
            q = (collateral * leverage / 3 / marks[instrument]).quantize(D("0.001"))
            if q > 0:
                side = draw(st.sampled_from(["buy", "sell"]))
                msgs.extend(_trade(account, side, q, marks[instrument], f"o{account}{leg}", instrument, "0"))
    for index in range(draw(st.integers(min_value=10, max_value=80))):
        at += timedelta(seconds=draw(st.integers(min_value=0, max_value=3)))
        kind = draw(st.sampled_from(["fill"] * 6 + ["big", "mark", "mark", "deposit", "funding"]))
        instrument = draw(st.sampled_from(INSTRUMENTS))
        account = draw(st.sampled_from(accounts))
        if kind in ("fill", "big"):
            scale = D(draw(st.integers(min_value=1, max_value=2_000 if kind == "fill" else 60_000))) / 1000
            q = (scale * 1000 / marks[instrument]).quantize(D("0.001"))
            if q <= 0:
                continue
            price = (marks[instrument] * (1 + D(draw(st.integers(min_value=-50, max_value=50))) / 10_000)).quantize(
                D("0.01"))
            fee = str(D(draw(st.integers(min_value=-2, max_value=20))) / 100)
            fee_asset = draw(st.sampled_from(["USDT", "USDT", "USDT", "BTC"]))
            side = draw(st.sampled_from(["buy", "sell"]))
            msgs.extend(_trade(account, side, q, price, f"f{index}", instrument, fee, fee_asset, at))
        elif kind == "mark":
            marks[instrument] = max(D(1), (marks[instrument] * (
                1 + D(draw(st.integers(min_value=-300, max_value=300))) / 10_000)).quantize(D("0.01")))
            msgs.append(mark(instrument, str(marks[instrument]), at))
        elif kind == "funding":
            rate = D(draw(st.sampled_from([1, 1, 50])) * draw(st.integers(min_value=-300, max_value=300))) / 100_000
            msgs.append(message("marks", type="funding", symbol=instrument, rate=str(rate), occurred_at=at.isoformat()))
        else:
            msgs.append(deposit(account, str(draw(st.integers(min_value=1, max_value=5_000))), f"t{index}"))
    return msgs


def _trade(account: str, side: str, q: D, price: D, fid: str, instrument: str, fee: str, fee_asset: str = "USDT",
           at: Any = T0) -> list[Any]:
    other = "sell" if side == "buy" else "buy"
    legs = []
    for who, leg_side, leg_fee, leg_id in ((account, side, fee, fid), ("MM", other, "0", fid + "m")):
        legs.append(message("fills", type="fill", fill_id=leg_id, trade_id="T" + fid, account_id=who,
                            instrument=instrument, side=leg_side, quantity=str(q), price=str(price), fee=leg_fee,
                            fee_asset=fee_asset, margin_mode="cross", occurred_at=at.isoformat()))
    return legs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(busy_books())
def test_absorbed_fills_leave_the_decisions_of_brute_force(msgs: list[Any]) -> None:
    indexed = run(msgs, brute_force=False)
    assert decisions(indexed) == decisions(run(msgs, brute_force=True))
    assert conservation(indexed.state) == {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(busy_books(), st.data())
def test_a_replayed_state_absorbs_fills_as_the_running_one_decides(msgs: list[Any], data: st.DataObject) -> None:
    """From a state folded from the log the index (and its budget records) is rebuilt: the
    decisions after the cut are brute force's, as without the cut."""
    cut = data.draw(st.integers(min_value=1, max_value=len(msgs) - 1))  # inside the market
    assert decisions(run(msgs, brute_force=False, replay_at=cut)) == decisions(run(msgs, brute_force=True))


def test_small_fills_are_absorbed_and_the_fill_that_crosses_a_threshold_is_not() -> None:
    """An account at under 1x in two instruments takes small fills without a re-margin; the fill
    that takes it to about 100x is re-margined and warns (ratio 0.885), as brute force does."""
    msgs: list[Any] = [mark("BTCUSDT", "50000"), mark("ETHUSDT", "2500"), deposit("MM", "1000000000", "dMM"),
                       deposit("A", "10000", "dA")]
    msgs += _trade("A", "buy", D("0.1"), D("50000"), "a1", "BTCUSDT", "1")
    msgs += _trade("A", "sell", D("2"), D("2500"), "a2", "ETHUSDT", "1")
    for n in range(10):
        msgs += _trade("A", "buy", D("0.001"), D("50010"), f"s{n}", "BTCUSDT", "0.05")
    small = len(msgs)
    msgs += _trade("A", "buy", D("20"), D("50000"), "big", "BTCUSDT", "1")
    indexed = run(msgs[:small], brute_force=False)
    # the first fills re-margin (new positions); the 10 small ones (and MM's legs) are absorbed
    assert indexed.state.triggers.absorbed >= 10
    assert indexed.decisions == []
    indexed = run(msgs, brute_force=False)
    assert [(d.type, d.payload["level"]) for d in indexed.decisions] == [(ev.MARGIN_CALL_ISSUED, "warning")]
    assert decisions(indexed) == decisions(run(msgs, brute_force=True))


def test_a_fill_is_not_absorbed_when_it_opens_closes_or_pays_its_fee_in_another_asset() -> None:
    book = Book()
    for msg in [mark("BTCUSDT", "50000"), mark("ETHUSDT", "2500"), mark("SOLUSDT", "100"), mark("BTC", "50000"),
                deposit("MM", "1000000000", "dMM"), deposit("A", "100000", "dA"), deposit("A", "1", "dAb", "BTC")]:
        book.feed(msg)
    for msg in _trade("A", "buy", D("0.1"), D("50000"), "a1", "BTCUSDT", "1") + _trade(
            "A", "sell", D("2"), D("2500"), "a2", "ETHUSDT", "1"):
        book.feed(msg)
    index = book.state.triggers
    assert "A" in index.budgets
    cases = [
        (_trade("A", "buy", D("1"), D("100"), "sol", "SOLUSDT", "0")[0], False),  # a new instrument
        (_trade("A", "buy", D("0.01"), D("50000"), "fee", "BTCUSDT", "0.0001", "BTC")[0], False),  # fee in BTC
        (_trade("A", "buy", D("2"), D("2500"), "close", "ETHUSDT", "0")[0], False),  # closes ETH
        (_trade("A", "sell", D("0.01"), D("50000"), "ok", "BTCUSDT", "0")[0], True),
        (_trade("A", "sell", D("0.2"), D("50000"), "flip", "BTCUSDT", "0")[0], True),  # long 0.1 to short 0.1
    ]
    for msg, expected in cases:
        before = index.absorbed
        book.feed(msg)
        assert (index.absorbed > before) is expected, msg
        assert "A" in index.budgets  # re-margined and refreshed, or absorbed: a record either way
