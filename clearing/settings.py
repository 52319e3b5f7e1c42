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
    # The role the ledger logs in as (on the server and database of ``database_url``): it may only
    # append to the log. Its password, when the deployment authenticates it with one; ``clearing
    # db upgrade`` sets it. None: the URL's own password if its user is this role, else none (peer,
    # certificate, or the embedded server's trust on its Unix socket).
    database_role: str = "clearing_app"
    database_role_password: SecretStr | None = None
    # The role the API, ``account show`` and reports log in as: it may only read. Password likewise.
    reader_role: str = "clearing_reader"
    reader_role_password: SecretStr | None = None
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

    def role_passwords(self) -> dict[str, SecretStr]:
        """The roles' passwords that are configured, by role (what ``clearing db upgrade`` sets)."""
        configured = {self.database_role: self.database_role_password, self.reader_role: self.reader_role_password}
        return {role: password for role, password in configured.items() if password is not None}

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
