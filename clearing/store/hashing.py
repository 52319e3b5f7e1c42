"""The hash chain of the event log: one definition of a row's canonical bytes, used by the writer
and by ``audit verify``.

hash = SHA-256(previous hash of the same shard || canonical JSON of the row), genesis previous
hash = 32 zero bytes. The canonical JSON sorts keys, has no spaces and spells times one way, so a
row read back from PostgreSQL (JSONB reorders keys) hashes to the bytes it was written with.

The bytes are those of ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` (``canonical_json_reference``), which every log so far was hashed with.
orjson writes the same bytes several times faster for the values the log holds (strings,
integers of at most 64 bits, booleans, null, lists and objects with string keys: a test compares
the two over every code point and random documents), and raises for anything else (an integer
beyond 64 bits, a key that is not a string), which then takes the reference path. Floats would
be spelled differently (``1e+16`` against ``1e16``), but none reaches a payload: the wire refuses
them and the ledger computes in ``Decimal``. The three functions live in clearing/store/jsontext.py,
which is compiled with the replay's bookkeeping that calls them; they are imported here under
these names.
"""

from __future__ import annotations

import hashlib

from clearing.store.jsontext import canonical_json as canonical_json
from clearing.store.jsontext import canonical_json_bytes
from clearing.store.jsontext import canonical_json_reference as canonical_json_reference

GENESIS_HASH = bytes(32)


def digest_input(
    position: int,
    shard: int,
    stream: str,
    stream_version: int,
    type: str,
    schema_version: int,
    payload_json: str,
    occurred_at_text: str,
    recorded_at_text: str,
    source_topic: str | None,
    source_partition: int | None,
    source_offset: int | None,
    idempotency_key: str,
    cause_position: int | None,
) -> bytes:
    """The bytes a row's hash covers, its times spelled by ``format_time`` (the writer spells a
    batch's ledger time once, and an input's event time once for its payload and its row).
    ``payload_json`` must be ``canonical_json(payload)``."""
    head = canonical_json_bytes(
        [
            position,
            shard,
            stream,
            stream_version,
            type,
            schema_version,
            occurred_at_text,
            recorded_at_text,
            source_topic,
            source_partition,
            source_offset,
            idempotency_key,
            cause_position,
        ]
    )
    return head + b"\n" + payload_json.encode("utf-8")


def chain(previous_hash: bytes, digest_input: bytes) -> bytes:
    return hashlib.sha256(previous_hash + digest_input).digest()
