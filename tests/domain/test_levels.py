"""One level enum and one classification rule, shared by every margin model and the lifecycle."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from clearing.domain import events as ev
from clearing.domain.levels import LIQUIDATING, Level, classify, margin_ratio
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
