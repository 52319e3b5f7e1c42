"""JSON text of the log's payloads, both ways: ``load_json`` reads a payload (a replay reads every
one of the log), ``canonical_json`` writes the canonical text the hash chain hashes and the
replay's determinism check compares (clearing/store/hashing.py says what it is and why).

The store's, beside the hash chain that defines the canonical text (``hashing``); compiled
(clearing/native.py), because the replay's bookkeeping (``clearing.audit.logreplay``) calls both
for every event.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

_SORT_KEYS: Final = orjson.OPT_SORT_KEYS
_LOADS: Final = orjson.loads  # Final: the compiled module reads these without a look-up by name
_DUMPS: Final = orjson.dumps


def load_json(data: bytes | bytearray | memoryview | str) -> Any:
    """JSONB as Python values. orjson, because a replay reads every payload of the log and the
    standard library's parser was a fifth of its time; payloads hold strings (decimals), integers
    and nested objects, which both parsers read alike, so the hash chain's canonical bytes of a
    payload read back do not change. Except for integers beyond 64 bits, which orjson reads as
    floats: a document in which orjson finds a float (such an integer, or a number written with
    a fraction or an exponent, which the log's payloads do not hold) is read again by the
    standard library, which keeps every integer exact.

    Floats are looked for in what orjson built: cheaper than looking for runs of 19 digits in the
    text before parsing (as this did before), which found such runs in strings too."""
    value = _LOADS(data)
    if isinstance(value, float) or (isinstance(value, (dict, list)) and _holds_float(value)):
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    return value


def _holds_float(value: dict[Any, Any] | list[Any]) -> bool:
    # A dict's values copied into a list first: compiled, a walk over a list by index is cheaper
    # than a walk over the dict (which checks, item by item, that the dict did not change).
    items: list[Any] = list(value.values()) if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, float):
            return True
        if isinstance(item, (dict, list)) and _holds_float(item):
            return True
    return False


def canonical_json_reference(value: Any) -> str:
    """The definition of the canonical JSON text (slow; ``canonical_json`` gives the same)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    try:
        return _DUMPS(value, option=_SORT_KEYS).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError: a value orjson does not write like the reference
        return canonical_json_reference(value)


def canonical_json_bytes(value: Any) -> bytes:
    """``canonical_json(value)`` encoded as UTF-8."""
    try:
        return _DUMPS(value, option=_SORT_KEYS)
    except TypeError:
        return canonical_json_reference(value).encode("utf-8")
