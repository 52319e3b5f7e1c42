"""``clearing audit verify``: every check holds on an honest log, and each kind of damage is named
with its first bad position: a payload edited or a row deleted by the database owner (triggers
disabled), the last row deleted, an engine that decides differently, a fill without counterpart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.verify import verify
from clearing.native import PURE_ENV
from tests.audit.audit_data import market_url, owner  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.integration]


def checks(engine: sa.Engine) -> dict[str, Any]:
    return {check.name: check for check in verify(engine).checks}


def tamper(engine: sa.Engine, *statements: str) -> None:
    """As the owner: switch the append-only triggers off, change the log, switch them on."""
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events DISABLE TRIGGER ALL"))
        for statement in statements:
            conn.execute(sa.text(statement))
        conn.execute(sa.text("ALTER TABLE events ENABLE TRIGGER ALL"))


def position_of(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def test_an_honest_log_verifies(owner: sa.Engine) -> None:  # noqa: F811
    report = verify(owner)
    assert report.ok, json.dumps(report.as_dict(), default=str, indent=1)
    by_name = {c.name: c for c in report.checks}
    assert by_name["replay_determinism"].details["decisions_compared"] > 10
    assert by_name["counterparts"].details["trades"] > 100
    assert by_name["projections"].details["liquidations"]["rows_live"] > 0


def test_an_edited_payload_is_named_by_position(owner: sa.Engine) -> None:  # noqa: F811
    target = position_of(owner, "SELECT min(position) FROM events WHERE type = 'FillRecorded' AND position > 200")
    tamper(owner, f"UPDATE events SET payload = jsonb_set(payload, '{{price}}', '\"1\"') WHERE position = {target}")
    found = checks(owner)
    assert not found["hash_chain"].ok
    assert found["hash_chain"].first_bad_position == target
    assert "content" in (found["hash_chain"].problem or "")


def test_a_deleted_row_is_named_by_position(owner: sa.Engine) -> None:  # noqa: F811
    tamper(owner, "DELETE FROM events WHERE position = 300")
    found = checks(owner)
    assert not found["hash_chain"].ok
    assert found["hash_chain"].first_bad_position == 300
    assert "missing" in (found["hash_chain"].problem or "")


def test_a_deleted_last_row_is_found_by_the_tables_written_with_it(owner: sa.Engine) -> None:  # noqa: F811
    head = position_of(owner, "SELECT max(position) FROM events")
    tamper(owner, f"DELETE FROM events WHERE position = {head}")
    found = checks(owner)
    assert found["hash_chain"].ok  # the chain alone cannot tell
    assert not found["log_tail"].ok
    assert found["log_tail"].first_bad_position == head
    assert f"ends at position {head - 1}" in (found["log_tail"].problem or "")


# A "harmless" change of one figure of every margin call, made to the engine's source modules in a
# process that imports them from source: compiled, they call one another directly, and patching a
# module's attribute would change nothing (clearing/native.py).
DRIFTING_ENGINE = """
import json, sys
from clearing.domain import lifecycle
original = lifecycle._call_payload
def drifting(*args, **kwargs):
    payload = original(*args, **kwargs)
    payload["shortfall"] = "0.00000001"
    return payload
lifecycle._call_payload = drifting
from clearing.audit.verify import verify
from clearing.store.db import make_engine
checks = {check.name: check for check in verify(make_engine(sys.argv[1])).checks}
print(json.dumps({name: [c.ok, c.first_bad_position, c.problem] for name, c in checks.items()}))
"""


def test_a_changed_engine_is_caught_by_replay_determinism(market_url: str, owner: sa.Engine) -> None:  # noqa: F811
    done = subprocess.run(
        [sys.executable, "-c", DRIFTING_ENGINE, market_url],
        env={**os.environ, PURE_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    first_call = position_of(owner, "SELECT min(position) FROM events WHERE type = 'MarginCallIssued'")
    assert found["hash_chain"][0]
    ok, first_bad, problem = found["replay_determinism"]
    assert not ok
    assert first_bad == first_call
    assert "differs" in (problem or "")


LONELY_FILL = {
    "type": "fill",
    "fill_id": "F-LONELY",
    "trade_id": "T-LONELY",
    "account_id": "ACC-00001",
    "instrument": "BTCUSDT",
    "side": "buy",
    "quantity": "0.001",
    "price": "50000",
    "fee": "0",
    "occurred_at": "2026-11-24T00:00:00Z",
}


@contextmanager
def ledger_on(url: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A ledger on ``url`` (as its own role) and a function that books one fills-topic message."""
    from clearing.engine.ledger import Ledger, RawRecord
    from clearing.store.db import make_engine

    engine = make_engine(url, role="clearing_app")
    offsets = iter(range(10_000, 20_000))
    try:
        ledger = Ledger(engine)
        ledger.load()

        def process(message: dict[str, Any]) -> None:
            raw = json.dumps(message).encode()
            ledger.process([RawRecord("fills", "clearing.fills", 0, next(offsets), b"ACC-00001", raw)])

        yield process
    finally:
        engine.dispose()


def test_a_fill_without_counterpart_is_reported(
    market_url: str,  # noqa: F811
    owner: sa.Engine,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One side of a trade arrives and its other side never does.
    with ledger_on(market_url) as process:
        process(LONELY_FILL)
    position = position_of(owner, "SELECT position FROM events WHERE idempotency_key = 's0/fill/F-LONELY'")
    found = checks(owner)
    assert found["hash_chain"].ok and found["replay_determinism"].ok and found["projections"].ok
    # An open break, not a failure of the log: listed with its age; the books are out by exactly
    # its amount (0.001 x 50000 USDT bought), which the conservation check allows for.
    assert found["counterparts"].ok and found["conservation"].ok
    assert found["counterparts"].details["open_breaks"] == 1
    (listed,) = found["counterparts"].details["open_breaks_listed"]
    assert (listed["position"], listed["trade_id"], listed["account_id"]) == (position, "T-LONELY", "ACC-00001")
    assert "no counterpart" in listed["problem"]
    assert listed["age_seconds"] is not None and listed["age_seconds"] >= 0
    assert found["conservation"].details["open_breaks_amount"] == {"USDT": "-50"}
    # The plain report says so, with what to do, and exits 0.
    from clearing.audit.verify import run_verify

    assert run_verify(owner, as_json=False) == 0
    out = capsys.readouterr().out
    assert f"open break: trade T-LONELY: the fill at {position} (ACC-00001 buy 0.001 BTCUSDT @ 50000)" in out
    assert "bust it, or send its other side" in out
    assert out.rstrip().splitlines()[-1].startswith("verified")  # (checkpoints may be "not checked" here)
    assert "ok   counterparts (1 open breaks, below)" in out


def test_a_busted_lone_fill_is_no_longer_an_open_break(market_url: str, owner: sa.Engine) -> None:  # noqa: F811
    bust = {
        "type": "fill_bust",
        "bust_id": "B-LONELY",
        "fill_id": "F-LONELY",
        "account_id": "ACC-00001",
        "reason": "the other side never traded",
        "occurred_at": "2026-11-24T00:05:00Z",
    }
    with ledger_on(market_url) as process:
        process({**LONELY_FILL, "fee": "0.02"})
        assert checks(owner)["counterparts"].details["open_breaks"] == 1
        process(bust)
    report = verify(owner)
    assert report.ok, json.dumps(report.as_dict(), default=str, indent=1)
    found = {check.name: check for check in report.checks}
    assert found["counterparts"].details["open_breaks"] == 0 and found["counterparts"].details["busts"] == 1
    assert "open_breaks_amount" not in found["conservation"].details


def test_cli_exit_status_and_json(market_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:  # noqa: F811
    from clearing.cli import main

    monkeypatch.setenv("CLEARING_DATABASE_URL", market_url)
    monkeypatch.setenv("CLEARING_HOME", "/tmp/clearing-verify-test-home")
    from clearing.settings import get_settings

    if hasattr(get_settings, "cache_clear"):
        get_settings.cache_clear()
    assert main(["audit", "verify", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True
    assert {c["name"] for c in data["checks"]} >= {
        "hash_chain",
        "replay_determinism",
        "projections",
        "conservation",
        "counterparts",
    }


def test_plain_progress_gives_a_rate_over_the_time_since_the_phase_began_and_none_for_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clearing.audit import verify as verify_module

    now = [1_000.0]
    monkeypatch.setattr(verify_module.time, "monotonic", lambda: now[0])
    progress = verify_module.PlainProgress(total=11_000, every_s=5.0)
    now[0] = 1_000.5
    progress("hash chain", 0)  # started in its process: no rate of nothing
    for at, count in ((1_000.5, 0), (1_005.5, 5_000), (1_010.5, 11_000)):
        now[0] = at
        progress("replay", count)
    now[0] = 1_011.0
    progress("hash chain", 11_000)  # over the 11 s since the progress began
    assert capsys.readouterr().err.splitlines() == [
        "hash chain: 0/11000 events",
        "replay: 0/11000 events",
        "replay: 5000/11000 events, 1,000 events/s",
        "replay: 11000/11000 events, 1,100 events/s",
        "hash chain: 11000/11000 events, 1,000 events/s",
    ]
