"""``clearing projections rebuild``: the rebuilt tables equal the live ones row for row, keep their
grants and index names, repair a damaged projection, and readers running during the swap see the
before or the after, never a half-built table."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.rebuild import rebuild
from clearing.audit.verify import verify
from clearing.store.db import make_engine
from tests.audit.audit_data import market_url, owner  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.integration]

READ = sa.text("SELECT count(*), coalesce(sum(amount), 0) FROM balances")


def indexes(engine: sa.Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {
            (t, i)
            for t, i in conn.execute(sa.text("SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"))
        }


def test_a_rebuild_equals_the_live_tables_and_keeps_names_and_grants(market_url: str, owner: sa.Engine) -> None:  # noqa: F811
    before = indexes(owner)
    report = rebuild(owner)
    assert report.swapped
    for table in report.tables:
        assert table.ok, table.as_dict()
        assert table.missing == table.extra == table.differing == 0
    assert indexes(owner) == before
    assert verify(owner).ok
    app = make_engine(market_url, role="clearing_app")
    reader = make_engine(market_url, role="clearing_reader")
    try:
        with app.begin() as conn:  # the ledger's role can still write its projections
            conn.execute(sa.text("UPDATE balances SET as_of_position = as_of_position WHERE false"))
        with reader.connect() as conn:
            assert conn.execute(READ).one()[0] > 0
    finally:
        app.dispose()
        reader.dispose()


def test_a_rebuild_repairs_a_damaged_projection_and_says_what_it_changed(owner: sa.Engine) -> None:  # noqa: F811
    with owner.begin() as conn:
        conn.execute(sa.text("UPDATE balances SET amount = amount + 1 WHERE account_id = 'ACC-00007'"))
        conn.execute(sa.text("DELETE FROM positions WHERE account_id = 'ACC-00008'"))
    assert not verify(owner).ok
    report = rebuild(owner)
    by_table = {t.table: t for t in report.tables}
    assert by_table["balances"].differing >= 1 and "ACC-00007" in by_table["balances"].problems[0]
    assert by_table["positions"].missing >= 1
    assert verify(owner).ok


def test_check_only_keeps_the_live_tables(owner: sa.Engine) -> None:  # noqa: F811
    with owner.begin() as conn:
        conn.execute(sa.text("UPDATE balances SET amount = amount + 1 WHERE account_id = 'ACC-00007'"))
    report = rebuild(owner, swap=False)
    assert not report.swapped and not {t.table: t for t in report.tables}["balances"].ok
    with owner.connect() as conn:
        assert not conn.execute(sa.text("SELECT to_regclass('balances_rebuild')")).scalar()
    assert not verify(owner).ok


def test_readers_see_the_before_or_the_after_never_a_half_built_table(market_url: str, owner: sa.Engine) -> None:  # noqa: F811
    # Make the rebuild change the table (so before and after differ): damage one balance.
    with owner.begin() as conn:
        conn.execute(
            sa.text("UPDATE balances SET amount = amount + 1000 WHERE account_id = 'ACC-00005' AND asset = 'USDT'")
        )
        before = tuple(conn.execute(READ).one())
    reader = make_engine(market_url, role="clearing_reader")  # READ COMMITTED, like the API
    seen: list[tuple[int, Decimal]] = []
    errors: list[str] = []
    stop = threading.Event()

    def read_loop() -> None:
        with reader.connect() as conn:
            while not stop.is_set():
                try:
                    seen.append(tuple(conn.execute(READ).one()))  # type: ignore[arg-type]
                    conn.commit()
                except sa.exc.DBAPIError as error:  # pragma: no cover - must not happen
                    errors.append(str(error.orig))
                    conn.rollback()

    threads = [threading.Thread(target=read_loop) for _ in range(3)]
    for thread in threads:
        thread.start()

    def reads_reach(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(seen) < count:
            assert time.monotonic() < deadline and any(t.is_alive() for t in threads), "the readers stopped reading"
            time.sleep(0.01)

    try:
        reads_reach(20)
        for _ in range(3):
            rebuild(owner)
        reads_reach(len(seen) + 20)  # reads begun after the last swap committed: they see its tables
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        reader.dispose()
    with owner.connect() as conn:
        after = tuple(conn.execute(READ).one())
    assert before != after and before[0] == after[0] and before[1] - after[1] == 1000
    assert errors == []
    assert set(seen) <= {before, after}, set(seen) - {before, after}
    assert before in seen and after in seen


def rows(engine: sa.Engine, table: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2")).all()


def test_rows_left_by_the_rotating_margin_refresh_do_not_make_a_rebuild_differ(
    pg_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With more holders than the refresh window, marks leave some margin_state figures behind the
    # log (by design); a rebuild writes fresh ones and must call that a note, not a difference.
    import uuid

    from clearing.engine import refresh
    from clearing.store.db import upgrade
    from tests.audit.audit_data import load_market

    monkeypatch.setattr(refresh, "MARGIN_REFRESH_ACCOUNTS_MAX", 3)  # the ledger's and the replay's
    name = f"clearing_test_rotation_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        load_market(url).engine.dispose()
        engine = make_engine(url)
        report = rebuild(engine, swap=False)
        margin_state = next(t for t in report.tables if t.table == "margin_state")
        assert margin_state.stale_figures > 0
        assert report.consistent, [t.as_dict() for t in report.tables if not t.ok]
        assert not report.identical  # the stale figures were refreshed
        assert verify(engine).ok
        engine.dispose()
    finally:
        pg_server.drop_database(name)
