"""The read-only back-office HTTP API (``clearing api``).

``create_app(engine, tokens)`` builds the FastAPI application around an engine that logs in as
``clearing_reader`` (``make_reader_engine``): the role may only SELECT and is its connections'
session user, so even a bug in a handler, or ``RESET ROLE``, cannot write to the ledger. Every
endpoint but ``/healthz`` and the OpenAPI document needs a bearer token (``clearing.api.auth``).
Every 422 has one body (``clearing.api.models.ValidationProblem``), whatever refused the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from clearing.api import auth, metrics, routes
from clearing.api.models import Health
from clearing.store.db import READER_ROLE

API_TITLE = "clearing back-office API"
API_VERSION = "1"
HTTP_UNPROCESSABLE = 422  # Starlette renamed its constant; the number is what clients see


def make_reader_engine(url: str, *, role: str = READER_ROLE, password: SecretStr | None = None) -> sa.Engine:
    """An engine for the API: logged in as the read-only role on ``url``'s server and database
    (``password`` is the role's), connections checked before use, a bounded pool."""
    from clearing.store.db import make_engine

    return make_engine(url, role=role, password=password, pool_pre_ping=True, pool_size=5, max_overflow=5)


def create_app(engine: sa.Engine, tokens: Sequence[str]) -> FastAPI:
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Read-only views of the clearing ledger: accounts, margin calls, liquidations, the insurance "
        "fund, dead letters and the audit log. Decimals are exact strings; lists are keyset-paginated.\n\n"
        "Errors: 401, 404 and 503 answer `{\"detail\": \"a sentence\"}` (`Problem`); every 422 answers "
        "`{\"detail\": [{\"loc\": [\"query\", \"time\"], \"msg\": \"...\", \"type\": \"...\"}]}` "
        "(`ValidationProblem`), one issue per refused parameter, whether it failed its declared type or a rule "
        "of the route. A query parameter the route does not take is refused too.",
        # The interactive pages load scripts from a CDN; the API serves only the document.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.tokens = auth.TokenSet(tokens)
    app.state.registry = metrics.make_registry(engine)
    app.include_router(routes.router, dependencies=[Depends(auth.require_token)])

    @app.get(
        "/healthz",
        response_model=Health,
        summary="Liveness and database reachability (no token needed)",
        responses={503: {"model": Health, "description": "the database is unavailable"}},
    )
    def healthz() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError:
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.exception_handler(sa.exc.OperationalError)
    def database_unavailable(_request: Request, _error: Exception) -> JSONResponse:
        # The database being down is not the client's fault, nor a bug in the API: say so.
        return JSONResponse({"detail": "the database is unavailable; try again"}, status_code=503)

    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _without_null_parameters(plain_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    def refused(_request: Request, error: RequestValidationError) -> JSONResponse:
        # One 422 body whatever refused the request (a declared type or a rule in a handler), and
        # without the refused input echoed back.
        issues = [
            {"loc": [str(part) if not isinstance(part, int) else part for part in issue.get("loc", ())],
             "msg": _message(issue), "type": str(issue.get("type", "value_error"))}
            for issue in error.errors()
        ]
        return JSONResponse({"detail": issues}, status_code=HTTP_UNPROCESSABLE)

    return app


def _without_null_parameters(document: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter is absent or a string: never JSON null, which pydantic's
    ``X | None`` puts in its schema (``anyOf: [X, {type: null}]``). Keep only X, so the document
    says what a client can send."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                options = schema.get("anyOf")
                if options and len(options) == 2 and {"type": "null"} in options:
                    (kept,) = [option for option in options if option != {"type": "null"}]
                    parameter["schema"] = {**{k: v for k, v in schema.items() if k != "anyOf"}, **kept}
    return document


def _message(issue: dict[str, Any]) -> str:
    if issue.get("type") == "string_pattern_mismatch" and issue.get("ctx", {}).get("pattern") == routes.TEXT_PATTERN:
        return "must not contain a NUL character"
    message = str(issue.get("msg", "is not valid"))
    # pydantic prefixes what a validator raised with "Value error, "; the sentence stands alone.
    return message.removeprefix("Value error, ")


def serve(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
