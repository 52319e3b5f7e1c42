"""What ``audit verify`` checks against the world outside the database: were the decisions
published (the outbox), and does the log agree with the checkpoints published on
``clearing.checkpoints`` (clearing/engine/checkpoints.py)?

outbox       every decision event that goes out on a topic has its outbox row (one that is
             missing was never queued for publication: a failure), and the rows the broker has
             not acknowledged yet are reported with their count, topics and the age of the
             oldest. A backlog is normal under a running ledger (the relay is a few milliseconds
             behind the commit) and after a stop with the broker away (the next start sends it),
             so it fails only when the oldest unpublished row was written more than
             ``OUTBOX_UNPUBLISHED_BEHIND_LOG_S_MAX`` before the log's last batch: the ledger went
             on committing for that long while the decision did not reach its topic (a stuck
             relay). Measured against the log's own last batch rather than the clock, so a copy of
             the database checked days later says the same.
checkpoints  the log against every ``log_checkpoint`` read back from the topic (a bounded read):
             at each checkpoint's position, the row is the shard's, with the checkpoint's hash,
             event count and event time; with a public key, every signature must hold (unsigned
             checkpoints are then not trusted, only counted). Names the first position that
             disagrees and the last checkpoint before it that agrees: the log was altered between
             the two. When the topic cannot be read (no broker, not reachable, no such topic, no
             checkpoint on it) the check says "not checked" and why: it does not pass.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clearing.domain.inputs import format_time
from clearing.engine import outputs
from clearing.engine.checkpoints import MESSAGE_TYPE, public_key_from, signature_holds
from clearing.engine.outbox import read_backlog
from clearing.settings import Settings

logger = logging.getLogger(__name__)

OUTBOX_UNPUBLISHED_BEHIND_LOG_S_MAX = 300.0  # see the module docstring
SAMPLES_MAX = 5  # problems listed beside the first
CHECKPOINT_CONNECT_TIMEOUT_MS = 5_000  # a broker that does not answer within this: not checked
CHECKPOINT_REQUEST_TIMEOUT_MS = 10_000
CHECKPOINT_READ_TIMEOUT_S = 60.0  # the whole read of the topic, at most
CHECKPOINT_MESSAGES_MAX = 1_000_000  # 10^10 events at one checkpoint per 10,000
CHECKPOINT_POLL_MS = 200


@dataclass
class Finding:
    """A check's outcome, turned into a ``verify.Check`` by the caller. ``checked`` False: the
    check could not run (``problem`` says why); it neither passes nor fails unless required."""

    ok: bool
    first_bad_position: int | None = None
    problem: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    checked: bool = True


def notes(name: str, details: dict[str, Any]) -> list[str]:
    """Lines ``audit verify`` prints under the outbox and checkpoints checks (what passed, said)."""
    lines = []
    if name == "outbox" and details.get("outbox_unpublished"):
        lines.append(
            f"note: {details['outbox_unpublished']} outbox rows not published yet, the oldest written "
            f"{details['outbox_oldest_unpublished_at']} ({details['oldest_unpublished_behind_last_batch_s']} s before "
            f"the log's last batch); by topic: {details['unpublished_by_topic']}"
        )
    if name == "checkpoints" and details.get("checked"):
        for shard, anchor in details.get("anchored", {}).items():
            lines.append(
                f"note: shard {shard} anchored at position {anchor['position']} ({anchor['event_count']} events); "
                f"{anchor['events_after']} events after it not anchored yet"
            )
        lines.append(
            f"note: {details['trusted']} checkpoints compared from {details['topic']}; signatures "
            f"{details['signatures']}"
            + (f"; {details['unsigned_ignored']} unsigned ones not trusted" if details.get("unsigned_ignored") else "")
        )
    return ["     " + line for line in lines]


# ---------------------------------------------------------------------------------------------
# outbox


def outbox_finding(conn: sa.Connection) -> Finding:
    types = sorted(outputs.PUBLISHED_DECISION_TYPES)
    never_queued = conn.execute(
        sa.text(
            "SELECT e.position, e.type FROM events e WHERE e.type = ANY(:types) "
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.position = e.position) ORDER BY e.position LIMIT :limit"
        ),
        {"types": types, "limit": SAMPLES_MAX + 1},
    ).all()
    never_queued_count = 0
    if never_queued:
        never_queued_count = int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM events e WHERE e.type = ANY(:types) "
                    "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.position = e.position)"
                ),
                {"types": types},
            ).scalar_one()
        )
    backlog = read_backlog(conn)
    by_topic = {
        topic: int(n)
        for topic, n in conn.execute(
            sa.text("SELECT topic, count(*) FROM outbox WHERE published_at IS NULL GROUP BY topic ORDER BY topic")
        )
    }
    last_batch = conn.execute(sa.text("SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1")).scalar()
    behind_s: float | None = None
    oldest_position: int | None = None
    if backlog.oldest_created_at is not None and last_batch is not None:
        behind_s = max(0.0, (last_batch - backlog.oldest_created_at).total_seconds())
        oldest_position = conn.execute(
            sa.text("SELECT position FROM outbox WHERE id = :id"), {"id": backlog.oldest_id}
        ).scalar()
    # No age by the clock here: the same database verifies to the same report (the API's
    # /audit/status and the ledger's metrics give the age).
    details: dict[str, Any] = {
        "outbox_unpublished": backlog.unpublished,
        "outbox_oldest_unpublished_at": backlog.as_dict()["outbox_oldest_unpublished_at"],
        "unpublished_by_topic": by_topic,
        "oldest_unpublished_behind_last_batch_s": None if behind_s is None else round(behind_s, 3),
        "behind_last_batch_s_max": OUTBOX_UNPUBLISHED_BEHIND_LOG_S_MAX,
        "decisions_never_queued": never_queued_count,
    }
    if never_queued:
        position, event_type = never_queued[0]
        details["never_queued_samples"] = [f"{t} at {p}" for p, t in never_queued[1:SAMPLES_MAX]]
        return Finding(
            False,
            int(position),
            f"{never_queued_count} decision event(s) that go out on a topic have no outbox row, the first a "
            f"{event_type} at position {position}: never queued for publication, so never published",
            details,
        )
    if behind_s is not None and behind_s > OUTBOX_UNPUBLISHED_BEHIND_LOG_S_MAX:
        return Finding(
            False,
            None if oldest_position is None else int(oldest_position),
            f"{backlog.unpublished} outbox row(s) are not published; the oldest (outbox id {backlog.oldest_id}, "
            f"written {backlog.as_dict()['outbox_oldest_unpublished_at']}) is {behind_s:.0f} s older than the "
            f"log's last batch: the ledger went on while its decisions did not reach their topics (is the relay stuck, "
            f"the broker away?)",
            details,
        )
    return Finding(True, details=details)


# ---------------------------------------------------------------------------------------------
# checkpoints


@dataclass(frozen=True)
class CheckpointSource:
    """Where ``audit verify`` reads the checkpoints: the broker (None, with ``unavailable`` saying
    why, when there is none to ask), the topic, and the public key signatures are checked with.
    ``required``: a check that cannot run fails instead of being reported as not checked."""

    bootstrap: str | None
    topic: str
    public_key: Ed25519PublicKey | None = None
    unavailable: str | None = None
    required: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, *, required: bool = False) -> CheckpointSource:
        """The configured broker (``CLEARING_KAFKA_BOOTSTRAP``), else the embedded broker under
        ``CLEARING_HOME`` if one runs (none is started: a new one would be empty)."""
        from clearing.embedded import BROKER_DIR_NAME, broker_running, read_broker

        topic = settings.topic_prefix + outputs.CHECKPOINTS
        public_key = public_key_from(settings)
        if settings.kafka_bootstrap:
            return cls(settings.kafka_bootstrap, topic, public_key, required=required)
        broker = read_broker(settings.home_path() / BROKER_DIR_NAME)
        if broker is not None and broker_running(broker):
            return cls(broker.bootstrap, topic, public_key, required=required)
        return cls(
            None,
            topic,
            public_key,
            unavailable=f"no broker: CLEARING_KAFKA_BOOTSTRAP is unset and no embedded broker runs under "
            f"{settings.home_path()}",
            required=required,
        )


class CheckpointsUnavailable(RuntimeError):
    """The checkpoints topic could not be read; the message says why."""


def read_topic(bootstrap: str, topic: str) -> tuple[list[dict[str, Any]], int, bool]:
    """Every message of ``topic`` from its beginning to its end as of the start of the read,
    bounded by ``CHECKPOINT_READ_TIMEOUT_S`` and ``CHECKPOINT_MESSAGES_MAX``. Returns the JSON
    objects, how many messages were not one, and whether the read reached the end."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="clearing-audit",
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=CHECKPOINT_CONNECT_TIMEOUT_MS,
            request_timeout_ms=CHECKPOINT_REQUEST_TIMEOUT_MS,
        )
    except KafkaError as error:
        raise CheckpointsUnavailable(f"the broker at {bootstrap} cannot be reached ({error!r})") from None
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise CheckpointsUnavailable(f"there is no topic {topic} on the broker at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        values: list[dict[str, Any]] = []
        malformed = 0
        deadline = time.monotonic() + CHECKPOINT_READ_TIMEOUT_S
        read = 0

        def done() -> bool:
            return all(consumer.position(tp) >= ends[tp] for tp in tps)

        while not done():
            if time.monotonic() > deadline or read >= CHECKPOINT_MESSAGES_MAX:
                return values, malformed, False
            for tp, records in consumer.poll(timeout_ms=CHECKPOINT_POLL_MS).items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    read += 1
                    try:
                        value = json.loads(record.value)
                    except (TypeError, ValueError):
                        malformed += 1
                        continue
                    if isinstance(value, dict):
                        values.append(value)
                    else:
                        malformed += 1
        return values, malformed, True
    except KafkaError as error:
        raise CheckpointsUnavailable(f"reading {topic} from {bootstrap} failed ({error!r})") from None
    finally:
        consumer.close()


@dataclass(frozen=True)
class _Published:
    shard: int
    position: int
    hash: str
    event_count: int
    occurred_at: str
    signed: bool

    @classmethod
    def parse(cls, value: dict[str, Any]) -> _Published | None:
        if value.get("type") != MESSAGE_TYPE:
            return None
        shard, position, digest = value.get("shard"), value.get("position"), value.get("hash")
        count, at = value.get("event_count"), value.get("occurred_at")
        if not (
            type(shard) is int
            and type(position) is int
            and position > 0
            and type(count) is int
            and isinstance(digest, str)
            and isinstance(at, str)
        ):
            return None
        return cls(shard, position, digest, count, at, "signature" in value)


def checkpoints_finding(conn: sa.Connection, source: CheckpointSource | None) -> Finding:
    if source is None:
        return _not_checked("no checkpoint source was given to the verifier", None)
    if source.bootstrap is None:
        return _not_checked(source.unavailable or "no broker", source)
    try:
        values, malformed, complete = read_topic(source.bootstrap, source.topic)
    except CheckpointsUnavailable as error:
        return _not_checked(str(error), source)
    return compare_checkpoints(conn, values, malformed, complete, source)


def _not_checked(why: str, source: CheckpointSource | None) -> Finding:
    required = source is not None and source.required
    return Finding(
        not required,
        problem=f"checkpoints not checked: {why}",
        details={"checked": False, "why": why, "required": required},
        checked=False,
    )


def compare_checkpoints(
    conn: sa.Connection,
    values: list[dict[str, Any]],
    malformed: int,
    complete: bool,
    source: CheckpointSource,
) -> Finding:
    """The log against the checkpoint messages ``values`` (see the module docstring)."""
    key = source.public_key
    messages = len(values) + malformed
    problems: list[tuple[int, str]] = []
    trusted: list[_Published] = []
    unsigned = 0
    for value in values:
        published = _Published.parse(value)
        if published is None:
            malformed += 1
            continue
        if key is not None:
            if not published.signed:
                unsigned += 1
                continue
            if not signature_holds(value, key):
                problems.append(
                    (
                        published.position,
                        f"the checkpoint of shard {published.shard} at position {published.position} carries a "
                        "signature that does not hold with the public key: it was forged or altered on the topic",
                    )
                )
                continue
        trusted.append(published)
    details: dict[str, Any] = {
        "checked": True,
        "topic": source.topic,
        "messages": messages,
        "malformed": malformed,
        "trusted": len(trusted),
        "signatures": "checked" if key is not None else "not checked: no public key (CLEARING_SIGNING_PUBLIC_KEY)",
        "unsigned_ignored": unsigned,
        "read_to_the_end": complete,
    }
    if not trusted and not problems:
        why = f"no usable checkpoint on {source.topic}" + (
            f" ({unsigned} unsigned ones not trusted: a public key is set)" if unsigned else ""
        ) + (" (an embedded broker keeps its topics in memory only: a restart empties them)")
        finding = _not_checked(why, source)
        finding.details.update(details, checked=False)
        return finding
    positions = sorted({p.position for p in trusted})
    rows = {
        int(position): (int(shard), bytes(digest), occurred_at, int(n))
        for position, shard, digest, occurred_at, n in conn.execute(
            sa.text(
                "SELECT position, shard, hash, occurred_at, n FROM (SELECT position, shard, hash, occurred_at, "
                "row_number() OVER (PARTITION BY shard ORDER BY position) AS n FROM events) AS counted "
                "WHERE position = ANY(:positions)"
            ),
            {"positions": positions},
        )
    }
    heads = {
        int(shard): (int(last), int(n))
        for shard, last, n in conn.execute(sa.text("SELECT shard, max(position), count(*) FROM events GROUP BY shard"))
    }
    agreeing: dict[int, _Published] = {}
    disagreeing: list[_Published] = []
    for published in sorted(trusted, key=lambda p: (p.position, p.shard)):
        problem = _disagreement(published, rows.get(published.position), heads.get(published.shard))
        if problem is None:
            if published.shard not in agreeing or agreeing[published.shard].position < published.position:
                agreeing[published.shard] = published
            continue
        disagreeing.append(published)
        problems.append((published.position, problem))
    details["anchored"] = {
        str(shard): {
            "position": cp.position,
            "event_count": cp.event_count,
            "events_after": max(0, heads.get(shard, (0, 0))[1] - cp.event_count),
        }
        for shard, cp in sorted(agreeing.items())
    }
    if not problems:
        return Finding(True, details=details)
    problems.sort()
    position, problem = problems[0]
    first = next((p for p in disagreeing if p.position == position), None)
    if first is not None:
        before = [
            p.position for p in trusted if p.shard == first.shard and p.position < position and p not in disagreeing
        ]
        problem += (
            f"; the last checkpoint of shard {first.shard} before it that agrees is at position {max(before)}"
            if before
            else f"; no earlier checkpoint of shard {first.shard} agrees"
        )
    details["disagreements"] = len(problems)
    details["samples"] = [text for _, text in problems[1:SAMPLES_MAX]]
    return Finding(False, position, problem, details)


def _disagreement(
    published: _Published,
    row: tuple[int, bytes, Any, int] | None,
    head: tuple[int, int] | None,
) -> str | None:
    where = f"the checkpoint of shard {published.shard} at position {published.position}"
    if row is None:
        if head is None or head[0] < published.position:
            end = "is empty" if head is None else f"ends at position {head[0]} with {head[1]} events"
            return (
                f"{where} ({published.event_count} events) is past the log's end: shard {published.shard}'s log "
                f"{end}, so events it anchored were removed"
            )
        return f"{where}: there is no event at that position in the log"
    shard, digest, occurred_at, count = row
    if shard != published.shard:
        return f"{where}: the event at that position belongs to shard {shard}"
    if digest.hex() != published.hash.lower():
        return f"{where}: the log's hash there differs from the published one, so the log was altered at or before it"
    if count != published.event_count:
        return f"{where}: the log has {count} events of the shard up to there, the checkpoint {published.event_count}"
    if format_time(occurred_at) != published.occurred_at:
        return (
            f"{where}: the event there occurred at {format_time(occurred_at)}, the checkpoint says "
            f"{published.occurred_at}"
        )
    return None
