"""Projection rows COPYed into the staging tables in the writer's own COPY spelling land as the
values psycopg's dumpers wrote: upsert a batch of awkward rows, and compare every column with the
same rows COPYed by ``write_row``."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.store import copytext, db, projections
from clearing.store.jsontext import canonical_json

pytestmark = pytest.mark.integration

NAMES = ["A1", "tab\tname", "new\nline", "back\\slash", "\\N", "é😀"]
NUMBERS = [Decimal("0"), Decimal("-0"), Decimal("1E+2"), Decimal("-12.500"), Decimal("0.00000001"),
           Decimal("123456789012345678901234567890.123456789012345678"), Decimal("1E-30")]  # fmt: skip


def _margin_rows() -> list[dict[str, Any]]:
    rows = []
    for index, name in enumerate(NAMES):
        number = NUMBERS[index % len(NUMBERS)]
        rows.append(
            {"account_id": name, "scope": f"isolated:{name}", "equity": number, "initial_margin": -number,
             "maintenance_margin": Decimal(index), "margin_ratio": None if index % 2 else number,
             "status": "healthy" if index % 3 else name, "margin_model": None if index % 4 else name,
             "underlyings": None if index % 2 else canonical_json(
                 [{"underlying": name, "multiplier": str(number), "worst_cell": {"move": "-0.16", "volatility": "up"}}]
             ),
             "as_of": 10 + index}
        )  # fmt: skip
    return rows


def _position_rows() -> list[dict[str, Any]]:
    rows = []
    for index, name in enumerate(NAMES):
        number = NUMBERS[(index + 3) % len(NUMBERS)]
        rows.append(
            {"account_id": name, "instrument": "BTCUSDT", "margin_mode": "cross", "quantity": number, "cost": -number,
             "entry_price": None if index % 2 else number, "realised_pnl": Decimal("0.5"),
             "isolated_margin": Decimal(0), "funding_paid": number, "as_of": 2**40 + index}
        )  # fmt: skip
    return rows


def _reference_copy(conn: sa.Connection, table: str, names: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(names)}, as_of_position) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([*(row[name] for name in names), row["as_of"]])


def test_upserted_projection_rows_equal_the_dumpers_rows(database_url: str) -> None:
    engine = db.make_engine(database_url)
    cases = [
        ("margin_state", projections.MARGIN_KEY, projections.MARGIN_COLUMNS, _margin_rows()),
        ("positions", projections.POSITION_KEY, projections.POSITION_COLUMNS, _position_rows()),
    ]
    try:
        for table, key, columns, rows in cases:
            names = (*key, *columns)
            listed = ", ".join((*names, "as_of_position"))
            with engine.begin() as conn:
                conn.execute(sa.text(f"CREATE TABLE reference_{table} (LIKE {table} INCLUDING DEFAULTS)"))
                projections.upsert(conn, table, key, columns, rows)
                _reference_copy(conn, f"reference_{table}", names, rows)
            with engine.connect() as conn:
                order = ", ".join(key)
                written = conn.execute(sa.text(f"SELECT {listed} FROM {table} ORDER BY {order}")).all()
                expected = conn.execute(sa.text(f"SELECT {listed} FROM reference_{table} ORDER BY {order}")).all()
                texts = conn.execute(sa.text(f"SELECT CAST(({listed}) AS text) FROM {table} ORDER BY {order}")).all()
                reference_texts = conn.execute(
                    sa.text(f"SELECT CAST(({listed}) AS text) FROM reference_{table} ORDER BY {order}")
                ).all()
            assert len(written) == len(rows)
            assert written == expected
            assert texts == reference_texts  # numeric scale included
    finally:
        engine.dispose()


def test_copy_cells_spell_each_type_as_the_text_dumpers_do() -> None:
    when = datetime(2026, 11, 23, 12, 0, 0, 7, tzinfo=UTC)
    assert copytext.line(["a\tb", None, Decimal("1E+2"), 7, when, b"\x00\xff", True]) == (
        "a\\tb\t\\N\t1E+2\t7\t2026-11-23T12:00:00.000007+00:00\t\\\\x00ff\tt\n"
    )
    with pytest.raises(TypeError):
        copytext.cell(1.5)
