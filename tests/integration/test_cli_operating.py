"""``clearing run`` and ``clearing liquidator`` as an operator meets them: a second ledger on a
shard is refused at start in one sentence; the liquidator says when it starts and when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from clearing.cli import OperatingError, _shard_writer_lock, operating_error
from clearing.engine.ledger import LedgerBrokenError

pytestmark = [pytest.mark.integration]

LIQUIDATOR_START_TIMEOUT_S = 60.0
LIQUIDATOR_STOP_TIMEOUT_S = 30.0


def test_a_second_ledger_on_a_shard_is_refused_at_start(database_url: str) -> None:
    first = _shard_writer_lock(database_url, 0)
    try:
        with pytest.raises(OperatingError, match=r"shard 0 already has a ledger running \(clearing run --shard 0"):
            _shard_writer_lock(database_url, 0)
        other = _shard_writer_lock(database_url, 1)  # another shard may start
        other.close()
    finally:
        first.close()
    again = _shard_writer_lock(database_url, 0)  # released with its session
    again.close()


def test_a_writer_that_loses_the_log_says_so_in_one_sentence() -> None:
    error = LedgerBrokenError("shard 0: the log ends at position 9, this writer expected 7; stopping: one writer")
    sentence = operating_error(error)
    assert sentence is not None and sentence.startswith("the ledger stopped: shard 0")
    assert operating_error(ZeroDivisionError()) is None  # a bug keeps its traceback


def test_the_liquidator_says_when_it_starts_and_stops(database_url: str, broker: str, topic_prefix: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARING_")}
    env.update(CLEARING_DATABASE_URL=database_url, CLEARING_KAFKA_BOOTSTRAP=broker, CLEARING_TOPIC_PREFIX=topic_prefix)
    process = subprocess.Popen([sys.executable, "-m", "clearing.cli", "liquidator"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + LIQUIDATOR_START_TIMEOUT_S
        first = process.stdout.readline()  # blocks until the start line (or the end of the output)
        assert time.monotonic() < deadline
        assert first.startswith("liquidator: filling the liquidation orders of " + topic_prefix), first
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=LIQUIDATOR_STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "liquidator stopped: 0 liquidation orders read, 0 filled, 0 skipped" in out
    assert "Traceback" not in err
