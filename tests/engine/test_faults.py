"""What a failed batch means (clearing/engine/faults.py): which errors are waited out, which are
isolated by splitting the batch, which stop the ledger; and the bounded back-off."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
import sqlalchemy as sa

from clearing.engine.faults import Backoff, Fault, OutageTooLong, classify, reason
from clearing.engine.ledger import Ledger, LedgerBrokenError, PreparedBatch
from clearing.engine.records import RawRecord
from clearing.store.log import LogHeadMismatch


def _wrapped(error: psycopg.Error) -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError("SELECT 1", None, error)


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (psycopg.errors.UntranslatableCharacter("\\u0000 cannot be converted to text"), Fault.POISON),
        (psycopg.errors.CheckViolation("violates check constraint"), Fault.POISON),
        (psycopg.errors.NumericValueOutOfRange("overflow"), Fault.POISON),
        (psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum"), Fault.POISON),
        (psycopg.errors.AdminShutdown("terminating connection"), Fault.TRANSIENT),
        (psycopg.errors.DeadlockDetected("deadlock"), Fault.TRANSIENT),
        (psycopg.OperationalError("connection refused"), Fault.TRANSIENT),
        (psycopg.errors.InsufficientPrivilege("permission denied"), Fault.FATAL),
        (psycopg.errors.UndefinedTable("no such table"), Fault.FATAL),
    ],
)
def test_database_errors_are_classified_by_sqlstate(error: psycopg.Error, fault: Fault) -> None:
    assert classify(error) is fault
    assert classify(_wrapped(error)) is fault  # as SQLAlchemy raises it


def test_errors_outside_the_database() -> None:
    assert classify(ConnectionResetError()) is Fault.TRANSIENT
    assert classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")) is Fault.POISON
    assert classify(LogHeadMismatch("another writer")) is Fault.FATAL
    assert classify(LedgerBrokenError("broken")) is Fault.FATAL
    assert classify(TypeError("a bug")) is Fault.FATAL


def test_the_reason_is_one_line_of_the_database_s_words() -> None:
    error = psycopg.errors.CheckViolation("new row violates check constraint\nDETAIL: more")
    assert "\n" not in reason(_wrapped(error))
    assert len(reason(ValueError("x" * 5_000))) <= 500


def test_the_back_off_doubles_up_to_its_cap_and_gives_up_after_its_limit() -> None:
    backoff = Backoff(first_s=0.5, max_s=2.0, give_up_s=3600.0)
    assert [backoff.next_wait() for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    backoff.reset()
    assert backoff.next_wait() == 0.5
    short = Backoff(first_s=0.01, max_s=0.01, give_up_s=0.02)
    short.next_wait()
    deadline = time.monotonic() + 5
    with pytest.raises(OutageTooLong):
        while time.monotonic() < deadline:
            short.next_wait()


def test_back_off_limits_out_of_order_fail_loudly() -> None:
    with pytest.raises(ValueError, match="out of order"):
        Backoff(first_s=5.0, max_s=1.0)


def _deposit(offset: int, partition: int) -> RawRecord:
    value = {"type": "deposit", "transfer_id": f"D-{offset}-{partition}", "account_id": "A", "asset": "USDT",
             "amount": "1", "occurred_at": f"2026-11-23T12:00:{offset:02d}Z"}  # fmt: skip
    return RawRecord("transfers", "x.transfers", partition, offset, None, json.dumps(value).encode())


def test_a_split_batch_keeps_its_order_and_each_record_s_dead_letter() -> None:
    ledger = Ledger(sa.create_engine("sqlite://"), topic_prefix="x.")  # prepare() touches no database
    records = [_deposit(n, n % 2) for n in range(6)]
    records.insert(3, RawRecord("transfers", "x.transfers", 1, 99, None, b"not json"))
    batch = ledger.prepare(records)
    first, second = batch.split()
    assert [item[0] for item in first.decoded + second.decoded] == [item[0] for item in batch.decoded]
    assert first.records + second.records == batch.records == 7
    assert [d.record.offset for d in first.dead + second.dead] == [99]
    alone = PreparedBatch(1, batch.decoded[:1], [], batch.started).rejected("refused")
    assert alone.decoded[0][1] is None and alone.dead[0].error == "refused"
    with pytest.raises(ValueError, match="cannot be split"):
        alone.split()
