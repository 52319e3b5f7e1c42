"""The re-margin fixpoint loop has a named bound and fails loudly when it is reached, instead of
leaving scopes off their fixpoint (it stopped silently after 8 rounds before)."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from clearing import COMPILED_IN_USE
from clearing.domain import lifecycle
from clearing.domain.decisions import InsuranceFundDrawn
from tests.domain.test_fold import Book, deposit


@pytest.mark.skipif(COMPILED_IN_USE, reason="compiled modules call _remargin directly: patching it changes nothing")
def test_decisions_that_keep_changing_other_accounts_stop_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    book = Book()
    book.feed(deposit("A", "10", "dA"))
    book.feed(deposit("B", "10", "dB"))
    book.feed(deposit("system:insurance-fund", "1000", "dF"))
    other = {"A": "B", "B": "A"}

    def ping_pong(state: Any, account: Any, scope: str, at: Any, ids: Any, emit: Any) -> Any:
        # A broken rule: every re-margin draws for the other account, which then draws back.
        draw = InsuranceFundDrawn(other[account.account_id], None, scope, "USDT", D("1"), D("1"), D("0"), D("0"), "v")
        emit(draw)
        return None

    monkeypatch.setattr(lifecycle, "_remargin", ping_pong)
    with pytest.raises(RuntimeError, match=f"no fixpoint|fixpoint in {lifecycle.REMARGIN_ROUNDS_MAX} rounds"):
        book.feed(deposit("A", "1", "dA2"))
