"""``clearing run`` given only the ledger's own login, as deploy/docker-compose.yml gives it: it
starts without migrating, ingests, publishes its decisions, and every session it holds on the
database is ``clearing_app`` (none the owner's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from clearing.store.db import APP_ROLE, make_engine, role_url
from tests.integration.conftest import offsets_reached, produce, stored_offsets

pytestmark = pytest.mark.integration

WAIT_S = 90.0
POLL_S = 0.05
STOP_TIMEOUT_S = 30
CLEARING = Path(sys.executable).with_name("clearing")
AT = "2026-11-23T12:00:00Z"


def test_clearing_run_with_the_ledgers_own_login_ingests_and_holds_only_that_role(
    database_url: str, broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    produced = produce(
        broker,
        topic_prefix,
        [
            ("transfers", "A1", {"type": "deposit", "transfer_id": "D-1", "account_id": "A1", "asset": "USDT",
                                 "amount": "1000", "occurred_at": AT}),
            ("transfers", "A1", {"type": "withdrawal", "transfer_id": "W-1", "account_id": "A1", "asset": "USDT",
                                 "amount": "10", "occurred_at": AT}),
        ],
    )
    env = {
        **os.environ,
        "CLEARING_DATABASE_URL": role_url(database_url, APP_ROLE),  # no owner login in the process at all
        "CLEARING_KAFKA_BOOTSTRAP": broker,
        "CLEARING_TOPIC_PREFIX": topic_prefix,
        "CLEARING_HOME": str(tmp_path / "home"),
    }
    owner = make_engine(database_url)
    err = tmp_path / "run.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen([str(CLEARING), "run"], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + WAIT_S
        while not offsets_reached(stored_offsets(owner), produced.ends):
            assert process.poll() is None, err.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the ledger did not ingest within the bound"
            time.sleep(POLL_S)
        with owner.connect() as conn:
            sessions = conn.execute(
                sa.text(
                    "SELECT usename, count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() GROUP BY usename"
                )
            ).all()
            approved = conn.execute(sa.text("SELECT count(*) FROM events WHERE type = 'WithdrawalApproved'"))
            approved_count = approved.scalar_one()
        assert {user for user, _n in sessions} == {APP_ROLE}, sessions
        assert approved_count == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_TIMEOUT_S) == 0, err.read_text(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        owner.dispose()
