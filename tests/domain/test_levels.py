"""One level enum and one classification rule, shared by every margin model and the lifecycle."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain.levels import LIQUIDATING, Level, below_resolve, classify, margin_ratio, status_distance
from clearing.domain.margin import evaluate
from clearing.domain.params import bundled_parameters
from clearing.domain.state import Account, Position
from tests.domain.test_fold import Book, deposit, fill, mark
from tests.domain.test_lifecycle import at

POLICY = bundled_parameters().margin_call


def test_negative_equity_with_positions_open_is_maintenance_not_bankrupt() -> None:
    """The margin model once said ``bankrupt`` here while the lifecycle called ``maintenance``:
    bankrupt is equity < 0 *after* liquidation (DESIGN.md), and these positions can still be
    liquidated, so the one rule says maintenance, with an infinite (None) ratio."""
    assert classify(D("-10"), D("200"), margin_ratio(D("-10"), D("200")), POLICY) == Level.MAINTENANCE
    long = Position("BTCUSDT", "cross", D("1"), D("10000"))
    account = Account("A", {"USDT": D("1000")}, {long.key: long})
    cross = evaluate(account, bundled_parameters(), {"BTCUSDT": D("8000")}).cross
    assert cross.equity == D("-1000")
    assert (cross.status, cross.margin_ratio) == (Level.MAINTENANCE, None)


def test_the_lifecycle_calls_at_the_level_the_model_reports() -> None:
    """The first call on a scope whose equity the mark took below zero is at the model's level."""
    book = Book()
    book.feed(deposit("A", "1000", "dA"))
    book.feed(deposit("B", "100000", "dB"))
    book.feed(fill("A", "buy", "1", "10000", fid="a1"))
    book.feed(fill("B", "sell", "1", "10000", fid="b1"))
    account = book.state.accounts["A"]
    decisions = book.feed(mark("BTCUSDT", "8000", at(1)))
    assert decisions[0].type == ev.MARGIN_CALL_ISSUED
    figures = evaluate(account, book.state.parameters, {"BTCUSDT": D("8000")}).cross
    assert decisions[0].payload["level"] == figures.status == "maintenance"
    assert decisions[0].payload["equity"] == "-1000"


@given(
    st.decimals(min_value=-10**6, max_value=10**6, places=4),
    st.decimals(min_value=0, max_value=10**6, places=4),
)
def test_classify_reads_only_the_instant_levels(equity: D, maintenance: D) -> None:
    """Liquidation and bankrupt are reached by decisions only; classify never says them, and it
    says maintenance whenever equity does not cover a positive requirement."""
    level = classify(equity, maintenance, margin_ratio(equity, maintenance), POLICY)
    assert level not in LIQUIDATING
    if maintenance > 0 and equity <= maintenance:
        assert level == Level.MAINTENANCE
    if maintenance == 0:
        assert level == Level.HEALTHY


def test_a_level_is_its_contract_text() -> None:
    assert [level.value for level in Level] == ["healthy", "warning", "maintenance", "liquidation", "bankrupt"]
    assert Level("liquidation") in LIQUIDATING and "bankrupt" in LIQUIDATING


@given(
    st.decimals(min_value=-1000, max_value=1000, places=2),
    st.decimals(min_value=0, max_value=1000, places=2),
    st.decimals(min_value=-50, max_value=50, places=2),
    st.decimals(min_value=-50, max_value=50, places=2),
)
def test_moves_within_the_status_distance_change_no_level(
    equity: D, maintenance: D, equity_move: D, maintenance_move: D
) -> None:
    """What the trigger index's bands of every model spend: while |d equity| + |d maintenance|
    stays below ``status_distance``, neither the level nor the resolve test changes."""
    if abs(equity_move) + abs(maintenance_move) >= status_distance(equity, maintenance, POLICY):
        return
    moved_equity, moved_maintenance = equity + equity_move, max(D(0), maintenance + maintenance_move)

    def seen(e: D, m: D) -> tuple[Level, bool]:
        ratio = margin_ratio(e, m)
        return classify(e, m, ratio, POLICY), below_resolve(e, m, ratio, POLICY)

    assert seen(moved_equity, moved_maintenance) == seen(equity, maintenance)


def test_at_negative_equity_the_requirement_itself_is_a_distance() -> None:
    """At equity <= 0 a scope is at maintenance only while it has a requirement: a requirement
    of 5 can fall to none (healthy) by a move of 5, whatever the equity's own distances."""
    assert status_distance(D("-100"), D("5"), POLICY) == D("5")
    assert status_distance(D("100"), D("5"), POLICY) < D("100")
