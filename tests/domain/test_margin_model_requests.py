"""``margin_model`` requests (CONTRACT v2 "Margin models") by worked example: approved when the
account is not liquidating and meets initial margin under the new model, re-margined under it in
the same step; rejected otherwise, with the reason."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from typing import Any

import pytest

from clearing.domain import events as ev
from clearing.domain import inputs, models
from clearing.domain.decisions import MarginModelChanged, decision_of
from clearing.domain.fold import admit, replay_event
from clearing.domain.inputs import MarginModelRequest
from clearing.domain.messages import InputError, decode
from clearing.engine.statecodec import decode_state, encode_state
from tests.domain.test_fold import T0, Book, deposit, fill, mark, message, opened_state


def at(seconds: int) -> Any:
    return T0 + timedelta(seconds=seconds)


def request(account: str, model: str, rid: str, seconds: int = 10) -> Any:
    return message(
        "transfers", type="margin_model", request_id=rid, account_id=account, model=model,
        occurred_at=at(seconds).isoformat(),
    )  # fmt: skip


def long_book(collateral: str) -> Book:
    """A: ``collateral`` USDT, long 1 BTCUSDT at 10,000 marked there (and BTC marked 10,000);
    B: the short side, rich. Standard: IM = 10,000 x 0.008 = 80, MM = 40.

    Portfolio (BTC block of the bundled document: price_range 0.16 in 4 steps, extreme moves
    -0.33 and 0.5 at weight 0.35): a long linear position loses 1 x 1 x 10,000 x 0.16 = 1,600 at
    the move -0.16 (the worst grid cell; no options, so every volatility cell alike); the extreme
    -0.33 loses 3,300 x 0.35 = 1,155. W = 1,600, no short options: IM = 1,600, MM = 0.8 x 1,600
    = 1,280."""
    book = Book()
    book.feed(deposit("A", collateral, "dA"))
    book.feed(deposit("B", "100000", "dB"))
    book.feed(fill("A", "buy", "1", "10000", fid="a1"))
    book.feed(fill("B", "sell", "1", "10000", fid="b1"))
    book.feed(mark("BTCUSDT", "10000"))
    book.feed(mark("BTC", "10000"))
    return book


def test_a_request_that_meets_initial_margin_is_approved_and_margined_under_the_new_model_at_once() -> None:
    book = long_book("1600")  # equity 1,600 = the portfolio IM: enough (equity >= IM)
    changed, issued = book.feed(request("A", "portfolio", "S-1"))
    assert changed.type == ev.MARGIN_MODEL_CHANGED
    assert changed.stream == ev.account_stream("A")
    assert changed.payload == {
        "account_id": "A", "request_id": "S-1", "model": "portfolio", "previous_model": "standard",
        "equity": "1600", "initial_margin": "1600", "parameters_version": book.state.parameters.version,
    }  # fmt: skip
    assert book.state.accounts["A"].margin_model == "portfolio"
    # Re-margined in the same step under the portfolio model: MM 1,280 / equity 1,600 = 0.8 =
    # warning_ratio (under standard it was 40 / 1,600 = 0.025).
    assert issued.type == ev.MARGIN_CALL_ISSUED
    assert (issued.payload["level"], issued.payload["maintenance_margin"], issued.payload["margin_ratio"]) == (
        "warning", "1280", "0.8")  # fmt: skip
    # And looked at under it: at 10,500 equity is 2,100, the worst cell loses 10,500 x 0.16 =
    # 1,680, MM 1,344, ratio 0.64 < resolve_ratio 0.7: the call resolves.
    assert [d.type for d in book.feed(mark("BTCUSDT", "10500", at(20)))] == [ev.MARGIN_CALL_RESOLVED]


def test_a_request_below_initial_margin_under_the_new_model_is_rejected_with_the_figures() -> None:
    book = long_book("1000")  # equity 1,000 < IM 1,600 under portfolio (80 under standard)
    [rejected] = book.feed(request("A", "portfolio", "S-1"))
    assert rejected.type == ev.MARGIN_MODEL_REJECTED
    assert rejected.payload["reason"] == (
        "equity 1000 is below the initial margin 1600 that the portfolio model requires"
    )
    assert (rejected.payload["request_id"], rejected.payload["model"]) == ("S-1", "portfolio")
    assert book.state.accounts["A"].margin_model == "standard"


def test_a_request_while_liquidating_is_rejected() -> None:
    # Standard: at 9,010 equity is 10 against MM 36.04: liquidation at once (no grace), an order
    # pending. The portfolio model would not even be asked.
    book = long_book("1000")
    decisions = book.feed(mark("BTCUSDT", "9010", at(5)))
    assert decisions[-1].type == ev.LIQUIDATION_ORDER_ISSUED
    [rejected] = book.feed(request("A", "portfolio", "S-1"))
    assert rejected.type == ev.MARGIN_MODEL_REJECTED
    assert rejected.payload["reason"] == "the account is in liquidation (cross) and cannot withdraw or add risk"
    assert book.state.accounts["A"].margin_model == "standard"


def test_a_request_for_the_model_in_force_is_rejected_as_such_and_changes_nothing() -> None:
    book = long_book("5000")
    [rejected] = book.feed(request("A", "standard", "S-1"))
    assert rejected.type == ev.MARGIN_MODEL_REJECTED
    assert rejected.payload["reason"] == "the account is already on the standard margin model"
    assert [d.type for d in book.feed(request("A", "portfolio", "S-2", 11))] == [ev.MARGIN_MODEL_CHANGED]
    [again] = book.feed(request("A", "portfolio", "S-3", 12))
    assert again.payload["reason"] == "the account is already on the portfolio margin model"
    # Back to standard: IM 80 <= 5,000.
    [back] = book.feed(request("A", "standard", "S-4", 13))
    assert (back.type, back.payload["previous_model"], back.payload["initial_margin"]) == (
        ev.MARGIN_MODEL_CHANGED, "portfolio", "80")  # fmt: skip
    assert book.state.accounts["A"].margin_model == "standard"


def test_a_new_account_may_opt_in_before_it_holds_anything() -> None:
    book = Book()
    [changed] = book.feed(request("N", "portfolio", "S-1"))
    assert (changed.type, changed.payload["equity"], changed.payload["initial_margin"]) == (
        ev.MARGIN_MODEL_CHANGED, "0", "0")  # fmt: skip
    assert book.state.accounts["N"].margin_model == "portfolio"


def test_replays_and_snapshots_keep_the_model_the_decisions_set() -> None:
    book = long_book("5000")
    book.feed(request("A", "portfolio", "S-1"))
    replayed = opened_state()
    for logged in book.log:
        replay_event(replayed, logged.type, logged.payload)
    assert replayed.accounts["A"].margin_model == "portfolio"
    assert decode_state(encode_state(book.state)).accounts["A"].margin_model == "portfolio"
    decision = decision_of(ev.MARGIN_MODEL_CHANGED, book.decisions[-1].payload)
    assert isinstance(decision, MarginModelChanged) and decision.equity == D(5000)


def test_the_request_decodes_with_its_idempotency_key_and_refuses_unknown_models() -> None:
    msg = decode(
        "transfers",
        b'{"type": "margin_model", "request_id": "S-1", "account_id": "A1", "model": "portfolio",'
        b' "occurred_at": "2026-11-23T12:00:00Z"}',
    )
    assert isinstance(msg, MarginModelRequest)
    logged = ev.input_event(msg, 3)
    assert (logged.type, logged.stream, logged.idempotency_key) == (
        "MarginModelRequested", "account:A1", "s3/margin_model/S-1")  # fmt: skip
    assert ev.trusted_message(logged.type, logged.payload) == msg == ev.message_of(logged.type, logged.payload)
    with pytest.raises(InputError, match="model Input should be 'standard' or 'portfolio'"):
        decode(
            "transfers",
            b'{"type": "margin_model", "request_id": "S-1", "account_id": "A1", "model": "span",'
            b' "occurred_at": "2026-11-23T12:00:00Z"}',
        )
    # A message built around the decoder is refused at admission all the same.
    with pytest.raises(InputError, match="not a margin model of this ledger"):
        admit(opened_state(), msg.replace(model="span"))


def test_the_models_a_request_may_name_are_the_ledgers_models() -> None:
    assert set(inputs.MARGIN_MODEL_NAMES) == set(models.MODELS)
