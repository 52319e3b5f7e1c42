"""Hash-chain verification: recompute every row's hash from genesis and name the first bad one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from clearing.store.hashing import GENESIS_HASH, canonical_json, chain, row_digest_input

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
    result = conn.execution_options(stream_results=True, yield_per=CHAIN_FETCH_ROWS).execute(
        sa.text(
            "SELECT position, shard, stream, stream_version, type, schema_version, payload, occurred_at, recorded_at, "
            "source_topic, source_partition, source_offset, idempotency_key, cause_position, prev_hash, hash "
            "FROM events ORDER BY position"
        )
    )
    for row in result:
        count += 1
        if row.position != expected_position:
            problem = f"position {expected_position} is missing (next row is {row.position})"
            return ChainReport(False, count, expected_position, problem)
        expected_position += 1
        previous = last_hash.get(row.shard, GENESIS_HASH)
        if bytes(row.prev_hash) != previous:
            return ChainReport(False, count, row.position, "prev_hash does not match the previous row's hash")
        digest = chain(
            previous,
            row_digest_input(
                position=row.position,
                shard=row.shard,
                stream=row.stream,
                stream_version=row.stream_version,
                type=row.type,
                schema_version=row.schema_version,
                payload_json=canonical_json(row.payload),
                occurred_at=row.occurred_at,
                recorded_at=row.recorded_at,
                source_topic=row.source_topic,
                source_partition=row.source_partition,
                source_offset=row.source_offset,
                idempotency_key=row.idempotency_key,
                cause_position=row.cause_position,
            ),
        )
        if digest != bytes(row.hash):
            return ChainReport(False, count, row.position, "hash does not match the row's content")
        last_hash[row.shard] = digest
        if progress is not None and count % 10_000 == 0:
            progress(count)
    return ChainReport(True, count)
