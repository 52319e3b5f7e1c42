"""``clearing simulate --trades N`` makes N trades (on 05ad1d6, 5,000 asked over 120 steps made 4,920:
the per-step share was rounded down). Issue 24: ``--portfolio-share`` and ``--dynamic-margin``
(portfolio accounts with option books, a document with the grids and dynamic margin, steps across
sample boundaries), and the same messages as before without them."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

import pytest

from clearing.demo import book_margins, demo_scenario
from clearing.domain.params import load_parameters
from clearing.simulate import (
    BOOKS,
    DEALER,
    NAKED_BOOKS,
    STEPS_PER_SAMPLE,
    Message,
    Scenario,
    generate,
    parameters_document,
    portfolio_accounts,
)


@pytest.mark.parametrize(("trades", "steps"), [(5_000, 120), (400, 60), (7, 20), (120, 120), (1, 3)])
def test_the_number_of_trades_asked_for_is_made(trades: int, steps: int) -> None:
    fills = [m for m in generate(Scenario(accounts=10, trades=trades, steps=steps)) if m.kind == "fills"]
    assert len(fills) == 2 * trades
    assert len({m.value["trade_id"] for m in fills}) == trades


# ---------------------------------------------------------------------------------------------
# Issue 24: portfolio accounts with option books, dynamic margin (--portfolio-share, --dynamic-margin)

PORTFOLIO = Scenario(
    seed=11, accounts=40, trades=400, steps=60, crash_at=0.75, portfolio_share=0.25, dynamic_margin=True
)


def _digest(scenario: Scenario) -> str:
    digest = hashlib.sha256()
    for message in generate(scenario):
        digest.update(message.kind.encode() + b"\0" + message.key.encode() + b"\0" + message.encode() + b"\n")
    return digest.hexdigest()


@pytest.mark.parametrize(
    ("scenario", "digest"),
    [
        # Digests of the messages main's generator (6567c97, before these flags) made.
        (
            Scenario(seed=3, accounts=10, trades=200, steps=20, crash_at=0.5, options=True),
            "bc3fec5332dedf5b46d85fa98e5397a049ebe5c1fa369ade2c001fed4c77c8be",
        ),
        (
            Scenario(seed=3, accounts=10, trades=200, steps=20, id_prefix="S-"),
            "3e69209a470e0d6bff208a8fea0db79ac12d7788ddce6667010ea25a5116a5fe",
        ),
    ],
)
def test_without_the_new_flags_the_messages_are_those_of_before(scenario: Scenario, digest: str) -> None:
    assert _digest(scenario) == digest


def test_the_same_seed_and_flags_give_the_same_messages() -> None:
    assert _digest(PORTFOLIO) == _digest(PORTFOLIO)
    assert _digest(PORTFOLIO) != _digest(replace(PORTFOLIO, seed=12))


def _at(message: Message) -> datetime:
    return datetime.fromisoformat(message.value["occurred_at"].replace("Z", "+00:00"))


def test_the_run_opens_with_a_document_that_has_the_grids_and_dynamic_margin() -> None:
    messages = list(generate(PORTFOLIO))
    first = messages[0]
    assert (first.kind, first.value["type"]) == ("admin", "risk_parameters")
    assert [m for m in messages if m.kind == "admin"] == [first]
    assert all(_at(m) > _at(first) for m in messages[1:])
    parameters = load_parameters(first.value["parameters"])  # a valid document
    assert first.value["parameters"] == parameters_document(PORTFOLIO)
    assert parameters.version == "simulate-11"
    assert sorted(parameters.portfolio_margin_by_underlying) == ["BTC", "ETH"]
    assert sorted(parameters.dynamic_margin_by_underlying) == ["BTC", "ETH", "SOL"]
    assert {spec.sample_seconds for spec in parameters.dynamic_margin} == {60}
    # Without dynamic margin the document has the grids only.
    no_dynamic = parameters_document(Scenario(portfolio_share=0.2))
    assert "dynamic_margin" not in no_dynamic and len(no_dynamic["portfolio_margin"]) == 2


def test_a_share_of_the_accounts_asks_for_the_portfolio_model_before_trading_and_trades_only_its_book() -> None:
    messages = list(generate(PORTFOLIO))
    chosen = portfolio_accounts(PORTFOLIO, [f"ACC-{i:05d}" for i in range(1, 41)])
    requests = [m for m in messages if m.value["type"] == "margin_model"]
    assert len(chosen) == 10 and [m.value["account_id"] for m in requests] == chosen
    assert all(
        m.kind == "transfers" and m.key == m.value["account_id"] and m.value["model"] == "portfolio" for m in requests
    )
    for request in requests:
        account = request.value["account_id"]
        mine = [i for i, m in enumerate(messages) if m.value.get("account_id") == account]
        kinds = [messages[i].value["type"] for i in mine]
        # Its deposit(s), then the request, then its book's fills only (no random trade, option or not).
        assert kinds[0] == "deposit" and "margin_model" in kinds
        request_at = kinds.index("margin_model")
        assert set(kinds[:request_at]) == {"deposit"}
        fills = [messages[i] for i in mine[request_at + 1 :] if messages[i].value["type"] == "fill"]
        assert fills and all(f.value["fill_id"].startswith("PF-") for f in fills)
    # Every leg of a book is traded with the dealer, whose deposit comes before any of them.
    book_trades: dict[str, set[str]] = {}
    for m in messages:
        if m.value["type"] == "fill" and m.value["fill_id"].startswith("PF-"):
            book_trades.setdefault(m.value["trade_id"], set()).add(m.value["account_id"])
    assert book_trades and all(len(owners & set(chosen)) == 1 and DEALER in owners for owners in book_trades.values())
    dealer_deposit = next(i for i, m in enumerate(messages) if m.value.get("account_id") == DEALER)
    assert messages[dealer_deposit].value["type"] == "deposit"
    assert dealer_deposit < min(i for i, m in enumerate(messages) if m.value.get("fill_id", "").startswith("PF-"))


def test_books_are_hedged_and_naked_and_their_options_are_marked_with_iv() -> None:
    messages = list(generate(PORTFOLIO))
    books = book_margins(PORTFOLIO, messages)
    kinds = {example.book for example in books.examples}
    assert kinds & NAKED_BOOKS and kinds - NAKED_BOOKS
    option_symbols = {m.value["instrument"] for m in messages if m.value.get("fill_id", "").startswith("PF-")}
    option_symbols = {s for s in option_symbols if not s.endswith("USDT")}
    option_marks = [m for m in messages if m.value["type"] == "mark" and m.value["symbol"] in option_symbols]
    assert option_marks and all("iv" in m.value for m in option_marks)
    assert {m.value["iv"] for m in option_marks} == {"0.6", "0.9"}  # 0.9 during the crash


def test_a_hedged_book_needs_less_initial_margin_on_the_portfolio_model() -> None:
    """What the demo prints: the calculator's IM of each kind of book on both models. Spreads and
    collars offset on the grid (the standard model margins their short leg alone)."""
    scenario = replace(demo_scenario(accounts=50, trades=600, seed=7), portfolio_share=0.2)
    books = book_margins(scenario, list(generate(scenario)))
    by_book = {example.book: example for example in books.examples}
    assert set(by_book) == set(BOOKS) - {"protective put"}
    for name in ("collar", "call spread", "put spread", "covered call"):
        example = by_book[name]
        assert 0 < example.portfolio_initial < example.standard_initial, example
    assert all(cell.split()[0] in ("BTC", "ETH") for example in books.examples for cell in example.worst_cells)


def test_with_dynamic_margin_the_steps_cross_sample_boundaries_and_the_crash_spans_several() -> None:
    messages = list(generate(PORTFOLIO))
    btc = [m for m in messages if m.value["type"] == "mark" and m.value["symbol"] == "BTC"]
    periods = [int(_at(m).timestamp()) // PORTFOLIO.sample_seconds for m in btc]
    assert len(set(periods)) >= PORTFOLIO.steps // STEPS_PER_SAMPLE
    crash_start = int(PORTFOLIO.steps * (PORTFOLIO.crash_at or 0))
    # btc[0] is the opening mark; step k's mark is btc[k + 1].
    crash = periods[crash_start + 1 : crash_start + 1 + PORTFOLIO.crash_steps]
    assert len(set(crash)) >= PORTFOLIO.crash_steps // STEPS_PER_SAMPLE
    prices = [Decimal(m.value["price"]) for m in btc]
    assert prices[crash_start + PORTFOLIO.crash_steps] < prices[crash_start] * Decimal("0.8")


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_portfolio_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="portfolio_share"):
        list(generate(Scenario(accounts=10, trades=10, steps=2, portfolio_share=share)))


def test_the_simulate_command_takes_the_share_and_dynamic_margin() -> None:
    from clearing.cli import build_parser

    given = build_parser().parse_args(
        ["simulate", "--portfolio-share", "0.2", "--dynamic-margin", "--sample-seconds", "120"]
    )
    assert (given.portfolio_share, given.dynamic_margin, given.sample_seconds) == (0.2, True, 120)
    default = build_parser().parse_args(["simulate"])
    assert (default.portfolio_share, default.dynamic_margin, default.sample_seconds) == (0.0, False, 60)
