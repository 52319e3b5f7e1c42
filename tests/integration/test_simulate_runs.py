"""A second ``clearing simulate`` run into a used ledger gets ids and times of its own: nothing of
it is a duplicate of the first run (on 05ad1d6, 420 conflicting duplicates and withdrawals booked
against the first run's accounts)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from clearing.simulate import START, Scenario, generate, next_run
from clearing.store.db import make_engine
from tests.api.ledger_data import records_of

pytestmark = [pytest.mark.integration]


def test_next_run_follows_the_ledgers_last_event() -> None:
    assert next_run(None).id_prefix == "" and next_run(None).start == START
    plan = next_run(START + timedelta(minutes=16, seconds=50))
    assert plan.id_prefix == "S20261123T0100-" and plan.start == START + timedelta(hours=1)
    assert "2026-11-23T00:16:50" in plan.reason


def test_a_second_run_into_a_used_ledger_books_only_its_own(database_url: str) -> None:
    from clearing.engine.ledger import Ledger

    engine = make_engine(database_url, role="clearing_app")
    try:
        ledger = Ledger(engine)
        ledger.load()
        first = Scenario(seed=3, accounts=10, trades=200, steps=20)
        first_messages = list(generate(first))
        ledger.process(records_of(first_messages))
        with engine.connect() as conn:
            used_until = conn.execute(sa.text("SELECT max(occurred_at) FROM events")).scalar_one()
        plan = next_run(used_until)
        second = Scenario(seed=3, accounts=10, trades=200, steps=20, id_prefix=plan.id_prefix, start=plan.start)
        second_messages = list(generate(second))
        offsets = {kind: sum(1 for m in first_messages if m.kind == kind) for kind in ("fills", "transfers", "marks")}
        records = records_of(second_messages)
        records = [r._replace(offset=r.offset + offsets.get(r.kind, 0)) for r in records]
        ledger.process(records)
        with engine.connect() as conn:
            dead = conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one()
            touched = conn.execute(sa.text(
                "SELECT count(*) FROM events WHERE position > (SELECT max(position) FROM events "
                "WHERE occurred_at <= :t) AND stream LIKE 'account:ACC-%'"
            ), {"t": used_until}).scalar_one()
        assert dead == 0
        assert touched == 0  # the second run booked nothing on the first run's accounts
        assert all(m.value["occurred_at"] >= plan.start.isoformat()[:19] for m in second_messages)
    finally:
        engine.dispose()
