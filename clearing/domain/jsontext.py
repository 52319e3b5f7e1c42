"""JSON text of the log's payloads, both ways: ``load_json`` reads a payload (a replay reads every
one of the log), ``canonical_json`` writes the canonical text the hash chain hashes and the
replay's determinism check compares (clearing/store/hashing.py says what it is and why).

Here, beside the fold, so that the replay's bookkeeping (``logreplay``) can be compiled with it;
``clearing.store`` imports both from here.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_SORT_KEYS = orjson.OPT_SORT_KEYS

# A run of this many digits may be an integer beyond 64 bits (2**63 has 19 digits). Found by mapping
# every digit to "0" and looking for a run of zeros: two passes in C over the bytes, a quarter of
# the time of a regular expression's search for ``[0-9]{19}`` on the log's payloads.
_LONG_DIGITS_RUN = b"0" * 19
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"0" * 9)


def load_json(data: bytes | bytearray | memoryview | str) -> Any:
    """JSONB as Python values. orjson, because a replay reads every payload of the log and the
    standard library's parser was a fifth of its time; payloads hold strings (decimals), integers
    and nested objects, which both parsers read alike, so the hash chain's canonical bytes of a
    payload read back do not change. Except for integers beyond 64 bits, which orjson reads as
    floats: a document with a run of 19 or more digits (in a string or not) is read by the
    standard library, which keeps every integer exact."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _LONG_DIGITS_RUN in raw.translate(_DIGITS_TO_ZERO):
        return json.loads(raw)
    return orjson.loads(raw)


def canonical_json_reference(value: Any) -> str:
    """The definition of the canonical JSON text (slow; ``canonical_json`` gives the same)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_SORT_KEYS).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError: a value orjson does not write like the reference
        return canonical_json_reference(value)


def canonical_json_bytes(value: Any) -> bytes:
    """``canonical_json(value)`` encoded as UTF-8."""
    try:
        return orjson.dumps(value, option=_SORT_KEYS)
    except TypeError:
        return canonical_json_reference(value).encode("utf-8")
