"""The back-office API through a real HTTP socket against a real PostgreSQL."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from clearing.domain.inputs import format_time
from clearing.store.db import make_engine
from tests.api.conftest import BAD_RECORDS, MARGIN_CALLS_SEEDED, TOKEN, RunningApi

pytestmark = pytest.mark.integration

PROTECTED = [
    "/accounts",
    "/accounts/ACC-00001",
    "/accounts/ACC-00001/events",
    "/accounts/ACC-00001/history",
    "/accounts/ACC-00001/as-of?position=10",
    "/margin-calls",
    "/liquidations",
    "/insurance-fund",
    "/dead-letters",
    "/audit/status",
    "/metrics",
]


def walk(client: httpx.Client, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, following ``next_after`` page by page."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(10_000):
        query = {**params, "limit": limit, **({"after": after} if after is not None else {})}
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        after = page["next_after"]
        if after is None:
            return items
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("path", PROTECTED)
def test_every_endpoint_but_healthz_needs_a_valid_token(api: RunningApi, path: str) -> None:
    with api.client(token=None) as anonymous:
        missing = anonymous.get(path)
    with api.client(token=TOKEN + "x") as wrong:
        bad = wrong.get(path)
    with api.client(token=None) as basic:
        not_bearer = basic.get(path, headers={"Authorization": "Basic " + base64.b64encode(b"a:b").decode()})
    for response in (missing, bad, not_bearer):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


def test_healthz_needs_no_token_and_any_listed_token_is_accepted(api: RunningApi) -> None:
    with api.client(token=None) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
    with api.client(token="second-token") as second:
        assert second.get("/audit/status").status_code == 200


def test_the_api_engine_cannot_write(api: RunningApi) -> None:
    engine: sa.Engine = api.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == "clearing_reader"
    for statement in (
        "INSERT INTO balances (account_id, asset, amount, as_of_position) VALUES ('X', 'USDT', 1, 1)",
        "UPDATE margin_state SET status = 'healthy'",
        "DELETE FROM dead_letters",
    ):
        with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text(statement))


def test_account_view_has_exact_decimal_strings(api: RunningApi) -> None:
    with api.client() as client:
        view = client.get("/accounts/ACC-00001").json()
    assert view["account_id"] == "ACC-00001"
    assert view["as_of_position"] > 0
    assert all(isinstance(amount, str) for amount in view["balances"].values())
    assert isinstance(view["equity"], str)
    # The simulated accounts stay on the standard model: no grid, each underlying's multiplier 1
    # (the bundled parameters have no dynamic margin).
    assert (view["margin_model"], view["worst_cells"]) == ("standard", [])
    assert view["multipliers"] and set(view["multipliers"].values()) == {"1"}
    assert view["margin"]["cross"]["margin_model"] == "standard"


def test_limit_above_the_maximum_is_422(api: RunningApi) -> None:
    with api.client() as client:
        for path in ("/accounts", "/margin-calls", "/dead-letters", "/accounts/ACC-00001/events", "/liquidations"):
            assert client.get(path, params={"limit": 5000}).status_code == 422, path
            assert client.get(path, params={"limit": 0}).status_code == 422, path
        assert client.get("/accounts", params={"limit": 1000}).status_code == 200


def test_paginated_walks_return_every_row_once(api: RunningApi) -> None:
    with api.client() as client:
        accounts = walk(client, "/accounts", 5)
        ids = [row["account_id"] for row in accounts]
        assert len(ids) == len(set(ids)) and ids == sorted(ids)
        assert {f"ACC-{i:05d}" for i in range(1, 13)} <= set(ids)
        assert len(ids) == len(client.get("/accounts", params={"limit": 1000}).json()["items"])
        # Every simulated account with a cross scope is on the standard model; system accounts have none.
        assert {row["margin_model"] for row in accounts if row["status"] is not None} == {"standard"}
        assert {row["margin_model"] for row in accounts if row["account_id"].startswith("system:")} <= {None}

        events = walk(client, "/accounts/ACC-00002/events", 7)
        positions = [row["position"] for row in events]
        assert positions == sorted(set(positions)) and len(positions) > 7
        assert {row["stream"] for row in events} == {"account:ACC-00002"}
        everything = client.get("/accounts/ACC-00002/events", params={"limit": 1000}).json()["items"]
        assert positions == [row["position"] for row in everything]

        calls = walk(client, "/margin-calls", 4)
        call_ids = [row["margin_call_id"] for row in calls]
        assert len(call_ids) == len(set(call_ids))
        assert [row["issued_position"] for row in calls] == sorted(row["issued_position"] for row in calls)
        assert [i for i in call_ids if i.startswith("SEED-")] == [f"SEED-MC-{i}" for i in range(MARGIN_CALLS_SEEDED)]

        dead = walk(client, "/dead-letters", 2)
        assert len(dead) == BAD_RECORDS == len({row["id"] for row in dead})
        assert base64.b64decode(dead[0]["raw"]) == b'{"type": "fill", "price": 1.5}'


def test_margin_call_filters(api: RunningApi) -> None:
    with api.client() as client:
        open_maintenance = walk(client, "/margin-calls", 100, status="open", level="maintenance")
        assert open_maintenance and all(
            row["status"] == "open" and row["level"] == "maintenance" for row in open_maintenance
        )
        window = client.get(
            "/margin-calls",
            params={"from": "2030-01-01T00:05:00Z", "to": "2030-01-01T01:10:00+01:00", "account": "ACC-00001"},
        ).json()["items"]
        assert [row["margin_call_id"] for row in window] == ["SEED-MC-6", "SEED-MC-9"]


def test_liquidations_and_calls_from_the_crash_are_listed(api: RunningApi) -> None:
    with api.client() as client:
        liquidations = walk(client, "/liquidations", 1)
        calls = [row for row in walk(client, "/margin-calls", 1000) if not row["margin_call_id"].startswith("SEED-")]
        everything = client.get("/liquidations", params={"limit": 1000}).json()["items"]
    assert liquidations, "the crash should liquidate someone"
    assert calls, "the crash should call someone"
    assert liquidations == everything
    assert all(isinstance(row["quantity"], str) and isinstance(row["bankruptcy_price"], str) for row in liquidations)


def test_history_lists_only_balance_affecting_events(api: RunningApi) -> None:
    with api.client() as client:
        history = walk(client, "/accounts/ACC-00003/history", 50)
    assert history
    assert {row["type"] for row in history} <= {
        "FillRecorded", "CollateralDeposited", "WithdrawalApproved", "IsolatedMarginTransferred",
        "LiquidationFillRecorded", "InsuranceFundDrawn", "PositionAutoDeleveraged", "AccountBankrupted",
    }
    assert all(row["occurred_at"] for row in history)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/accounts/NOPE", 404),
        ("/accounts/NOPE/events", 404),
        ("/accounts/NOPE/history", 404),
        ("/accounts/" + "A" * 129, 422),
        ("/accounts?after=" + "A" * 200, 422),
        ("/accounts?limit=ten", 422),
        ("/accounts/ACC-00001/events?after=-1", 422),
        ("/accounts/ACC-00001/events?after=abc", 422),
        ("/margin-calls?from=yesterday", 422),
        ("/margin-calls?from=2026-11-23T00:00:00", 422),  # no zone
        ("/margin-calls?from=1764547200", 422),  # seconds since 1970: not RFC 3339
        ("/margin-calls?to=0.5", 422),
        ("/margin-calls?stauts=open", 422),  # a misspelt filter is not ignored
        ("/audit/status?verbose=1", 422),
        ("/margin-calls?from=2026-11-24T00:00:00Z&to=2026-11-23T00:00:00Z", 422),
        ("/margin-calls?status=sleeping", 422),
        ("/margin-calls?level=0", 422),
        ("/dead-letters?after=1e3", 422),
        ("/accounts/ACC-00001/as-of", 422),
        ("/accounts/ACC-00001/as-of?position=1&time=2026-11-23T00:00:00Z", 422),
        ("/accounts/ACC-00001/as-of?time=noon", 422),
        ("/accounts/ACC-00001/as-of?position=-3", 422),
        ("/accounts/ACC-00001/as-of?ledger_time=2026-11-23T00:00:00Z&event_time=2026-11-23T00:00:00Z", 422),
        ("/accounts/ACC-00001/as-of?event_time=2026-11-23T00:00:00", 422),  # no zone
        ("/insurance-fund?shard=-1", 422),
        ("/no-such-endpoint", 404),
    ],
)
def test_bad_parameters_are_4xx_not_5xx(api: RunningApi, path: str, expected: int) -> None:
    with api.client() as client:
        response = client.get(path)
    assert response.status_code == expected, response.text


def test_as_of_replays_the_account(api: RunningApi) -> None:
    with api.client() as client:
        response = client.get("/accounts/ACC-00001/as-of", params={"position": 40})
    assert response.status_code == 200, response.text
    assert response.json()["account_id"] == "ACC-00001"


def test_as_of_answers_the_ledger_time_and_the_event_time_questions(api: RunningApi) -> None:
    with api.client() as client:
        at_head = client.get("/accounts/ACC-00001").json()
        by_event = client.get("/accounts/ACC-00001/as-of", params={"event_time": "2030-01-01T00:00:00Z"})
        by_time = client.get("/accounts/ACC-00001/as-of", params={"time": "2030-01-01T00:00:00Z"})
        by_ledger = client.get("/accounts/ACC-00001/as-of", params={"ledger_time": "2100-01-01T00:00:00Z"})
        too_early = client.get("/accounts/ACC-00001/as-of", params={"ledger_time": "2000-01-01T00:00:00Z"})
    assert by_event.status_code == by_ledger.status_code == 200, (by_event.text, by_ledger.text)
    assert by_event.json() == by_time.json()
    assert by_event.json()["as_of"] == {"question": "event_time", "time": "2030-01-01T00:00:00.000000Z",
                                        "events_left_out": 0}
    assert by_ledger.json()["as_of"]["question"] == "ledger_time"
    assert by_event.json()["balances"] == by_ledger.json()["balances"] == at_head["balances"]
    assert too_early.status_code == 404 and "ledger time 2000-01-01" in too_early.text


def test_insurance_fund_and_audit_status(api: RunningApi, api_database_url: str) -> None:
    with api.client() as client:
        fund = client.get("/insurance-fund").json()
        status = client.get("/audit/status").json()
    assert fund["account_id"] == "system:insurance-fund"
    assert isinstance(fund["balances"], dict) and isinstance(fund["movements"], list)
    assert set(fund["shards"]) <= {"0"}  # each shard's fund (one shard here), their total in balances
    assert status["log_position"] > 0
    assert status["events_total"] == status["shards"]["0"]["events"]
    assert status["dead_letters_total"] == BAD_RECORDS
    owner = make_engine(api_database_url)
    try:
        with owner.connect() as conn:
            unpublished = conn.execute(sa.text("SELECT count(*) FROM outbox WHERE published_at IS NULL")).scalar_one()
    finally:
        owner.dispose()
    assert unpublished > 0 and status["outbox_unpublished"] == unpublished  # never relayed here


def test_metrics_are_prometheus_text_read_from_the_database(api: RunningApi) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with api.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    assert {
        "clearing_events",
        "clearing_decisions",
        "clearing_dead_letters",
        "clearing_consumer_next_offset",
        "clearing_outbox_backlog",
        "clearing_log_head_position",
        "clearing_last_batch_recorded_timestamp_seconds",
    } <= set(families)
    fills = [s for s in families["clearing_events"].samples if s.labels.get("type") == "FillRecorded"]
    assert fills and fills[0].value > 0
    assert families["clearing_dead_letters"].samples[0].value == BAD_RECORDS
    offsets = {(s.labels["topic"], s.labels["partition"]) for s in families["clearing_consumer_next_offset"].samples}
    assert ("clearing.fills", "0") in offsets


def test_openapi_document_validates(api: RunningApi) -> None:
    from openapi_spec_validator import validate

    with api.client(token=None) as client:
        document = client.get("/openapi.json").json()
    validate(document)
    assert {"/accounts", "/accounts/{account_id}/as-of", "/metrics", "/healthz"} <= set(document["paths"])
    assert "HTTPBearer" in document["components"]["securitySchemes"]


@pytest.mark.parametrize(
    "path",
    [
        "/accounts/ACC%00",
        "/accounts/ACC%00/events",
        "/accounts/ACC%00/history",
        "/accounts/ACC%00/as-of?position=1",
        "/accounts?after=A%00",
        "/margin-calls?account=A%00",
        "/liquidations?status=open%00",
        "/accounts/ACC-00001/as-of?time=0001-01-01T00:00:00%2B14:00",
        "/margin-calls?from=0001-01-01T00:00:00%2B14:00",
        "/margin-calls?to=9999-12-31T23:59:59-14:00",
        "/accounts/ACC-00001/events?after=9223372036854775808",
        "/accounts/ACC-00001/as-of?position=99999999999999999999",
        "/dead-letters?after=9223372036854775808",
        "/margin-calls?after=9223372036854775808",
        "/liquidations?after=9223372036854775808",
        "/insurance-fund?after=9223372036854775808",
    ],
)
def test_input_that_gave_500_is_refused_with_422(api: RunningApi, path: str) -> None:
    with api.client() as client:
        response = client.get(path)
    assert response.status_code == 422, response.text
    assert_validation_problem(response.json())


def assert_validation_problem(body: Any) -> None:
    """The one 422 body: ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``, nothing else."""
    assert set(body) == {"detail"}
    assert body["detail"]
    for issue in body["detail"]:
        assert set(issue) == {"loc", "msg", "type"}
        assert issue["loc"] and all(isinstance(part, str | int) for part in issue["loc"])
        assert isinstance(issue["msg"], str) and issue["msg"]
        assert isinstance(issue["type"], str) and issue["type"]


def test_rules_checked_in_handlers_answer_the_same_422_body(api: RunningApi) -> None:
    with api.client() as client:
        both = client.get("/accounts/ACC-00001/as-of", params={"position": 1, "time": "2026-11-23T00:00:00Z"})
        backwards = client.get("/margin-calls", params={"from": "2026-11-24T00:00:00Z", "to": "2026-11-23T00:00:00Z"})
        past_end = client.get("/accounts/ACC-00001/as-of", params={"position": 10**12})
        nul = client.get("/accounts/ACC%00")
        declared = client.get("/accounts", params={"limit": "ten"})
    for response in (both, backwards, past_end, nul, declared):
        assert response.status_code == 422, response.text
        assert_validation_problem(response.json())
    assert both.json()["detail"][0]["loc"] == ["query", "time"]  # the second of the two given
    assert both.json()["detail"][0]["msg"] == "give exactly one of position=, ledger_time=, event_time= and time="
    assert backwards.json()["detail"][0]["loc"] == ["query", "to"]
    assert nul.json()["detail"] == [
        {"loc": ["path", "account_id"], "msg": "must not contain a NUL character", "type": "string_pattern_mismatch"}
    ]


def test_the_time_out_of_range_says_so(api: RunningApi) -> None:
    with api.client() as client:
        response = client.get("/accounts/ACC-00001/as-of", params={"time": "0001-01-01T00:00:00+14:00"})
    assert response.status_code == 422
    (issue,) = response.json()["detail"]
    assert issue["loc"] == ["query", "time"]
    assert "out of range" in issue["msg"]


def _openapi(api: RunningApi) -> dict[str, Any]:
    with api.client(token=None) as client:
        document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def test_openapi_lists_401_on_every_protected_route_and_404_where_an_account_may_be_missing(
    api: RunningApi,
) -> None:
    document = _openapi(api)
    operations = {path: item["get"] for path, item in document["paths"].items()}
    for path, operation in operations.items():
        if path in ("/healthz",):
            assert "401" not in operation["responses"]
            continue
        assert "401" in operation["responses"], path
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    for path in ("/accounts/{account_id}", "/accounts/{account_id}/as-of", "/accounts/{account_id}/events",
                 "/accounts/{account_id}/history"):
        assert "404" in operations[path]["responses"], path
    for path in ("/accounts", "/margin-calls", "/audit/status"):
        assert "404" not in operations[path]["responses"], path
    for path, operation in operations.items():
        if path not in ("/healthz",):  # any other route refuses a query parameter it does not take
            assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ValidationProblem"
            }, path


def _schema_of(document: dict[str, Any], path: str) -> dict[str, Any]:
    schemas: dict[str, Any] = document["components"]["schemas"]
    ref = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    found: dict[str, Any] = schemas[ref.rsplit("/", 1)[1]]
    return found


def _item_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    page = _schema_of(document, path)
    assert set(page["properties"]) == {"items", "next_after"}
    ref = page["properties"]["items"]["items"]["$ref"]
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def _is_decimal_string(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    strings = [option for option in options if option.get("type") == "string"]
    return len(strings) == 1 and "pattern" in strings[0] and all(
        option.get("type") in ("string", "null") for option in options
    )


def test_openapi_schemas_name_the_fields_the_back_office_reads(api: RunningApi) -> None:
    document = _openapi(api)
    schemas = document["components"]["schemas"]
    account = _schema_of(document, "/accounts/{account_id}")
    assert {"account_id", "as_of_position", "balances", "positions", "margin", "open_margin_calls", "equity",
            "initial_margin", "maintenance_margin", "margin_ratio", "status"} <= set(account["properties"])
    # Issue 24: the account's margin model, its portfolio grid's worst cell per underlying and the
    # multiplier in force per underlying it holds; per scope, the model and each underlying's figures.
    assert {"margin_model", "multipliers", "worst_cells"} <= set(account["properties"])
    assert {"margin_model", "underlyings"} <= set(schemas["MarginView"]["properties"])
    assert {"underlying", "multiplier", "initial_margin", "maintenance_margin", "worst_cell"} == set(
        schemas["UnderlyingMargin"]["properties"]
    )
    assert {"underlying", "move", "volatility", "extreme"} == set(schemas["WorstCell"]["properties"])
    assert schemas["GridCell"]["properties"]["volatility"]["enum"] == ["up", "unchanged", "down"]
    assert _is_decimal_string(account["properties"]["multipliers"]["additionalProperties"])
    assert _is_decimal_string(schemas["UnderlyingMargin"]["properties"]["multiplier"])
    assert _schema_of(document, "/accounts/{account_id}/as-of") == account
    position = schemas["PositionView"]["properties"]
    assert {"instrument", "margin_mode", "quantity", "entry_price", "cost", "realised_pnl", "isolated_margin",
            "funding_paid", "adl_rank", "adl_quantile"} == set(position)
    call = _item_schema(document, "/margin-calls")
    assert {"margin_call_id", "account_id", "scope", "level", "status", "issued_position", "issued_at", "deadline",
            "last_position", "payload", "as_of_position"} == set(call["properties"])
    liquidation = _item_schema(document, "/liquidations")
    assert {"liquidation_id", "account_id", "instrument", "side", "quantity", "filled_quantity", "bankruptcy_price",
            "status", "issued_position"} <= set(liquidation["properties"])
    dead = _item_schema(document, "/dead-letters")
    assert {"id", "topic", "partition", "offset", "key", "raw", "error", "received_at"} <= set(dead["properties"])
    event = _item_schema(document, "/accounts/{account_id}/events")
    assert {"position", "stream", "type", "payload", "occurred_at", "recorded_at", "hash"} <= set(event["properties"])
    assert {"account_id", "equity", "margin_ratio", "status", "margin_model"} <= set(
        _item_schema(document, "/accounts")["properties"]
    )
    fund = _schema_of(document, "/insurance-fund")
    assert {"account_id", "balances", "movements", "next_after"} <= set(fund["properties"])
    status = _schema_of(document, "/audit/status")
    assert {"log_position", "events_total", "shards", "dead_letters_total", "outbox_unpublished",
            "outbox_oldest_unpublished_at", "outbox_oldest_unpublished_age_s"} <= set(status["properties"])
    # Money is a string holding an exact decimal, as on the wire (CONTRACT.md), never a JSON number.
    for schema, fields in (
        (schemas["PositionView"], ("quantity", "entry_price", "cost", "realised_pnl")),
        (liquidation, ("quantity", "filled_quantity", "bankruptcy_price")),
        (account, ("equity", "margin_ratio")),
    ):
        for name in fields:
            assert _is_decimal_string(schema["properties"][name]), name
    assert _is_decimal_string(account["properties"]["balances"]["additionalProperties"])


def test_audit_status_keeps_fields_it_does_not_declare() -> None:
    from clearing.api.models import AuditStatus

    status = {"log_position": 3, "events_total": 3, "shards": {"0": {"head_position": 3, "events": 3}},
              "dead_letters_total": 0, "outbox_unpublished": 1, "outbox_oldest_unpublished_at": None,
              "outbox_oldest_unpublished_age_s": None, "last_recorded_at": None, "a_figure_added_later": 2}
    assert AuditStatus.model_validate(status).model_dump(mode="json") == status


def test_audit_status_gives_the_oldest_unpublished_outbox_row_and_its_age(
    api: RunningApi, api_database_url: str
) -> None:
    owner = make_engine(api_database_url)
    try:
        with owner.connect() as conn:
            oldest, age_before = conn.execute(
                sa.text(
                    "SELECT min(created_at), extract(epoch FROM now() - min(created_at)) FROM outbox "
                    "WHERE published_at IS NULL"
                )
            ).one()
    finally:
        owner.dispose()
    with api.client() as client:
        status = client.get("/audit/status").json()
    assert oldest is not None  # never relayed here
    assert status["outbox_oldest_unpublished_at"] == format_time(oldest)
    assert status["outbox_oldest_unpublished_age_s"] >= float(age_before)
