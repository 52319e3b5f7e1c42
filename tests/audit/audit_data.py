"""A database holding a small simulated market with a crash (margin calls and liquidation orders),
fed through ``Ledger.process`` without a broker, for the audit tools' tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
import sqlalchemy as sa

from clearing.engine.ledger import Ledger
from clearing.simulate import Message, Scenario, generate
from clearing.store.db import make_engine
from tests.api.ledger_data import records_of
from tests.conftest import PgServer

APP_ROLE = "clearing_app"
CRASH = Scenario(
    seed=5, accounts=30, trades=400, steps=60, crash_at=0.6, crash_depth=Decimal("0.45"), funding_every_steps=20
)


def load_market(url: str, scenario: Scenario = CRASH, batch: int = 50, snapshot_every: int | None = None) -> Ledger:
    engine = make_engine(url, role=APP_ROLE)
    ledger = Ledger(engine)
    if snapshot_every is not None:
        ledger.snapshots.every = snapshot_every
    ledger.load()
    records = records_of(generate(scenario))
    for start in range(0, len(records), batch):
        ledger.process(records[start : start + batch])
    return ledger


@pytest.fixture
def market_url(pg_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh migrated database with the CRASH market in it; dropped afterwards."""
    from clearing.store.db import upgrade

    name = f"clearing_test_audit_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        ledger = load_market(url)
        ledger.engine.dispose()
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def owner(market_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(market_url)
    yield engine
    engine.dispose()


@contextmanager
def ledger_database(pg_server: PgServer, name: str, messages: Iterable[Message]) -> Iterator[sa.Engine]:
    """A fresh migrated database ``clearing_test_<name>_<random>`` into which the ledger (as its
    own role, shard 0) has processed ``messages`` in one batch; the owner's engine, then dropped."""
    from clearing.store.db import upgrade

    database = f"clearing_test_{name}_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(database)
    try:
        url = pg_server.url(database)
        upgrade(url)
        ledger = Ledger(make_engine(url, role=APP_ROLE))
        ledger.load()
        ledger.process(records_of(messages))
        ledger.engine.dispose()
        owner = make_engine(url)
        yield owner
        owner.dispose()
    finally:
        pg_server.drop_database(database)
