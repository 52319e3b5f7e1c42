"""Log checkpoints (CONTRACT v2, ``clearing.checkpoints``): the chain anchored outside the database.

A ``log_checkpoint`` says: shard S's log holds ``event_count`` events up to global position
``position``, the last of them with hash ``hash`` (hex) and event time ``occurred_at``. Every
field is a function of the log, so a checkpoint published twice is the same message, and
``audit verify`` can check the log against every one it reads back from the topic: a row forged
with a correctly recomputed hash changes the hash at every later checkpoint, a cut tail removes
the position of the last ones, whatever was done inside the database after they went out.

When: at every multiple of ``CHECKPOINT_EVERY_EVENTS`` events of the shard (counted through the
rows the writer streams, so a batch of 20,000 events carries two), and at a clean stop at the head
(``write_at_head``) unless the head is already checkpointed.

How: as outbox rows in the transaction of the batch that reaches them, published by the relay
like every decision, at least once. Why the outbox: a checkpoint sent by the writer itself before
its batch committed could anchor a batch that then rolls back (a false alarm for ever); one sent
after the commit is lost by a crash between the two (a stretch of the log never anchored). In the
batch's transaction it exists exactly when the events it anchors do.

Signed (optional): with ``CLEARING_SIGNING_KEY`` set, ``signature`` is Ed25519 (base64) over the
canonical JSON (sorted keys, no spaces, UTF-8) of the message's other fields, so a person who can
write to the topic cannot publish checkpoints that match a forged log.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clearing.domain.inputs import format_time
from clearing.engine import outputs
from clearing.settings import Settings
from clearing.store import log as eventlog
from clearing.store.jsontext import canonical_json_bytes

CHECKPOINT_EVERY_EVENTS = 10_000  # events of a shard between two checkpoints, at most
MESSAGE_TYPE = "log_checkpoint"
ED25519_KEY_BYTES = 32


class SigningKeyError(ValueError):
    """A signing or public key that cannot be read; the message says which forms are accepted."""


@dataclass(frozen=True)
class Checkpoint:
    shard: int
    position: int
    hash: bytes
    event_count: int
    occurred_at: str  # the event time of the event at ``position``, RFC 3339 (the log's spelling)

    def fields(self) -> dict[str, Any]:
        return {
            "type": MESSAGE_TYPE,
            "shard": self.shard,
            "position": self.position,
            "hash": self.hash.hex(),
            "event_count": self.event_count,
            "occurred_at": self.occurred_at,
        }


def signed_bytes(value: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers: the canonical JSON of every field but ``signature``."""
    return canonical_json_bytes({name: item for name, item in value.items() if name != "signature"})


class Signer:
    """Signs checkpoints with an Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def from_text(cls, text: str) -> Signer:
        """A key as ``CLEARING_SIGNING_KEY`` holds it: the 32-byte Ed25519 seed in hex (64 digits)
        or base64, or a PEM private key."""
        text = text.strip()
        if text.startswith("-----BEGIN"):
            try:
                key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
            except (ValueError, TypeError) as error:
                raise SigningKeyError(f"CLEARING_SIGNING_KEY is not a readable PEM private key: {error}") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise SigningKeyError("CLEARING_SIGNING_KEY is a PEM key but not an Ed25519 one")
            return cls(key)
        return cls(Ed25519PrivateKey.from_private_bytes(_key_bytes(text, "CLEARING_SIGNING_KEY")))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def sign(self, value: dict[str, Any]) -> str:
        return base64.b64encode(self.key.sign(signed_bytes(value))).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """A public key as ``CLEARING_SIGNING_PUBLIC_KEY`` holds it: 32 bytes in hex or base64, or PEM."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, TypeError) as error:
            raise SigningKeyError(f"the public key is not a readable PEM key: {error}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError("the public key is a PEM key but not an Ed25519 one")
        return key
    return Ed25519PublicKey.from_public_bytes(_key_bytes(text, "CLEARING_SIGNING_PUBLIC_KEY"))


def signer_from(settings: Settings) -> Signer | None:
    """The ledger's signer: ``CLEARING_SIGNING_KEY``, or None (checkpoints go out unsigned)."""
    if settings.signing_key is None:
        return None
    return Signer.from_text(settings.signing_key.get_secret_value())


def public_key_from(settings: Settings) -> Ed25519PublicKey | None:
    """The verifier's public key: ``CLEARING_SIGNING_PUBLIC_KEY``, else the signing key's, else None."""
    if settings.signing_public_key:
        return public_key_from_text(settings.signing_public_key)
    signer = signer_from(settings)
    return None if signer is None else signer.public_key


def public_key_text(key: Ed25519PublicKey) -> str:
    """The public key's 32 bytes in hex (the form ``public_key_from_text`` reads)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def signature_holds(value: dict[str, Any], key: Ed25519PublicKey) -> bool:
    signature = value.get("signature")
    if not isinstance(signature, str):
        return False
    try:
        key.verify(base64.b64decode(signature, validate=True), signed_bytes(value))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _key_bytes(text: str, name: str) -> bytes:
    data: bytes | None = None
    if len(text) == 2 * ED25519_KEY_BYTES:
        try:
            data = bytes.fromhex(text)
        except ValueError:
            data = None
    if data is None:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            data = None
    if data is None or len(data) != ED25519_KEY_BYTES:
        raise SigningKeyError(
            f"{name} must be an Ed25519 key of {ED25519_KEY_BYTES} bytes in hex ({2 * ED25519_KEY_BYTES} digits) "
            "or base64, or a PEM key"
        )
    return data


def checkpoint_message(checkpoint: Checkpoint, signer: Signer | None) -> tuple[str, str, dict[str, Any]]:
    """(topic kind, key, value) of a checkpoint: keyed by shard, so a shard's checkpoints keep
    their order on the topic."""
    value = checkpoint.fields()
    if signer is not None:
        value["signature"] = signer.sign(value)
    key = str(checkpoint.shard)
    outputs.check_size(key, value)
    return outputs.CHECKPOINTS, key, value


@dataclass
class CheckpointPolicy:
    """Which of a shard's positions get a checkpoint; kept by the ledger beside its head.
    ``committed_events``: the shard's events in committed batches (set by ``reset`` at load)."""

    every_events: int = CHECKPOINT_EVERY_EVENTS
    signer: Signer | None = None
    committed_events: int = 0
    last_position: int = 0  # the position of the latest checkpoint this process wrote
    _staged: list[Checkpoint] = field(default_factory=list)
    _stream: CheckpointingStream | None = None  # the batch's stream, which counts its events

    def __post_init__(self) -> None:
        if self.every_events < 1:
            raise ValueError(f"every_events must be at least 1, not {self.every_events}")

    def reset(self, committed_events: int) -> None:
        self.committed_events = committed_events
        self._staged, self._stream = [], None

    def watch(self, stream: Any, shard: int) -> CheckpointingStream:
        """``stream`` (an ``eventlog.EventStream``) that stages a checkpoint at each row that
        brings the shard's count to a multiple of ``every_events``. A new batch starts afresh:
        what an earlier, failed write staged is dropped with its transaction."""
        self._staged = []
        self._stream = CheckpointingStream(stream, self, shard)
        return self._stream

    def staged_messages(self) -> list[tuple[None, str, str, dict[str, Any]]]:
        """The outbox rows of the checkpoints the batch staged (position None: not a decision)."""
        return [(None, *checkpoint_message(checkpoint, self.signer)) for checkpoint in self._staged]

    def commit(self) -> None:
        """The batch committed: its events count, its checkpoints are out of the writer's hands."""
        if self._stream is not None:
            self.committed_events = self._stream.count
        if self._staged:
            self.last_position = self._staged[-1].position
        self._staged, self._stream = [], None


class CheckpointingStream:
    """An event stream that counts the rows it passes on (``eventlog.EventStream``'s ``add`` and
    ``flush``) and stages checkpoints on its policy."""

    __slots__ = ("_every", "_policy", "_shard", "_stream", "count")

    def __init__(self, stream: Any, policy: CheckpointPolicy, shard: int) -> None:
        self._stream = stream
        self._policy = policy
        self._shard = shard
        self._every = policy.every_events
        self.count = policy.committed_events  # the shard's events up to the last row passed on

    def add(self, row: eventlog.EventRow) -> None:
        self._stream.add(row)
        count = self.count + 1
        self.count = count
        if count % self._every == 0:
            occurred_at = row[7]
            self._policy._staged.append(
                Checkpoint(
                    self._shard,
                    int(row[0]),
                    bytes(row[-1]),
                    count,
                    occurred_at if isinstance(occurred_at, str) else format_time(occurred_at),
                )
            )

    def flush(self) -> None:
        self._stream.flush()


def shard_event_count(stream_versions: Iterable[int]) -> int:
    """A shard's events: the sum of its streams' versions (each event adds one to its stream's,
    from 1 with no gap: ``ShardHead.row``), so the count needs no scan of the log."""
    return sum(stream_versions)


def write_at_head(
    engine: sa.Engine, head: eventlog.ShardHead, policy: CheckpointPolicy, topic_prefix: str
) -> Checkpoint | None:
    """A checkpoint at the shard's head through the outbox, in a transaction of its own under the
    log lock (a clean stop: the relay's drain publishes it). None when the log is empty or the head
    has one already."""
    if head.shard_position == 0 or head.shard_position == policy.last_position:
        return None
    with engine.connect() as conn, conn.begin():
        eventlog.lock_and_check_head(conn, head)
        occurred_at: datetime = conn.execute(
            sa.text("SELECT occurred_at FROM events WHERE position = :position"), {"position": head.shard_position}
        ).scalar_one()
        checkpoint = Checkpoint(
            head.shard, head.shard_position, head.last_hash, policy.committed_events, format_time(occurred_at)
        )
        eventlog.insert_outbox(
            conn, topic_prefix, [(None, *checkpoint_message(checkpoint, policy.signer))], datetime.now(UTC)
        )
    policy.last_position = checkpoint.position
    return checkpoint
