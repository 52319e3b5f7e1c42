"""Kafka adapter of the ledger: creates the topics, assigns this shard's partitions, seeks to the
offsets stored in PostgreSQL, and hands raw records to the engine in bounded batches.

Consumer groups are not used: the offsets that count are the ones PostgreSQL stores with the
events they produced, so the consumer is assigned its partitions explicitly and seeks to them.
(Offsets committed to Kafka would only be informational; we commit none.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from clearing.domain.messages import INPUT_TOPICS
from clearing.engine.ledger import RawRecord
from clearing.engine.outputs import OUTPUT_TOPICS

logger = logging.getLogger(__name__)

# Partitions when the ledger creates a topic itself. Account-keyed topics spread over shards;
# marks and admin messages go to every shard.
ACCOUNT_TOPIC_PARTITIONS = 4
BROADCAST_TOPICS = ("marks", "admin")
BROADCAST_TOPIC_PARTITIONS = 1
OUTPUT_TOPIC_PARTITIONS = 4
POLL_RECORDS_MAX = 5_000
FETCH_BYTES_MAX = 32 * 1024 * 1024
# Small per-partition fetches make every poll a mix of all partitions, so the engine's merge by
# event time sees the deposits and the fills of the same minutes together (a large fetch fills a
# batch from one partition). A message larger than this still comes through: a fetch returns the
# first record batch of a partition whatever its size (KIP-74), so admin documents up to
# ADMIN_MESSAGE_BYTES_MAX are not cut off.
PARTITION_FETCH_BYTES_MAX = 128 * 1024
METADATA_WAIT_MS = 10_000


@dataclass(frozen=True)
class Topics:
    prefix: str

    def name(self, kind: str) -> str:
        return self.prefix + kind

    def kind(self, topic: str) -> str:
        return topic[len(self.prefix) :]


def ensure_topics(bootstrap: str, prefix: str) -> None:
    """Create the input and output topics that do not exist yet."""
    topics = Topics(prefix)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="clearing-admin")
    try:
        present = set(admin.list_topics())
        wanted = []
        for kind in (*INPUT_TOPICS, *OUTPUT_TOPICS):
            name = topics.name(kind)
            if name in present:
                continue
            partitions = BROADCAST_TOPIC_PARTITIONS if kind in BROADCAST_TOPICS else ACCOUNT_TOPIC_PARTITIONS
            if kind in OUTPUT_TOPICS:
                partitions = OUTPUT_TOPIC_PARTITIONS
            wanted.append(NewTopic(name, partitions, 1))
        for topic in wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic])
    finally:
        admin.close()


class InputConsumer:
    """This shard's view of the input topics."""

    def __init__(self, bootstrap: str, prefix: str, *, shard: int = 0, shards: int = 1) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
        self.topics = Topics(prefix)
        self.shard = shard
        self.shards = shards
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=f"clearing-ledger-{shard}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX,
            fetch_max_bytes=FETCH_BYTES_MAX,
            max_poll_records=POLL_RECORDS_MAX,
        )
        self.assigned: list[TopicPartition] = []

    def partitions(self) -> list[TopicPartition]:
        """This shard's partitions: every partition of marks and admin, and of the account-keyed
        topics those whose number maps to this shard (partition mod shards)."""
        chosen = []
        for kind in INPUT_TOPICS:
            name = self.topics.name(kind)
            found = self._partitions_for(name)
            for partition in sorted(found):
                if kind in BROADCAST_TOPICS or partition % self.shards == self.shard:
                    chosen.append(TopicPartition(name, partition))
        return chosen

    def _partitions_for(self, topic: str) -> set[int]:
        found = self.consumer.partitions_for_topic(topic)
        if not found:
            raise RuntimeError(f"topic {topic} has no partitions in the broker's metadata; was it created?")
        return set(found)

    def assign(self, stored: dict[tuple[str, int], tuple[int, str | None]], broker_instance: str | None) -> None:
        """Assign this shard's partitions and seek each to the offset stored in PostgreSQL.

        An offset stored against another instance of the embedded broker (which keeps messages in
        memory only, so a restarted one is empty) is not used: the partition starts from the
        beginning, and the idempotency keys make anything read twice a no-op."""
        self.assigned = self.partitions()
        self.consumer.assign(self.assigned)
        for tp in self.assigned:
            offset, instance = stored.get((tp.topic, tp.partition), (0, None))
            if broker_instance is not None and instance is not None and instance != broker_instance:
                logger.warning(
                    "offset %s of %s[%s] belongs to an earlier broker instance; reading from the start",
                    offset,
                    tp.topic,
                    tp.partition,
                )
                offset = 0
            self.consumer.seek(tp, offset)

    def poll(self, timeout_ms: int, records_max: int = POLL_RECORDS_MAX) -> list[RawRecord]:
        batch = self.consumer.poll(timeout_ms=timeout_ms, max_records=records_max)
        return list(self._records(batch))

    def _records(self, batch: dict[TopicPartition, list]) -> Iterable[RawRecord]:  # type: ignore[type-arg]
        for tp in sorted(batch, key=lambda tp: (tp.topic, tp.partition)):
            kind = self.topics.kind(tp.topic)
            for message in batch[tp]:
                yield RawRecord(kind, tp.topic, tp.partition, message.offset, message.key, message.value or b"")

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the high watermark per assigned partition, as far as the last fetch
        told the client (partitions it has no watermark for yet are left out)."""
        lags = {}
        for tp in self.assigned:
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lags[(tp.topic, tp.partition)] = max(0, highwater - self.consumer.position(tp))
        return lags

    def close(self) -> None:
        self.consumer.close()
