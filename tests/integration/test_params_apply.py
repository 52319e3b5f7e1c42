"""``clearing params apply``: a document published on the admin topic takes effect at its place
in the log; a bad document is refused before anything is published."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.cli import main
from clearing.domain.params import bundled_document, bundled_parameters
from consumers.admin import ParametersRejected, publish_parameters
from tests.integration.conftest import InProcessLedger, produce

pytestmark = pytest.mark.integration
T = "2026-11-23T12:00:00Z"


def _with_doge() -> dict[str, Any]:
    document = bundled_document()
    document["version"] = "2026-11-23.doge"
    document["instruments"].append(
        {
            "symbol": "DOGEUSDT",
            "kind": "perpetual",
            "settlement_asset": "USDT",
            "contract_size": "1",
            "tiers": [{"notional_cap": None, "initial_rate": "0.05", "maintenance_rate": "0.025"}],
        }
    )
    return document


def _fill(fill_id: str, at: str = T) -> tuple[str, str, dict[str, Any]]:
    return (
        "fills",
        "A",
        {
            "type": "fill",
            "fill_id": fill_id,
            "trade_id": "T-" + fill_id,
            "account_id": "A",
            "instrument": "DOGEUSDT",
            "side": "buy",
            "quantity": "100",
            "price": "0.1",
            "occurred_at": at,
        },
    )


def test_applied_parameters_take_effect_at_their_place_in_the_log(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    before = produce(broker, topic_prefix, [_fill("F-before")])
    in_process_ledger.run_until(before.ends)
    effective = datetime(2026, 11, 23, 12, 0, 1, tzinfo=UTC)
    topic, partition, offset = publish_parameters(broker, topic_prefix, _with_doge(), effective_at=effective)
    in_process_ledger.run_until({(topic, partition): offset + 1})
    after = produce(broker, topic_prefix, [_fill("F-after", "2026-11-23T12:00:02Z")])
    in_process_ledger.run_until(after.ends)

    with owner_engine.connect() as conn:
        events = conn.execute(sa.text("SELECT type, payload FROM events ORDER BY position")).all()
        dead = conn.execute(sa.text("SELECT error FROM dead_letters")).scalars().all()
    # The fill before the document was an unknown instrument; the one after it is booked.
    assert len(dead) == 1 and "unknown instrument 'DOGEUSDT'" in dead[0]
    # (A has no collateral, so its decisions follow: a call and a liquidation order.)
    # The log opens with the bundled parameters (the first batch had a message, if refused).
    assert [event.type for event in events[:3]] == ["RiskParametersChanged", "RiskParametersChanged", "FillRecorded"]
    assert events[3].type == "MarginCallIssued"
    assert events[0].payload["parameters"]["version"] == bundled_parameters().version
    assert events[1].payload["parameters"]["version"] == "2026-11-23.doge"
    assert events[2].payload["fill_id"] == "F-after"
    assert in_process_ledger.ledger.state.parameters.version == "2026-11-23.doge"


def test_a_bad_document_is_refused_before_publishing(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    document = _with_doge()
    document["margin_call"]["resolve_ratio"] = "0.9"  # above warning_ratio: no hysteresis
    with pytest.raises(ParametersRejected, match="resolve_ratio"):
        publish_parameters("127.0.0.1:1", "unused.", document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    assert main(["params", "apply", str(path)]) == 2
    assert "resolve_ratio" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_with_doge()))
    assert main(["params", "apply", "--check", str(good)]) == 0
    assert "2026-11-23.doge" in capsys.readouterr().out


def test_a_parameter_document_near_the_size_limit_is_consumed(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    # Larger than the consumer's per-partition fetch size: a fetch still returns it whole.
    document = _with_doge()
    document["notes"] = "x" * 900_000  # later contract versions add fields; they are kept
    produced = produce(
        broker, topic_prefix, [("admin", "p", {"type": "risk_parameters", "parameters": document, "occurred_at": T})]
    )
    in_process_ledger.run_until(produced.ends)
    with owner_engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT length(payload->'parameters'->>'notes') FROM events ORDER BY position")
        ).scalars()
        # After the bundled parameters the log opens with.
        assert list(stored) == [None, 900_000]
