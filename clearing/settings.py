"""Configuration from the environment (prefix ``CLEARING_``), read once by :func:`get_settings`.

Nothing is read at import time: commands and tests build the settings when they need them, and
tests that change the environment call ``get_settings.cache_clear()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the database and the broker are, and where embedded services keep their files."""

    model_config = SettingsConfigDict(env_prefix="CLEARING_", extra="ignore")

    # SQLAlchemy URL of the PostgreSQL database; None means an embedded server under ``home``.
    database_url: SecretStr | None = None
    # ``host:port[,host:port]`` of the Kafka cluster; None means an embedded broker under ``home``.
    kafka_bootstrap: str | None = None
    # Working folder of the embedded services and of reports.
    home: Path = Path(".clearing")
    # Prefix of every topic name.
    topic_prefix: str = "clearing."
    # Comma-separated bearer tokens accepted by the back-office API.
    api_tokens: str | None = None
    # Role the ledger's connections SET ROLE to, so the log's privileges apply to the application
    # even when it logs in as the schema owner (as it does on the embedded server).
    database_role: str = "clearing_app"
    # Ed25519 key that signs the log checkpoints the ledger publishes: the 32-byte seed in hex or
    # base64, or PEM. Unset: checkpoints go out unsigned.
    signing_key: SecretStr | None = None
    # The public key ``audit verify`` checks checkpoint signatures with (32 bytes in hex or base64,
    # or PEM). Unset: derived from ``signing_key`` when that is set.
    signing_public_key: str | None = None

    def api_token_list(self) -> list[str]:
        """The accepted bearer tokens, blanks dropped; empty when none are configured."""
        if self.api_tokens is None:
            return []
        return [token.strip() for token in self.api_tokens.split(",") if token.strip()]

    def home_path(self) -> Path:
        """``home`` as an absolute path (relative values are relative to the working directory)."""
        return self.home.expanduser().resolve()

    def database_url_value(self) -> str | None:
        """The configured database URL in clear text, or None when the embedded server is used."""
        return None if self.database_url is None else self.database_url.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built on first use from the environment."""
    return Settings()


def topic(settings: Settings, kind: str) -> str:
    """Full name of a topic: ``topic(settings, "fills")`` is ``clearing.fills`` by default."""
    return f"{settings.topic_prefix}{kind}"
