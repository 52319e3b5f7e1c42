"""``clearing audit verify``: is the log intact, does the engine still decide what it decided, do the
projections say what the log says, do the books balance, does every fill have its counterpart.

Checks (each reports ok, the first bad position and the problem):

hash_chain      every row's hash recomputed from genesis, per shard; positions gap-free from 1.
                Detects an edited, inserted or deleted row anywhere but at the very end.
log_tail        the end of the log against what other tables recorded in the same transactions:
                projection ``as_of_position``s, margin call and liquidation positions, outbox
                positions and snapshots must not point past the last event. Detects a deleted last
                row (or rows) as long as those tables were not edited to match. Consumer offsets
                are compared with the last source offset logged or dead-lettered per partition:
                a gap there is reported as a note (a redelivered duplicate leaves none either).
                Cannot detect: a log rewritten consistently by someone who also rewrites every
                hash after the change and those tables; the checkpoints check below can.
outbox, checkpoints  decisions never published, and the log against the checkpoints published
                outside the database (clearing/audit/published.py, which says when each fails).
replay_determinism  the engine re-run over the logged inputs (a fresh state per shard,
                ``fold.step`` at each input's logged position) must produce the logged decision
                events byte for byte: canonical JSON of position, type, stream, occurred_at,
                idempotency key, cause position and payload. Detects a changed engine (code or
                bundled parameters) and decision rows edited consistently with the chain.
projections     balances, positions, marks, margin_state, margin_calls, liquidations against a
                fresh replay, row for row (rules in ``clearing/audit/rebuild.py``: margin figures
                may lag marks by design and are then reported, not failed).
snapshots       every stored snapshot equals the re-run state at its position.
conservation    ``fold.conservation`` == {} (summed over shards) every ``CONSERVATION_EVERY_EVENTS``
                events, at the next position where no trade is half booked (the two fills of a
                trade arrive on different partitions), and at the end.
counterparts    every trade id has exactly two fills with opposite sides, the same instrument,
                equal quantity and price (a liquidation fill pairs with a one-fill trade of the
                market side); busted fills (``fill_bust``) are no fills. A fill whose counterpart
                has not arrived (or was busted) is an open break: listed with its age, not a
                failure (its other side may come, or the exchange busts it). Conservation at the
                head allows for exactly what open breaks put the books out by.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from clearing.audit.chain import ChainReport, verify_chain
from clearing.audit.logreplay import CONSERVATION_EVERY_EVENTS, LogReplay, OpenBreak
from clearing.audit.parallel import (
    PARALLEL_BOUNDARIES_MIN,
    plan_segments,
    replay_parallel,
    shards_of,
    start_worker_server,
    worker_context,
)
from clearing.audit.published import CheckpointSource, Finding, checkpoints_finding, outbox_finding
from clearing.audit.published import notes as published_notes
from clearing.audit.rebuild import (
    TABLES,
    compare_table,
    expected_decision_rows,
    expected_state_rows,
    read_table,
)
from clearing.audit.replay import iter_log
from clearing.domain.numbers import ledger_context, to_wire
from clearing.domain.state import LedgerState
from clearing.engine.snapshots import snapshot_matches
from clearing.runtime import tune_gc
from clearing.store.db import make_engine
from clearing.store.queries import log_head

Progress = Callable[[str, int], None]

logger = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    ok: bool
    first_bad_position: int | None = None
    problem: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "first_bad_position": self.first_bad_position,
            "problem": self.problem,
            "details": self.details,
        }


@dataclass
class VerifyReport:
    head: int
    events: int
    checks: list[Check]
    seconds: float
    replay: dict[str, Any] = field(default_factory=dict)  # how the replay ran (mode, jobs, segments)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "head": self.head,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "checks": [check.as_dict() for check in self.checks],
            "replay": self.replay,
        }


@dataclass
class SnapshotComparison:
    """The stored snapshots, and how each compared with the re-run state at its position."""

    stored: dict[tuple[int, int], bytes]  # (shard, position) -> the snapshot's bytes
    seen: set[tuple[int, int]] = field(default_factory=set)
    bad: list[tuple[int, str]] = field(default_factory=list)  # (position, problem)

    def compare(self, shard: int, position: int, state: LedgerState) -> None:
        """The sequential replay's ``snapshot_check``: the state at a snapshot's position."""
        self.record(shard, position, snapshot_matches(state, self.stored[(shard, position)]))

    def record(self, shard: int, position: int, equal: bool) -> None:
        self.seen.add((shard, position))
        if not equal:
            self.bad.append((position, snapshot_differs(shard, position)))


@dataclass
class Verified:
    """What the checks judge: the log read, the chain recomputed, the engine re-run over the log."""

    conn: sa.Connection
    engine: sa.Engine
    head: int
    chain: ChainReport
    replay: LogReplay
    how: dict[str, Any]  # how the replay ran (mode, jobs, segments)
    snapshots: SnapshotComparison
    checkpoints: CheckpointSource | None  # where the published checkpoints are read, if anywhere


def snapshot_differs(shard: int, position: int) -> str:
    return f"the snapshot of shard {shard} at {position} differs from the state the re-run folded there"


# ---------------------------------------------------------------------------------------------
# the checks, in the order the report lists them (``CHECKS``)


def _chain_check(run: Verified) -> Check:
    chain = run.chain
    return Check("hash_chain", chain.ok, chain.first_bad_position, chain.problem, {"events": chain.events})


def _tail_check(run: Verified) -> Check:
    conn, head = run.conn, run.head
    anchors: dict[str, int] = {}
    for name, sql in (
        *((t, f"SELECT max(as_of_position) FROM {t}") for t in TABLES),
        ("margin_calls.last_position", "SELECT max(last_position) FROM margin_calls"),
        ("outbox.position", "SELECT max(position) FROM outbox"),
        ("snapshots.position", "SELECT max(position) FROM snapshots"),
    ):
        value = conn.execute(sa.text(sql)).scalar()
        if value is not None:
            anchors[name] = int(value)
    beyond = {name: value for name, value in anchors.items() if value > head}
    notes = _offset_notes(conn)
    details: dict[str, Any] = {"log_head": head, "anchors": anchors}
    if notes:
        details["offset_notes"] = notes[:10]
    if beyond:
        text = ", ".join(f"{name} = {value}" for name, value in sorted(beyond.items()))
        return Check(
            "log_tail",
            False,
            head + 1,
            f"the log ends at position {head} but other tables written in the same transactions record later "
            f"positions ({text}): events after {head} were removed",
            details,
        )
    return Check("log_tail", True, details=details)


def _offset_notes(conn: sa.Connection) -> list[str]:
    """Consumer offsets stored beyond the last offset logged or dead-lettered, per partition."""
    logged = {
        (int(s), t, int(p)): int(o)
        for s, t, p, o in conn.execute(
            sa.text(
                "SELECT shard, source_topic, source_partition, max(source_offset) FROM events "
                "WHERE source_topic IS NOT NULL GROUP BY 1, 2, 3"
            )
        )
    }
    for s, t, p, o in conn.execute(
        sa.text('SELECT shard, topic, partition, max("offset") FROM dead_letters GROUP BY 1, 2, 3')
    ):
        key = (int(s), t, int(p))
        logged[key] = max(logged.get(key, -1), int(o))
    notes = []
    for s, t, p, next_offset in conn.execute(
        sa.text("SELECT shard, topic, partition, next_offset FROM consumer_offsets ORDER BY 1, 2, 3")
    ):
        last = logged.get((int(s), t, int(p)), -1)
        if int(next_offset) > last + 1:
            notes.append(
                f"shard {s} {t}[{p}]: offsets stored up to {int(next_offset) - 1}, last logged or dead-lettered "
                f"offset {last} (redelivered duplicates, or removed events)"
            )
    return notes


def _finding_check(name: str, finding: Finding) -> Check:
    """A check of clearing/audit/published.py; one that could not run says so in its details."""
    details = finding.details if finding.checked else {**finding.details, "checked": False}
    return Check(name, finding.ok, finding.first_bad_position, finding.problem, details)


def _outbox_check(run: Verified) -> Check:
    return _finding_check("outbox", outbox_finding(run.conn))


def _checkpoints_check(run: Verified) -> Check:
    return _finding_check("checkpoints", checkpoints_finding(run.conn, run.checkpoints))


def _determinism_check(run: Verified) -> Check:
    replay = run.replay
    first = replay.determinism[0] if replay.determinism else None
    return Check(
        "replay_determinism",
        not replay.determinism_mismatches,
        first.position if first else None,
        first.problem if first else None,
        {
            "decisions_compared": replay.decisions_compared,
            "mismatches": replay.determinism_mismatches,
            "samples": [f.__dict__ for f in replay.determinism[1:5]],
        },
    )


def _projections_check(run: Verified) -> Check:
    expected = expected_state_rows(run.replay)
    with run.engine.connect() as scratch:
        expected.rows.update(expected_decision_rows(scratch, run.replay))
    tables = [
        compare_table(
            table, read_table(run.conn, table), expected.rows[table], expected.last_change.get(table), run.head
        )
        for table in TABLES
    ]
    bad_tables = [t for t in tables if not t.ok]
    first_table = min(bad_tables, key=lambda t: t.first_bad_position or 0) if bad_tables else None
    return Check(
        "projections",
        not bad_tables,
        first_table.first_bad_position if first_table else None,
        first_table.problems[0] if first_table and first_table.problems else None,
        {t.table: t.as_dict() for t in tables},
    )


def _snapshots_check(run: Verified) -> Check:
    snapshots = run.snapshots
    bad = list(snapshots.bad)
    for shard, position in snapshots.stored:
        if (shard, position) not in snapshots.seen:
            bad.append(
                (position, f"the snapshot of shard {shard} at {position} is not at the end of a fold step of that "
                 "shard's log")
            )  # fmt: skip
    bad.sort()
    return Check(
        "snapshots",
        not bad,
        bad[0][0] if bad else None,
        bad[0][1] if bad else None,
        {"snapshots": len(snapshots.stored), "compared": len(snapshots.seen)},
    )


def _conservation_check(run: Verified) -> Check:
    replay = run.replay
    bad = replay.conservation_bad
    details: dict[str, Any] = {
        "checked_at": len(replay.conservation_checks),
        "positions_sample": replay.conservation_checks[:3] + replay.conservation_checks[-3:],
    }
    if "conservation" in run.how:
        details["scope"] = run.how["conservation"]
    if replay.conservation_explained:
        details["open_breaks_amount"] = {
            asset: to_wire(amount) for asset, amount in replay.conservation_explained.items()
        }
    return Check("conservation", not bad, bad[0].position if bad else None, bad[0].problem if bad else None, details)


def _counterparts_check(run: Verified) -> Check:
    return counterparts_check(run.engine, run.replay)


# A new check is a function of the run (``Verified``) that returns its ``Check``, and a line here.
CHECKS: tuple[Callable[[Verified], Check], ...] = (
    _chain_check,
    _tail_check,
    _outbox_check,
    _checkpoints_check,
    _determinism_check,
    _projections_check,
    _snapshots_check,
    _conservation_check,
    _counterparts_check,
)


# ---------------------------------------------------------------------------------------------
# the run


def _verify_chain_at(url: str) -> ChainReport:
    """``verify_chain`` in a process of its own, on its own connection (``verify`` with jobs)."""
    tune_gc()
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return verify_chain(conn)
    finally:
        engine.dispose()


def verify(
    engine: sa.Engine,
    progress: Progress | None = None,
    *,
    conservation_every: int = CONSERVATION_EVERY_EVENTS,
    jobs: int = 1,
    checkpoints: CheckpointSource | None = None,
) -> VerifyReport:
    """Every check of the module docstring (``CHECKS``). ``jobs`` > 1: the replay runs in that
    many processes, in runs of the log that start at genesis or at stored snapshots
    (clearing/audit/parallel.py), when the log has at least ``PARALLEL_BOUNDARIES_MIN`` usable
    snapshots; its findings are those of the sequential replay (if a snapshot a run starts from
    is not the re-run state, it replays sequentially instead). The hash chain is then checked in
    a process of its own beside the replay's workers instead of before them."""
    started = time.perf_counter()

    def report(phase: str) -> Callable[[int], None] | None:
        return None if progress is None else (lambda n: progress(phase, n))

    with engine.connect() as conn, ExitStack() as stack:
        head = log_head(conn)
        chain: ChainReport | None = None
        background: Future[ChainReport] | None = None
        if jobs > 1:
            start_worker_server()  # imports clearing while the snapshots are read
            executor = stack.enter_context(ProcessPoolExecutor(1, mp_context=worker_context()))
            background = executor.submit(_verify_chain_at, engine.url.render_as_string(hide_password=False))
            if progress is not None:
                # Started: its one other report comes when it is done, and its rate is over that time.
                progress("hash chain", 0)
        else:
            chain = verify_chain(conn, report("hash chain"))
        snapshots = SnapshotComparison(
            {
                (int(shard), int(position)): bytes(state)
                for shard, position, state in conn.execute(sa.text("SELECT shard, position, state FROM snapshots"))
            }
        )
        replay, how = _replay(engine, conn, head, snapshots, conservation_every, jobs, report("replay"))
        if background is not None:
            try:
                chain = background.result()
            except Exception:  # the process failed: check here, as the sequential verify does
                logger.exception("the hash chain check's process failed; checking in this one")
                chain = verify_chain(conn, report("hash chain"))
            if progress is not None:
                progress("hash chain", chain.events)
        if chain is None:
            raise AssertionError("the hash chain was not checked")
        run = Verified(conn, engine, head, chain, replay, how, snapshots, checkpoints)
        checks = [check(run) for check in CHECKS]
    return VerifyReport(head, replay.events, checks, time.perf_counter() - started, how)


def _replay(
    engine: sa.Engine,
    conn: sa.Connection,
    head: int,
    snapshots: SnapshotComparison,
    conservation_every: int,
    jobs: int,
    tick: Callable[[int], None] | None,
) -> tuple[LogReplay, dict[str, Any]]:
    """The engine re-run over the log, finished, and how it ran: in parallel runs when ``jobs``
    > 1 and the snapshots allow it, else sequentially (a failed parallel replay falls back)."""
    if jobs > 1:
        segments = plan_segments(conn, snapshots.stored, head)
        if len(segments) - len(shards_of(conn)) >= PARALLEL_BOUNDARIES_MIN:
            outcome = replay_parallel(
                engine, segments, decide=True, jobs=jobs, conservation_every=conservation_every, progress=tick
            )
            how = outcome.as_dict()
            if outcome.replay is not None:
                outcome.replay.finish()
                for shard, position, equal in outcome.snapshots:
                    snapshots.record(shard, position, equal)
                if tick is not None:
                    tick(outcome.replay.events)
                return outcome.replay, how
            how["mode"] = "sequential"
            return _replay_sequential(conn, snapshots, conservation_every, tick), how
    return _replay_sequential(conn, snapshots, conservation_every, tick), {
        "mode": "sequential",
        "jobs": 1,
        "segments": 1,
    }


def _replay_sequential(
    conn: sa.Connection, snapshots: SnapshotComparison, conservation_every: int, tick: Callable[[int], None] | None
) -> LogReplay:
    replay = LogReplay(
        decide=True,
        conservation_every=conservation_every,
        snapshot_check=snapshots.compare,
        snapshot_positions=set(snapshots.stored),
    )
    with ledger_context():
        for row in iter_log(conn):
            replay.feed(row)
            if tick is not None and replay.events % 10_000 == 0:
                tick(replay.events)
    replay.finish()
    if tick is not None:
        tick(replay.events)
    return replay


def counterparts_check(engine: sa.Engine, replay: LogReplay) -> Check:
    """The ``counterparts`` check: trades whose fills are not each other's other side (or more
    than two) fail it, as the log can never be made right by what comes after. A fill whose
    counterpart never arrived does not: it is an open break, listed with its age (the time from
    its ``occurred_at`` to the latest event time of the log), until its other side arrives or
    the exchange busts it (``fill_bust``); the conservation check allows for what open breaks
    put the books out by."""
    findings = replay.counterpart_findings()
    breaks = replay.open_breaks()
    details: dict[str, Any] = {
        "trades": replay.trades,
        "liquidation_fills": len(replay.liquidation_fills),
        "busts": _busts_logged(engine),
        "problems": len(findings),
        "samples": [f.problem for f in findings[1:5]],
        "open_breaks": len(breaks),
    }
    if breaks:
        details["open_breaks_listed"] = _open_breaks_listed(engine, replay, breaks[:OPEN_BREAKS_LISTED_MAX])
    return Check(
        "counterparts",
        not findings,
        findings[0].position if findings else None,
        findings[0].problem if findings else None,
        details,
    )


def _busts_logged(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM events WHERE type = 'FillBusted'")).scalar_one())


OPEN_BREAKS_LISTED_MAX = 100  # open breaks listed one by one in the report (all are counted)


def _open_breaks_listed(engine: sa.Engine, replay: LogReplay, breaks: list[OpenBreak]) -> list[dict[str, Any]]:
    """Each open break with its event time, its account (read from the log when the replay knows
    the fill by position only) and its age in seconds at the latest event time of the log."""
    latest = max((t.state.last_occurred_at for t in replay.shards.values() if t.state.last_occurred_at), default=None)
    with engine.connect() as conn:
        logged = {
            int(position): (occurred_at, account_id)
            for position, occurred_at, account_id in conn.execute(
                sa.text(
                    "SELECT position, occurred_at, payload->>'account_id' FROM events "
                    "WHERE position = ANY(:positions)"
                ),
                {"positions": [b.position for b in breaks]},
            )
        }
    listed = []
    for item in breaks:
        occurred_at, account_id = logged.get(item.position, (None, None))
        account = item.account_id or account_id or ""
        shown = OpenBreak(
            item.position, item.kind, item.trade_id, account, item.instrument, item.side, item.quantity, item.price
        )
        age = None if occurred_at is None or latest is None else max((latest - occurred_at).total_seconds(), 0.0)
        listed.append(
            {
                "position": shown.position,
                "kind": shown.kind,
                "trade_id": shown.trade_id,
                "account_id": shown.account_id,
                "instrument": shown.instrument,
                "side": shown.side,
                "quantity": shown.quantity,
                "price": shown.price,
                "occurred_at": None if occurred_at is None else occurred_at.isoformat(),
                "age_seconds": age,
                "problem": shown.describe(),
            }
        )
    return listed


def open_break_lines(check: Check) -> list[str]:
    """The report's lines for the open breaks of the ``counterparts`` check."""
    lines = []
    for item in check.details.get("open_breaks_listed", []):
        age = item.get("age_seconds")
        since = "" if age is None else f", open {_duration(age)} (since {item['occurred_at']})"
        lines.append(f"     open break: {item['problem']}{since}: bust it, or send its other side")
    more = check.details.get("open_breaks", 0) - len(check.details.get("open_breaks_listed", []))
    if more > 0:
        lines.append(f"     ... and {more} more open breaks (--json lists the first {OPEN_BREAKS_LISTED_MAX})")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


# ---------------------------------------------------------------------------------------------
# command line


class PlainProgress:
    """Progress lines on stderr, at most one every ``every_s`` seconds per phase (no TTY), with the
    rate since the phase began (the previous report of any phase, or the start)."""

    def __init__(self, total: int | None, every_s: float = 5.0) -> None:
        self.total = total
        self.every_s = every_s
        self.last: dict[str, float] = {}
        self.began: dict[str, float] = {}
        self.finished: set[str] = set()
        self.latest = time.monotonic()

    def __call__(self, phase: str, count: int) -> None:
        now = time.monotonic()
        began = self.began.setdefault(phase, self.latest)
        self.latest = now
        if phase in self.finished:
            return
        done = self.total is not None and count >= self.total
        if now - self.last.get(phase, 0.0) >= self.every_s or done:
            self.last[phase] = now
            if done:
                self.finished.add(phase)
            of = "" if self.total is None else f"/{self.total}"
            rate = f", {count / (now - began):,.0f} events/s" if now > began and count else ""
            sys.stderr.write(f"{phase}: {count}{of} events{rate}\n")
            sys.stderr.flush()


def run_verify(
    engine: sa.Engine, as_json: bool, *, jobs: int = 1, checkpoints: CheckpointSource | None = None
) -> int:
    with engine.connect() as conn:
        total = log_head(conn)  # = the count of events when the chain holds (its check says so)
    if sys.stderr.isatty():
        from rich.progress import Progress as RichProgress

        with RichProgress(transient=True) as bar:
            tasks: dict[str, Any] = {}

            def rich_progress(phase: str, count: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=count)

            result = verify(engine, rich_progress, jobs=jobs, checkpoints=checkpoints)
    else:
        result = verify(engine, PlainProgress(total), jobs=jobs, checkpoints=checkpoints)
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2, sort_keys=True, default=str) + "\n")
    else:
        lines = [f"log: {result.events} events, head {result.head}; {result.seconds:.1f} s"]
        how = result.replay
        if how.get("mode") == "parallel" or "fallback" in how:
            lines.append(
                f"replay: {how.get('mode')}, {how.get('jobs')} processes, {how.get('runs')} runs of "
                f"{how.get('segments')} segments between snapshots"
                + (f" (fell back: {how['fallback']})" if "fallback" in how else "")
            )
        for check in result.checks:
            unchecked = check.details.get("checked") is False
            mark = "FAIL" if not check.ok else "--  " if unchecked else "ok  "
            line = f"{mark} {check.name}"
            if unchecked and check.ok:
                line += f": {check.problem}"
            if not check.ok:
                line += f" (first bad position {check.first_bad_position}): {check.problem}"
            elif check.details.get("open_breaks"):
                line += f" ({check.details['open_breaks']} open breaks, below)"
            lines.append(line)
            if check.name == "projections":
                for table, detail in check.details.items():
                    for note in detail.get("notes", []):
                        lines.append(f"     {table}: {note}")
            lines += published_notes(check.name, check.details)
            if check.name == "log_tail":
                for note in check.details.get("offset_notes", []):
                    lines.append(f"     note: {note}")
            if check.name == "counterparts":
                lines.extend(open_break_lines(check))
        unchecked_names = [c.name for c in result.checks if c.details.get("checked") is False]
        if not result.ok:
            lines.append("NOT verified")
        elif unchecked_names:
            lines.append(f"verified, except what was not checked: {', '.join(unchecked_names)}")
        else:
            lines.append("verified: every check holds")
        sys.stdout.write("\n".join(lines) + "\n")
    return 0 if result.ok else 1
