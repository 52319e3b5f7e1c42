"""What a failed batch means for the ledger, and how long an outage is waited out.

A batch fails for one of three kinds of reason, and each asks for a different answer:
- ``TRANSIENT``: the database or the network is away (a connection refused or cut, a server
  shutting down, a lock or a serialisation conflict). The same batch will go through once it
  is back: wait with a bounded back-off, and give up (loudly) only after ``OUTAGE_WAIT_MAX_S``.
- ``POISON``: something in the batch is refused whatever the timing (PostgreSQL's data
  exceptions, constraint violations and program limits: SQLSTATE classes 22, 23 and 54; a value
  the fold cannot compute). Retrying would fail for ever and stop every later batch: the batch
  is split until the record that causes it is alone, and that record is dead-lettered with the
  database's reason while the rest commits.
- ``FATAL``: a broken invariant (a second writer, a bug): the process stops and says so.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import psycopg
import sqlalchemy as sa

from clearing.engine.ledger import LedgerBrokenError
from clearing.store.log import LogHeadMismatch

# SQLSTATE classes that no retry cures: data exception (22: NUL in text, a malformed value,
# numeric overflow), integrity constraint violation (23), program limit exceeded (54: an index
# row too large).
POISON_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
# SQLSTATE classes that say the ledger itself is wrong (a statement PostgreSQL cannot run, a
# privilege missing): neither waiting nor splitting helps; an operator must look.
FATAL_SQLSTATE_CLASSES = frozenset({"0A", "42", "XX"})
REASON_CHARS_MAX = 500  # of the database's message, in a dead letter and a log line

RETRY_BACKOFF_FIRST_S = 0.5  # the first wait after a transient failure
RETRY_BACKOFF_MAX_S = 15.0  # the wait doubles up to this
OUTAGE_WAIT_MAX_S = 3600.0  # an outage longer than this ends the process (rc 1), saying what to do
# Records of one batch dead-lettered alone, at most: more looks like a fault of the ledger or of
# the database (every record refused) rather than of the messages, and the ledger stops.
ISOLATED_PER_BATCH_MAX = 100


class Fault(enum.Enum):
    TRANSIENT = "transient"
    POISON = "poison"
    FATAL = "fatal"


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg's, or SQLAlchemy's wrapping of it), else None."""
    found: BaseException | None = error
    for _ in range(4):  # the error, what SQLAlchemy wraps, what that was raised from
        if found is None:
            return None
        if isinstance(found, psycopg.Error):
            return found.sqlstate
        found = getattr(found, "orig", None) or found.__cause__
    return None


def classify(error: BaseException) -> Fault:
    if isinstance(error, LedgerBrokenError | LogHeadMismatch):
        return Fault.FATAL
    state = sqlstate(error)
    if state is not None:
        if state[:2] in POISON_SQLSTATE_CLASSES:
            return Fault.POISON
        return Fault.FATAL if state[:2] in FATAL_SQLSTATE_CLASSES else Fault.TRANSIENT
    if isinstance(error, psycopg.Error | sa.exc.DBAPIError | sa.exc.DisconnectionError | OSError):
        return Fault.TRANSIENT  # no SQLSTATE: the connection itself failed
    if isinstance(error, ValueError | ArithmeticError):
        return Fault.POISON  # a value the fold or the driver cannot take (UnicodeError is a ValueError)
    return Fault.FATAL


def reason(error: BaseException) -> str:
    """The database's own words for ``error`` (its primary message and detail), on one line."""
    found: BaseException = error
    orig = getattr(error, "orig", None)
    if isinstance(orig, psycopg.Error):
        found = orig
    if isinstance(found, psycopg.Error) and found.diag.message_primary:
        text = found.diag.message_primary
        if found.diag.message_detail:
            text += f" ({found.diag.message_detail})"
        if found.sqlstate:
            text += f" [SQLSTATE {found.sqlstate}]"
    else:
        text = f"{type(found).__name__}: {found}"
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS_MAX else text[: REASON_CHARS_MAX - 3] + "..."


class OutageTooLong(RuntimeError):
    """A transient failure lasted longer than the ledger waits."""


@dataclass
class Backoff:
    """The waits between attempts during one outage: doubling from ``first_s`` up to ``max_s``,
    for at most ``give_up_s`` in all."""

    first_s: float = RETRY_BACKOFF_FIRST_S
    max_s: float = RETRY_BACKOFF_MAX_S
    give_up_s: float = OUTAGE_WAIT_MAX_S
    attempts: int = 0
    since: float | None = field(default=None)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s <= self.give_up_s:
            raise ValueError(
                f"back-off limits out of order: first {self.first_s} s, max {self.max_s} s, give up {self.give_up_s} s"
            )

    def next_wait(self) -> float:
        """The wait before the next attempt; raises ``OutageTooLong`` when the outage has lasted
        ``give_up_s``."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since >= self.give_up_s:
            raise OutageTooLong(f"still failing after {now - self.since:.0f} s ({self.attempts} attempts)")
        wait: float = min(self.first_s * 2.0 ** min(self.attempts, 30), self.max_s, self.give_up_s - (now - self.since))
        self.attempts += 1
        return wait

    @property
    def waited_s(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    def reset(self) -> None:
        self.attempts = 0
        self.since = None
