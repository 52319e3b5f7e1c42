"""Bearer-token authentication for the back-office API.

Tokens come from ``CLEARING_API_TOKENS``. Each presented token is compared with every accepted
token in constant time (``hmac.compare_digest``), and the loop never stops early, so the response
time says nothing about how much of a token was right or which token it resembled.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN_BYTES_DEV = 32  # entropy of the token ``clearing api --dev`` generates

bearer_scheme = HTTPBearer(auto_error=False, description="A token listed in CLEARING_API_TOKENS")


class TokenSet:
    """The accepted tokens, as bytes, checked without early exit."""

    def __init__(self, tokens: Sequence[str]) -> None:
        accepted = [token for token in tokens if token]
        if not accepted:
            raise ValueError("the API needs at least one bearer token (CLEARING_API_TOKENS)")
        self._tokens = [token.encode("utf-8") for token in accepted]

    def accepts(self, presented: str) -> bool:
        candidate = presented.encode("utf-8")
        matched = False
        for token in self._tokens:
            # Bitwise or, not ``or``: every comparison runs whatever the earlier ones gave.
            matched |= hmac.compare_digest(candidate, token)
        return matched


def generate_dev_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES_DEV)


def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
) -> None:
    """FastAPI dependency: 401 unless the request carries ``Authorization: Bearer <accepted>``."""
    tokens: TokenSet = request.app.state.tokens
    if credentials is None or credentials.scheme.lower() != "bearer" or not tokens.accepts(credentials.credentials):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
