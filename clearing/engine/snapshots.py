"""Snapshots of a shard's in-memory ``LedgerState``: written every ``SNAPSHOT_EVERY_EVENTS`` events
of the shard, read by ``Ledger.load`` (start from the latest, replay the tail) and by the as-of
queries (the nearest snapshot at or before the position asked for, then the tail).

Encoding: JSON (UTF-8, canonical key order) of ``clearing.engine.statecodec``'s document: decimals
as their exact strings, times as RFC 3339, the risk parameters as their document. Not pickle: a
snapshot row is data, and decoding it runs no code, so a person who can write the ``snapshots``
table can at worst make a *state* wrong, never run something in the ledger process. A wrong state
is what ``audit verify`` looks for: it re-folds the log and compares every snapshot with the state
at its position, byte for byte.

A snapshot at ``position`` is the state after every event of the shard up to and including
``position`` (a batch's end: the decisions of its last input are applied).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from clearing.domain.state import LedgerState
from clearing.engine.statecodec import carries_pairing, decode_state, encode_books, encode_state
from clearing.store.jsontext import canonical_json_bytes

logger = logging.getLogger(__name__)

SNAPSHOT_EVERY_EVENTS = 50_000  # shard events between two snapshots


def state_bytes(state: LedgerState) -> bytes:
    """The snapshot's bytes: ``json.dumps(encode_state(state), sort_keys=True, separators=(",",
    ":"))``, the spelling of every snapshot stored so far (non-ASCII escaped). The log's canonical
    JSON (``canonical_json_bytes``: the same, with non-ASCII written as UTF-8, by orjson) gives
    the same bytes where it writes only ASCII and no DEL (the characters ``json.dumps`` escapes
    here and orjson does not), several times faster: ``audit verify`` spells a state once for
    every snapshot it compares."""
    return _spelt(encode_state(state))


def _spelt(document: dict[str, Any]) -> bytes:
    fast = canonical_json_bytes(document)
    if fast.isascii() and b"\x7f" not in fast:
        return fast
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def snapshot_matches(state: LedgerState, stored: bytes) -> bool:
    """Whether the stored snapshot's bytes are ``state``'s. A snapshot written before the pairing
    record existed (``statecodec.carries_pairing``) never held it, so it is compared with the
    state without it; one that holds it is compared in full."""
    if state_bytes(state) == stored:
        return True
    if carries_pairing(json.loads(stored)):
        return False
    return _spelt(encode_books(state)) == stored


def state_from_bytes(data: bytes | memoryview) -> LedgerState:
    """The state a snapshot's bytes (``state_bytes``) hold, its trigger index to be rebuilt."""
    return decode_state(json.loads(bytes(data)))


@dataclass(frozen=True)
class Snapshot:
    shard: int
    position: int
    state: LedgerState


def write_snapshot(conn: sa.Connection, shard: int, position: int, state: LedgerState) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO snapshots (shard, position, created_at, state) VALUES (:shard, :position, :at, :state) "
            "ON CONFLICT (shard, position) DO NOTHING"
        ),
        {"shard": shard, "position": position, "at": datetime.now(UTC), "state": state_bytes(state)},
    )


def latest_snapshot(conn: sa.Connection, shard: int, *, at_or_before: int | None = None) -> Snapshot | None:
    """The shard's latest snapshot (at or before a position when given), or None."""
    query = "SELECT position, state FROM snapshots WHERE shard = :shard"
    params: dict[str, Any] = {"shard": shard}
    if at_or_before is not None:
        query += " AND position <= :upto"
        params["upto"] = at_or_before
    row = conn.execute(sa.text(query + " ORDER BY position DESC LIMIT 1"), params).first()
    if row is None:
        return None
    return Snapshot(shard, int(row[0]), state_from_bytes(row[1]))


class SnapshotPolicy:
    """Counts a shard's events and says when the next snapshot is due (every
    ``every`` events of the shard since the last one)."""

    def __init__(self, every: int = SNAPSHOT_EVERY_EVENTS) -> None:
        self.every = every
        self.since_last = 0

    def after_batch(self, engine: sa.Engine, shard: int, position: int, state: LedgerState, appended: int) -> bool:
        """Called after a batch committed with ``appended`` new events of the shard ending at
        ``position``. Writes a snapshot in its own transaction when one is due; a failure is
        logged, never raised: a missing snapshot costs replay time, not correctness."""
        self.since_last += appended
        if self.every <= 0 or self.since_last < self.every or position <= 0:
            return False
        try:
            with engine.begin() as conn:
                write_snapshot(conn, shard, position, state)
        except Exception:
            logger.warning("shard %d: snapshot at position %d not written", shard, position, exc_info=True)
            return False
        self.since_last = 0
        return True
