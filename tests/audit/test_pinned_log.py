"""A log written by the code of commit 05ad1d6 verifies under this code: every decision re-derived
byte for byte, the projections and snapshots it wrote equal to a fresh replay, the chain intact,
the books balanced.

The log is ``tests/fixtures/pinned_log/`` (written by ``tests/fixtures/make_pinned_log.py`` at
05ad1d6; its docstring says what the market holds): every column of every row of the log, the
projection tables and the snapshots, as PostgreSQL's ``COPY`` text. It is a database of schema
revision ``PINNED_REVISION``: it is loaded as it is into a fresh database migrated to that
revision, the migrations since then run on it (so they are tested on real data too), and ``audit
verify`` runs on it. And the live ledger of this code, fed the
same market, writes the same rows but for the columns of its clock."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import sqlalchemy as sa

from clearing.audit.verify import run_verify, verify
from clearing.domain import events as ev
from clearing.store.db import make_engine, upgrade
from tests.fixtures.make_pinned_log import TABLES

if TYPE_CHECKING:
    from tests.conftest import PgServer

PINNED = Path(__file__).resolve().parents[1] / "fixtures" / "pinned_log"
# The schema 05ad1d6 wrote the fixture under: its COPY text has that revision's columns.
PINNED_REVISION = "2026_11_23_0001"
CHECKS = {
    "hash_chain", "log_tail", "outbox", "replay_determinism", "projections", "snapshots", "conservation", "counterparts"
}  # fmt: skip


def load_pinned_log(url: str, folder: Path = PINNED) -> None:
    """Every table of the fixture into the empty database at ``url`` (migrated to
    ``PINNED_REVISION``), as it was."""
    libpq = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq) as conn, conn.cursor() as cursor:
        for table in TABLES:
            with cursor.copy(f"COPY {table} FROM STDIN") as copy_in:  # type: ignore[arg-type]
                copy_in.write((folder / f"{table}.copy").read_bytes())


@pytest.fixture
def pinned_database_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database holding the pinned log, migrated from ``PINNED_REVISION`` to head."""
    name = f"clearing_test_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url, PINNED_REVISION)
        load_pinned_log(url)
        upgrade(url)
        yield url
    finally:
        pg_server.drop_database(name)


def rows(table: str) -> list[list[str]]:
    return [line.split("\t") for line in (PINNED / f"{table}.copy").read_text("utf-8").splitlines()]


def test_the_pinned_log_holds_what_it_is_pinned_for() -> None:
    """The fixture is small and covers every kind of decision a v1 log can hold but a dead letter
    and auto-deleveraging (which 05ad1d6 never decides)."""
    assert sum(path.stat().st_size for path in PINNED.iterdir()) < 1_000_000
    events = rows("events")
    types = {row[4] for row in events}
    # A bust (FillBusted) and a margin model request are v2 inputs, which 05ad1d6 never logged.
    assert types >= {event_type for event_type, _ in ev.INPUT_EVENT_TYPES.values()} - {
        "SettlementPriceRecorded", ev.FILL_BUSTED, "MarginModelRequested"
    }  # fmt: skip
    assert types >= ev.DECISION_TYPES - {
        ev.POSITION_AUTO_DELEVERAGED, ev.LIQUIDATION_ORDER_CANCELLED,
        ev.MARGIN_MODEL_CHANGED, ev.MARGIN_MODEL_REJECTED, ev.MARGIN_RATES_CHANGED,
    }  # fmt: skip
    payloads = [json.loads(row[6]) for row in events]
    assert {p["margin_mode"] for p in payloads if p.get("type") == "fill"} == {"cross", "isolated"}
    assert {p["level"] for p in payloads if "margin_call_id" in p and "level" in p} == {
        "warning", "maintenance", "liquidation"
    }  # fmt: skip
    assert {p["full"] for p in payloads if "full" in p} == {True, False}  # partial and whole orders
    assert any(p.get("cancelled_orders") for p in payloads)
    assert len(rows("snapshots")) >= 2


def _failures(checks: list[dict[str, Any]], *, but: frozenset[str] = frozenset()) -> list[str]:
    return [
        f"{c['name']}: {c['problem']} (at {c['first_bad_position']})"
        for c in checks
        if not c["ok"] and c["name"] not in but
    ]


# 05ad1d6 published no account updates (the clearing.account-updates topic came after it), so its
# isolated margin decisions have no outbox row: the outbox check reports them, and only them, as
# never queued. Every other check passes.
UNPUBLISHED_BY_05AD1D6 = {ev.ISOLATED_MARGIN_TRANSFERRED, ev.ISOLATED_MARGIN_TRANSFER_REJECTED}


def _assert_outbox_as_05ad1d6_left_it(checks: list[dict[str, Any]]) -> None:
    outbox = next(check for check in checks if check["name"] == "outbox")
    never_queued = [(int(row[0]), row[4]) for row in rows("events") if row[4] in UNPUBLISHED_BY_05AD1D6]
    details = outbox["details"]
    assert details["decisions_never_queued"] == len(never_queued), outbox
    assert outbox["first_bad_position"] == never_queued[0][0], outbox
    samples = {f"{event_type} at {position}" for position, event_type in never_queued}
    assert set(details["never_queued_samples"]) <= samples, outbox


def test_audit_verify_passes_on_the_log_05ad1d6_wrote(
    pinned_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(pinned_database_url)
    try:
        run_verify(engine, as_json=True)
    finally:
        engine.dispose()
    report = json.loads(capsys.readouterr().out)
    assert _failures(report["checks"], but=frozenset({"outbox"})) == []
    _assert_outbox_as_05ad1d6_left_it(report["checks"])
    checks = {check["name"]: check for check in report["checks"]}
    assert set(checks) >= CHECKS
    decisions = sum(1 for row in rows("events") if row[4] in ev.DECISION_TYPES)
    assert checks["replay_determinism"]["details"]["decisions_compared"] == decisions
    assert checks["snapshots"]["details"] == {"snapshots": len(rows("snapshots")), "compared": len(rows("snapshots"))}
    assert checks["hash_chain"]["details"]["events"] == report["head"] == len(rows("events"))
    assert checks["conservation"]["details"]["checked_at"] >= 1
    projections = checks["projections"]["details"]
    assert {table: projections[table]["ok"] for table in projections} == dict.fromkeys(projections, True)


def test_the_snapshots_05ad1d6_took_equal_the_re_run_state(pinned_database_url: str) -> None:
    engine = make_engine(pinned_database_url)
    try:
        report = verify(engine)
    finally:
        engine.dispose()
    checks = [check.as_dict() for check in report.checks]
    assert _failures(checks, but=frozenset({"outbox"})) == []
    _assert_outbox_as_05ad1d6_left_it(checks)


def test_the_parallel_verify_passes_on_it_too_with_the_books_balanced_all_along(pinned_database_url: str) -> None:
    engine = make_engine(pinned_database_url)
    try:
        report = verify(engine, jobs=2, conservation_every=25)
    finally:
        engine.dispose()
    assert report.replay["mode"] == "parallel", report.replay
    checks = [check.as_dict() for check in report.checks]
    assert _failures(checks, but=frozenset({"outbox"})) == []
    _assert_outbox_as_05ad1d6_left_it(checks)
    conservation = next(check for check in report.checks if check.name == "conservation")
    assert conservation.details["checked_at"] > len(rows("events")) // 50


# Columns the ledger fills from the clock, not from what it decides: recorded_at and the two
# hashes that cover it (events), created_at (snapshots, outbox), updated_at (consumer_offsets).
CLOCK_COLUMNS = {"events": {8, 14, 15}, "snapshots": {2}, "outbox": {5}, "consumer_offsets": {5}}


# Columns that migrations after 05ad1d6 appended to its tables, with their value in this one-shard
# log: balances' shard (2026_12_07_0002, system accounts kept per shard).
ADDED_COLUMNS = {"balances": ["0"]}


def _margin_model_columns_as_written(added: list[str]) -> bool:
    """margin_state's margin_model and underlyings (2026_12_08_0001) as this code writes them for
    05ad1d6's market: the standard model, and per underlying held the multiplier 1 (no dynamic
    margin in its parameters) and no grid (NULL for a scope without open positions)."""
    model, underlyings = added
    if model != "standard":
        return False
    if underlyings == "\\N":
        return True
    entries = json.loads(underlyings)
    return bool(entries) and all(set(entry) == {"underlying", "multiplier"} and entry["multiplier"] == "1"
                                 for entry in entries)  # fmt: skip


def test_the_ledger_writes_the_pinned_log_again_but_for_its_clock(database_url: str, tmp_path: Path) -> None:
    """The market of the generator, fed to the ledger of this code, gives every row of the pinned
    log (and of its projections, outbox and offsets) again, column for column, but those of the
    clock. (The snapshots' bytes are verify's snapshots check, above.)"""
    from tests.fixtures.make_pinned_log import dump, record_market

    record_market(database_url)
    dump(sa.engine.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False), tmp_path)
    for table in set(TABLES) - {"snapshots"}:
        clock = CLOCK_COLUMNS.get(table, set())
        written = [line.split("\t") for line in (tmp_path / f"{table}.copy").read_text("utf-8").splitlines()]
        pinned = rows(table)
        if table == "outbox":
            # Decisions 05ad1d6 published on no topic now go out too (isolated-margin transfers on
            # account-updates, issue 26): the rest is the same rows in the same order, ids apart.
            written = [row[1:] for row in written if not row[2].endswith("account-updates")]
            pinned = [row[1:] for row in pinned]
            clock = {column - 1 for column in clock}
        assert len(written) == len(pinned), table
        added = ADDED_COLUMNS.get(table, [])
        for new, old in zip(written, pinned, strict=True):
            if table == "margin_state":
                assert _margin_model_columns_as_written(new[len(old) :]), new
            else:
                assert new[len(old) :] == added, table  # columns later migrations appended
            new = new[: len(old)]
            assert [c for i, c in enumerate(new) if i not in clock] == [c for i, c in enumerate(old) if i not in clock]
