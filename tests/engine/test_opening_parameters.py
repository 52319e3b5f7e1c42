"""A log names the parameters it starts under.

A log with no ``risk_parameters`` event started under the log-start document (the v1 bundled
defaults, version bundled-2026-11-23.1), which every replay starts from. A ledger opening an empty
log of its shard appends the current bundled document (its own version) as the shard's first
event, so that one version name never means two documents."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.asof import state_at
from clearing.audit.verify import verify
from clearing.domain import events as ev
from clearing.domain.params import LOG_START_VERSION, bundled_parameters, log_start_parameters
from clearing.engine.ledger import Ledger, RawRecord
from clearing.store.db import make_engine

pytestmark = pytest.mark.integration

DECISION_WITH_VERSION = "parameters_version"


def record(kind: str, partition: int, offset: int, value: dict[str, Any] | bytes) -> RawRecord:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord(kind, "t." + kind, partition, offset, b"k", raw)


def deposit(account: str, amount: str, at: str) -> dict[str, Any]:
    return {
        "type": "deposit", "transfer_id": f"D-{account}-{at}", "account_id": account, "asset": "USDT",
        "amount": amount, "occurred_at": at,
    }  # fmt: skip


def fill(account: str, side: str, at: str) -> dict[str, Any]:
    return {
        "type": "fill", "fill_id": f"F-{account}", "trade_id": "T-1", "account_id": account, "instrument": "BTCUSDT",
        "side": side, "quantity": "1", "price": "50000", "fee": "0", "fee_asset": "USDT",
        "liquidity": "taker" if side == "buy" else "maker", "margin_mode": "cross", "occurred_at": at,
    }  # fmt: skip


def mark(price: str, at: str) -> dict[str, Any]:
    return {"type": "mark", "symbol": "BTCUSDT", "price": price, "occurred_at": at}


def market() -> list[list[RawRecord]]:
    """Three batches: deposits out of event-time order across partitions, a trade that leaves A
    with 1,000 USDT against 50,000 of notional, then marks that take A through the lifecycle."""
    return [
        [
            record("transfers", 0, 0, deposit("A", "1000", "2026-12-07T10:00:05Z")),
            record("transfers", 1, 0, deposit("B", "1000000", "2026-12-07T10:00:03Z")),
        ],
        [
            record("fills", 0, 0, fill("A", "buy", "2026-12-07T10:00:10Z")),
            record("fills", 0, 1, fill("B", "sell", "2026-12-07T10:00:10Z")),
        ],
        [
            record("marks", 0, offset, mark(price, f"2026-12-07T10:01:{offset:02d}Z"))
            for offset, price in enumerate(("49500", "49300", "49150", "49050"))
        ],
    ]


def events(engine: sa.Engine, shard: int | None = None) -> list[sa.Row[Any]]:
    where = "" if shard is None else f"WHERE shard = {int(shard)}"
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT position, shard, type, payload, occurred_at, idempotency_key, source_topic "
                    f"FROM events {where} ORDER BY position"
                )
            )
        )


def run_market(ledger: Ledger, batches: list[list[RawRecord]]) -> None:
    ledger.load()
    for batch in batches:
        result = ledger.process(batch)
        assert result.dead_letters == 0


def versions_decided(rows: list[sa.Row[Any]]) -> set[str]:
    return {row.payload[DECISION_WITH_VERSION] for row in rows if DECISION_WITH_VERSION in row.payload}


def test_a_new_ledger_opens_its_log_with_the_bundled_parameters(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        ledger = Ledger(engine, topic_prefix="t.")
        assert ledger.state.parameters is log_start_parameters()  # an empty log implies these
        run_market(ledger, market())
        rows = events(engine)
        with engine.connect() as conn:  # account show --as-of's replay, from genesis
            replayed = state_at(conn, 0, rows[-1].position, use_snapshots=False)
    finally:
        engine.dispose()
    first = rows[0]
    bundled = bundled_parameters()
    assert (first.position, first.type, first.source_topic) == (1, "RiskParametersChanged", None)
    assert first.payload == {
        "type": "risk_parameters",
        "parameters": bundled.document(),
        "occurred_at": "2026-12-07T10:00:03.000000Z",  # the batch's earliest event, not its first record
    }
    assert first.payload["parameters"]["version"] == "bundled-2026-12-08.1" != LOG_START_VERSION
    assert first.idempotency_key == f"s0/risk_parameters/{bundled.version}"  # as the admin topic's would be
    assert [row.type for row in rows[1:3]] == ["CollateralDeposited", "CollateralDeposited"]
    assert sum(row.type == "RiskParametersChanged" for row in rows) == 1
    assert ledger.state.parameters == bundled == replayed.parameters
    # The market's decisions name the document the log opened with.
    assert {row.type for row in rows} & ev.DECISION_TYPES
    assert versions_decided(rows) == {bundled.version}


def test_a_ledger_restarting_on_its_log_does_not_open_it_again(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        batches = market()
        run_market(Ledger(engine, topic_prefix="t."), batches[:1])
        restarted = Ledger(engine, topic_prefix="t.")
        run_market(restarted, batches[1:])
        rows = events(engine)
    finally:
        engine.dispose()
    assert [row.position for row in rows if row.type == "RiskParametersChanged"] == [1]
    assert restarted.state.parameters == bundled_parameters()  # read back from the log's first event


def test_a_log_without_parameters_stays_under_the_log_start_document(database_url: str) -> None:
    """A log written before the ledger opened logs with parameters (a ledger told to open with the
    log-start document writes exactly that log): a ledger of this code restarting on it appends
    no parameters, and its decisions and every replay go on under the log-start document."""
    engine = make_engine(database_url)
    try:
        batches = market()
        run_market(Ledger(engine, topic_prefix="t.", opening_parameters=log_start_parameters()), batches[:2])
        assert "RiskParametersChanged" not in {row.type for row in events(engine)}
        restarted = Ledger(engine, topic_prefix="t.")
        run_market(restarted, batches[2:])
        rows = events(engine)
        with engine.connect() as conn:
            replayed = state_at(conn, 0, rows[-1].position, use_snapshots=False)
    finally:
        engine.dispose()
    assert "RiskParametersChanged" not in {row.type for row in rows}
    assert restarted.state.parameters is log_start_parameters()
    assert versions_decided(rows) == {LOG_START_VERSION}
    assert replayed.parameters == log_start_parameters()


def test_a_batch_with_nothing_to_append_does_not_open_the_log(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        ledger = Ledger(engine, topic_prefix="t.")
        ledger.load()
        assert ledger.process([record("transfers", 0, 0, b"{not json")]).dead_letters == 1
        assert events(engine) == []
        ledger.process([record("transfers", 0, 1, deposit("A", "1000", "2026-12-07T10:00:05Z"))])
        rows = events(engine)
    finally:
        engine.dispose()
    assert [(row.position, row.type) for row in rows] == [(1, "RiskParametersChanged"), (2, "CollateralDeposited")]


def test_each_shard_opens_its_own_log(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        batches = market()
        run_market(Ledger(engine, shard=0, topic_prefix="t."), batches[:1])
        run_market(
            Ledger(engine, shard=1, topic_prefix="t."), [[record("marks", 0, 0, mark("50000", "2026-12-07T09:59:00Z"))]]
        )
        run_market(Ledger(engine, shard=0, topic_prefix="t."), batches[1:])
        opened = [row for row in events(engine) if row.type == "RiskParametersChanged"]
    finally:
        engine.dispose()
    version = bundled_parameters().version
    assert [(row.shard, row.position, row.idempotency_key, row.payload["occurred_at"]) for row in opened] == [
        (0, 1, f"s0/risk_parameters/{version}", "2026-12-07T10:00:03.000000Z"),
        (1, 4, f"s1/risk_parameters/{version}", "2026-12-07T09:59:00.000000Z"),
    ]


def test_a_log_opened_with_the_bundled_parameters_replays_to_the_same_decisions(database_url: str) -> None:
    """audit verify re-derives every decision (replay from genesis, under the log-start document
    until the log's first event), and the snapshots and projections equal the replay."""
    engine = make_engine(database_url)
    try:
        ledger = Ledger(engine, topic_prefix="t.")
        ledger.snapshots.every = 3
        run_market(ledger, market())
        report = verify(engine)
        with engine.connect() as conn:
            snapshots = conn.execute(sa.text("SELECT count(*) FROM snapshots")).scalar_one()
    finally:
        engine.dispose()
    checks = {check.name: check for check in report.checks}
    failures = [f"{c.name}: {c.as_dict()['problem']}" for c in report.checks if not c.ok and c.name != "checkpoints"]
    assert failures == []
    assert checks["replay_determinism"].details["decisions_compared"] >= 1
    assert snapshots >= 2 and checks["snapshots"].details["compared"] == snapshots
