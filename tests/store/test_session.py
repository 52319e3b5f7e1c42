"""Every connection of ``make_engine`` works in UTC, whatever the server's own time zone."""

from __future__ import annotations

from datetime import UTC

import sqlalchemy as sa

from clearing.store.db import make_engine


def test_sessions_are_in_utc_and_times_load_in_utc(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            # A server whose default is not UTC (Debian's and the embedded one say Etc/UTC; an
            # exchange's may say Europe/Malta): the session says UTC all the same.
            name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
            conn.execute(sa.text(f'ALTER DATABASE "{name}" SET TIME ZONE \'Europe/Malta\''))
        engine.dispose()
        with engine.connect() as conn:
            zone = conn.execute(sa.text("SHOW TIME ZONE")).scalar_one()
            loaded = conn.execute(sa.text("SELECT timestamptz '2026-11-24 09:00:00+01'")).scalar_one()
            day = conn.execute(sa.text("SELECT date_trunc('day', timestamptz '2026-11-24 00:30:00+01')")).scalar_one()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" RESET TIME ZONE'))
        engine.dispose()
    assert zone == "UTC"
    assert loaded.tzinfo is UTC and (loaded.hour, loaded.minute) == (8, 0)  # UTC, as format_time's fast path wants
    assert (day.day, day.hour) == (23, 0)  # the day of 23:30 UTC, not of 00:30 in Malta
