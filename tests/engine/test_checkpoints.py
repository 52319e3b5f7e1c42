"""Log checkpoints: staged at every multiple of the interval through the rows a batch streams,
signed with Ed25519 over the canonical JSON of their other fields."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clearing.domain.inputs import format_time
from clearing.engine import checkpoints, outputs

SEED = bytes(range(32))


class _Sink:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def add(self, row: Any) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        pass


def _row(position: int) -> tuple[Any, ...]:
    # The columns of eventlog.EVENT_COLUMNS that matter here: position, occurred_at (7), hash (last).
    at = f"2026-11-23T12:00:{position:02d}.000000Z"
    digest = bytes([position]) * 32
    return (position, 0, "s", 1, "T", 1, "{}", at, at, None, None, None, f"k{position}", None, b"p", digest)


def test_a_checkpoint_is_staged_at_every_multiple_of_the_interval_and_counts_only_once_committed() -> None:
    policy = checkpoints.CheckpointPolicy(every_events=3)
    policy.reset(committed_events=1)
    sink = _Sink()
    stream = policy.watch(sink, shard=2)
    for position in range(10, 17):  # the shard's events 2..8
        stream.add(_row(position))
    assert len(sink.rows) == 7  # every row passed on
    staged = [value for _, _, _, value in policy.staged_messages()]
    assert [(v["position"], v["event_count"]) for v in staged] == [(11, 3), (14, 6)]
    assert staged[0]["hash"] == (bytes([11]) * 32).hex()
    assert staged[0]["occurred_at"] == "2026-11-23T12:00:11.000000Z"
    assert staged[0]["shard"] == 2 and staged[0]["type"] == "log_checkpoint"
    assert policy.committed_events == 1  # not before the batch commits
    policy.commit()
    assert (policy.committed_events, policy.last_position) == (8, 14)


def test_a_failed_batch_leaves_nothing_staged_for_the_next() -> None:
    policy = checkpoints.CheckpointPolicy(every_events=2)
    stream = policy.watch(_Sink(), shard=0)
    stream.add(_row(1))
    stream.add(_row(2))
    assert policy.staged_messages()
    policy.watch(_Sink(), shard=0)  # the batch is written again (after a rollback)
    assert policy.staged_messages() == []
    assert policy.committed_events == 0


def test_a_signed_checkpoint_verifies_and_any_change_breaks_its_signature() -> None:
    signer = checkpoints.Signer.from_text(SEED.hex())
    checkpoint = checkpoints.Checkpoint(0, 10_000, b"\x01" * 32, 10_000, "2026-11-23T12:00:00.000000Z")
    kind, key, value = checkpoints.checkpoint_message(checkpoint, signer)
    assert (kind, key) == (outputs.CHECKPOINTS, "0")
    assert checkpoints.signature_holds(value, signer.public_key)
    for name, other in (("position", 10_001), ("hash", "02" * 32), ("event_count", 9_999), ("shard", 1)):
        assert not checkpoints.signature_holds({**value, name: other}, signer.public_key), name
    signature = bytearray(base64.b64decode(value["signature"]))
    signature[0] ^= 1
    assert not checkpoints.signature_holds(
        {**value, "signature": base64.b64encode(bytes(signature)).decode()}, signer.public_key
    )
    other_key = Ed25519PrivateKey.generate().public_key()
    assert not checkpoints.signature_holds(value, other_key)
    unsigned = {name: item for name, item in value.items() if name != "signature"}
    assert not checkpoints.signature_holds(unsigned, signer.public_key)


def test_the_signature_covers_the_canonical_json_of_the_other_fields() -> None:
    signer = checkpoints.Signer.from_text(base64.b64encode(SEED).decode())
    value = checkpoints.Checkpoint(3, 7, b"\xaa" * 32, 5, "2026-11-23T12:00:00.000000Z").fields()
    signature = base64.b64decode(signer.sign(value))
    expected = (
        '{"event_count":5,"hash":"' + "aa" * 32 + '","occurred_at":"2026-11-23T12:00:00.000000Z",'
        '"position":7,"shard":3,"type":"log_checkpoint"}'
    ).encode()
    signer.public_key.verify(signature, expected)  # raises if the signed bytes were others


def test_keys_are_read_in_hex_base64_or_pem_and_anything_else_is_refused_with_the_forms() -> None:
    private = Ed25519PrivateKey.from_private_bytes(SEED)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_hex = checkpoints.public_key_text(private.public_key())
    for text in (SEED.hex(), base64.b64encode(SEED).decode(), pem):
        assert checkpoints.public_key_text(checkpoints.Signer.from_text(text).public_key) == public_hex
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    for text in (public_hex, public_pem):
        assert checkpoints.public_key_text(checkpoints.public_key_from_text(text)) == public_hex
    with pytest.raises(checkpoints.SigningKeyError, match="32 bytes in hex"):
        checkpoints.Signer.from_text("not a key")


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        checkpoints.CheckpointPolicy(every_events=0)


def test_a_checkpoint_at_a_time_before_year_1000_keeps_the_logs_spelling() -> None:
    policy = checkpoints.CheckpointPolicy(every_events=1)
    row = list(_row(1))
    row[7] = datetime(999, 1, 2, tzinfo=UTC)
    policy.watch(_Sink(), shard=0).add(tuple(row))
    # What the verifier compares it with: format_time of the logged time (the one spelling).
    assert policy.staged_messages()[0][3]["occurred_at"] == format_time(datetime(999, 1, 2, tzinfo=UTC))


def test_the_signer_and_the_verifiers_public_key_come_from_the_settings(tmp_path: Any) -> None:
    from pydantic import SecretStr

    from clearing.settings import Settings

    assert checkpoints.signer_from(Settings(home=tmp_path)) is None
    assert checkpoints.public_key_from(Settings(home=tmp_path)) is None
    signing = Settings(home=tmp_path, signing_key=SecretStr(SEED.hex()))
    signer = checkpoints.signer_from(signing)
    assert signer is not None
    derived = checkpoints.public_key_from(signing)
    assert derived is not None
    assert checkpoints.public_key_text(derived) == checkpoints.public_key_text(signer.public_key)
    other = Ed25519PrivateKey.generate().public_key()
    explicit = Settings(
        home=tmp_path, signing_key=SecretStr(SEED.hex()), signing_public_key=checkpoints.public_key_text(other)
    )
    chosen = checkpoints.public_key_from(explicit)
    assert chosen is not None and checkpoints.public_key_text(chosen) == checkpoints.public_key_text(other)


def test_the_verifier_says_why_it_has_no_broker_to_read_the_checkpoints_from(tmp_path: Any) -> None:
    from clearing.audit.published import CheckpointSource, checkpoints_finding
    from clearing.settings import Settings

    settings = Settings(home=tmp_path, kafka_bootstrap="kafka:9092", topic_prefix="x.")
    configured = CheckpointSource.from_settings(settings)
    assert (configured.bootstrap, configured.topic, configured.unavailable) == ("kafka:9092", "x.checkpoints", None)
    # Nothing configured and no embedded broker running under the home: none is started (it would be empty).
    nothing = CheckpointSource.from_settings(Settings(home=tmp_path), required=True)
    assert nothing.bootstrap is None and str(tmp_path) in (nothing.unavailable or "")
    finding = checkpoints_finding(None, nothing)  # type: ignore[arg-type]  # never reaches the database
    assert not finding.checked and not finding.ok  # required
    assert (finding.problem or "").startswith("checkpoints not checked: no broker")
