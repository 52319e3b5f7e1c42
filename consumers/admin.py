"""``clearing params apply FILE``: validate a risk parameter document and publish it on the admin
topic, where the ledger (the log's only writer) appends it as a ``RiskParametersChanged`` event.
Going through the topic keeps one writer per shard, and every shard gets the document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer

from clearing.domain.inputs import format_time
from clearing.domain.params import RiskParameters, load_parameters

PUBLISH_TIMEOUT_S = 30


class ParametersRejected(ValueError):
    pass


def validated(document: dict[str, Any]) -> RiskParameters:
    try:
        return load_parameters(document)
    except ValueError as error:
        raise ParametersRejected(" ".join(str(error).split())) from None


def publish_parameters(
    bootstrap: str, prefix: str, document: dict[str, Any], effective_at: datetime | None = None
) -> tuple[str, int, int]:
    """Publish the document, in force from ``effective_at`` (event time; now when None); returns
    (topic, partition, offset) of the message."""
    parameters = validated(document)
    message = {
        "type": "risk_parameters",
        "parameters": parameters.document(),
        "occurred_at": format_time(effective_at or datetime.now(UTC)),
    }
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        future = producer.send(
            prefix + "admin", key=parameters.version.encode(), value=json.dumps(message).encode("utf-8")
        )
        metadata = future.get(timeout=PUBLISH_TIMEOUT_S)
    finally:
        producer.close()
    return metadata.topic, metadata.partition, metadata.offset
