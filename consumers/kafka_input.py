"""Kafka adapter of the ledger: creates the topics, assigns this shard's partitions, seeks to the
offsets stored in PostgreSQL, and hands raw records to the engine in bounded batches.

Consumer groups are not used: the offsets that count are the ones PostgreSQL stores with the
events they produced, so the consumer is assigned its partitions explicitly and seeks to them.
(Offsets committed to Kafka would only be informational; we commit none.)
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import OffsetOutOfRangeError, TopicAlreadyExistsError

from clearing.domain.messages import INPUT_TOPICS
from clearing.engine.outputs import CHECKPOINTS, OUTPUT_TOPICS
from clearing.engine.records import RawRecord, SourceLostRecords, merge_key

logger = logging.getLogger(__name__)

# Partitions when the ledger creates a topic itself. Account-keyed topics spread over shards;
# marks and admin messages go to every shard.
ACCOUNT_TOPIC_PARTITIONS = 4
BROADCAST_TOPICS = ("marks", "admin")
BROADCAST_TOPIC_PARTITIONS = 1
OUTPUT_TOPIC_PARTITIONS = 4
POLL_RECORDS_MAX = 5_000
FETCH_RECORDS_MAX = 20_000  # records taken from the client per poll into the event-time merge
BUFFER_RECORDS_MAX = 20_000  # records buffered per partition before its fetching pauses
MERGE_HOLD_S_MAX = 0.5  # longest the merge waits for a silent partition before it releases anyway
TOP_UP_POLLS_MAX = 8  # further polls per batch while records keep arriving and the buffer is short
TOP_UP_WAIT_MS = 20  # longest each of them waits for a fetch in flight
TOP_UP_BUFFER_FACTOR = 2  # buffer up to this many batches' worth (the merge holds some back)
FETCH_BYTES_MAX = 32 * 1024 * 1024
# Small per-partition fetches make every poll a mix of all partitions, so the engine's merge by
# event time sees the deposits and the fills of the same minutes together (a large fetch fills a
# batch from one partition). A message larger than this still comes through: a fetch returns the
# first record batch of a partition whatever its size (KIP-74), so admin documents up to
# ADMIN_MESSAGE_BYTES_MAX are not cut off.
PARTITION_FETCH_BYTES_MAX = 128 * 1024
METADATA_WAIT_MS = 10_000
END_OFFSETS_TIMEOUT_S = 30.0  # longest assign waits for the broker to say where its partitions end


_EVENT_TIME = re.compile(rb'"occurred_at"\s*:\s*"([^"]{1,64})"')
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def event_time(raw: bytes) -> datetime | None:
    """The ``occurred_at`` of a raw message, read without decoding it (None when there is none
    that parses: the engine will dead-letter the message, in its place)."""
    found = _EVENT_TIME.search(raw)
    if found is None:
        return None
    try:
        at = datetime.fromisoformat(found.group(1).decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return at if at.tzinfo is not None else None


class EventTimeMerge:
    """Releases buffered records in event-time order across partitions.

    Each partition is in event-time order as its producer wrote it, but a poll hands over whole
    runs of one partition: a consumer catching up would read every fill of the last hour before
    the deposits that funded them, and the ledger would margin-call solvent accounts. So records
    wait here until no partition that may still deliver an earlier one is behind: a partition
    not yet at its high watermark holds the release at the time of the last record it gave (its
    next one is no earlier). Each partition keeps its offset order.
    Holding is bounded: a partition that stays silent longer than ``MERGE_HOLD_S_MAX`` (a stalled
    broker, a watermark that lags) does not stop the ledger. The clock restarts when a partition
    not heard from since the hold began delivers: a client catching up hands over one large run
    of one partition per poll, and going round all of them takes longer than the hold (releasing
    then booked a quarter of an hour of fills before the deposits and marks of the same minutes).
    So the hold lasts at most (partitions + 1) x ``MERGE_HOLD_S_MAX``.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, int], deque[tuple[datetime, RawRecord]]] = {}
        self.last_time: dict[tuple[str, int], datetime] = {}
        self.held_since: float | None = None
        self.heard: set[tuple[str, int]] = set()  # partitions that delivered since the hold began

    def add(self, partition: tuple[str, int], records: list[RawRecord]) -> None:
        if records and partition not in self.heard:
            self.heard.add(partition)
            self.held_since = None  # progress: the clock starts again at the next empty release
        buffer = self.buffers.setdefault(partition, deque())
        last = self.last_time.get(partition, _EARLIEST)
        for record in records:
            at = event_time(record.value)
            last = at if at is not None and at > last else last
            buffer.append((last, record))
        self.last_time[partition] = last

    def release(self, behind: set[tuple[str, int]], records_max: int, now: float) -> list[RawRecord]:
        # A partition that is behind may next deliver a record as early as the last one it gave.
        watermark = min((self.last_time.get(p, _EARLIEST) for p in behind), default=None)
        if watermark is not None and self.held_since is not None and now - self.held_since > MERGE_HOLD_S_MAX:
            watermark = None  # held long enough: release what is here
        heads = []
        for partition, buffer in self.buffers.items():
            if buffer:
                at, record = buffer[0]
                heads.append((merge_key(at, record), partition))
        heapq.heapify(heads)
        out: list[RawRecord] = []
        while heads and len(out) < records_max:
            key, partition = heads[0]
            if watermark is not None and key[0] > watermark:
                break
            buffer = self.buffers[partition]
            out.append(buffer.popleft()[1])
            if buffer:
                next_at, record = buffer[0]
                heapq.heapreplace(heads, (merge_key(next_at, record), partition))
            else:
                heapq.heappop(heads)
        pending = any(self.buffers.values())
        if out or not pending:
            self.held_since = None
            self.heard.clear()
        elif self.held_since is None:
            self.held_since = now
        return out

    def buffered(self) -> int:
        return sum(len(buffer) for buffer in self.buffers.values())


@dataclass(frozen=True)
class PartitionStart:
    """Where one assigned partition is read from: the offset stored in PostgreSQL (None when none
    is), the offset reading starts at, and why. (The partition's end is known from the first
    fetch: tansu answers ListOffsets with the last record batch's first offset + 1, not the end.)"""

    topic: str
    partition: int
    stored: int | None
    start: int
    note: str


# (topic, partition, offset the ledger has consumed up to, the broker's end of the partition)
LostPartition = tuple[str, int, int, int]


class BrokerLostMessages(SourceLostRecords):
    """The broker's partitions end before offsets the ledger has consumed already: a new or wiped
    cluster (or a restarted in-memory broker). Reading on would skip messages or re-read other
    ones under old offsets, so the ledger stops and says so."""

    def __init__(
        self, lost: list[LostPartition], cluster: str | None, *, running: bool, replaced: str | None = None
    ) -> None:
        self.lost = lost
        self.cluster = cluster
        self.running = running
        self.replaced = replaced  # the cluster id before, when the broker reports another one
        where = "; ".join(
            f"{topic}[{partition}]: consumed up to offset {offset}, "
            + (f"the broker's end is {end}" if end >= 0 else "which the broker says is out of range")
            for topic, partition, offset, end in lost
        )
        when = "while the ledger was running" if running else "at start"
        what = (
            f"the broker's cluster id changed from {replaced} to {cluster} ({when})"
            if replaced is not None
            else f"the broker (cluster id {cluster}) holds fewer messages than the ledger has consumed ({when})"
        )
        super().__init__(
            f"{what}: {where or 'no partition is behind yet'}. This is a new or wiped cluster, or a restarted "
            "in-memory broker; the ledger stops rather "
            "than skip messages or read other ones under old offsets. To recover: if the ledger points at the "
            "wrong broker, correct CLEARING_KAFKA_BOOTSTRAP and start it again; if the broker lost its data, "
            "publish the inputs again (those already in the log are recognised by their idempotency keys) and "
            "start `clearing run --reread-past-end` once, which reads these partitions from their beginning. "
            "Never move the offsets in consumer_offsets forward by hand: the messages before them would be skipped."
        )

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the input process's socket
        return (_lost, (self.lost, self.cluster, self.running, self.replaced))


def _lost(lost: list[LostPartition], cluster: str | None, running: bool, replaced: str | None) -> BrokerLostMessages:
    return BrokerLostMessages(lost, cluster, running=running, replaced=replaced)


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
            if kind == CHECKPOINTS:
                # One partition (every shard's checkpoints in one order, read in one go by audit
                # verify), kept for ever: a checkpoint is evidence as long as the log it anchors.
                wanted.append(NewTopic(name, 1, 1, topic_configs={"retention.ms": "-1"}))
                continue
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
        self.bootstrap = bootstrap
        self.consumer = self._client()
        self.assigned: list[TopicPartition] = []
        self.merge = EventTimeMerge()
        self.cluster: str | None = None  # the broker's cluster id at assign
        self.ends_seen: dict[TopicPartition, int] = {}  # the furthest end seen of each partition

    def _client(self) -> KafkaConsumer:
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"clearing-ledger-{self.shard}",
            enable_auto_commit=False,
            # Never reset a position on its own: an offset out of range means the broker lost
            # messages the ledger consumed, or deleted unread ones (BrokerLostMessages).
            auto_offset_reset="none",
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES_MAX,
            fetch_max_bytes=FETCH_BYTES_MAX,
            max_poll_records=POLL_RECORDS_MAX,
        )

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

    def assign(
        self,
        stored: dict[tuple[str, int], tuple[int, str | None]],
        broker_instance: str | None,
        *,
        reread_past_end: bool = False,
    ) -> list[PartitionStart]:
        """Assign this shard's partitions and seek each to the offset stored in PostgreSQL; returns
        where each is read from.

        An offset stored against another instance of the embedded broker (which keeps messages in
        memory only, so a restarted one is empty) is not used: the partition starts from the
        beginning, and the idempotency keys make anything read twice a no-op. An offset past the
        end of its partition shows at the first fetch: ``poll`` raises ``BrokerLostMessages``,
        unless ``reread_past_end`` (the operator's choice, after the inputs were published
        again) has it read such partitions from their beginning."""
        if self.assigned:
            # A new client for every new assignment: the old one keeps the high watermarks and
            # the cluster id of the broker it last heard from (a restarted one, maybe), and an
            # end seen there is not an end of this broker's partitions.
            self.consumer.close()
            self.consumer = self._client()
        self.assigned = self.partitions()
        self.consumer.assign(self.assigned)
        self.merge = EventTimeMerge()
        self.cluster = self.cluster_id()
        self.reread_past_end = reread_past_end
        self.ends_seen = {}
        starts = []
        for tp in self.assigned:
            offset, instance = stored.get((tp.topic, tp.partition), (0, None))
            known = (tp.topic, tp.partition) in stored
            note = "stored offset" if known else "no stored offset: from the beginning"
            if broker_instance is not None and instance is not None and instance != broker_instance and offset:
                note = f"offset {offset} belongs to an earlier embedded broker ({instance}): from the beginning"
                logger.warning("%s[%s]: %s", tp.topic, tp.partition, note)
                offset = 0
            if offset:
                self.consumer.seek(tp, offset)
            else:  # the partition's first offset, which retention may have moved past 0
                self.consumer.seek_to_beginning(tp)
            starts.append(PartitionStart(tp.topic, tp.partition, stored[(tp.topic, tp.partition)][0] if known else None,
                                         offset, note))  # fmt: skip
        return starts

    def broker_connected(self) -> bool:
        """Whether the client holds a connection to any broker of the cluster (read from the
        client's own state, defensively: True when it cannot tell)."""
        client: Any = getattr(self.consumer, "_client", None)
        try:
            brokers = client.cluster.brokers()
            return not brokers or any(client.connected(broker.node_id) for broker in brokers)
        except Exception:  # another kafka-python than the one this was written against
            return True

    def broker_cluster_id(self) -> str | None:
        """The cluster id the broker gives when asked now (None when it does not answer)."""
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="clearing-ledger-cluster")
        except Exception:  # the broker unreachable: the caller keeps what it knows
            return None
        try:
            found = admin.describe_cluster().get("cluster_id")
            return str(found) if found is not None else None
        except Exception:
            return None
        finally:
            admin.close()

    def cluster_id(self) -> str | None:
        """The cluster id the broker reported in its last metadata (the embedded broker's instance)."""
        cluster = getattr(getattr(self.consumer, "_client", None), "cluster", None)
        found = getattr(cluster, "cluster_id", None)
        return str(found) if found is not None else None

    def poll(self, timeout_ms: int, records_max: int = POLL_RECORDS_MAX) -> list[RawRecord]:
        """The next records in event-time order across this shard's partitions (see
        ``EventTimeMerge``), at most ``records_max``."""
        # Back-pressure: a partition with a full buffer fetches nothing until the merge drains it.
        full = [
            tp
            for tp in self.assigned
            if len(self.merge.buffers.get((tp.topic, tp.partition), ())) >= BUFFER_RECORDS_MAX
        ]
        if full:
            self.consumer.pause(*full)
        if self.consumer.paused():
            self.consumer.resume(*[tp for tp in self.consumer.paused() if tp not in full])
        fetched = self._fetch(timeout_ms)
        self._add(fetched)
        # Top up: while the ledger wrote the last batch, the next fetches were on their way. A
        # consumer catching up takes what arrives within a few milliseconds more, so that the
        # batch is near ``records_max`` rather than one fetch of each partition (every batch
        # rewrites the projection rows of the accounts it touched: fewer, larger batches write
        # fewer rows per event).
        polls = 0
        while fetched and self.merge.buffered() < records_max * TOP_UP_BUFFER_FACTOR and polls < TOP_UP_POLLS_MAX:
            fetched = self._fetch(TOP_UP_WAIT_MS)
            self._add(fetched)
            polls += 1
        behind = set()
        for tp in self.assigned:
            highwater = self.consumer.highwater(tp)
            # Unknown until the first fetch answers for the partition: then it may hold anything.
            if highwater is None or self.consumer.position(tp) < highwater:
                behind.add((tp.topic, tp.partition))
        self._check_ends()
        return self.merge.release(behind, records_max, time.monotonic())

    def _fetch(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        try:
            fetched: dict[TopicPartition, list[Any]] = self.consumer.poll(
                timeout_ms=timeout_ms, max_records=FETCH_RECORDS_MAX
            )
            return fetched
        except OffsetOutOfRangeError as error:  # Kafka's answer to a position past the end
            out_of_range: dict[TopicPartition, int] = error.args[0] if error.args else {}
            lost = [(tp.topic, tp.partition, offset, -1) for tp, offset in out_of_range.items()]
            self._lost(lost, self.cluster_id(), None)
            return {}

    def _check_ends(self) -> None:
        """Raise ``BrokerLostMessages`` when a partition ends before what was read of it, or its
        end moved back (never so on a broker that keeps its messages), or the cluster id changed."""
        lost = []
        for tp in self.assigned:
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            position = self.consumer.position(tp)
            if highwater < self.ends_seen.get(tp, 0) or position > highwater:
                lost.append((tp.topic, tp.partition, position, highwater))
            else:
                self.ends_seen[tp] = highwater
        cluster = self.cluster_id()
        if lost and cluster == self.cluster:
            # The fetches saw the new ends before the client's metadata saw the new cluster id:
            # ask the broker now (a restarted embedded broker is read from its start by its id).
            cluster = self.broker_cluster_id() or cluster
        replaced = self.cluster if self.cluster is not None and cluster not in (None, self.cluster) else None
        if lost or replaced is not None:
            self._lost(lost, cluster, replaced)

    def _lost(self, lost: list[LostPartition], cluster: str | None, replaced: str | None) -> None:
        """Raise ``BrokerLostMessages``, unless the operator asked (``reread_past_end``) that
        partitions found past their end before anything was read of them be read from their
        beginning: those are sought there, and reading goes on."""
        if replaced is None and self.reread_past_end:
            fresh = [
                (topic, partition)
                for topic, partition, *_ in lost
                if TopicPartition(topic, partition) not in self.ends_seen
            ]
            if len(fresh) == len(lost):
                for topic, partition, offset, end in lost:
                    note = f"offset {offset} is past the broker's end {end}: from the beginning (--reread-past-end)"
                    logger.warning("%s[%s]: %s", topic, partition, note)
                    self.consumer.seek_to_beginning(TopicPartition(topic, partition))
                return
        running = bool(self.ends_seen)
        raise BrokerLostMessages(lost, cluster, running=running, replaced=replaced)

    def _add(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        for tp in sorted(fetched, key=lambda tp: (tp.topic, tp.partition)):
            kind = self.topics.kind(tp.topic)
            self.merge.add(
                (tp.topic, tp.partition),
                [RawRecord(kind, tp.topic, tp.partition, m.offset, m.key, m.value or b"") for m in fetched[tp]],
            )

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
