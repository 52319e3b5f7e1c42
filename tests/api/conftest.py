"""A database with a small simulated market that crashes (built once per module: the API tests only read it)
and the API served by a real uvicorn on a loopback socket."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa

from tests.api.ledger_data import feed, records_of

TOKEN = "test-token-" + uuid.uuid4().hex
SERVER_START_TIMEOUT_S = 20.0
SERVER_POLL_INTERVAL_S = 0.02
MARGIN_CALLS_SEEDED = 23
BAD_RECORDS = 7
SEEDED_POSITION_FIRST = 1_000_000  # above any position the small market reaches


@pytest.fixture(scope="module")
def api_database_url(pg_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Like the ``database_url`` fixture, but shared by a module's tests (which only read it)."""
    from clearing.store.db import upgrade

    name = f"clearing_test_api_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        _load_market(url)
        yield url
    finally:
        pg_server.drop_database(name)


def _load_market(url: str) -> None:
    from clearing.engine.ledger import RawRecord
    from clearing.simulate import Scenario, generate
    from clearing.store.db import make_engine

    records = records_of(
        generate(Scenario(seed=11, accounts=12, trades=400, steps=30, crash_at=0.6, crash_depth=Decimal("0.45")))
    )
    for index in range(BAD_RECORDS):
        records.append(RawRecord("fills", "clearing.fills", 1, index, b"ACC-X", b'{"type": "fill", "price": 1.5}'))
    engine = make_engine(url, role="clearing_app")
    try:
        feed(engine, records)
    finally:
        engine.dispose()
    # The margin-call lifecycle may not have issued calls for so calm a market: seed the
    # projection directly (as the schema owner) so that filters and paging have rows to walk.
    owner = make_engine(url)
    start = datetime(2030, 1, 1, tzinfo=UTC)  # after anything the simulator makes
    try:
        with owner.begin() as conn:
            for index in range(MARGIN_CALLS_SEEDED):
                conn.execute(
                    sa.text(
                        "INSERT INTO margin_calls (margin_call_id, account_id, scope, level, status, issued_position,"
                        " issued_at, deadline, last_position, payload, as_of_position) VALUES (:id, :account, "
                        "'cross', :level, :status, :pos, :at, NULL, :pos, CAST(:payload AS jsonb), :pos)"
                    ),
                    {
                        "id": f"SEED-MC-{index}",
                        "account": f"ACC-{index % 3 + 1:05d}",
                        "level": ("warning", "maintenance", "liquidation")[index % 3],
                        "status": "open" if index % 2 else "resolved",
                        "pos": SEEDED_POSITION_FIRST + index,
                        "at": start + timedelta(minutes=index),
                        "payload": json.dumps({"equity": "100.5", "margin_ratio": "0.85"}),
                    },
                )
    finally:
        owner.dispose()


@dataclass(frozen=True)
class RunningApi:
    base_url: str
    app: object

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10.0)


@pytest.fixture(scope="module")
def api(api_database_url: str) -> Iterator[RunningApi]:
    """The app served by uvicorn on a socket bound to a free loopback port, in a thread."""
    import uvicorn

    from clearing.api.app import create_app, make_reader_engine

    engine = make_reader_engine(api_database_url)
    app = create_app(engine, [TOKEN, "second-token"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(SERVER_POLL_INTERVAL_S)
    try:
        yield RunningApi(base_url=f"http://127.0.0.1:{port}", app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        engine.dispose()
