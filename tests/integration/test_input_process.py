"""The Kafka input adapter in its own process (consumers/input_process.py), against the real
broker: every produced record arrives once and in event-time order, a new assignment drops what
was read ahead under the old one, and either side's death is noticed by the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clearing.engine.records import RawRecord, merge_key
from consumers.input_process import InputProcess, InputProcessFailed
from consumers.kafka_input import event_time
from tests.integration.conftest import produce

pytestmark = pytest.mark.integration

WAIT_S = 30.0


def _deposit(n: int, second: int) -> tuple[str, str, dict[str, Any]]:
    account = f"A{n % 7}"
    return (
        "transfers",
        account,
        {
            "type": "deposit",
            "transfer_id": f"d{n}",
            "account_id": account,
            "asset": "USDT",
            "amount": "1",
            "occurred_at": f"2026-11-23T12:{second // 60:02d}:{second % 60:02d}.000Z",
        },
    )


def _mark(second: int) -> tuple[str, str, dict[str, Any]]:
    at = f"2026-11-23T12:{second // 60:02d}:{second % 60:02d}.000Z"
    return ("marks", "BTCUSDT", {"type": "mark", "symbol": "BTCUSDT", "price": "100", "occurred_at": at})


def _poll_until(source: InputProcess, count: int, records_max: int) -> list[RawRecord]:
    records: list[RawRecord] = []
    deadline = time.monotonic() + WAIT_S
    while len(records) < count and time.monotonic() < deadline:
        records += source.poll(100, records_max)
    return records


def _poll_for_a_while(source: InputProcess) -> None:
    """Poll for up to ``WAIT_S`` (until the poll raises, in the tests that expect it to)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        source.poll(100, 10)


def test_every_record_arrives_once_in_event_time_order(broker: str, topic_prefix: str) -> None:
    messages = [_deposit(n, n) for n in range(300)] + [_mark(second) for second in range(0, 300, 7)]
    produced = produce(broker, topic_prefix, messages)
    source = InputProcess(broker, topic_prefix)
    try:
        source.assign({}, None)
        records = _poll_until(source, len(messages), 50)
        assert sorted((r.topic, r.partition, r.offset) for r in records) == sorted(produced.coordinates)
        keys = [merge_key(event_time(r.value), r) for r in records]  # type: ignore[arg-type]
        assert keys == sorted(keys)
        assert {r.kind for r in records} == {"transfers", "marks"}
        # Nothing more comes, and the lag the child reported says it is caught up.
        assert source.poll(300, 50) == []
        assert set(source.lag().values()) == {0}
    finally:
        source.close()


def test_a_new_assignment_drops_what_was_read_ahead(broker: str, topic_prefix: str) -> None:
    produced = produce(broker, topic_prefix, [_deposit(n, n) for n in range(400)])
    partitions = sorted({(topic, partition) for topic, partition, _ in produced.coordinates})
    source = InputProcess(broker, topic_prefix)
    try:
        source.assign({}, None)
        first = _poll_until(source, 1, 20)
        assert first and min(r.offset for r in first) == 0
        # The child has read ahead (two batches of credit) under this assignment. Start again
        # from the beginning, as the ledger does after a failed batch: what arrives next must be
        # read afresh from offset 0 of every partition, not the continuation of the old reads.
        source.assign({p: (0, None) for p in partitions}, None)
        again = _poll_until(source, 400, 20)
        assert sorted((r.topic, r.partition, r.offset) for r in again) == sorted(produced.coordinates)
    finally:
        source.close()


def test_close_stops_a_child_that_is_sending_a_batch(broker: str, topic_prefix: str) -> None:
    # Batches of 2,000 deposits (~400 KB pickled) do not fit a socket's default buffer: with
    # credit for two more, the child is blocked sending when the ledger stops taking them.
    produce(broker, topic_prefix, [_deposit(n, n % 3600) for n in range(8_000)])
    source = InputProcess(broker, topic_prefix)
    try:
        source.assign({}, None)
        assert _poll_until(source, 1, 2_000)
    finally:
        source.close()
    assert source.returncode == 0, "the child had to be killed: it never read CLOSE"


def test_a_dead_input_process_fails_the_poll(broker: str, topic_prefix: str) -> None:
    produce(broker, topic_prefix, [_deposit(0, 0)])
    source = InputProcess(broker, topic_prefix)
    try:
        source.assign({}, None)
        os.kill(source.pid, signal.SIGKILL)
        with pytest.raises(InputProcessFailed, match="exited"):
            _poll_for_a_while(source)
    finally:
        source.close()


def test_an_error_in_the_input_process_fails_the_poll_with_its_cause(broker: str, topic_prefix: str) -> None:
    source = InputProcess(broker, topic_prefix)  # its topics were never created
    try:
        # assign waits for the child's answer (where each partition is read from): the error is its.
        with pytest.raises(InputProcessFailed, match="has no partitions in the broker's metadata"):
            source.assign({}, None)
    finally:
        source.close()


def test_the_child_runs_the_code_the_ledger_runs(
    broker: str, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another ``consumers`` package in the working folder and on PYTHONPATH, the child
    still imports this checkout's adapter (``python -m`` would have run the other one)."""
    (tmp_path / "consumers").mkdir()
    (tmp_path / "consumers" / "__init__.py").write_text("")
    (tmp_path / "consumers" / "input_process.py").write_text("raise SystemExit(3)\n")
    produce(broker, topic_prefix, [_deposit(0, 0)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    source = InputProcess(broker, topic_prefix)
    try:
        source.assign({}, None)
        assert len(_poll_until(source, 1, 10)) == 1
    finally:
        source.close()


def test_the_input_process_exits_when_the_ledgers_process_dies(broker: str, topic_prefix: str, tmp_path: Path) -> None:
    produce(broker, topic_prefix, [_deposit(0, 0)])
    # A script file without a main guard: multiprocessing's spawn would have run it again in
    # the child; the input process is a fresh interpreter that imports only its own module.
    script = tmp_path / "ledger.py"
    script.write_text(
        "import sys\n"
        "from consumers.input_process import InputProcess\n"
        f"source = InputProcess({broker!r}, {topic_prefix!r})\n"
        "source.assign({}, None)\n"
        "while not source.poll(100, 10):\n"
        "    pass\n"
        "print(source.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()  # SIGKILL: no clean-up runs in the ledger's process
        parent.wait(WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the child's state, bounded by the deadline
        assert not _alive(child), "the input process outlived the ledger's process"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
