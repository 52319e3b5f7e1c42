"""Replay benchmark: how fast ``audit verify`` and ``projections rebuild`` fold the log, next to a
raw sequential read of the same rows in the same run. Prints figures; it is not a test.

    .venv/bin/python bench/replay.py                  # 1,000,000 events
    .venv/bin/python bench/replay.py --events 100000  # a quick run
    .venv/bin/python bench/replay.py --profile        # and where the verify replay spends its time

Builds the log with the deterministic simulator appended through ``Ledger.process`` in big batches
(no Kafka), into a fresh database: ``CLEARING_DATABASE_URL``'s server when set, else an embedded
PostgreSQL in a temporary folder. Measures:

(a) raw read: ``SELECT type, payload FROM events ORDER BY position``, rows counted, through the
    replays' own reader (``stream_rows``: the driver's server-side cursor in binary form, fetched
    ahead by a thread), each payload parsed into a dict by the driver (``load_json``); and the
    same through SQLAlchemy Core's streamed result, the reader every run before 2026-12-05 used
    (printed, not a reference of the ratios);
(b) the verify replay: ``LogReplay(decide=True)`` over the log (the engine re-run and the
    determinism comparison, conservation samples every ``CONSERVATION_EVERY_EVENTS`` as audit
    verify takes them, fill pairing, projection tracking);
(c) the rebuild replay: ``LogReplay(decide=False)`` (the fold of the logged events, no
    conservation samples, as projections rebuild), and the whole rebuild (replay + shadow tables
    + comparison + swap);
(d) the whole ``audit verify`` (adds the hash chain, the tail and the projection comparison).

(b), (c) and (d) run twice: ``--jobs 1`` (one sequential fold) and with the parallel replay in
runs between the snapshots the ledger wrote while building the log (``--jobs``, default the CPU
count; clearing/audit/parallel.py), each with its ratio to the raw read (a). The replays of (b) and
(c) also get a ratio to a raw read taken just before each: on the 2-core VM this was measured on,
the same read ran at 116,000 to 180,000 events/s within one hour, so a ratio to a read minutes
earlier carries that drift.

The parallel replays find the server their workers fork from running (``start_worker_server``,
started before the raw read), as ``audit verify``'s replay does: verify starts it before its
first read. The first pool of the process otherwise waits for that server to import clearing
(0.7-0.8 s on the 2-core VM); (d) starts its own pools either way.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearing import build_status
from clearing.audit.logreplay import CONSERVATION_EVERY_EVENTS, LogReplay
from clearing.audit.parallel import NO_SAMPLES, plan_segments, replay_parallel, start_worker_server
from clearing.audit.rebuild import rebuild
from clearing.audit.replay import iter_log, stream_rows
from clearing.audit.verify import verify
from clearing.domain.numbers import ledger_context
from clearing.engine.ledger import Ledger
from clearing.engine.records import RawRecord
from clearing.engine.snapshots import SNAPSHOT_EVERY_EVENTS
from clearing.runtime import tune_gc
from clearing.simulate import Scenario, generate
from clearing.store.db import make_engine, upgrade

BATCH_RECORDS = 5_000
EVENTS_PER_TRADE_STEP = 2.15  # fills per trade plus marks, roughly: sizes the scenario


def build_log(url: str, events: int, crash: bool) -> int:
    accounts = max(50, min(5_000, events // 200))
    trades = int(events / EVENTS_PER_TRADE_STEP)
    steps = max(10, events // 500)
    # No crash by default: the simulator sends no liquidation fills, so after a crash the orders
    # stay pending for ever and every later event re-margins those accounts (the engine's rule for
    # liquidating accounts), which measures the engine's decide, not the replay (--crash shows it).
    scenario = Scenario(seed=3, accounts=accounts, trades=trades, steps=steps,
                        crash_at=0.8 if crash else None, crash_depth=Decimal("0.2"), funding_every_steps=50)
    engine = make_engine(url, role="clearing_app")
    ledger = Ledger(engine)
    ledger.load()
    batch: list[RawRecord] = []
    offsets: dict[str, int] = {}
    started = time.perf_counter()
    written = 0
    for message in generate(scenario):
        offset = offsets.get(message.kind, 0)
        offsets[message.kind] = offset + 1
        batch.append(RawRecord(message.kind, "clearing." + message.kind, 0, offset, message.key.encode(),
                               message.encode()))
        if len(batch) >= BATCH_RECORDS:
            result = ledger.process(batch)
            written = result.last_position
            batch = []
            if written >= events:
                break
            print(f"\r  appended {written} events ({written / (time.perf_counter() - started):,.0f}/s)",
                  end="", file=sys.stderr)
    if batch and written < events:
        written = ledger.process(batch).last_position
    print(file=sys.stderr)
    engine.dispose()
    return written


def rate(n: int, seconds: float) -> str:
    return f"{n:>9,} events in {seconds:7.2f} s = {n / seconds:>9,.0f} events/s"


def main() -> int:
    tune_gc()  # as the clearing command does for its long jobs
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--crash", action="store_true", help="a crash at 80%% of the steps (calls, liquidations)")
    parser.add_argument("--profile", action="store_true", help="profile the verify replay (cProfile, top 25)")
    parser.add_argument("--jobs", type=int, default=None, help="processes of the parallel replay (default: CPUs)")
    args = parser.parse_args()

    import os

    jobs = args.jobs or os.cpu_count() or 1
    print(f"domain: {build_status()}")

    server = None
    parent = None
    configured = os.environ.get("CLEARING_DATABASE_URL")
    if configured:
        admin = sa.engine.make_url(configured)
    else:
        from clearing.embedded import server_socket_dir, socket_url, start_postgres_server

        parent = Path(tempfile.mkdtemp(prefix="clearing-bench-"))
        server = start_postgres_server(parent / "data", cleanup_mode="delete")
        admin = sa.engine.make_url(socket_url(server_socket_dir(server), "postgres"))
    name = f"clearing_bench_{uuid.uuid4().hex[:8]}"
    import psycopg

    libpq = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as server_conn:
        server_conn.execute(f"CREATE DATABASE {name}")
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        print(f"building a log of {args.events:,} events ...", file=sys.stderr)
        started = time.perf_counter()
        head = build_log(url, args.events, args.crash)
        print(f"log: {head:,} events, built in {time.perf_counter() - started:.1f} s")
        owner = make_engine(url)
        # Every read below finds the table as a settled database has it: the first read of rows
        # just written sets their hint bits (and autovacuum may be at them), which made the first
        # raw read 15-25% slower than the same read minutes later (2026-12-05: 174,605 against
        # 210,705-218,721 rows/s).
        started = time.perf_counter()
        with owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM (ANALYZE) events"))
        print(f"VACUUM (ANALYZE) events: {time.perf_counter() - started:.1f} s")
        with owner.connect() as conn:
            by_type = conn.execute(sa.text("SELECT type, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC")).all()
        print("  " + ", ".join(f"{t} {n:,}" for t, n in by_type))

        # (a) raw read
        raw_query = "SELECT type, payload FROM events ORDER BY position"

        def raw_read() -> tuple[int, float]:
            started = time.perf_counter()
            n = 0
            with owner.connect() as conn:
                for _row in stream_rows(conn, raw_query, {}, 10_000):
                    n += 1
            return n, time.perf_counter() - started

        def raw_read_core() -> tuple[int, float]:
            started = time.perf_counter()
            n = 0
            with owner.connect() as conn:
                options = {"stream_results": True, "yield_per": 10_000}
                for _row in conn.execute(sa.text(raw_query), execution_options=options):
                    n += 1
            return n, time.perf_counter() - started

        start_worker_server()  # as audit verify does before its first read (see the docstring)
        n, raw_s = raw_read()
        print(f"raw read (type, payload)            {rate(n, raw_s)}")
        core_n, core_s = raw_read_core()
        print(f"  the same through SQLAlchemy Core  {rate(core_n, core_s)}")

        with owner.connect() as conn:
            keys = [(int(s), int(p)) for s, p in conn.execute(sa.text("SELECT shard, position FROM snapshots"))]
            segments = plan_segments(conn, keys, head)
        print(f"snapshots: {len(keys)} (the ledger's SnapshotPolicy, every {SNAPSHOT_EVERY_EVENTS:,} events); "
              f"{len(segments)} segments; parallel jobs = {jobs} (os.cpu_count() {os.cpu_count()})")

        def replay(decide: bool, workers: int) -> tuple[float, str]:
            # The conservation samples of the command it stands for: audit verify's every
            # CONSERVATION_EVERY_EVENTS, none in projections rebuild. (Before 2026-12-06 the parallel
            # verify replay here took none and the sequential rebuild replay took verify's.)
            every = CONSERVATION_EVERY_EVENTS if decide else NO_SAMPLES
            started = time.perf_counter()
            detail = ""
            if workers > 1:
                outcome = replay_parallel(
                    owner, segments, decide=decide, jobs=workers, check_fills=decide, conservation_every=every
                )
                replay = outcome.replay
                assert replay is not None, outcome.reason
                replay.finish()
                # Next to the wall time: how long the runs took together. With every run busy to the
                # end, about jobs x wall: the replay is bound by the CPUs, not by the reads.
                detail = f"; {outcome.runs} runs, {outcome.worker_seconds:.1f} worker seconds"
            else:
                with owner.connect() as conn:
                    replay = LogReplay(decide=decide, check_fills=decide, conservation_every=every)
                    with ledger_context():  # as verify and rebuild run it
                        for row in iter_log(conn):
                            replay.feed(row)
                    replay.finish()
            assert not replay.determinism_mismatches
            return time.perf_counter() - started, detail

        for label, decide in (("verify replay (re-run)", True), ("rebuild replay (fold)", False)):
            for workers in (1, jobs):
                _, beside_s = raw_read()  # this VM's speed drifts by 20-30% within minutes
                seconds, detail = replay(decide, workers)
                print(f"{label + f' --jobs {workers}':<36}{rate(n, seconds)}  ({raw_s / seconds:.0%} of raw read; "
                      f"{beside_s / seconds:.0%} of one just before it, {n / beside_s:,.0f}/s{detail})")
        for workers in (1, jobs):
            started = time.perf_counter()
            report = rebuild(owner, jobs=workers)
            total_s = time.perf_counter() - started
            print(f"{f'projections rebuild --jobs {workers}':<36}{rate(n, total_s)}; swap transaction "
                  f"{report.seconds_swap:.2f} s (the writer waits that long); rows {report.rows_written}; "
                  f"identical {report.identical}, consistent {report.consistent}; replay {report.replay}")
        for workers in (1, jobs):
            started = time.perf_counter()
            result_v = verify(owner, jobs=workers)
            total_v = time.perf_counter() - started
            print(f"{f'audit verify --jobs {workers}':<36}{rate(n, total_v)}; ok {result_v.ok}; "
                  f"replay {result_v.replay}")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            replay(True, 1)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
        owner.dispose()
    finally:
        with psycopg.connect(libpq, autocommit=True) as server_conn:
            server_conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if server is not None:
            server.cleanup()
        if parent is not None:
            shutil.rmtree(parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
