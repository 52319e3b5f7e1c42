"""The read-only back-office HTTP API (``clearing api``).

``create_app(engine, tokens)`` builds the FastAPI application around an engine whose connections
``SET ROLE clearing_reader`` (``make_engine(url, role=READER_ROLE)``): the role may only SELECT,
so even a bug in a handler cannot write to the ledger. Every endpoint but ``/healthz`` and the
OpenAPI document needs a bearer token (``clearing.api.auth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from clearing.api import auth, metrics, routes

READER_ROLE = "clearing_reader"
API_TITLE = "clearing back-office API"
API_VERSION = "1"


def make_reader_engine(url: str) -> sa.Engine:
    """An engine for the API: read-only role, connections checked before use, a bounded pool."""
    from clearing.store.db import make_engine

    return make_engine(url, role=READER_ROLE, pool_pre_ping=True, pool_size=5, max_overflow=5)


def create_app(engine: sa.Engine, tokens: Sequence[str]) -> FastAPI:
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Read-only views of the clearing ledger: accounts, margin calls, liquidations, the insurance "
        "fund, dead letters and the audit log. Decimals are exact strings; lists are keyset-paginated.",
        # The interactive pages load scripts from a CDN; the API serves only the document.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.tokens = auth.TokenSet(tokens)
    app.state.registry = metrics.make_registry(engine)
    app.include_router(routes.router, dependencies=[Depends(auth.require_token)])

    @app.get("/healthz", summary="Liveness and database reachability (no token needed)")
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

    return app


def serve(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
