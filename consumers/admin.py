"""``clearing params apply FILE``: validate a risk parameter document and publish it on the admin
topic, where the ledger (the log's only writer) appends it as a ``RiskParametersChanged`` event.
Going through the topic keeps one writer per shard, and every shard gets the document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from pydantic import ValidationError

from clearing.domain.inputs import format_time
from clearing.domain.params import RiskParameters, load_parameters

PUBLISH_TIMEOUT_S = 30
PROBLEMS_SHOWN_MAX = 8  # of one rejected document; the message says how many more there are


class ParametersRejected(ValueError):
    pass


def validated(document: dict[str, Any]) -> RiskParameters:
    try:
        return load_parameters(document)
    except ValidationError as error:
        raise ParametersRejected(describe(error)) from None
    except ValueError as error:
        raise ParametersRejected(" ".join(str(error).split())) from None


def describe(error: ValidationError) -> str:
    """A rejected document's problems as one sentence: where each is and what is wrong, without
    pydantic's type tags, echoed inputs and links."""
    details = error.errors(include_url=False)
    parts = []
    for detail in details[:PROBLEMS_SHOWN_MAX]:
        where = ".".join(str(item) for item in detail["loc"]) or "the document"
        cause = detail.get("ctx", {}).get("error")
        if detail["type"] == "missing":
            text = "is required"
        elif detail["type"] == "extra_forbidden":
            text = "is not a field of the risk parameter document"
        elif detail["type"] == "too_short":
            text = "must not be empty"
        elif isinstance(cause, Exception):
            text = str(cause)
            name = str(detail["loc"][-1]) if detail["loc"] else ""
            if name and text.startswith(name + " "):  # the rule names its field already
                text = text[len(name) + 1 :]
        else:
            text = str(detail["msg"])
        parts.append(f"{where} {text}")
    more = len(details) - PROBLEMS_SHOWN_MAX
    problems = "problem" if len(details) == 1 else "problems"
    return (
        f"the risk parameter document is not valid ({len(details)} {problems}): "
        + "; ".join(parts)
        + (f"; and {more} more" if more > 0 else "")
    )


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
