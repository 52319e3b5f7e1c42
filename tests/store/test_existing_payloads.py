"""The dedupe lookup finds exactly the keys already in the log, whatever characters they hold
(the keys travel to the server as one JSON array)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from clearing.domain import events as ev
from clearing.store import db
from clearing.store import log as eventlog
from clearing.store.hashing import canonical_json

pytestmark = pytest.mark.integration

ODD_IDS = ["plain", 'quote"d', "back\\slash", "tab\there", "new\nline", "é ü 😀", "\\u0041", "comma,{brace}", " "]


def test_existing_payloads_finds_every_logged_key_and_no_other(database_url: str) -> None:
    engine = db.make_engine(database_url)
    head = eventlog.ShardHead(shard=0)
    at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    logged = {}
    rows = []
    for position, transfer_id in enumerate(ODD_IDS, 1):
        key = f"s0/transfer/{transfer_id}"
        payload = {"transfer_id": transfer_id, "n": str(position)}
        logged[key] = payload
        event = ev.Event("CollateralDeposited", f"account:{transfer_id}", payload, at, key)
        rows.append(head.row(position, event, canonical_json(payload), at))
    missing = [f"s0/transfer/{transfer_id}-not-logged" for transfer_id in ODD_IDS]
    try:
        with engine.begin() as conn, eventlog.streaming_append(conn) as stream:
            for row in rows:
                stream.add(row)
        with engine.connect() as conn:
            found = eventlog.existing_payloads(conn, [*missing, *logged])
            none = eventlog.existing_payloads(conn, missing)
    finally:
        engine.dispose()
    assert found == logged
    assert none == {}
