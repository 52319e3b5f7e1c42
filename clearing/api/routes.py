"""The back-office API's endpoints: read-only views over the projections and the log.

Every list takes ``limit`` (1..``LIST_ROWS_MAX``, 100 by default) and ``after`` (the cursor of the
previous page, returned as ``next_after``; None when there is no further page) and returns rows in
a stable, unique order. Numbers are exact decimal strings, times RFC 3339. The queries live in
``clearing.store.queries``; this module only validates parameters and shapes responses: every
parameter is checked before it reaches the database (no NUL in text, integers within BIGINT,
times RFC 3339 with a zone and within datetime's range), so bad input is a 422, never a 500.
Each route declares its response model (``clearing.api.models``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NoReturn

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from clearing.api.models import (
    AccountSummary,
    AccountView,
    AuditStatus,
    DeadLetter,
    Event,
    HistoryItem,
    InsuranceFund,
    Liquidation,
    MarginCall,
    Page,
    Problem,
    ValidationProblem,
)
from clearing.audit.asof import AsOf, account_as_of, add_adl_standing, live_adl_standing
from clearing.engine.outbox import read_backlog
from clearing.store import queries

LIST_LIMIT_DEFAULT = 100
IDENTIFIER_CHARS_MAX = 128  # CONTRACT.md: identifiers are at most 128 characters
# PostgreSQL text holds any character but NUL: a NUL in a parameter is refused here, as a 422,
# rather than by the database, as a 500.
TEXT_PATTERN = r"^[^\x00]*$"
POSITION_MAX = 2**63 - 1  # positions, ids and offsets are BIGINT
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

# The answers a route may give besides 200, for the OpenAPI document (FastAPI lists 422 by itself
# only with its own body; these name ours). 401, 422 and 503 can happen on every route of the
# router (422: a query parameter the route does not take); 404 where an account may be missing.
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such account"}}
ROUTER_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no valid bearer token"},
    422: {
        "model": ValidationProblem,
        "description": "a parameter was refused (or is not one the route takes); the body says which and why",
    },
    503: {"model": Problem, "description": "the database is unavailable; try again"},
}


def _query_names(dependant: Any) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def known_query_parameters(request: Request) -> None:
    """Refuse query parameters the route does not take: a misspelt filter (``?stauts=open``) would
    otherwise be ignored, and the answer would look like the filtered list without being one."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) if known else "no query parameters"
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": f"is not a parameter of this route, which takes {takes}",
              "type": "extra_forbidden"} for name in unknown]
        )


router = APIRouter(responses=ROUTER_RESPONSES, dependencies=[Depends(known_query_parameters)])


def invalid(where: tuple[str, ...], message: str) -> NoReturn:
    """Refuse a parameter with a rule checked in the handler, with the body of every 422."""
    raise RequestValidationError([{"loc": where, "msg": message, "type": "value_error"}])


def _rfc3339(value: Any) -> Any:
    # pydantic would take "0.5" or "1764547200" as seconds since 1970: the contract's times are
    # RFC 3339 with a zone, and nothing else.
    if isinstance(value, str) and not RFC3339.fullmatch(value):
        raise ValueError("is not an RFC 3339 time with a zone, such as 2026-11-23T12:00:00Z")
    return value


def _in_range(moment: datetime) -> datetime:
    # 0001-01-01T00:00:00+14:00 is a valid RFC 3339 time whose UTC instant is before year 1, which
    # Python's datetime cannot hold: say so rather than fail converting it.
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range: give one between 0001-01-01 and 9999-12-31 in UTC") from None


def connection(request: Request) -> Iterator[sa.Connection]:
    engine: sa.Engine = request.app.state.engine
    with engine.connect() as conn:
        yield conn


Conn = Annotated[sa.Connection, Depends(connection)]
Limit = Annotated[int, Query(ge=1, le=queries.LIST_ROWS_MAX, description="rows per page")]
PositionCursor = Annotated[
    int, Query(ge=0, le=POSITION_MAX, description="the previous page's next_after (a log position)")
]
AccountId = Annotated[
    str,
    Path(
        min_length=1, max_length=IDENTIFIER_CHARS_MAX, pattern=TEXT_PATTERN, description="an account id",
        examples=["ACC-00001"],
    ),
]
OptionalId = Annotated[
    str | None, Query(min_length=1, max_length=IDENTIFIER_CHARS_MAX, pattern=TEXT_PATTERN)
]
Time = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_range)]


def _page(items: list[dict[str, Any]], limit: int, key: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    # A full page may have a successor; a short one is the last.
    next_after = str(key(items[-1])) if len(items) == limit and items else None
    return {"items": items, "next_after": next_after}


def _known_account(conn: sa.Connection, account_id: str) -> None:
    if queries.account_view(conn, account_id) is None and queries.account_shard(conn, account_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no account {account_id!r} in the ledger")


# ------------------------------------------------------------------------------------------------
# accounts


@router.get(
    "/accounts", response_model=Page[AccountSummary],
    summary="Accounts with their cross margin state",
)
def list_accounts(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: Annotated[
        str | None,
        Query(min_length=1, max_length=IDENTIFIER_CHARS_MAX, pattern=TEXT_PATTERN, description="last account_id seen"),
    ] = None,
) -> dict[str, Any]:
    items = queries.list_accounts(conn, after=after, limit=limit)
    return _page(items, limit, lambda row: row["account_id"])


@router.get(
    "/accounts/{account_id}", response_model=AccountView, responses=NOT_FOUND,
    summary="Balances, positions, margin and open calls of one account",
)
def get_account(conn: Conn, account_id: AccountId) -> dict[str, Any]:
    view = queries.account_view(conn, account_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no account {account_id!r} in the ledger")
    add_adl_standing(view, live_adl_standing(conn, account_id))
    return view


@router.get(
    "/accounts/{account_id}/as-of",
    response_model=AccountView,
    summary="The account at a log position, a ledger time or an event time (replayed from the log)",
    description=(
        "Give exactly one of: position (the state after the log up to that position); ledger_time (the state "
        "as the ledger knew it then: the events recorded by that time); event_time (the fold, in log order, of "
        "the events that had happened by that time, late arrivals included where they happened). time is "
        "event_time, as CONTRACT.md's as-of TIMESTAMP."
    ),
    responses=NOT_FOUND,
)
def get_account_as_of(
    request: Request,
    account_id: AccountId,
    position: Annotated[int | None, Query(ge=0, le=POSITION_MAX, description="log position", examples=[40])] = None,
    ledger_time: Annotated[Time | None, Query(description="ledger time (recorded_at), RFC 3339 with a zone")] = None,
    event_time: Annotated[Time | None, Query(description="event time (occurred_at), RFC 3339 with a zone")] = None,
    time: Annotated[Time | None, Query(description="the same as event_time")] = None,
) -> dict[str, Any]:
    given = {"position": position, "ledger_time": ledger_time, "event_time": event_time, "time": time}
    named = [name for name, value in given.items() if value is not None]
    if len(named) != 1:
        invalid(("query", named[1] if named else "position"),
                "give exactly one of position=, ledger_time=, event_time= and time=")
    if position is not None:
        question = AsOf("position", position=position)
    elif ledger_time is not None:
        question = AsOf("ledger_time", moment=ledger_time)
    else:
        question = AsOf("event_time", moment=event_time or time)
    try:
        view = account_as_of(request.app.state.engine, account_id, question)
    except (ValueError, LookupError) as error:
        invalid(("query", named[0]), str(error))
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no account {account_id!r} at {question.describe()}")
    return dict(view)


@router.get(
    "/accounts/{account_id}/events", response_model=Page[Event], responses=NOT_FOUND,
    summary="The account's events in log order",
)
def get_account_events(conn: Conn, account_id: AccountId, limit: Limit = LIST_LIMIT_DEFAULT,
                       after: PositionCursor = 0) -> dict[str, Any]:
    items = queries.stream_events(conn, f"account:{account_id}", after=after, limit=limit)
    if not items and after == 0:
        _known_account(conn, account_id)
    return _page(items, limit, lambda row: row["position"])


@router.get(
    "/accounts/{account_id}/history",
    response_model=Page[HistoryItem],
    responses=NOT_FOUND,
    summary="The account's balance-affecting events over time (fills, transfers, liquidation fills, draws)",
)
def get_account_history(conn: Conn, account_id: AccountId, limit: Limit = LIST_LIMIT_DEFAULT,
                        after: PositionCursor = 0) -> dict[str, Any]:
    rows = queries.stream_events(
        conn, f"account:{account_id}", after=after, limit=limit, types=queries.BALANCE_EVENT_TYPES
    )
    if not rows and after == 0:
        _known_account(conn, account_id)
    items = [
        {key: row[key] for key in ("position", "type", "occurred_at", "recorded_at", "payload")} for row in rows
    ]
    return _page(items, limit, lambda row: row["position"])


# ------------------------------------------------------------------------------------------------
# risk


@router.get(
    "/margin-calls", response_model=Page[MarginCall],
    summary="Margin calls in the order they were issued",
)
def list_margin_calls(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: Annotated[
        int, Query(ge=0, le=POSITION_MAX, description="the previous page's next_after (an issued_position)")
    ] = 0,
    status_: Annotated[Literal["open", "resolved", "liquidated", "bankrupt"] | None, Query(alias="status")] = None,
    level: Annotated[Literal["warning", "maintenance", "liquidation"] | None, Query()] = None,
    account: OptionalId = None,
    from_: Annotated[Time | None, Query(alias="from", description="issued at or after")] = None,
    to: Annotated[Time | None, Query(description="issued before")] = None,
) -> dict[str, Any]:
    if from_ is not None and to is not None and to < from_:
        invalid(("query", "to"), "'to' is before 'from'")
    items = queries.list_margin_calls(
        conn, status=status_, level=level, account_id=account, issued_from=from_, issued_to=to, after=after,
        limit=limit,
    )
    return _page(items, limit, lambda row: row["issued_position"])


@router.get(
    "/liquidations", response_model=Page[Liquidation],
    summary="Liquidation orders in the order they were issued",
)
def list_liquidations(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: Annotated[
        int, Query(ge=0, le=POSITION_MAX, description="the previous page's next_after (an issued_position)")
    ] = 0,
    account: OptionalId = None,
    status_: Annotated[str | None, Query(alias="status", min_length=1, max_length=32, pattern=TEXT_PATTERN)] = None,
) -> dict[str, Any]:
    items = queries.list_liquidations(conn, account_id=account, status=status_, after=after, limit=limit)
    return _page(items, limit, lambda row: row["issued_position"])


@router.get(
    "/insurance-fund", response_model=InsuranceFund,
    summary="Insurance fund balances (the total over the shards, and each shard's) and a page of its movements",
)
def get_insurance_fund(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: PositionCursor = 0,
    shard: Annotated[int | None, Query(ge=0, le=POSITION_MAX, description="only this shard's fund")] = None,
) -> dict[str, Any]:
    balances = queries.account_balances(conn, queries.INSURANCE_FUND_ACCOUNT_ID, shard=shard)
    movements = queries.insurance_fund_movements(conn, after=after, limit=limit)
    page = _page(movements, limit, lambda row: row["position"])
    return {
        "account_id": queries.INSURANCE_FUND_ACCOUNT_ID,
        **balances,
        "movements": page["items"],
        "next_after": page["next_after"],
    }


# ------------------------------------------------------------------------------------------------
# operations


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


@router.get(
    "/dead-letters", response_model=Page[DeadLetter],
    summary="Rejected input records; key and raw are base64",
)
def list_dead_letters(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: Annotated[int, Query(ge=0, le=POSITION_MAX, description="the previous page's next_after (an id)")] = 0,
) -> dict[str, Any]:
    items = [
        {**row, "key": _b64(row["key"]), "raw": _b64(row["raw"])}
        for row in queries.list_dead_letters(conn, after=after, limit=limit)
    ]
    return _page(items, limit, lambda row: row["id"])


@router.get(
    "/audit/status",
    response_model=AuditStatus,
    summary="Log head, event and dead-letter counts, outbox backlog and its oldest row",
)
def audit_status(conn: Conn) -> dict[str, Any]:
    # outbox_oldest_unpublished_at / _age_s: how long the oldest decision has waited for the broker.
    return {**queries.log_status(conn), **read_backlog(conn).as_dict()}


@router.get(
    "/metrics",
    summary="Prometheus metrics, read from the database at scrape time",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
