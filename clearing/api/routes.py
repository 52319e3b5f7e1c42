"""The back-office API's endpoints: read-only views over the projections and the log.

Every list takes ``limit`` (1..``LIST_ROWS_MAX``, 100 by default) and ``after`` (the cursor of the
previous page, returned as ``next_after``; None when there is no further page) and returns rows in
a stable, unique order. Numbers are exact decimal strings, times RFC 3339. The queries live in
``clearing.store.queries``; this module only validates parameters and shapes responses.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel

from clearing.audit.asof import account_as_of
from clearing.domain.inputs import format_time
from clearing.engine.outbox import read_backlog
from clearing.store import queries

LIST_LIMIT_DEFAULT = 100
IDENTIFIER_CHARS_MAX = 128  # CONTRACT.md: identifiers are at most 128 characters
HTTP_UNPROCESSABLE = 422  # Starlette renamed its constant; the number is what clients see

router = APIRouter()


class Page(BaseModel):
    """One page of a list. Pass ``next_after`` as ``after`` to get the next page."""

    items: list[dict[str, Any]]
    next_after: str | None


def connection(request: Request) -> Iterator[sa.Connection]:
    engine: sa.Engine = request.app.state.engine
    with engine.connect() as conn:
        yield conn


Conn = Annotated[sa.Connection, Depends(connection)]
Limit = Annotated[int, Query(ge=1, le=queries.LIST_ROWS_MAX, description="rows per page")]
PositionCursor = Annotated[int, Query(ge=0, description="the previous page's next_after (a log position)")]
AccountId = Annotated[str, Path(min_length=1, max_length=IDENTIFIER_CHARS_MAX)]
OptionalId = Annotated[str | None, Query(min_length=1, max_length=IDENTIFIER_CHARS_MAX)]


def _page(items: list[dict[str, Any]], limit: int, key: Callable[[dict[str, Any]], Any]) -> Page:
    # A full page may have a successor; a short one is the last.
    next_after = str(key(items[-1])) if len(items) == limit and items else None
    return Page(items=items, next_after=next_after)


def _known_account(conn: sa.Connection, account_id: str) -> None:
    if queries.account_view(conn, account_id) is None and queries.account_shard(conn, account_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no account {account_id!r} in the ledger")


# ------------------------------------------------------------------------------------------------
# accounts


@router.get("/accounts", response_model=Page, summary="Accounts with their cross margin state")
def list_accounts(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: Annotated[str | None, Query(max_length=IDENTIFIER_CHARS_MAX, description="last account_id seen")] = None,
) -> Page:
    items = queries.list_accounts(conn, after=after, limit=limit)
    return _page(items, limit, lambda row: row["account_id"])


@router.get("/accounts/{account_id}", summary="Balances, positions, margin and open calls of one account")
def get_account(conn: Conn, account_id: AccountId) -> dict[str, Any]:
    view = queries.account_view(conn, account_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no account {account_id!r} in the ledger")
    return view


@router.get(
    "/accounts/{account_id}/as-of",
    summary="The account as it stood at a log position or an event time (replayed from the log)",
    responses={501: {"description": "as-of queries are not available in this build"}},
)
def get_account_as_of(
    request: Request,
    account_id: AccountId,
    position: Annotated[int | None, Query(ge=0, description="log position")] = None,
    time: Annotated[AwareDatetime | None, Query(description="event time, RFC 3339 with a zone")] = None,
) -> dict[str, Any]:
    if (position is None) == (time is None):
        raise HTTPException(HTTP_UNPROCESSABLE, "give exactly one of position= and time=")
    when = str(position) if position is not None else format_time(time)  # type: ignore[arg-type]
    try:
        view = account_as_of(request.app.state.engine, account_id, when)
    except (ValueError, LookupError) as error:
        raise HTTPException(HTTP_UNPROCESSABLE, str(error)) from None
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no account {account_id!r} at {when}")
    return dict(view)


@router.get("/accounts/{account_id}/events", response_model=Page, summary="The account's events in log order")
def get_account_events(conn: Conn, account_id: AccountId, limit: Limit = LIST_LIMIT_DEFAULT,
                       after: PositionCursor = 0) -> Page:
    items = queries.stream_events(conn, f"account:{account_id}", after=after, limit=limit)
    if not items and after == 0:
        _known_account(conn, account_id)
    return _page(items, limit, lambda row: row["position"])


@router.get(
    "/accounts/{account_id}/history",
    response_model=Page,
    summary="The account's balance-affecting events over time (fills, transfers, liquidation fills, draws)",
)
def get_account_history(conn: Conn, account_id: AccountId, limit: Limit = LIST_LIMIT_DEFAULT,
                        after: PositionCursor = 0) -> Page:
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


@router.get("/margin-calls", response_model=Page, summary="Margin calls in the order they were issued")
def list_margin_calls(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: Annotated[int, Query(ge=0, description="the previous page's next_after (an issued_position)")] = 0,
    status_: Annotated[Literal["open", "resolved", "liquidated", "bankrupt"] | None, Query(alias="status")] = None,
    level: Annotated[Literal["warning", "maintenance", "liquidation"] | None, Query()] = None,
    account: OptionalId = None,
    from_: Annotated[AwareDatetime | None, Query(alias="from", description="issued at or after")] = None,
    to: Annotated[AwareDatetime | None, Query(description="issued before")] = None,
) -> Page:
    if from_ is not None and to is not None and to < from_:
        raise HTTPException(HTTP_UNPROCESSABLE, "'to' is before 'from'")
    items = queries.list_margin_calls(
        conn, status=status_, level=level, account_id=account, issued_from=from_, issued_to=to, after=after,
        limit=limit,
    )
    return _page(items, limit, lambda row: row["issued_position"])


@router.get("/liquidations", response_model=Page, summary="Liquidation orders in the order they were issued")
def list_liquidations(
    conn: Conn,
    limit: Limit = LIST_LIMIT_DEFAULT,
    after: Annotated[int, Query(ge=0, description="the previous page's next_after (an issued_position)")] = 0,
    account: OptionalId = None,
    status_: Annotated[str | None, Query(alias="status", min_length=1, max_length=32)] = None,
) -> Page:
    items = queries.list_liquidations(conn, account_id=account, status=status_, after=after, limit=limit)
    return _page(items, limit, lambda row: row["issued_position"])


@router.get("/insurance-fund", summary="Insurance fund balances and a page of its movements")
def get_insurance_fund(conn: Conn, limit: Limit = LIST_LIMIT_DEFAULT, after: PositionCursor = 0) -> dict[str, Any]:
    balances = queries.account_balances(conn, queries.INSURANCE_FUND_ACCOUNT_ID)
    movements = queries.insurance_fund_movements(conn, after=after, limit=limit)
    page = _page(movements, limit, lambda row: row["position"])
    return {
        "account_id": queries.INSURANCE_FUND_ACCOUNT_ID,
        **balances,
        "movements": page.items,
        "next_after": page.next_after,
    }


# ------------------------------------------------------------------------------------------------
# operations


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


@router.get("/dead-letters", response_model=Page, summary="Rejected input records; key and raw are base64")
def list_dead_letters(conn: Conn, limit: Limit = LIST_LIMIT_DEFAULT,
                      after: Annotated[int, Query(ge=0, description="the previous page's next_after (an id)")] = 0
                      ) -> Page:
    items = [
        {**row, "key": _b64(row["key"]), "raw": _b64(row["raw"])}
        for row in queries.list_dead_letters(conn, after=after, limit=limit)
    ]
    return _page(items, limit, lambda row: row["id"])


@router.get("/audit/status", summary="Log head, event and dead-letter counts, outbox backlog and its oldest row")
def audit_status(conn: Conn) -> dict[str, Any]:
    # outbox_oldest_unpublished_at / _age_s: how long the oldest decision has waited for the broker.
    return {**queries.log_status(conn), **read_backlog(conn).as_dict()}


@router.get(
    "/metrics",
    summary="Prometheus metrics, read from the database at scrape time",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
