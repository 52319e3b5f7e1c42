"""Hash-chain verification: recompute every row's hash from genesis and name the first bad one."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

import sqlalchemy as sa

from clearing.audit.replay import stream_rows
from clearing.domain.inputs import format_time
from clearing.store.hashing import GENESIS_HASH, canonical_json, chain, digest_input

CHAIN_FETCH_ROWS = 5_000


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_bad_position: int | None = None
    problem: str | None = None


def verify_chain(conn: sa.Connection, progress: Callable[[int], None] | None = None) -> ChainReport:
    """Walk the log in position order. Per shard, each row's prev_hash must be the previous row's
    hash and its hash must be SHA-256 over that and the row's canonical bytes; positions must be
    gap-free from 1."""
    last_hash: dict[int, bytes] = {}
    expected_position = 1
    count = 0
    # PostgreSQL reads ahead while the hashes are computed (``stream_rows``); an early return
    # stops the reader and closes the cursor.
    rows = stream_rows(
        conn,
        "SELECT position, shard, stream, stream_version, type, schema_version, payload, occurred_at, recorded_at, "
        "source_topic, source_partition, source_offset, idempotency_key, cause_position, prev_hash, hash "
        "FROM events ORDER BY position",
        {},
        CHAIN_FETCH_ROWS,
    )
    with closing(rows):
        for row in rows:
            # By index, in the SELECT's order (a row's attributes by name cost a fifth of the check).
            position, shard, stream, version, type_, schema_version, payload, occurred_at, recorded_at = row[:9]
            topic, partition, offset, key, cause, prev_hash, stored_hash = row[9:]
            count += 1
            if position != expected_position:
                problem = f"position {expected_position} is missing (next row is {position})"
                return ChainReport(False, count, expected_position, problem)
            expected_position += 1
            previous = last_hash.get(shard, GENESIS_HASH)
            if bytes(prev_hash) != previous:
                return ChainReport(False, count, position, "prev_hash does not match the previous row's hash")
            digest = chain(
                previous,
                digest_input(
                    position,
                    shard,
                    stream,
                    version,
                    type_,
                    schema_version,
                    canonical_json(payload),
                    format_time(occurred_at),
                    format_time(recorded_at),
                    topic,
                    partition,
                    offset,
                    key,
                    cause,
                ),
            )
            if digest != bytes(stored_hash):
                return ChainReport(False, count, position, "hash does not match the row's content")
            last_hash[shard] = digest
            if progress is not None and count % 10_000 == 0:
                progress(count)
    return ChainReport(True, count)
