"""The live ledger's rotating margin refresh walks the holders as they are at each batch with
marks, although it keeps them sorted between batches (``refresh.SortedHolders``): the fold
changes the holder sets in place, and a holder added or gone since must be in the next window or
not. The replay re-enacts the same windows (tests/audit/test_replay_bookkeeping.py)."""

from __future__ import annotations

import sqlalchemy as sa

from clearing.engine.ledger import Ledger


def test_the_ledger_refresh_sees_the_holders_as_they_are_now() -> None:
    ledger = Ledger(sa.create_engine("postgresql+psycopg://"))  # never connects
    holders = ledger.state.holders = {"BTCUSDT": {"B", "A"}, "ETHUSDT": {"A"}}
    assert ledger._refresh_rotation() == ["A", "B"]
    holders["ETHUSDT"].add("C")
    assert ledger._refresh_rotation() == ["A", "B", "C"]
    holders["BTCUSDT"].discard("A")
    assert ledger._refresh_rotation() == ["A", "B", "C"]  # A still holds ETHUSDT
    holders["ETHUSDT"].discard("A")
    assert ledger._refresh_rotation() == ["B", "C"]
