"""Payloads read back from JSONB keep every integer exact (the hash chain hashes them again)."""

from __future__ import annotations

import sqlalchemy as sa

from clearing.store.db import load_json, make_engine


def test_integers_beyond_64_bits_read_back_exact(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("""SELECT '{"big": 18446744073709551616, "low": -9223372036854775809, "d": "1.5"}'::jsonb""")
            ).scalar_one()
    finally:
        engine.dispose()
    # orjson alone reads both as floats (1.8446744073709552e+19): the chain would not verify.
    assert value == {"big": 2**64, "low": -(2**63) - 1, "d": "1.5"}
    assert all(type(v) is int for v in (value["big"], value["low"]))


def test_ordinary_documents_read_alike_by_both_parsers() -> None:
    document = b'{"amount": "123.45", "n": 9223372036854775807, "nested": {"k": [1, "x", null, true]}}'
    assert load_json(document) == {"amount": "123.45", "n": 2**63 - 1, "nested": {"k": [1, "x", None, True]}}
