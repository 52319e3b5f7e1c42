"""The outbox relay: publishes committed outbox rows to Kafka in id order, at least once.

A row is marked published only after the broker acknowledged that very message (its send's
result), never because a flush returned: kafka-python's ``flush()`` also returns once batches have
expired or failed. The rows of a round are sent in id order and their results taken in id order;
the acknowledged prefix is marked as it is confirmed (``RELAY_MARK_ROWS`` at a time), so a failure
re-sends only from the first unacknowledged row, never what went before it. Rows after a failed
one that the broker took anyway stay unmarked and go again: a duplicate, never a gap (consumers
de-duplicate by the id fields, CONTRACT.md; a re-sent message carries the same ids because it is
the same row).

Order per partition: one request in flight per connection, so kafka-python's own retries never
overtake a batch; a failed round resumes at its first unacknowledged row, and the next round sends
one row (a probe) until the broker acknowledges again, so the rows behind it are not sent into
an outage a second time. After a failure the producer is closed and built anew: a restarted broker
is a new cluster to it (stale metadata, a producer id the broker no longer knows).

Failures are retried with a bounded exponential backoff (``RELAY_RETRY_BACKOFF_S`` doubling to
``RELAY_RETRY_BACKOFF_MAX_S``) and logged with the backlog, for as long as the process runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from kafka import KafkaProducer
from kafka.errors import KafkaError

from clearing.domain.inputs import format_time
from clearing.engine import outputs

logger = logging.getLogger(__name__)

RELAY_BATCH_ROWS_MAX = 5_000  # rows sent per round
RELAY_MARK_ROWS = 500  # acknowledged rows marked published per UPDATE (and commit)
RELAY_IDLE_WAIT_S = 0.2
RELAY_RETRY_BACKOFF_S = 0.5  # first wait after a failed round; doubles per failure ...
RELAY_RETRY_BACKOFF_MAX_S = 30.0  # ... up to this
RELAY_BACKLOG_EVERY_S = 1.0  # the backlog (count, oldest row) is read at most this often
# A send not acknowledged within this fails (kafka-python retries it in order until then).
RELAY_DELIVERY_TIMEOUT_MS = 30_000
RELAY_REQUEST_TIMEOUT_MS = 10_000  # one produce request
RELAY_MAX_BLOCK_MS = 10_000  # longest send() waits for a topic's metadata or buffer space
RELAY_CONNECT_TIMEOUT_MS = 10_000  # longest building a producer waits for a broker to answer
RELAY_LINGER_MS = 5
# Longest the relay waits for one send's result beyond its delivery timeout: the producer's
# thread reports an expired batch a moment after it expired.
RELAY_RESULT_MARGIN_S = 5.0
if RELAY_DELIVERY_TIMEOUT_MS < RELAY_LINGER_MS + RELAY_REQUEST_TIMEOUT_MS:
    raise RuntimeError("RELAY_DELIVERY_TIMEOUT_MS must cover the linger and one request (kafka-python refuses less)")


class RelayDeliveryError(RuntimeError):
    """A round of the relay ended with a row the broker did not acknowledge."""


@dataclass(frozen=True)
class OutboxBacklog:
    """Outbox rows not yet acknowledged by the broker: how many, and the oldest one's creation
    time and age (by the database's clock, which wrote ``created_at``)."""

    unpublished: int
    oldest_id: int | None
    oldest_created_at: datetime | None
    oldest_age_s: float | None

    def age_s_at(self, now: datetime) -> float:
        """The oldest row's age at ``now`` (0 when there is none): it keeps growing between reads."""
        if self.oldest_created_at is None:
            return 0.0
        return max(0.0, (now - self.oldest_created_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        oldest = self.oldest_created_at
        return {
            "outbox_unpublished": self.unpublished,
            "outbox_oldest_unpublished_at": None if oldest is None else format_time(oldest),
            "outbox_oldest_unpublished_age_s": None if self.oldest_age_s is None else round(self.oldest_age_s, 3),
        }


EMPTY_BACKLOG = OutboxBacklog(0, None, None, None)


def read_backlog(conn: sa.Connection) -> OutboxBacklog:
    """The outbox's backlog, read through its partial index of unpublished rows."""
    row = conn.execute(
        sa.text(
            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL), o.id, o.created_at, "
            "extract(epoch FROM now() - o.created_at) FROM (SELECT 1) AS one LEFT JOIN LATERAL "
            "(SELECT id, created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1) AS o ON true"
        )
    ).one()
    count, oldest_id, created_at, age = row
    return OutboxBacklog(
        int(count),
        None if oldest_id is None else int(oldest_id),
        created_at,
        None if age is None else max(0.0, float(age)),
    )


def make_producer(
    bootstrap: str,
    *,
    delivery_timeout_ms: int = RELAY_DELIVERY_TIMEOUT_MS,
    connect_timeout_ms: int = RELAY_CONNECT_TIMEOUT_MS,
) -> KafkaProducer:
    if delivery_timeout_ms < RELAY_LINGER_MS + 1:
        raise ValueError(f"delivery_timeout_ms must be above the linger ({RELAY_LINGER_MS} ms)")
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="clearing-outbox",
        acks="all",
        linger_ms=RELAY_LINGER_MS,
        max_in_flight_requests_per_connection=1,  # kafka-python's retries keep per-partition order
        # Off: a broker that restarted (a new cluster) refuses the old producer id for good, and
        # consumers de-duplicate by id anyway.
        enable_idempotence=False,
        delivery_timeout_ms=delivery_timeout_ms,
        request_timeout_ms=min(RELAY_REQUEST_TIMEOUT_MS, delivery_timeout_ms - RELAY_LINGER_MS),
        max_block_ms=min(RELAY_MAX_BLOCK_MS, delivery_timeout_ms),
        bootstrap_timeout_ms=connect_timeout_ms,
        max_request_size=outputs.PRODUCER_REQUEST_BYTES_MAX,
    )


class OutboxRelay:
    """``delivery_timeout_ms`` / ``connect_timeout_ms``: how long a send may go unacknowledged, and
    building a producer may wait for a broker, before the round fails (tests shorten them)."""

    def __init__(
        self,
        engine: sa.Engine,
        bootstrap: str,
        *,
        delivery_timeout_ms: int = RELAY_DELIVERY_TIMEOUT_MS,
        connect_timeout_ms: int = RELAY_CONNECT_TIMEOUT_MS,
    ) -> None:
        self.engine = engine
        self.bootstrap = bootstrap
        self.delivery_timeout_ms = delivery_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.result_wait_s = delivery_timeout_ms / 1000 + RELAY_RESULT_MARGIN_S
        self._producer: KafkaProducer | None = None
        self.published = 0  # rows acknowledged and marked by this relay
        self.sent = 0  # sends handed to the producer (re-sends included)
        self.failures = 0  # rounds that ended with a row not acknowledged
        self.backlog = EMPTY_BACKLOG
        self._backlog_read_at = float("-inf")
        self._probing = False  # after a failure: one row per round until the broker acknowledges
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(
                self.bootstrap, delivery_timeout_ms=self.delivery_timeout_ms, connect_timeout_ms=self.connect_timeout_ms
            )
        return self._producer

    def publish_pending(self) -> int:
        """Send one bounded round of unpublished rows in id order and mark those the broker
        acknowledged; returns how many were marked. Raises ``RelayDeliveryError`` (after marking
        the acknowledged prefix) when a row was not acknowledged."""
        limit = 1 if self._probing else RELAY_BATCH_ROWS_MAX
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, topic, key, value FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT :limit"
                ),
                {"limit": limit},
            ).all()
        if not rows:
            return 0
        try:
            marked = self._send_round(rows)
        except BaseException:
            self._probing = True
            self._discard_producer()
            raise
        self._probing = False
        return marked

    def _send_round(self, rows: Sequence[Any]) -> int:
        futures = []
        failure: str | None = None
        try:
            producer = self.producer
            for outbox_id, topic, key, value in rows:
                key_bytes, value_bytes = _encoded(outbox_id, key, value)
                futures.append(producer.send(topic, key=key_bytes, value=value_bytes))
                self.sent += 1
        except KafkaError as error:  # no metadata for the topic in time, no broker: nothing more is sent
            failure = f"sending outbox row {rows[len(futures)][0]} failed: {error!r}"
        marked = 0
        acknowledged: list[int] = []
        for (outbox_id, *_), future in zip(rows, futures, strict=False):
            try:
                future.get(timeout=self.result_wait_s)
            except Exception as error:  # KafkaError, or the wait for the result ran out
                failure = f"outbox row {outbox_id} was not acknowledged by the broker: {error!r}"
                break
            acknowledged.append(outbox_id)
            if len(acknowledged) >= RELAY_MARK_ROWS:
                marked += self._mark(acknowledged)
                acknowledged = []
        marked += self._mark(acknowledged)
        if failure is not None:
            raise RelayDeliveryError(f"{failure}; {marked} of the round's {len(rows)} rows were acknowledged")
        return marked

    def _mark(self, ids: list[int]) -> int:
        if not ids:
            return 0
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids) AND published_at IS NULL"),
                {"ids": ids},
            )
        self.published += len(ids)
        return len(ids)

    def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:
                logger.exception("closing the outbox producer failed")

    def read_backlog(self, *, every_s: float = RELAY_BACKLOG_EVERY_S) -> OutboxBacklog:
        """The backlog, read again when the last read is older than ``every_s`` (kept in
        ``self.backlog`` for the metrics)."""
        now = time.monotonic()
        if now - self._backlog_read_at >= every_s:
            with self.engine.connect() as conn:
                self.backlog = read_backlog(conn)
            self._backlog_read_at = now
        return self.backlog

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        backoff = RELAY_RETRY_BACKOFF_S
        while not self._stop.is_set():
            try:
                published = self.publish_pending()
                backoff = RELAY_RETRY_BACKOFF_S
            except Exception as error:
                self.failures += 1
                backlog = self._backlog_or_none()
                logger.warning(
                    "outbox relay: %s; %s rows wait (the oldest %s s old); retrying in %.1f s",
                    error,
                    "?" if backlog is None else backlog.unpublished,
                    "?" if backlog is None or backlog.oldest_age_s is None else f"{backlog.oldest_age_s:.0f}",
                    backoff,
                    extra={"outbox_unpublished": None if backlog is None else backlog.unpublished},
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RELAY_RETRY_BACKOFF_MAX_S)
                continue
            self._backlog_or_none()
            if published == 0:
                self._wake.wait(RELAY_IDLE_WAIT_S)
                self._wake.clear()

    def _backlog_or_none(self) -> OutboxBacklog | None:
        try:
            return self.read_backlog()
        except Exception:  # the database is away: the next round says so
            logger.debug("outbox relay: the backlog could not be read", exc_info=True)
            return None

    def stop(self, drain: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.result_wait_s + RELAY_RETRY_BACKOFF_MAX_S)
        if drain and not self._probing:  # the broker did not answer lately: do not hold the stop up for it
            try:
                while self.publish_pending():
                    pass
            except Exception:
                logger.exception("outbox relay could not drain at stop; rows stay for the next start")
        elif drain:
            logger.warning(
                "outbox relay: the broker did not acknowledge the last round; unpublished rows stay for the next start"
            )
        self._discard_producer()


def _encoded(outbox_id: int, key: str | None, value: dict[str, Any]) -> tuple[bytes | None, bytes]:
    """A row's key and value as sent. A dead letter written before messages were bounded (a raw
    value of a megabyte) is shortened here as it would be today; anything else over the bound is a
    bug that would stop the relay, and says so."""
    if outputs.message_bytes(key, value) > outputs.OUTPUT_MESSAGE_BYTES_MAX and value.get("type") == "rejected":
        value = outputs.shorten_dead_letter(value)
        key = value.get("key")
    try:
        outputs.check_size(key, value)
    except outputs.OutputTooLargeError as error:
        raise outputs.OutputTooLargeError(f"outbox row {outbox_id}: {error}") from None
    return outputs.encode_key(key), outputs.encode_value(value)
