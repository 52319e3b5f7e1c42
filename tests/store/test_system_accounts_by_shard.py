"""Every shard keeps its own system accounts: the projections hold each shard's, ``account show``
(projections and as-of) shows each and their total, and a rebuild agrees. On 05ad1d6 the balances
were keyed by account and asset only, and the shard that wrote last overwrote the other's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clearing.audit.asof import account_as_of
from clearing.audit.rebuild import rebuild
from clearing.engine.ledger import Ledger, RawRecord
from clearing.store import queries
from clearing.store.db import make_engine

pytestmark = [pytest.mark.integration]

AT = "2026-11-23T12:00:0{}Z"


def records(shard: int, fee: str) -> list[RawRecord]:
    a, b = f"A{shard}", f"B{shard}"
    values: list[tuple[str, dict[str, Any]]] = [
        ("marks", {"type": "mark", "symbol": "BTCUSDT", "price": "100", "occurred_at": AT.format(1)}),
        ("transfers", {"type": "deposit", "transfer_id": f"D-{a}", "account_id": a, "asset": "USDT",
                       "amount": "1000", "occurred_at": AT.format(1)}),
        ("transfers", {"type": "deposit", "transfer_id": f"D-{b}", "account_id": b, "asset": "USDT",
                       "amount": "1000", "occurred_at": AT.format(1)}),
    ]
    for account, side in ((a, "buy"), (b, "sell")):
        values.append(("fills", {"type": "fill", "fill_id": f"F-{account}", "trade_id": f"T-{shard}",
                                 "account_id": account, "instrument": "BTCUSDT", "side": side, "quantity": "1",
                                 "price": "100", "fee": fee, "fee_asset": "USDT", "occurred_at": AT.format(2)}))
    offsets: dict[str, int] = {}
    out = []
    for kind, value in values:
        offset = offsets.get(kind, 0)
        offsets[kind] = offset + 1
        out.append(RawRecord(kind, "s." + kind, shard, offset, b"k", json.dumps(value).encode()))
    return out


def test_each_shards_system_accounts_and_their_total(database_url: str) -> None:
    app = make_engine(database_url, role="clearing_app")
    owner = make_engine(database_url)
    try:
        for shard, fee in ((0, "1"), (1, "2.5")):
            ledger = Ledger(app, shard=shard, topic_prefix="s.")
            ledger.load()
            ledger.process(records(shard, fee))
        with owner.connect() as conn:
            view = queries.account_view(conn, "system:fees")
            head = queries.log_head(conn)
        assert view is not None
        assert view["shards"] == {
            "0": {"as_of_position": view["shards"]["0"]["as_of_position"], "balances": {"USDT": "2"}},
            "1": {"as_of_position": view["shards"]["1"]["as_of_position"], "balances": {"USDT": "5"}},
        }
        assert view["balances"] == {"USDT": "7"}
        past = account_as_of(owner, "system:fees", str(head))
        assert past is not None and past["balances"] == view["balances"]
        each = {shard: one["balances"] for shard, one in past["shards"].items()}
        assert each == {"0": {"USDT": "2"}, "1": {"USDT": "5"}}
        with owner.connect() as conn:
            fund = queries.account_balances(conn, "system:fees", shard=1)
        assert fund["balances"] == {"USDT": "5"} and set(fund["shards"]) == {"1"}
        report = rebuild(owner, swap=False)
        balances = next(table for table in report.tables if table.table == "balances")
        assert balances.ok and balances.rows_live == balances.rows_expected, balances.problems
    finally:
        app.dispose()
        owner.dispose()
