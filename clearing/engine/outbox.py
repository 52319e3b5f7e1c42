"""The outbox relay: publishes committed outbox rows to Kafka in id order, at least once.

A row is marked published only after the broker acknowledged it (producer flush), so a crash
between send and mark re-sends it: consumers de-duplicate by the id fields (CONTRACT.md), and a
re-sent message carries the same ids because it is the same row.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import sqlalchemy as sa
from kafka import KafkaProducer

logger = logging.getLogger(__name__)

RELAY_BATCH_ROWS_MAX = 5_000
RELAY_IDLE_WAIT_S = 0.2
RELAY_ERROR_BACKOFF_S = 1.0


def _serialize(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class OutboxRelay:
    def __init__(self, engine: sa.Engine, bootstrap: str) -> None:
        self.engine = engine
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="clearing-outbox",
            acks="all",
            linger_ms=5,
            retries=5,
            max_in_flight_requests_per_connection=1,  # keep per-partition order across retries
        )
        self.published = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_pending(self) -> int:
        """Send one bounded batch of unpublished rows; returns how many were sent."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT id, topic, key, value FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT :limit"
                ),
                {"limit": RELAY_BATCH_ROWS_MAX},
            ).all()
            if not rows:
                return 0
            for _, topic, key, value in rows:
                self.producer.send(topic, key=key.encode("utf-8") if key is not None else None, value=_serialize(value))
            self.producer.flush()
            conn.execute(
                sa.text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)"),
                {"ids": [row[0] for row in rows]},
            )
            conn.commit()
        self.published += len(rows)
        return len(rows)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.publish_pending() == 0:
                    self._wake.wait(RELAY_IDLE_WAIT_S)
                    self._wake.clear()
            except Exception:
                logger.exception("outbox relay failed; retrying")
                self._stop.wait(RELAY_ERROR_BACKOFF_S)

    def stop(self, drain: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if drain:
            try:
                while self.publish_pending():
                    pass
            except Exception:
                logger.exception("outbox relay could not drain at stop; rows stay for the next start")
        self.producer.close()
