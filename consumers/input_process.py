"""The Kafka input adapter in a process of its own, beside the ledger's.

Why: kafka-python parses every record in Python, and its network thread wakes for every fetch. In
the ledger's process that work held the GIL the fold and the writes need: in ``bench/ingest.py``
the ledger's thread spent a quarter of its samples in ``InputConsumer.poll`` (half of that waiting
for a fetch). Here an ``InputConsumer`` runs in a child process, on the other core, and sends what
it polls (raw records in event-time order, a batch at a time) through a socket pair: pickled, a
record costs about 0.5 us to receive.

The child reads ahead of the ledger by at most ``PREFETCH_BATCHES`` batches (credit the ledger
hands back as it takes each one), so memory stays bounded when the ledger is the slower side.
Every ``assign`` starts a new generation: a batch read under an earlier assignment (before the
ledger re-read from its stored offsets after a failed batch) is dropped when it arrives. The
offsets that count are still the ones PostgreSQL stores with the events; this process keeps none.

If the child fails (the broker unreachable at start, an error in the client), ``poll`` raises
``InputProcessFailed`` with the child's traceback, and the ledger stops rather than stall. When
the broker holds fewer messages than were consumed (a wiped or restarted in-memory broker),
``assign`` or ``poll`` raises ``BrokerLostMessages`` and the child reads nothing until the next
``assign``. If the ledger's process dies, the child sees the socket close and exits.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from clearing.engine.records import RawRecord
from clearing.runtime import tune_gc
from consumers.kafka_input import BrokerLostMessages, InputConsumer, PartitionStart

logger = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # batches the child may read ahead of what the ledger has taken
CHILD_POLL_TIMEOUT_MS = 100
LAG_EVERY_S = 1.0  # an idle child reports the partitions' lag at most this often
CLOSE_TIMEOUT_S = 10.0
# Longest ``assign`` waits for the child to have assigned and sought (the broker's metadata and
# the ends of the partitions; kafka-python retries an unreachable broker within it).
ASSIGN_TIMEOUT_S = 120.0
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds consumers/ and clearing/
_CHILD = (
    f"import sys; sys.path.insert(0, {str(SOURCE_ROOT)!r}); "
    "from consumers.input_process import main; main(sys.argv[1:])"
)

# What crosses the socket: (ASSIGN, generation, stored offsets, broker instance, reread past
# end), (CREDIT, generation, batches, records per batch) and (CLOSE,) to the child; (ASSIGNED,
# generation, partition starts), (RECORDS, generation, records, lag), (LAG, generation, lag,
# connected to the broker),
# (LOST, generation, BrokerLostMessages) and (FAILED, traceback) from it.
ASSIGN, CREDIT, CLOSE, ASSIGNED, RECORDS, LAG, LOST, FAILED = (
    "assign", "credit", "close", "assigned", "records", "lag", "lost", "failed"
)  # fmt: skip


class InputProcessFailed(RuntimeError):
    """The input process failed or exited: the ledger cannot read on."""


class InputProcess:
    """A ``RecordSource`` (clearing/engine/runner.py) whose Kafka consumer runs in a child process."""

    def __init__(
        self, bootstrap: str, prefix: str, *, shard: int = 0, shards: int = 1, reread_past_end: bool = False
    ) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
        self.reread_past_end = reread_past_end  # see InputConsumer.assign
        # A fresh interpreter running this module, not a fork (the ledger's process has threads:
        # the outbox relay, the metrics server) nor multiprocessing's spawn (which re-imports the
        # caller's main module: a script without a main guard would start itself again). It
        # imports the Kafka client and this adapter only, in ~0.15 s, from where this process
        # did: first on its path, before its working folder and PYTHONPATH, so both run the same
        # code whatever else is there.
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno()), bootstrap, prefix, str(shard), str(shards)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        self._conn = Connection(ours.detach())
        self._generation = 0
        self._credited = False  # whether this generation's first credit was sent
        self._lag: dict[tuple[str, int], int] = {}
        self._disconnected_since: float | None = None  # since when the child reports no broker connection

    def assign(
        self, stored: dict[tuple[str, int], tuple[int, str | None]], broker_instance: str | None
    ) -> list[PartitionStart]:
        """Have the child assign this shard's partitions and seek to ``stored`` (as
        ``InputConsumer.assign``), and return where each partition is read from; records read
        before are dropped from here on."""
        self._generation += 1
        self._credited = False
        self._send((ASSIGN, self._generation, stored, broker_instance, self.reread_past_end))
        deadline = time.monotonic() + ASSIGN_TIMEOUT_S
        while self._conn.poll(max(0.0, deadline - time.monotonic())):
            message = self._recv()
            if message[0] == FAILED:
                raise InputProcessFailed(f"the Kafka input process failed:\n{message[1]}")
            if message[1] != self._generation:
                continue  # read under an earlier assignment
            if message[0] == LOST:
                raise message[2]
            if message[0] == ASSIGNED:
                starts: list[PartitionStart] = message[2]
                return starts
        raise InputProcessFailed(f"the Kafka input process did not assign its partitions in {ASSIGN_TIMEOUT_S:.0f} s")

    def poll(self, timeout_ms: int, records_max: int) -> list[RawRecord]:
        """The next batch the child read (in event-time order, at most ``records_max``, the
        same for every call of a generation), or [] when none arrives within ``timeout_ms``."""
        if self._generation == 0:
            raise InputProcessFailed("poll before assign: the input process has no partitions yet")
        if not self._credited:
            self._send((CREDIT, self._generation, PREFETCH_BATCHES, records_max))
            self._credited = True
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                return []
            message = self._recv()
            if message[0] == FAILED:
                raise InputProcessFailed(f"the Kafka input process failed:\n{message[1]}")
            if message[1] != self._generation:
                continue  # read under an earlier assignment
            if message[0] == LOST:
                raise message[2]
            if message[0] == LAG:
                self._lag = message[2]
                if message[3]:
                    self._disconnected_since = None
                elif self._disconnected_since is None:
                    self._disconnected_since = time.monotonic()
                continue
            _, _, records, self._lag = message
            self._disconnected_since = None
            self._send((CREDIT, self._generation, 1, records_max))
            return records  # type: ignore[no-any-return]

    @property
    def pid(self) -> int:
        return self._process.pid

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the high watermark per partition, as the child last reported."""
        return dict(self._lag)

    def unreachable_s(self) -> float:
        """How long the child has reported no connection to the broker (0 while it has one)."""
        since = self._disconnected_since
        return 0.0 if since is None else time.monotonic() - since

    def close(self) -> None:
        """Stop the child: it exits at CLOSE. A child that is sending a batch reads nothing until
        the send completes, so what it still sends is read here (and dropped) until it exits."""
        with contextlib.suppress(OSError):  # the child is gone already
            self._conn.send((CLOSE,))
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        with contextlib.suppress(EOFError, OSError):  # EOF: the child has exited
            while self._conn.poll(max(0.0, deadline - time.monotonic())):
                self._conn.recv_bytes()
        try:
            self._process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("the Kafka input process did not stop in %.0f s; killing it", CLOSE_TIMEOUT_S)
            self._process.kill()
            self._process.wait(CLOSE_TIMEOUT_S)
        self._conn.close()

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it has exited (negative: killed by that signal)."""
        return self._process.returncode

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._conn.send(message)
        except OSError as error:
            raise self._exited() from error

    def _recv(self) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError) as error:
            raise self._exited() from error
        return message

    def _exited(self) -> InputProcessFailed:
        try:
            code: int | None = self._process.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        return InputProcessFailed(f"the Kafka input process exited (exit code {code})")


def _serve(conn: Connection, bootstrap: str, prefix: str, shard: int, shards: int) -> None:
    """The child: poll while the ledger has credit, answer commands in between, exit on CLOSE or
    when the ledger's end of the socket closes."""
    # A terminal's Ctrl-C, or a service manager's SIGTERM to the whole group, reaches this process
    # too: the ledger stops it itself (CLOSE) once its last batch has committed, and it exits on
    # its own when the ledger's process is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_gc()
    source: InputConsumer | None = None
    try:
        source = InputConsumer(bootstrap, prefix, shard=shard, shards=shards)
        generation = 0
        credit = 0
        records_max = 0
        lag_reported = 0.0
        while True:
            # Commands first; with nothing to read for, wait for one.
            wait: float | None = 0.0 if generation and credit else None
            while conn.poll(wait):
                command = conn.recv()
                if command[0] == CLOSE:
                    return
                if command[0] == ASSIGN:
                    credit = 0
                    generation = _assign(conn, source, command)
                elif command[0] == CREDIT and command[1] == generation:
                    credit += command[2]
                    records_max = command[3]
                wait = 0.0 if generation and credit else None
            try:
                records = source.poll(CHILD_POLL_TIMEOUT_MS, records_max)
            except BrokerLostMessages as error:
                conn.send((LOST, generation, error))
                generation = credit = 0  # reads nothing until the ledger assigns again
                continue
            if records:
                conn.send((RECORDS, generation, records, source.lag()))
                credit -= 1
            elif time.monotonic() - lag_reported > LAG_EVERY_S:
                conn.send((LAG, generation, source.lag(), source.broker_connected()))
                lag_reported = time.monotonic()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the ledger's process is gone
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send((FAILED, traceback.format_exc()))
        raise
    finally:
        if source is not None:
            source.close()


def _assign(conn: Connection, source: InputConsumer, command: tuple[Any, ...]) -> int:
    """Assign and seek as the ledger asks, and answer with where each partition is read from;
    returns the generation to read for (0, nothing, when the broker lost messages)."""
    _, generation, stored, broker_instance, reread_past_end = command
    try:
        starts = source.assign(stored, broker_instance, reread_past_end=reread_past_end)
    except BrokerLostMessages as error:
        conn.send((LOST, generation, error))
        return 0
    conn.send((ASSIGNED, generation, starts))
    return int(generation)


def main(argv: list[str]) -> None:
    """The child's entry point: socket descriptor, bootstrap, topic prefix, shard, shards."""
    fd, bootstrap, prefix, shard, shards = argv
    _serve(Connection(int(fd)), bootstrap, prefix, int(shard), int(shards))
