"""The hash chain of the event log: one definition of a row's canonical bytes, used by the writer
and by ``audit verify``.

hash = SHA-256(previous hash of the same shard || canonical JSON of the row), genesis previous
hash = 32 zero bytes. The canonical JSON sorts keys, has no spaces and spells times one way, so a
row read back from PostgreSQL (JSONB reorders keys) hashes to the bytes it was written with.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from clearing.domain.messages import format_time

GENESIS_HASH = bytes(32)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_digest_input(
    *,
    position: int,
    shard: int,
    stream: str,
    stream_version: int,
    type: str,
    schema_version: int,
    payload_json: str,
    occurred_at: datetime,
    recorded_at: datetime,
    source_topic: str | None,
    source_partition: int | None,
    source_offset: int | None,
    idempotency_key: str,
    cause_position: int | None,
) -> bytes:
    """The bytes a row's hash covers. ``payload_json`` must be ``canonical_json(payload)``."""
    head = canonical_json(
        [
            position,
            shard,
            stream,
            stream_version,
            type,
            schema_version,
            format_time(occurred_at),
            format_time(recorded_at),
            source_topic,
            source_partition,
            source_offset,
            idempotency_key,
            cause_position,
        ]
    )
    return (head + "\n" + payload_json).encode("utf-8")


def chain(previous_hash: bytes, digest_input: bytes) -> bytes:
    return hashlib.sha256(previous_hash + digest_input).digest()
