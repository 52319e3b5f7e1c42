"""The chain anchored outside the database: the ledger publishes log checkpoints, and ``audit
verify`` checks the log against them. A row forged with a correctly recomputed hash chain, or a
cut tail, followed by ``projections rebuild`` passes every check inside the database, and is
caught by the checkpoints, which name the position; signatures hold, a tampered one does not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from kafka import KafkaProducer

from clearing.audit.published import CheckpointSource
from clearing.audit.rebuild import rebuild
from clearing.audit.verify import Check, run_verify, verify
from clearing.domain.inputs import format_time
from clearing.embedded import free_port
from clearing.engine import checkpoints, outputs
from clearing.engine.ledger import Ledger
from clearing.engine.outbox import OutboxRelay
from clearing.engine.runner import run
from clearing.store.db import make_engine
from clearing.store.hashing import canonical_json, chain, digest_input
from consumers.kafka_input import InputConsumer
from tests.integration.conftest import (
    APP_ROLE,
    InProcessLedger,
    consume_topic,
    offsets_reached,
    produce,
    stored_offsets,
)

pytestmark = pytest.mark.integration

EVERY = 7  # events between two checkpoints here
ACCOUNTS = 12
SEED = bytes(range(32))


def _t(second: int) -> str:
    return f"2026-11-23T12:00:{second:02d}.000Z"


def _deposit(account: str, amount: str, second: int) -> tuple[str, str, dict[str, Any]]:
    return (
        "transfers",
        account,
        {"type": "deposit", "transfer_id": f"D-{account}", "account_id": account, "asset": "USDT", "amount": amount,
         "occurred_at": _t(second)},
    )


MESSAGES = [_deposit(f"A{i:02d}", str(1000 + i), i) for i in range(ACCOUNTS)]
# The log's head: the bundled parameters it opens with, then a deposit per account.
HEAD = 1 + ACCOUNTS


@pytest.fixture
def signer() -> checkpoints.Signer:
    return checkpoints.Signer.from_text(SEED.hex())


@pytest.fixture
def anchored(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, signer: checkpoints.Signer
) -> Iterator[InProcessLedger]:
    """A log of lone deposits (no decisions, so nothing but the events themselves to forge),
    checkpointed every ``EVERY`` events and at its head (as at a stop), signed, all published."""
    ledger = in_process_ledger.ledger
    ledger.checkpoints.every_events = EVERY
    ledger.checkpoints.signer = signer
    in_process_ledger.run_until(produce(broker, topic_prefix, MESSAGES).ends)
    assert ledger.checkpoint() is not None
    while in_process_ledger.relay.publish_pending():
        pass
    yield in_process_ledger


def _source(broker: str, prefix: str, key: Any = None, **kwargs: Any) -> CheckpointSource:
    return CheckpointSource(broker, prefix + outputs.CHECKPOINTS, key, **kwargs)


def _checks(engine: sa.Engine, source: CheckpointSource | None) -> dict[str, Check]:
    return {check.name: check for check in verify(engine, checkpoints=source).checks}


def _forge(engine: sa.Engine, position: int, amount: str) -> None:
    """As the owner: change one event's payload and recompute the hash chain from it to the end,
    every hash correct (what the chain alone cannot tell from the truth)."""
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events DISABLE TRIGGER ALL"))
        conn.execute(
            sa.text("UPDATE events SET payload = jsonb_set(payload, '{amount}', to_jsonb(CAST(:a AS text))) "
                    "WHERE position = :p"),
            {"a": amount, "p": position},
        )
        previous = conn.execute(
            sa.text("SELECT prev_hash FROM events WHERE position = :p"), {"p": position}
        ).scalar_one()
        rows = conn.execute(
            sa.text(
                "SELECT position, shard, stream, stream_version, type, schema_version, payload, occurred_at, "
                "recorded_at, source_topic, source_partition, source_offset, idempotency_key, cause_position "
                "FROM events WHERE position >= :p ORDER BY position"
            ),
            {"p": position},
        ).all()
        previous = bytes(previous)
        for row in rows:
            digest = chain(
                previous,
                digest_input(
                    row.position, row.shard, row.stream, row.stream_version, row.type, row.schema_version,
                    canonical_json(row.payload), format_time(row.occurred_at), format_time(row.recorded_at),
                    row.source_topic, row.source_partition, row.source_offset, row.idempotency_key,
                    row.cause_position,
                ),
            )
            conn.execute(
                sa.text("UPDATE events SET prev_hash = :prev, hash = :hash WHERE position = :p"),
                {"prev": previous, "hash": digest, "p": row.position},
            )
            previous = digest
        conn.execute(sa.text("ALTER TABLE events ENABLE TRIGGER ALL"))


def _cut(engine: sa.Engine, after: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events DISABLE TRIGGER ALL"))
        conn.execute(sa.text("DELETE FROM events WHERE position > :p"), {"p": after})
        conn.execute(sa.text("ALTER TABLE events ENABLE TRIGGER ALL"))


def _published(broker: str, prefix: str, at_least: int) -> list[dict[str, Any]]:
    """The checkpoint messages on the topic as published (consume_topic adds where each was)."""
    values = consume_topic(broker, prefix + outputs.CHECKPOINTS, lambda values: len(values) >= at_least)
    return [{name: item for name, item in value.items() if name != "_at"} for value in values]


def test_checkpoints_go_out_every_interval_and_at_the_head_and_an_honest_log_agrees_with_them(
    anchored: InProcessLedger,
    owner_engine: sa.Engine,
    broker: str,
    topic_prefix: str,
    signer: checkpoints.Signer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    head = HEAD
    expected = [*range(EVERY, head + 1, EVERY), head]
    published = _published(broker, topic_prefix, len(expected))
    assert [value["position"] for value in published] == expected
    assert [value["event_count"] for value in published] == expected  # one shard: count = position
    with owner_engine.connect() as conn:
        hashes = dict(conn.execute(sa.text("SELECT position, hash FROM events")).all())
        times = dict(conn.execute(sa.text("SELECT position, occurred_at FROM events")).all())
    for value in published:
        assert value["hash"] == bytes(hashes[value["position"]]).hex()
        assert value["occurred_at"] == format_time(times[value["position"]])
        assert checkpoints.signature_holds(value, signer.public_key)

    found = _checks(owner_engine, _source(broker, topic_prefix, signer.public_key))
    assert all(check.ok for check in found.values()), {n: c.problem for n, c in found.items() if not c.ok}
    check = found["checkpoints"]
    assert check.details["checked"] is True and check.details["signatures"] == "checked"
    assert check.details["trusted"] == len(expected)
    assert check.details["anchored"] == {"0": {"position": head, "event_count": head, "events_after": 0}}

    assert run_verify(owner_engine, False, checkpoints=_source(broker, topic_prefix, signer.public_key)) == 0
    out = capsys.readouterr().out
    assert "ok   checkpoints" in out
    assert f"note: shard 0 anchored at position {head} ({head} events); 0 events after it not anchored yet" in out
    assert "verified: every check holds" in out


def test_a_forged_row_with_a_recomputed_chain_and_a_rebuild_is_caught_by_the_checkpoints(
    anchored: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    forged = EVERY + 3  # between the checkpoint at EVERY and the one at the head
    _forge(owner_engine, forged, "1000000")
    rebuild(owner_engine, swap=True)

    # Inside the database everything agrees: the chain, the replay, the rebuilt projections.
    inside = _checks(owner_engine, None)
    assert all(check.ok for check in inside.values()), {n: c.problem for n, c in inside.items() if not c.ok}
    assert inside["checkpoints"].details["checked"] is False

    found = _checks(owner_engine, _source(broker, topic_prefix))
    check = found["checkpoints"]
    assert not check.ok
    assert check.first_bad_position == HEAD
    assert "altered" in (check.problem or "")
    assert f"agrees is at position {EVERY}" in (check.problem or "")


def test_a_cut_tail_and_a_rebuild_is_caught_by_the_checkpoint_past_the_end(
    anchored: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str
) -> None:
    kept = HEAD - 2
    _cut(owner_engine, kept)
    rebuild(owner_engine, swap=True)
    inside = _checks(owner_engine, None)
    assert all(check.ok for check in inside.values()), {n: c.problem for n, c in inside.items() if not c.ok}

    check = _checks(owner_engine, _source(broker, topic_prefix))["checkpoints"]
    assert not check.ok
    assert check.first_bad_position == HEAD  # the checkpoint at the old head
    assert f"ends at position {kept}" in (check.problem or "")
    assert "removed" in (check.problem or "")


def test_a_tampered_signature_fails_and_unsigned_checkpoints_are_not_trusted_with_a_key(
    anchored: InProcessLedger, owner_engine: sa.Engine, broker: str, topic_prefix: str, signer: checkpoints.Signer
) -> None:
    published = _published(broker, topic_prefix, 1)
    genuine = published[0]
    tampered = {**genuine, "signature": signer.sign({**genuine, "position": genuine["position"] + 1})}
    unsigned = {name: value for name, value in genuine.items() if name != "signature"}
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        for value in (unsigned, tampered):
            producer.send(topic_prefix + outputs.CHECKPOINTS, key=b"0", value=json.dumps(value).encode()).get(30)
    finally:
        producer.close()
    check = _checks(owner_engine, _source(broker, topic_prefix, signer.public_key))["checkpoints"]
    assert not check.ok
    assert check.first_bad_position == genuine["position"]
    assert "signature that does not hold" in (check.problem or "")
    assert check.details["unsigned_ignored"] == 1

    # Without a public key the signatures are not checked, and says so; the log still agrees.
    check = _checks(owner_engine, _source(broker, topic_prefix))["checkpoints"]
    assert check.ok and check.details["signatures"].startswith("not checked")


def test_an_unreachable_broker_is_reported_as_not_checked_and_fails_when_required(
    anchored: InProcessLedger, owner_engine: sa.Engine, topic_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    check = _checks(owner_engine, _source(nowhere, topic_prefix))["checkpoints"]
    assert check.ok and check.details["checked"] is False
    assert (check.problem or "").startswith("checkpoints not checked: the broker at")

    assert run_verify(owner_engine, False, checkpoints=_source(nowhere, topic_prefix)) == 0
    out = capsys.readouterr().out
    assert "--   checkpoints: checkpoints not checked" in out
    assert "verified, except what was not checked: checkpoints" in out

    required = _checks(owner_engine, _source(nowhere, topic_prefix, required=True))["checkpoints"]
    assert not required.ok
    missing_topic = _checks(owner_engine, CheckpointSource(anchored.broker, "no-such-topic.checkpoints"))
    assert "no topic no-such-topic.checkpoints" in (missing_topic["checkpoints"].problem or "")


def test_a_clean_stop_of_the_run_loop_publishes_a_checkpoint_at_the_head(
    database_url: str, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    produced = produce(broker, topic_prefix, MESSAGES[:5])
    engine = make_engine(database_url, role=APP_ROLE)
    try:
        ledger = Ledger(engine, topic_prefix=topic_prefix)
        ledger.load()
        stop = threading.Event()

        def stop_when_ingested(*_: Any) -> None:
            if offsets_reached(stored_offsets(engine), produced.ends):
                stop.set()

        # run() closes the source and stops (draining) the relay when it returns.
        stats = run(
            ledger,
            InputConsumer(broker, topic_prefix),
            OutboxRelay(engine, broker),
            stop=stop,
            on_batch=stop_when_ingested,
            install_signal_handlers=False,
        )
    finally:
        engine.dispose()
    assert stats.appended == 1 + 5  # the parameters the log opens with, the five deposits
    published = _published(broker, topic_prefix, 1)
    assert [(v["position"], v["event_count"]) for v in published] == [(6, 6)]
    with owner_engine.connect() as conn:
        head_hash = conn.execute(sa.text("SELECT hash FROM events WHERE position = 6")).scalar_one()
    assert published[0]["hash"] == bytes(head_hash).hex()
    assert "signature" not in published[0]  # no signer here
