"""Ingest benchmark: how close the ledger's end-to-end rate comes to what Kafka and PostgreSQL
can do on the same machine. Prints figures; it is not a test.

    .venv/bin/python bench/ingest.py                 # 200,000 events, embedded services in a temp home
    .venv/bin/python bench/ingest.py --events 20000  # a quick run
    .venv/bin/python bench/ingest.py --spine         # the margin engine's decide off: the ingest path alone

Uses CLEARING_DATABASE_URL / CLEARING_KAFKA_BOOTSTRAP when they are set (and CLEARING_HOME when
set, else a temporary folder for the embedded services, stopped at the end). Measures, in one run:

(a) kafka-python's raw consume rate of the produced messages (assign, seek to beginning, poll
    until all are read);
(b) a raw COPY of as many rows like the log's into a scratch table with the events table's
    columns and indexes, in transactions of one ledger batch each;
(c) the ledger end to end: from starting ``run_ledger`` (load, assign, poll, fold, write) to the
    offsets stored in PostgreSQL covering every produced message.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import itertools
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearing import build_status
from clearing.embedded import Services, ensure_services, stop_services
from clearing.engine.ledger import BatchResult
from clearing.engine.runner import BATCH_RECORDS_MAX, RunStats
from clearing.runtime import tune_gc
from clearing.settings import Settings
from clearing.simulate import Scenario, generate, publish
from clearing.store.db import make_engine, upgrade
from clearing.store.log import EVENT_COLUMNS
from consumers.kafka_input import FETCH_BYTES_MAX, PARTITION_FETCH_BYTES_MAX, POLL_RECORDS_MAX, ensure_topics
from consumers.process import run_ledger

TIMEOUT_S = 1_800.0


def scenario_for(events: int) -> Scenario:
    """A market of about ``events`` messages: 1 in 200 steps' worth of marks, the rest paired fills."""
    accounts = max(20, min(2_000, events // 100))
    steps = max(10, events // 200)
    trades = max(steps, -(-(events - 6 * (steps + 1)) // (2 * steps)) * steps)  # a multiple of steps
    return Scenario(seed=2026, accounts=accounts, trades=trades, steps=steps)


def produce(bootstrap: str, prefix: str, events: int) -> tuple[list[bytes], dict[tuple[str, int], int], float]:
    messages = list(itertools.islice(generate(scenario_for(events)), events))
    started = time.perf_counter()
    ends = publish(bootstrap, prefix, iter(messages))
    return [m.encode() for m in messages], ends, time.perf_counter() - started


def raw_consume(bootstrap: str, ends: dict[tuple[str, int], int]) -> float:
    """(a) seconds for kafka-python to read every produced message, configured like the ledger's."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX,
        fetch_max_bytes=FETCH_BYTES_MAX,
        max_poll_records=POLL_RECORDS_MAX,
    )
    tps = [TopicPartition(topic, partition) for topic, partition in ends]
    total = sum(ends.values())
    started = time.perf_counter()
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    read = 0
    deadline = time.monotonic() + TIMEOUT_S
    while read < total and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=100, max_records=POLL_RECORDS_MAX).values():
            read += len(batch)
    seconds = time.perf_counter() - started
    consumer.close()
    if read < total:
        raise RuntimeError(f"raw consume read {read} of {total}")
    return seconds


def raw_copy(database_url: str, payloads: list[bytes]) -> float:
    """(b) seconds to COPY as many rows like the log's (same columns, indexes and payload sizes)
    into a scratch table, one transaction per ledger batch."""
    engine = make_engine(database_url)
    table = f"bench_scratch_{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    rows = []
    previous = bytes(32)
    for index, payload in enumerate(payloads, 1):
        digest = hashlib.sha256(previous + payload).digest()
        rows.append(
            (index, 0, f"account:ACC-{index % 1000:05d}", index, "FillRecorded", 1, payload.decode(), now, now,
             "bench.fills", index % 4, index, f"s0/bench/{index}", None, previous, digest)
        )  # fmt: skip
        previous = digest
    types = ["int8", "int2", "text", "int8", "text", "int2", "text", "timestamptz", "timestamptz", "text", "int4",
             "int8", "text", "int8", "bytea", "bytea"]  # fmt: skip
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING INDEXES)"))
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH_RECORDS_MAX):
            with engine.begin() as conn:
                driver = conn.connection.driver_connection
                assert driver is not None
                cursor = driver.cursor()
                with cursor.copy(f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
                    copy.set_types(types)
                    for row in rows[start : start + BATCH_RECORDS_MAX]:
                        copy.write_row(row)
        seconds = time.perf_counter() - started
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
    return seconds


def ledger_end_to_end(
    settings: Settings, services: Services, ends: dict[tuple[str, int], int], profile: bool = False
) -> tuple[float, RunStats, list[float]]:
    """(c) seconds from starting the ledger to its stored offsets covering every produced message."""
    stop = threading.Event()
    latencies: list[float] = []
    outcome: dict[str, object] = {}

    def on_batch(result: BatchResult, stats: RunStats) -> None:
        latencies.append(result.seconds)

    def target() -> None:
        profiler = cProfile.Profile() if profile else None
        try:
            if profiler is not None:
                profiler.enable()
            outcome["stats"] = run_ledger(
                settings, services, stop=stop, on_batch=on_batch, install_signal_handlers=False
            )
        except BaseException as error:  # reported below
            outcome["error"] = error
        finally:
            if profiler is not None:
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
                outcome["profile"] = out.getvalue()

    engine = make_engine(services.database_url)
    query = sa.text("SELECT topic, partition, next_offset FROM consumer_offsets WHERE shard = 0 AND topic LIKE :p")
    started = time.perf_counter()
    thread = threading.Thread(target=target, name="ledger", daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and thread.is_alive():
        with engine.connect() as conn:
            stored = {(t, p): o for t, p, o in conn.execute(query, {"p": settings.topic_prefix + "%"})}
        if all(stored.get(key, 0) >= end for key, end in ends.items()):
            break
        time.sleep(0.05)  # polling interval of the progress check, bounded by the deadline
    seconds = time.perf_counter() - started
    stop.set()
    thread.join(120)
    engine.dispose()
    if "error" in outcome:
        raise RuntimeError("the ledger failed") from outcome["error"]  # type: ignore[misc]
    if "profile" in outcome:
        print(outcome["profile"])
    stats = outcome.get("stats")
    if not isinstance(stats, RunStats) or stats.records < sum(ends.values()):
        raise RuntimeError(f"the ledger did not finish: {stats}")
    return seconds, stats, latencies


def main(argv: list[str] | None = None) -> int:
    tune_gc()  # as the clearing command does for its long jobs
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="messages to produce (default 200000)")
    parser.add_argument("--profile", action="store_true", help="cProfile the ledger thread and print the top")
    parser.add_argument(
        "--spine",
        action="store_true",
        help="switch the margin engine's decide off (no decisions): measures the ingest path alone",
    )
    args = parser.parse_args(argv)
    if args.spine:
        # The ledger's step without the margin engine: the fold alone. Patched where the ledger
        # looks it up (clearing.engine.ledger is plain Python; the compiled domain modules call
        # one another directly, so patching lifecycle.decide would change nothing there).
        from typing import Any

        from clearing.domain import events as ev
        from clearing.domain import fold
        from clearing.engine import ledger as ledger_module

        def fold_only(state: Any, message: Any, position: int, shard: int = 0) -> list[Any]:
            fold.apply(state, ev.INPUT_EVENT_TYPES[message.type][0], message, {})
            return []

        ledger_module.step = fold_only  # type: ignore[attr-defined]

    temp_home = None
    if "CLEARING_HOME" not in os.environ:
        temp_home = tempfile.mkdtemp(prefix="clearing-bench-")
    base = Settings() if temp_home is None else Settings(home=Path(temp_home))
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = base.model_copy(update={"topic_prefix": prefix})
    services = ensure_services(settings)
    try:
        upgrade(services.database_url)
        ensure_topics(services.kafka_bootstrap, prefix)
        print(f"domain: {build_status()}")
        print(f"producing {args.events} messages to {services.kafka_bootstrap} (prefix {prefix}) ...", flush=True)
        payloads, ends, produce_s = produce(services.kafka_bootstrap, prefix, args.events)
        n = len(payloads)
        print(f"produced {n} messages in {produce_s:.1f} s ({n / produce_s:,.0f}/s)", flush=True)

        consume_s = raw_consume(services.kafka_bootstrap, ends)
        copy_s = raw_copy(services.database_url, payloads)
        ledger_s, stats, latencies = ledger_end_to_end(settings, services, ends, args.profile)
    finally:
        if temp_home is not None:
            stop_services(Settings(home=Path(temp_home)))
            shutil.rmtree(temp_home, ignore_errors=True)

    a, b, c = n / consume_s, n / copy_s, n / ledger_s
    print()
    print(f"(a) raw consume (kafka-python)     {a:>10,.0f} events/s  ({consume_s:.2f} s)")
    print(f"(b) raw COPY into PostgreSQL       {b:>10,.0f} events/s  ({copy_s:.2f} s)")
    print(f"(c) ledger end to end              {c:>10,.0f} events/s  ({ledger_s:.2f} s)")
    print(f"    c/a = {c / a:.0%}   c/b = {c / b:.0%}")
    print(
        f"    batches {stats.batches}, mean batch latency {statistics.mean(latencies) * 1000:.0f} ms "
        f"(max {max(latencies) * 1000:.0f} ms), {stats.records / max(stats.batches, 1):,.0f} records/batch"
    )
    print(
        f"    appended {stats.appended} inputs + {stats.decisions} decisions, {stats.duplicates} duplicates, "
        f"{stats.dead_letters} dead letters; decisions: {stats.decision_types}"
    )
    verdict = ("met" if c >= 20_000 else "MISSED", "met" if c >= a / 2 else "MISSED")
    print(f"    target: c >= 20,000/s {verdict[0]}; c/a >= 50% {verdict[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
