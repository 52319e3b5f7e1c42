"""Projections from a fresh replay: the rows the tables should hold, a row-for-row comparison, and
``clearing projections rebuild`` (shadow tables swapped in atomically).

Expected rows come from the functions the engine writes with (``projections.balance_rows``,
``position_rows``, ``mark_rows``, ``margin_rows``, ``write_decisions``), applied to the state a
``LogReplay`` folded from genesis:

* balances, positions, marks: the values of the final state, stamped with the end of the last
  batch that wrote the row (what the live table's ``as_of_position`` says). The values of a row
  only change with an event that touches it, so the final values are the values last written.
* margin_state: the figures of the final state, ``as_of_position`` = the shard's last position.
  The live table is allowed to lag here *by design*: after a mark, the ledger rewrites the margin
  row of every account whose status changed (a status change is a decision) and refreshes the
  others in a rotating window (``MARGIN_REFRESH_ACCOUNTS_MAX`` per batch). So a live row's status
  must equal the replay's; its figures must equal the replay's when nothing that moves them (an
  event touching the account, a mark of a symbol it holds) came after its ``as_of_position``, and
  are reported as stale (with the lag) otherwise.
  Its ``margin_model`` is compared exactly and its ``underlyings`` (multipliers and worst cells)
  as a figure; both are NULL on a row written before they existed (migration 2026_12_08_0001), and
  such a row is compared on its other columns and reported as unfilled.
* margin_calls, liquidations: ``write_decisions`` over the decisions and liquidation fills of the
  replay, into temporary tables (verify) or the shadow tables (rebuild); compared exactly.

Rebuild and the database roles: only the owner of the projection tables (the user that ran
``clearing db upgrade``) may rebuild; any other login is refused before anything is read
(:func:`require_owner`). The ledger's role (``clearing_app``) may not CREATE nor ALTER, so it could
not build or swap the shadow tables anyway; a superuser or a member of the owner role could, but
the swapped-in tables would then belong to it, and the owner's next migration could not alter
them. The new tables get the old tables' grants, and their indexes and constraints the old names.

Swap and readers: the shadow tables are filled first; then one transaction takes the log lock
(the ledger's writer waits), folds the events appended since the replay, writes the rows, compares
them with the live tables, takes ACCESS EXCLUSIVE locks on the six tables in a fixed order, renames
old -> ``x_old`` and shadow -> ``x``, drops the old tables and commits. A reader in READ COMMITTED
(every API and CLI query) waits on the lock for the length of the swap and then reads the new
table: it sees the before or the after, never a half-built table. A reader inside a REPEATABLE
READ or SERIALIZABLE transaction whose snapshot predates the swap would see the new tables empty
(their rows were committed after its snapshot): such readers must retry their transaction (the
tests show READ COMMITTED readers never need to).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from clearing.audit.logreplay import LogReplay, ShardTrack
from clearing.audit.parallel import NO_SAMPLES as NO_CONSERVATION_SAMPLES
from clearing.audit.parallel import PARALLEL_BOUNDARIES_MIN, plan_segments, replay_parallel, shards_of
from clearing.audit.replay import iter_log
from clearing.domain.numbers import ledger_context
from clearing.store import projections
from clearing.store.log import LOG_LOCK_KEY
from clearing.store.queries import log_head

TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "balances": ("account_id", "asset", "shard"),
    "positions": ("account_id", "instrument", "margin_mode"),
    "marks": ("symbol",),
    "margin_state": ("account_id", "scope"),
    "margin_calls": ("margin_call_id",),
    "liquidations": ("liquidation_id",),
}
TABLES = tuple(TABLE_KEYS)
# The columns of margin_state that move with marks and margin rates (allowed to lag, see above);
# its status and margin model are compared exactly.
MARGIN_FIGURES = ("equity", "initial_margin", "maintenance_margin", "margin_ratio", "underlyings")
MARGIN_MODEL_COLUMNS = ("margin_model", "underlyings")  # added by migration 2026_12_08_0001
SAMPLES_MAX = 10

Key = tuple[Any, ...]
Rows = dict[Key, dict[str, Any]]


def read_table(conn: sa.Connection, table: str, base: str | None = None) -> Rows:
    """Every row of ``table`` (a projection table, or its shadow named after ``base``) by key."""
    keys = TABLE_KEYS[base or table]
    result = conn.execute(sa.text(f"SELECT * FROM {table}"))
    rows: Rows = {}
    for row in result.mappings():
        data = dict(row)
        rows[tuple(data[k] for k in keys)] = data
    return rows


def _as_column(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["as_of_position"] = out.pop("as_of")
    return out


@dataclass
class Expected:
    """What a fresh replay says the projection tables should hold, with the positions of the last
    change of every row (for the as-of checks)."""

    rows: dict[str, Rows] = field(default_factory=dict)
    last_change: dict[str, dict[Key, int]] = field(default_factory=dict)  # table -> key -> position
    head: int = 0


def _margin_change(track: ShardTrack, account_id: str) -> int:
    """The last position at which something that moves the account's margin figures happened:
    an event that touched it, or a mark of a symbol its figures depend on now."""
    state = track.state
    account = state.accounts[account_id]
    latest = track.last_change.get(account_id, 0)
    symbols: set[str] = set()
    underlyings: set[str] = set()
    specs = state.parameters.instruments_by_symbol
    for (instrument, _mode), position in account.positions.items():
        if position.quantity != 0 or position.isolated_margin != 0:
            symbols.add(instrument)
            spec = specs.get(instrument)
            if spec is not None:
                symbols.add(spec.settlement_asset)
                # An option (and a portfolio grid) moves with its underlying's mark, and every
                # requirement on the underlying with dynamic margin's multiplier.
                symbols.add(spec.underlying_symbol)
                underlyings.add(spec.underlying_symbol)
    symbols.update(asset for asset, amount in account.balances.items() if amount != 0)
    for symbol in symbols:
        latest = max(latest, track.mark_change.get(symbol, 0))
    for underlying in underlyings:
        latest = max(latest, track.rates_change.get(underlying, 0))
    return latest


def expected_state_rows(replay: LogReplay) -> Expected:
    """Balances, positions, marks and margin_state rows of the replay's final state."""
    expected = Expected(head=replay.head)
    for name in ("balances", "positions", "marks", "margin_state"):
        expected.rows[name] = {}
        expected.last_change[name] = {}

    def put(table: str, key: Key, row: dict[str, Any], change: int) -> None:
        rows = expected.rows[table]
        old = rows.get(key)
        # Marks exist in every shard's state: the live row is the one the latest batch of any
        # shard wrote. (Balances are keyed by shard: each shard's system accounts have their own.)
        if old is None or row["as_of_position"] >= old["as_of_position"]:
            rows[key] = row
        expected.last_change[table][key] = max(expected.last_change[table].get(key, 0), change)

    for shard, track in sorted(replay.shards.items()):
        state = track.state
        for account_id, as_of in track.written_at.items():
            change = track.last_change.get(account_id, 0)
            for row in projections.balance_rows(state, [account_id], as_of, shard=shard):
                put("balances", (account_id, row["asset"], shard), _as_column(row), change)
            for row in projections.position_rows(state, [account_id], as_of):
                put("positions", (account_id, row["instrument"], row["margin_mode"]), _as_column(row), change)
            margin_change = _margin_change(track, account_id)
            for row in projections.margin_rows(state, [account_id], track.head):
                put("margin_state", (account_id, row["scope"]), _as_column(row), margin_change)
        for symbol, as_of in track.mark_written.items():
            for row in projections.mark_rows(state, [symbol], as_of):
                put("marks", (symbol,), _as_column(row), track.mark_change.get(symbol, 0))
    return expected


def write_decision_rows(conn: sa.Connection, replay: LogReplay, suffix: str) -> None:
    projections.write_decisions(conn, replay.margin_events, suffix=suffix)


def expected_decision_rows(conn: sa.Connection, replay: LogReplay) -> dict[str, Rows]:
    """margin_calls and liquidations as ``write_decisions`` builds them, in temporary tables
    (``conn`` must be outside a transaction: this one is its own)."""
    out: dict[str, Rows] = {}
    with conn.begin():
        for table in ("margin_calls", "liquidations"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS pg_temp.{table}_expected"))
            conn.execute(sa.text(f"CREATE TEMP TABLE {table}_expected (LIKE {table} INCLUDING DEFAULTS)"))
        write_decision_rows(conn, replay, "_expected")
        for table in ("margin_calls", "liquidations"):
            out[table] = read_table(conn, f"{table}_expected", table)
            conn.execute(sa.text(f"DROP TABLE pg_temp.{table}_expected"))
    return out


# ---------------------------------------------------------------------------------------------
# comparison


@dataclass
class TableReport:
    table: str
    ok: bool = True
    rows_live: int = 0
    rows_expected: int = 0
    missing: int = 0  # expected, not in the live table
    extra: int = 0  # in the live table, not expected
    differing: int = 0
    as_of_exact: int = 0
    as_of_out_of_window: int = 0
    stale_figures: int = 0  # margin_state only: figures older than the last change (by design)
    stale_lag_max: int = 0
    vanished_scopes: int = 0  # margin_state only: rows of scopes that no longer exist
    unfilled_rows: int = 0  # margin_state only: rows written before the margin model columns existed
    first_bad_position: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bad(self, position: int | None, problem: str) -> None:
        self.ok = False
        if position is not None and (self.first_bad_position is None or position < self.first_bad_position):
            self.first_bad_position = position
        if len(self.problems) < SAMPLES_MAX:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (0, None, []) or k in ("ok", "table")}


def _same(a: Any, b: Any) -> bool:
    # A JSONB column reads back as values; the rows the writers build hold its JSON text.
    if isinstance(a, str) and isinstance(b, (list, dict)):
        a, b = b, a
    if isinstance(a, (list, dict)) and isinstance(b, str):
        return bool(a == json.loads(b))
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        if a is None or b is None:
            return a is b
        return Decimal(a) == Decimal(b)
    return bool(a == b)


def _fmt(key: Key) -> str:
    return "/".join(str(k) for k in key)


def compare_table(
    table: str, live: Rows, expected: Rows, last_change: dict[Key, int] | None, head: int, *, exact_as_of: bool = False
) -> TableReport:
    """Row for row. Value columns must be equal; ``as_of_position`` must lie between the last
    change of the row and the head (exactly equal for margin_calls and liquidations, and whenever
    ``exact_as_of``); margin_state follows the rules of the module docstring."""
    report = TableReport(table, rows_live=len(live), rows_expected=len(expected))
    changes = last_change or {}
    for key, want in expected.items():
        got = live.get(key)
        change = changes.get(key, want.get("as_of_position"))
        if got is None:
            report.missing += 1
            report.bad(change, f"{table} {_fmt(key)}: missing (the replay has it, last changed at {change})")
            continue
        fields = [c for c in want if c != "as_of_position" and c in got]
        stale = False
        if table == "margin_state":
            fields = [c for c in fields if c not in MARGIN_FIGURES]
            if got["as_of_position"] >= changes.get(key, 0):
                fields += [c for c in MARGIN_FIGURES if c in got]
            else:
                # Written before the last mark that moved it: the rotating refresh, by design (its
                # status is still compared exactly), so its as_of is behind that mark too.
                stale = True
                report.stale_figures += 1
                report.stale_lag_max = max(report.stale_lag_max, head - int(got["as_of_position"]))
        if table == "margin_state" and "margin_model" in got and got["margin_model"] is None:
            # Written before migration 2026_12_08_0001 added the margin model columns (every such
            # row is of the standard model); the next write of the row or a rebuild fills them.
            fields = [c for c in fields if c not in MARGIN_MODEL_COLUMNS]
            report.unfilled_rows += 1
        wrong = [c for c in fields if not _same(got[c], want[c])]
        if wrong:
            report.differing += 1
            detail = ", ".join(f"{c}: table {got[c]} / replay {want[c]}" for c in wrong[:4])
            report.bad(change, f"{table} {_fmt(key)}: {detail}")
        got_as_of = int(got["as_of_position"])
        if got_as_of == want["as_of_position"]:
            report.as_of_exact += 1
        elif exact_as_of or table in ("margin_calls", "liquidations"):
            report.differing += 0 if wrong else 1
            report.bad(change, f"{table} {_fmt(key)}: as_of_position {got_as_of}, replay {want['as_of_position']}")
        elif last_change is not None and not stale and not (changes.get(key, 0) <= got_as_of <= head):
            report.as_of_out_of_window += 1
            report.bad(
                change,
                f"{table} {_fmt(key)}: as_of_position {got_as_of} is outside [{changes.get(key, 0)}, {head}] "
                "(the last change of the row and the log head)",
            )
    for key, got in live.items():
        if key in expected:
            continue
        if table == "margin_state" and str(key[1]).startswith("isolated:"):
            report.vanished_scopes += 1
            continue
        report.extra += 1
        report.bad(int(got.get("as_of_position") or 0), f"{table} {_fmt(key)}: in the table, not in the replay")
    if report.stale_figures:
        report.notes.append(
            f"{report.stale_figures} margin_state rows hold figures older than the last mark that moved them "
            f"(at most {report.stale_lag_max} positions behind the head): the rotating refresh after marks, by "
            "design; their status was compared exactly"
        )
    if report.unfilled_rows:
        report.notes.append(
            f"{report.unfilled_rows} margin_state rows were written before the margin model columns existed "
            "(NULL margin_model: the standard model); their other columns were compared, and the ledger's next "
            "write of each row or a rebuild fills them"
        )
    if report.vanished_scopes:
        report.notes.append(
            f"{report.vanished_scopes} margin_state rows are of isolated scopes that no longer exist (the "
            "projection keeps the last row written; rebuild drops them)"
        )
    return report


# ---------------------------------------------------------------------------------------------
# rebuild


@dataclass
class RebuildReport:
    events: int
    head: int
    seconds_replay: float
    seconds_swap: float
    swapped: bool
    tables: list[TableReport]
    rows_written: dict[str, int]
    replay: dict[str, Any] = field(default_factory=dict)  # how the replay ran (mode, jobs, segments)

    @property
    def identical(self) -> bool:
        return all(t.ok and not t.stale_figures and not t.vanished_scopes and not t.unfilled_rows for t in self.tables)

    @property
    def consistent(self) -> bool:
        """Every previous row was what the log says, allowing what the projections allow by
        design (margin figures behind the rotating refresh, rows of vanished isolated scopes),
        which the rebuild has refreshed."""
        return all(t.ok for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "head": self.head,
            "seconds_replay": round(self.seconds_replay, 3),
            "seconds_swap": round(self.seconds_swap, 3),
            "swapped": self.swapped,
            "identical_to_previous": self.identical,
            "consistent_with_previous": self.consistent,
            "rows_written": self.rows_written,
            "differences": [t.as_dict() for t in self.tables],
            "replay": self.replay,
        }


def _copy_rows(conn: sa.Connection, table: str, rows: Rows) -> int:
    if not rows:
        return 0
    columns = list(next(iter(rows.values())))
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows.values():
            copy.write_row([row[c] for c in columns])
    return len(rows)


def _indexes(conn: sa.Connection, table: str) -> dict[str, str]:
    """index definition without names -> index name."""
    out = {}
    for name, definition in conn.execute(
        sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t"),
        {"t": table},
    ):
        body = definition.split(" USING ", 1)[1]
        out[("UNIQUE " if " UNIQUE " in definition else "") + body] = name
    return out


def _grants(conn: sa.Connection, table: str) -> list[tuple[str, str]]:
    return [
        (grantee, privilege)
        for grantee, privilege in conn.execute(
            sa.text(
                "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
                "WHERE table_schema = current_schema() AND table_name = :t AND grantee <> current_user"
            ),
            {"t": table},
        )
    ]


def replay_log(conn: sa.Connection, progress: Callable[[int], None] | None = None) -> LogReplay:
    replay = LogReplay(decide=False, check_fills=False, conservation_every=NO_CONSERVATION_SAMPLES)
    with ledger_context():
        for row in iter_log(conn):
            replay.feed(row)
            if progress is not None and replay.events % 50_000 == 0:
                progress(replay.events)
    return replay


def replay_log_parallel(
    engine: sa.Engine, jobs: int, progress: Callable[[int], None] | None = None
) -> tuple[LogReplay | None, dict[str, Any]]:
    """The replay in runs between stored snapshots (clearing/audit/parallel.py), each run's end
    state checked against the snapshot the next one starts from; None when there are too few
    usable snapshots or a check failed (the info says which), and the caller replays sequentially."""
    with engine.connect() as conn:
        head = log_head(conn)
        keys = [(int(s), int(p)) for s, p in conn.execute(sa.text("SELECT shard, position FROM snapshots"))]
        segments = plan_segments(conn, keys, head)
        shards = len(shards_of(conn))
    if len(segments) - shards < PARALLEL_BOUNDARIES_MIN:
        return None, {"mode": "sequential", "jobs": 1, "segments": 1, "note": "too few usable snapshots"}
    outcome = replay_parallel(engine, segments, decide=False, jobs=jobs, check_fills=False, progress=progress)
    info = outcome.as_dict()
    info.pop("conservation", None)  # rebuild samples no conservation
    if outcome.replay is None:
        info["mode"] = "sequential"
    return outcome.replay, info


class RebuildRefused(RuntimeError):
    """The connection may not rebuild the projections; the message says who may."""


def require_owner(conn: sa.Connection) -> None:
    """Refuse unless the connection's current user owns every projection table."""
    me = conn.execute(sa.text("SELECT current_user")).scalar_one()
    owners: dict[str, str] = dict(
        conn.execute(
            sa.text(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename = ANY(:tables)"
            ),
            {"tables": list(TABLES)},
        ).all()
    )
    missing = [table for table in TABLES if table not in owners]
    if missing:
        raise RebuildRefused(
            f"the projection tables {', '.join(missing)} do not exist in this database: run `clearing db upgrade` first"
        )
    others = sorted({owner for owner in owners.values() if owner != me})
    if others:
        raise RebuildRefused(
            f"projections rebuild must run as the owner of the projection tables ({', '.join(others)}, the user "
            f"that ran `clearing db upgrade`), not as {me}: set CLEARING_DATABASE_URL to the owner's login"
        )


def rebuild(
    engine: sa.Engine, *, swap: bool = True, progress: Callable[[int], None] | None = None, jobs: int = 1
) -> RebuildReport:
    """Replay the log into ``x_rebuild`` shadow tables, compare them with the live tables, and
    (``swap``) put them in place in one transaction. See the module docstring. ``jobs`` > 1: the
    replay up to the head runs in that many processes (``replay_log_parallel``). Raises
    :class:`RebuildRefused` unless ``engine`` logs in as the tables' owner."""
    with engine.connect() as conn:
        require_owner(conn)
    started = time.perf_counter()
    replay: LogReplay | None = None
    info: dict[str, Any] = {"mode": "sequential", "jobs": 1, "segments": 1}
    if jobs > 1:
        replay, info = replay_log_parallel(engine, jobs, progress)
    if replay is None:
        with engine.connect() as conn:
            replay = replay_log(conn, progress)
    replayed = time.perf_counter()
    reports: list[TableReport] = []
    written: dict[str, int] = {}
    with engine.connect() as conn, conn.begin():
        # The writer waits from here to the commit: no event is appended behind the replay's back.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOG_LOCK_KEY})
        with ledger_context():
            for row in iter_log(conn, after=replay.head):
                replay.feed(row)
            replay.finish()
        expected = expected_state_rows(replay)
        for table in TABLES:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}_rebuild"))
            conn.execute(sa.text(f"CREATE TABLE {table}_rebuild (LIKE {table} INCLUDING ALL)"))
        for table in ("balances", "positions", "marks", "margin_state"):
            written[table] = _copy_rows(conn, f"{table}_rebuild", expected.rows[table])
        write_decision_rows(conn, replay, "_rebuild")
        for table in TABLES:
            new = read_table(conn, f"{table}_rebuild", table)
            if table in ("margin_calls", "liquidations"):
                written[table] = len(new)
            old = read_table(conn, table)
            reports.append(compare_table(table, old, new, expected.last_change.get(table), replay.head))
        swap_started = time.perf_counter()
        if swap:
            for table in TABLES:
                conn.execute(sa.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            for table in TABLES:
                names = _indexes(conn, table)
                grants = _grants(conn, table)
                conn.execute(sa.text(f"ALTER TABLE {table} RENAME TO {table}_old"))
                conn.execute(sa.text(f"ALTER TABLE {table}_rebuild RENAME TO {table}"))
                conn.execute(sa.text(f"DROP TABLE {table}_old"))
                for body, name in _indexes(conn, table).items():
                    wanted = names.get(body)
                    if wanted is not None and wanted != name:
                        conn.execute(sa.text(f'ALTER INDEX "{name}" RENAME TO "{wanted}"'))
                for grantee, privilege in grants:
                    conn.execute(sa.text(f'GRANT {privilege} ON {table} TO "{grantee}"'))
        else:
            for table in TABLES:
                conn.execute(sa.text(f"DROP TABLE {table}_rebuild"))
        finished = time.perf_counter()
    return RebuildReport(
        events=replay.events,
        head=replay.head,
        seconds_replay=replayed - started,
        seconds_swap=finished - swap_started,
        swapped=swap,
        tables=reports,
        rows_written=written,
        replay=info,
    )
